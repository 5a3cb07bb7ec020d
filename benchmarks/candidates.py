"""What the optimizer-step benchmark times: the model, its data, and every candidate.

A *candidate* is one way of taking a full training step (forward, backward, optimizer step,
``zero_grad``) on the benchmark MLP: torch AdamW (the reference), our optimizers, the peer
libraries' optimizers for the same methods, and the *floors* — AdamW's step plus the bare torch
products and decompositions that a method cannot avoid at that setting.

Matched settings are written next to each candidate (``Candidate.settings``) and end up in the
JSON and the README table.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layerwise.optim.base import state_bytes

LR = {"adamw": 1e-3, "shampoo": 1e-3, "soap": 3e-3, "muon": 0.02, "kfac": 1e-3}
#: Our Muon's Adam path runs at lr x adam_lr_ratio (default 0.05); the peers' AdamW match it.
MUON_ADAM_LR = 1e-3


@dataclass(frozen=True)
class Setting:
    """The MLP ``inputs -> width x hidden_layers -> classes`` (ReLU, cross-entropy) and its
    batch; preconditioners are refreshed every ``refresh_every`` steps."""

    width: int
    batch: int
    refresh_every: int = 10
    inputs: int = 512
    classes: int = 10
    hidden_layers: int = 3

    def weight_shapes(self) -> list[tuple[int, int]]:
        dims = [self.inputs] + [self.width] * self.hidden_layers + [self.classes]
        return [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]

    def label(self) -> str:
        return f"width {self.width}, batch {self.batch}"


def build_mlp(setting: Setting, seed: int) -> nn.Sequential:
    """The benchmark MLP, initialised from its own generator (no global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_out, fan_in) in enumerate(setting.weight_shapes()):
        if index:
            layers.append(nn.ReLU())
        layer = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5)
            layer.bias.zero_()
        layers.append(layer)
    return nn.Sequential(*layers)


def make_batches(setting: Setting, seed: int, count: int = 16) -> list[tuple[Tensor, Tensor]]:
    # Enough distinct batches that no candidate memorizes them within the timed steps: with
    # two, KFAC fitted the random labels, its gradients fell into the denormal range and every
    # product (ours and autograd's) ran several times slower -- a measurement of the training
    # state, not of the step.
    generator = torch.Generator().manual_seed(seed + 1)
    return [
        (
            torch.randn(setting.batch, setting.inputs, generator=generator),
            torch.randint(0, setting.classes, (setting.batch,), generator=generator),
        )
        for _ in range(count)
    ]


class Trainer:
    """One model, its optimizers and an optional bare workload run after ``backward``."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        batches: list[tuple[Tensor, Tensor]],
        extra: Callable[[nn.Module, int], None] | None = None,
        around_step: Callable[[], Any] | None = None,
    ) -> None:
        self.model = model
        self.optimizers = optimizers
        self.batches = batches
        self.extra = extra
        self.around_step = around_step
        self.steps = 0

    def step(self) -> None:
        x, y = self.batches[self.steps % len(self.batches)]
        self.steps += 1
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        if self.extra is not None:
            self.extra(self.model, self.steps)
        if self.around_step is not None:
            self.around_step()
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Bytes of all tensors held in the optimizers' state (shared storages once)."""
        return state_bytes(self.optimizers)


Factory = Callable[[nn.Module, list[tuple[Tensor, Tensor]]], Trainer]


@dataclass(frozen=True)
class Candidate:
    name: str
    method: str  # adamw | shampoo | soap | muon | kfac
    source: str  # torch | layerwise | <peer library and version> | floor
    mode: str  # amortized | exact | bare
    settings: str
    factory: Factory
    block_steps: int
    floor_of: str | None = None  # floors: the candidate they bound


@dataclass(frozen=True)
class Unavailable:
    name: str
    method: str
    source: str
    reason: str


def _weights_and_rest(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    params = list(model.parameters())
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]


def _simple(make: Callable[[nn.Module], list[torch.optim.Optimizer]]) -> Factory:
    return lambda model, batches: Trainer(model, make(model), batches)


