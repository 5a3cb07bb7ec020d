"""Write the fixture checkpoints of ``test_checkpoints.py``.

Each case trains a small MLP for ``WARMUP`` steps, saves the model and the optimizer's
``state_dict()``, trains ``CONTINUED`` more steps and saves the parameters reached. The files
of this folder were written by the optimizers as they were before the optimizers became
composed parts (``python tests/optim/checkpoints/make_checkpoints.py``); they pin that a
checkpoint written by that code keeps loading and continues bit for bit. Do not regenerate
them with newer code: that would test nothing.
"""

from __future__ import annotations

import copy
import pathlib

import torch
from torch import nn

WARMUP = 4
CONTINUED = 4
FOLDER = pathlib.Path(__file__).parent


def make_model(dtype: torch.dtype) -> nn.Sequential:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=dtype))
    return model


def batches(dtype: torch.dtype, loss: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(3, 6, generator=generator, dtype=dtype)
    result = []
    for _ in range(WARMUP + CONTINUED):
        x = torch.randn(16, 6, generator=generator, dtype=dtype)
        target = x @ teacher.T
        y = target.argmax(dim=1) if loss == "cross_entropy" else torch.sin(target)
        result.append((x, y))
    return result


def loss_of(name: str):
    return nn.functional.cross_entropy if name == "cross_entropy" else nn.functional.mse_loss


#: name -> (dtype, loss, optimizer class name, keyword arguments; KFAC takes the model).
CASES = {
    "shampoo": (torch.float64, "mse", "Shampoo", dict(lr=1e-2, refresh_every=3, momentum=0.5)),
    "shampoo-float32": (torch.float32, "mse", "Shampoo", dict(lr=1e-2, refresh_every=3)),
    "shampoo-sum-sgd": (
        torch.float64,
        "mse",
        "Shampoo",
        dict(
            lr=1e-2,
            accumulation="sum",
            grafting="sgd",
            refresh_every=2,
            nesterov=True,
            momentum=0.9,
            weight_decay=1e-3,
        ),
    ),
    "soap": (torch.float64, "mse", "SOAP", dict(lr=1e-2, refresh_every=3)),
    "soap-float32": (torch.float32, "mse", "SOAP", dict(lr=1e-2, refresh_every=3)),
    "soap-power-qr": (
        torch.float64,
        "mse",
        "SOAP",
        dict(lr=1e-2, refresh_every=2, basis_refresh="power_qr"),
    ),
    "muon": (torch.float64, "mse", "Muon", dict(lr=2e-2, weight_decay=1e-3)),
    "muon-float32": (torch.float32, "mse", "Muon", dict(lr=2e-2)),
    "muon-exact": (torch.float64, "mse", "Muon", dict(lr=2e-2, exact=True)),
    "kfac-ggn": (
        torch.float64,
        "cross_entropy",
        "KFAC",
        dict(
            lr=0.1,
            loss="cross_entropy",
            curvature="ggn",
            refresh_every=3,
            damping_split="pi",
            momentum=0.5,
        ),
    ),
    "kfac-mc-fisher": (
        torch.float64,
        "mse",
        "KFAC",
        dict(lr=0.1, loss="mse", curvature="mc_fisher", refresh_every=2, seed=3),
    ),
    "kfac-empirical-float32": (
        torch.float32,
        "cross_entropy",
        "KFAC",
        dict(lr=0.1, loss="cross_entropy", curvature="empirical", refresh_every=3),
    ),
    "kfac-exact": (
        torch.float64,
        "mse",
        "KFAC",
        dict(lr=0.5, loss="mse", curvature="ggn", exact=True, damping=1e-3),
    ),
    "ekfac": (
        torch.float64,
        "cross_entropy",
        "KFAC",
        dict(lr=1e-2, loss="cross_entropy", curvature="ggn", ekfac=True, refresh_every=3),
    ),
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    from layerwise import optim

    _, _, class_name, kwargs = CASES[name]
    cls = getattr(optim, class_name)
    if class_name == "KFAC":
        return cls(model, **kwargs)
    return cls(model.parameters(), **kwargs)


def train(model, optimizer, data, loss: str) -> None:
    for x, y in data:
        optimizer.zero_grad()
        loss_of(loss)(model(x), y).backward()
        optimizer.step()


def main() -> None:
    for name, (dtype, loss, _, _) in CASES.items():
        model = make_model(dtype)
        optimizer = make_optimizer(name, model)
        data = batches(dtype, loss)
        train(model, optimizer, data[:WARMUP], loss)
        checkpoint = {
            "model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),  # state_dict() holds references
        }
        train(model, optimizer, data[WARMUP:], loss)
        checkpoint["expected"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(checkpoint, FOLDER / f"{name}.pt")
        print(name)


if __name__ == "__main__":
    main()
