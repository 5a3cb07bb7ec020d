"""Settings of the training workloads and the hyperparameters of every method.

The protocol (the same for every workload and optimizer):

- schedule: linear warm-up over the first ``warmup_fraction`` of the budget, then cosine decay
  to ``final_lr_fraction`` of the peak, :math:`\\eta_t = \\eta\\,m(t)` with
  :math:`m(t) = t/t_w` for :math:`t < t_w` and
  :math:`m(t) = f + (1 - f)\\tfrac12(1 + \\cos(\\pi (t - t_w)/(T - t_w)))` after;
- a fixed budget of ``steps`` minibatch steps of ``batch_size`` samples;
- the learning rate is the only tuned knob: each method's ``lr_grid`` is tried on
  ``tuning_seeds`` seeds (:data:`TUNING_SEED_OFFSET` + 0, 1, ...), the value with the lowest
  mean final validation loss wins (a diverged tuning seed makes a value infinite; ties go to
  the smaller learning rate) and only then are the reported seeds (< the offset) trained;
- every other knob is the optimizer's default, except the few written in the method models
  below (SGD's momentum, the Adam path of Muon), which are fixed, not tuned.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Tuning seeds are TUNING_SEED_OFFSET + i; reported seeds must be below it (disjoint sets).
TUNING_SEED_OFFSET = 1000

Workload = Literal["digits", "tabular", "lm"]


class TrainingSettings(BaseModel):
    """One workload at one size (see :mod:`layerwise.problems.training.data` and ``models``).

    ``width``: channels of the first convolution (digits), hidden width (tabular) or the model
    dimension (lm). ``depth``: hidden layers (tabular) or transformer blocks (lm); the digits
    network has a fixed two-convolution layout. ``heads``, ``context``, ``text_files``,
    ``text_chars`` and ``val_windows`` concern the language model only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: Workload
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_every: int = Field(10, ge=1)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    final_lr_fraction: float = Field(0.0, ge=0, le=1)
    width: int = Field(32, ge=1)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    context: int = Field(64, ge=2)
    text_files: int = Field(40, ge=1)
    text_chars: int = Field(300_000, ge=1000)
    val_windows: int = Field(256, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    tuning_seeds: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainingSettings:
        if self.workload == "lm" and self.width % self.heads:
            raise ValueError(f"width={self.width} must be a multiple of heads={self.heads}")
        return self


class _Params(BaseModel):
    """``lr_grid``: the peak learning rates tried by the tuning stage (one value: no tuning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr_grid: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> _Params:
        if any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid={list(self.lr_grid)}: every learning rate must be > 0")
        return self


class SGDParams(_Params):
    lr_grid: tuple[float, ...] = (0.03, 0.1, 0.3)
    momentum: float = Field(0.9, ge=0, lt=1)


class AdamWParams(_Params):
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    weight_decay: float = Field(0.01, ge=0)


class LayerwiseParams(_Params):
    """Shampoo, SOAP, KFAC, EKFAC: the optimizer's defaults, only the learning rate tuned."""

    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)


class MuonParams(_Params):
    """Muon (ours and torch's): the matrices at ``lr``, everything else on Adam at
    ``lr * adam_lr_ratio`` (ours: its Adam path; torch's: a torch AdamW beside it)."""

    lr_grid: tuple[float, ...] = (0.01, 0.02, 0.05)
    adam_lr_ratio: float = Field(0.05, gt=0)


class PeerParams(_Params):
    """A peer library's optimizer at its defaults (matched refresh interval), lr tuned."""

    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2)


#: algorithm -> its hyperparameter model.
METHOD_MODELS: dict[str, type[BaseModel]] = {
    "sgd": SGDParams,
    "adamw": AdamWParams,
    "shampoo": LayerwiseParams,
    "soap": LayerwiseParams,
    "muon": MuonParams,
    "kfac": LayerwiseParams,
    "ekfac": LayerwiseParams,
    "torch_muon": MuonParams,
    "heavyball_soap": PeerParams,
    "pytorch_optimizer_shampoo": PeerParams,
}

#: algorithm -> (family, method): family is "baseline", "ours" or "peer"; a peer is compared
#: with ours of the same method.
FAMILIES: dict[str, tuple[str, str]] = {
    "sgd": ("baseline", "sgd"),
    "adamw": ("baseline", "adamw"),
    "shampoo": ("ours", "shampoo"),
    "soap": ("ours", "soap"),
    "muon": ("ours", "muon"),
    "kfac": ("ours", "kfac"),
    "ekfac": ("ours", "ekfac"),
    "torch_muon": ("peer", "muon"),
    "heavyball_soap": ("peer", "soap"),
    "pytorch_optimizer_shampoo": ("peer", "shampoo"),
}