def adamw_candidate(setting: Setting) -> Candidate:
    return Candidate(
        "torch AdamW",
        "adamw",
        "torch",
        "amortized",
        "lr 1e-3, betas (0.9, 0.999), weight decay 0.01, foreach (default)",
        _simple(lambda m: [torch.optim.AdamW(m.parameters(), lr=LR["adamw"])]),
        setting.refresh_every,
    )


# -- ours --------------------------------------------------------------------------------


#: Suffix of the variants whose per-step products run in float32 (``precondition_dtype`` /
#: ``ns_dtype`` = None). Without a suffix a candidate runs our defaults: for float32 parameters
#: the per-step application products run in bfloat16, statistics and decompositions in float32.
FP32 = " fp32"


def our_candidates(
    setting: Setting,
    *,
    exact: bool = True,
    fp32_variants: tuple[str, ...] = ("shampoo", "soap", "muon", "kfac"),
) -> tuple[list[Candidate], list]:
    """Our optimizers with their defaults (amortized, refresh every ``setting.refresh_every``
    steps), for the methods in ``fp32_variants`` also with float32 application products, and
    with ``exact`` also the exact modes."""
    from layerwise.optim import SOAP, Muon, Shampoo

    k = setting.refresh_every
    kfac = _kfac_class()
    missing: list[Unavailable] = []
    if isinstance(kfac, str):
        missing.append(Unavailable("layerwise KFAC", "kfac", "layerwise", kfac))

    def make_kfac(model: nn.Module, **options: Any) -> list[torch.optim.Optimizer]:
        return [kfac(model, lr=LR["kfac"], loss="cross_entropy", **options)]

    # (name, method, settings, optimizer factory taking the precision options)
    amortized: list[tuple[str, str, str, Callable[..., list[torch.optim.Optimizer]]]] = [
        (
            "Shampoo",
            "shampoo",
            f"refresh every {k}, EMA statistics (0.999), Adam grafting, betas (0.9, 0.999)",
            lambda m, **o: [Shampoo(m.parameters(), lr=LR["shampoo"], refresh_every=k, **o)],
        ),
        (
            "SOAP",
            "soap",
            f"refresh every {k} (eigh), betas (0.95, 0.95), statistics EMA 0.95",
            lambda m, **o: [SOAP(m.parameters(), lr=LR["soap"], refresh_every=k, **o)],
        ),
        (
            "Muon",
            "muon",
            "5 quintic Newton–Schulz steps, Nesterov 0.95; biases: Adam path at lr x 0.05",
            lambda m, **o: [Muon(m.parameters(), lr=LR["muon"], **o)],
        ),
    ]
    if not isinstance(kfac, str):
        amortized.append(
            (
                "KFAC",
                "kfac",
                f"cross-entropy, defaults: empirical curvature, EMA factors from at most 256 "
                f"samples per batch, damping 1e-3, refresh every {k} (Cholesky inverses)",
                lambda m, **o: make_kfac(m, refresh_every=k, **o),
            )
        )
    found: list[Candidate] = []
    for name, method, settings, make in amortized:
        full = {"ns_dtype": None} if method == "muon" else {"precondition_dtype": None}
        variants = [
            ("", {}, "defaults (bfloat16 application products)"),
            (FP32, full, "float32 application products"),
        ]
        if method not in fp32_variants:
            variants = variants[:1]
        for suffix, options, precision in variants:
            found.append(
                Candidate(
                    f"layerwise {name}{suffix}",
                    method,
                    "layerwise",
                    "amortized",
                    f"{settings}; {precision}",
                    _builder(make, options),
                    k,
                )
            )
    if not exact:
        return found, missing
    exact_block = 1  # one refresh period
    exact_modes: list[tuple[str, str, str, Callable[[nn.Module], list]]] = [
        (
            "Shampoo",
            "shampoo",
            "roots every step, no grafting",
            lambda m: [Shampoo(m.parameters(), lr=LR["shampoo"], exact=True)],
        ),
        (
            "SOAP",
            "soap",
            "eigenbases every step",
            lambda m: [SOAP(m.parameters(), lr=LR["soap"], exact=True)],
        ),
        (
            "Muon",
            "muon",
            "polar factor by SVD",
            lambda m: [Muon(m.parameters(), lr=LR["muon"], exact=True)],
        ),
    ]
    if not isinstance(kfac, str):
        exact_modes.append(
            (
                "KFAC",
                "kfac",
                "empirical factors of the current batch, inverted every step; damping 1e-3 "
                "(the exact "
                "default 0 fails: batch < layer width makes the factors singular)",
                lambda m: make_kfac(m, damping=1e-3, curvature="empirical", exact=True),
            )
        )
    for name, method, settings, make_exact in exact_modes:
        found.append(
            Candidate(
                f"layerwise {name} exact",
                method,
                "layerwise",
                "exact",
                settings,
                _simple(make_exact),
                exact_block,
            )
        )
    return found, missing


