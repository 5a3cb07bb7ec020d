r"""The workloads' networks, initialised from an explicit generator.

- :class:`DigitsCNN` ``(n, 1, 8, 8) -> (n, 10)``: conv 3x3 (1 -> w, padding 1), ReLU, conv 3x3
  (w -> 2w, padding 1), ReLU, 2x2 max-pool, flatten (2w·4·4), linear (-> 4w), ReLU, linear
  (-> 10).
- :class:`TabularMLP` ``(n, d) -> (n, classes)``: ``depth`` hidden layers of width w with ReLU.
- :class:`CharTransformer` ``(n, T) -> (n·T, 128)``: token and position embeddings of width w,
  ``depth`` pre-norm blocks :math:`h \leftarrow h + \mathrm{Attn}(\mathrm{LN}(h))`,
  :math:`h \leftarrow h + \mathrm{MLP}(\mathrm{LN}(h))`, a final LayerNorm and a linear head.
  Attention is causal with ``heads`` heads; its query, key, value and output projections are
  ``nn.Linear`` modules (not ``nn.MultiheadAttention``), so KFAC sees their activations and
  preconditions them. The MLP is linear (w -> 4w), GELU, linear (4w -> w). The logits are
  flattened to ``(n·T, vocabulary)`` so that a loss (and KFAC) sees one row per position.

Initialisation (:func:`initialize`): linear and convolution weights
:math:`N(0, 1/\mathrm{fan\_in})`, biases 0, embeddings :math:`N(0, 1)`, LayerNorm at
(1, 0); for the transformer the residual output projections (attention out, MLP down) are
scaled by :math:`1/\sqrt{2\,\mathrm{depth}}` (GPT-2's scaling).

``adam_parameters(model)`` names the parameters that the layer-wise optimizers put on their
Adam path (a ``preconditioned=False`` group): the embeddings and the language-model head, as is
common practice for Muon and applied to all of ours alike. The other networks have none.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import VOCABULARY
from .settings import TrainingSettings


class DigitsCNN(nn.Module):
    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 16, 4 * width)
        self.head = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(F.relu(self.fc(x.flatten(1))))


class TabularMLP(nn.Module):
    def __init__(self, inputs: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        dims = [inputs] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.head(x)


class CausalSelfAttention(nn.Module):
    r"""Multi-head causal attention
    :math:`\mathrm{softmax}(QK^\top/\sqrt{d_h} + M)V` with :math:`Q = hW_q^\top` etc., the
    heads concatenated and projected by ``out``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, w = h.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, t, self.heads, w // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(n, t, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.norm1(h))
        return h + self.down(F.gelu(self.up(self.norm2(h))))


class CharTransformer(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, context: int, vocabulary: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.tokens(x) + self.positions(positions)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.norm(h))
        return logits.reshape(-1, logits.shape[-1])


def initialize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter from ``generator`` (module docstring); returns ``model``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.weight.div_(math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        if isinstance(model, CharTransformer):
            for block in model.blocks:
                for layer in (block.attention.out, block.down):
                    layer.weight.div_(math.sqrt(2 * len(model.blocks)))
    return model


def build(settings: TrainingSettings, inputs: int, classes: int, generator: torch.Generator):
    """The network of ``settings.workload`` (``inputs``: features of the tabular workload)."""
    s = settings
    match s.workload:
        case "digits":
            model: nn.Module = DigitsCNN(s.width, classes)
        case "tabular":
            model = TabularMLP(inputs, s.width, s.depth, classes)
        case "lm":
            model = CharTransformer(s.width, s.depth, s.heads, s.context, VOCABULARY)
        case other:
            raise ValueError(f"unknown workload {other!r}")
    return initialize(model, generator)


def adam_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters that go to the Adam path (embeddings and the LM head)."""
    if not isinstance(model, CharTransformer):
        return set()
    return {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("tokens.", "positions.", "head."))
    }
