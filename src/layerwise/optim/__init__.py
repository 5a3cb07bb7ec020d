"""Layer-wise (Kronecker-factored) optimizers composed from one set of per-layer parts.

An optimizer is *statistics x accumulation x transform* in a ``torch.optim`` shell of policies
(:mod:`layerwise.optim.parts`). ``Shampoo``, ``SOAP``, ``Muon``, ``KFAC`` and ``EKFAC`` are
named compositions; :class:`Layerwise` takes a :class:`Parts` of one's own.
"""

from layerwise.optim.base import Layerwise, LayerwiseOptimizer
from layerwise.optim.kfac import EKFAC, KFAC
from layerwise.optim.kronecker import Accumulation, Side, Sides, Transform
from layerwise.optim.muon import Muon
from layerwise.optim.parts import Parts
from layerwise.optim.policies import (
    AdamPath,
    Clipping,
    FailurePolicy,
    FirstMoment,
    Graft,
    Grafting,
    HeavyBall,
    UpdateScale,
)
from layerwise.optim.shampoo import Shampoo
from layerwise.optim.soap import SOAP
from layerwise.optim.statistics import GradientProducts, LayerFactors
from layerwise.optim.transforms import (
    BasisRefresh,
    EigenbasisAdam,
    InverseRoot,
    Orthogonalize,
    PolarMethod,
)

__all__ = [
    "EKFAC",
    "KFAC",
    "SOAP",
    "Accumulation",
    "AdamPath",
    "BasisRefresh",
    "Clipping",
    "EigenbasisAdam",
    "FailurePolicy",
    "FirstMoment",
    "GradientProducts",
    "Graft",
    "Grafting",
    "HeavyBall",
    "InverseRoot",
    "LayerFactors",
    "Layerwise",
    "LayerwiseOptimizer",
    "Muon",
    "Orthogonalize",
    "Parts",
    "PolarMethod",
    "Shampoo",
    "Side",
    "Sides",
    "Transform",
    "UpdateScale",
]