def _builder(make: Callable[..., list[torch.optim.Optimizer]], options: dict[str, Any]) -> Factory:
    return _simple(lambda model: make(model, **options))


def _kfac_class() -> Any:
    try:
        from layerwise.optim import KFAC  # type: ignore[attr-defined]
    except ImportError as error:
        return f"not importable yet ({error})"
    return KFAC


# -- peers -------------------------------------------------------------------------------


def _version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def peer_candidates(
    setting: Setting, *, heavyball_compiled: bool = False, scalable_shampoo: bool = True
) -> tuple[list, list]:
    """Peer optimizers for the same methods; anything that fails to import is ``Unavailable``.
    ``scalable_shampoo``: include pytorch-optimizer's ScalableShampoo (the slowest peer: 20x
    AdamW at width 1024, where it is left out to keep the benchmark under 5 minutes)."""
    k = setting.refresh_every
    found: list[Candidate] = []
    missing: list[Unavailable] = []

    torch_muon = getattr(torch.optim, "Muon", None)
    if torch_muon is None:
        missing.append(Unavailable("torch Muon", "muon", "torch", "torch.optim.Muon missing"))
    else:

        def make_torch_muon(model: nn.Module) -> list[torch.optim.Optimizer]:
            weights, rest = _weights_and_rest(model)
            return [
                torch_muon(weights, lr=LR["muon"], weight_decay=0.0),
                torch.optim.AdamW(rest, lr=MUON_ADAM_LR, betas=(0.9, 0.95), weight_decay=0.0),
            ]

        found.append(
            Candidate(
                "torch.optim Muon",
                "muon",
                f"torch {torch.__version__}",
                "amortized",
                "5 Newton–Schulz steps in bfloat16, Nesterov 0.95; biases: torch AdamW",
                _simple(make_torch_muon),
                k,
            )
        )

    try:
        import pytorch_optimizer as po
    except ImportError as error:
        for method in ("shampoo", "soap", "muon"):
            missing.append(Unavailable(f"pytorch-optimizer {method}", method, "-", str(error)))
    else:
        source = f"pytorch-optimizer {_version('pytorch-optimizer')}"
        found += _pytorch_optimizer_candidates(po, source, k, scalable_shampoo=scalable_shampoo)

    try:
        import heavyball
    except ImportError as error:
        for method in ("soap", "muon"):
            missing.append(Unavailable(f"heavyball {method}", method, "-", str(error)))
    else:
        source = f"heavyball {_version('heavyball')}"
        found += _heavyball_candidates(heavyball, source, k, compiled=False)
        if heavyball_compiled:
            found += _heavyball_candidates(heavyball, source, k, compiled=True)
    return found, missing


