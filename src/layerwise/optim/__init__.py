"""Layer-wise (Kronecker-factored) optimizers on one per-layer abstraction.

``Shampoo``, ``SOAP``, ``Muon`` (and ``KFAC``) are thin configurations of
:mod:`layerwise.optim.kronecker` inside the ``torch.optim`` shell of :mod:`layerwise.optim.base`.
"""

from layerwise.optim.base import LayerwiseOptimizer
from layerwise.optim.kfac import KFAC
from layerwise.optim.muon import Muon
from layerwise.optim.shampoo import Shampoo
from layerwise.optim.soap import SOAP

__all__ = ["KFAC", "SOAP", "LayerwiseOptimizer", "Muon", "Shampoo"]