def _pytorch_optimizer_candidates(
    po: Any, source: str, k: int, *, scalable_shampoo: bool
) -> list[Candidate]:
    from pytorch_optimizer.optimizer.utils.graft import LayerWiseGrafting

    def make_muon(model: nn.Module) -> list[torch.optim.Optimizer]:
        weights, rest = _weights_and_rest(model)
        return [
            po.Muon(
                [
                    {"params": weights, "use_muon": True},
                    {"params": rest, "use_muon": False},
                ],
                lr=LR["muon"],
                adamw_lr=MUON_ADAM_LR,
            )
        ]

    found = [
        Candidate(
            "pytorch-optimizer Shampoo",
            "shampoo",
            source,
            "amortized",
            f"preconditioning_compute_steps={k} (original Shampoo: sum statistics, no grafting)",
            _simple(
                lambda m: [
                    po.Shampoo(m.parameters(), lr=LR["shampoo"], preconditioning_compute_steps=k)
                ]
            ),
            k,
        ),
        Candidate(
            "pytorch-optimizer SOAP",
            "soap",
            source,
            "amortized",
            f"precondition_frequency={k}, betas (0.95, 0.95), shampoo_beta 0.95",
            _simple(
                lambda m: [
                    po.SOAP(
                        m.parameters(), lr=LR["soap"], precondition_frequency=k, shampoo_beta=0.95
                    )
                ]
            ),
            k,
        ),
        Candidate(
            "pytorch-optimizer Muon",
            "muon",
            source,
            "amortized",
            "5 Newton–Schulz steps (bfloat16), Nesterov 0.95; biases: its AdamW groups",
            _simple(make_muon),
            k,
        ),
    ]
    if scalable_shampoo:
        found.append(
            Candidate(
                "pytorch-optimizer ScalableShampoo",
                "shampoo",
                source,
                "amortized",
                f"preconditioning_compute_steps={k}, start_preconditioning_step=1, "
                "block_size=1024 (no blocking), RMSprop grafting",
                _simple(
                    lambda m: [
                        po.ScalableShampoo(
                            m.parameters(),
                            lr=LR["shampoo"],
                            preconditioning_compute_steps=k,
                            start_preconditioning_step=1,
                            block_size=1024,
                            graft_type=LayerWiseGrafting.RMSPROP,
                        )
                    ]
                ),
                k,
            )
        )
    return found


def _heavyball_candidates(heavyball: Any, source: str, k: int, *, compiled: bool) -> list:
    """heavyball compiles its step functions by default; eager mode switches its module-level
    compile settings off around each of its steps (and back on for the compiled variant)."""
    utils = heavyball.utils
    defaults = (utils.compile_mode, utils.compile_mode_recommended_to_none)

    def set_compile() -> None:
        if compiled:
            utils.compile_mode, utils.compile_mode_recommended_to_none = defaults
        else:
            utils.compile_mode = utils.compile_mode_recommended_to_none = None

    suffix = " compiled" if compiled else ""
    mode = "torch.compile" if compiled else "eager"

    def factory(make: Callable[[nn.Module], torch.optim.Optimizer]) -> Factory:
        def build(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Trainer:
            set_compile()
            return Trainer(model, [make(model)], batches, around_step=set_compile)

        return build

    return [
        Candidate(
            f"heavyball SOAP{suffix}",
            "soap",
            source,
            "amortized",
            f"{mode}; precondition_frequency={k}, no schedule, betas (0.95, 0.95), "
            "shampoo_beta 0.95",
            factory(
                lambda m: heavyball.SOAP(
                    m.parameters(),
                    lr=LR["soap"],
                    betas=(0.95, 0.95),
                    shampoo_beta=0.95,
                    precondition_frequency=k,
                    use_precond_schedule=False,
                )
            ),
            k,
        ),
        Candidate(
            f"heavyball Muon{suffix}",
            "muon",
            source,
            "amortized",
            f"{mode}; MuonAdamW (Muon on matrices, AdamW on biases)",
            factory(lambda m: heavyball.MuonAdamW(m.parameters(), lr=LR["muon"])),
            k,
        ),
    ]


def instantiate(
    candidate: Candidate, setting: Setting, base_model: nn.Module, seed: int
) -> Trainer:
    return candidate.factory(copy.deepcopy(base_model), make_batches(setting, seed))
