r"""KFAC for ``nn.MultiheadAttention``: its packed in-projection and its out-projection as layers.

``nn.MultiheadAttention`` does not call its projections as modules: its forward passes
``in_proj_weight`` and ``out_proj.weight`` to ``F.multi_head_attention_forward``, which
multiplies by them inside. Module hooks never see these products, so KFAC could not form
their factors. For self-attention (``query is key is value``, the way
``nn.TransformerEncoderLayer`` and decoder self-attention call it) the two products are
ordinary linear layers of the sequence positions:

.. math::
    [Q \mid K \mid V] = X W_{in}^\top + b_{in} \quad (W_{in}: 3E \times E), \qquad
    Y = Z W_{out}^\top + b_{out} \quad (W_{out}: E \times E),

with :math:`X` the input rows and :math:`Z` the heads' concatenated outputs. KFAC takes each
as one layer, with the factors of :mod:`layerwise.optim.kfac_curvature` (the packed
projection is one :math:`3E \times (E + 1)` block: the three projections share their input
factor :math:`A`, and :math:`B` keeps the cross terms between Q, K and V).

How the products are seen: while a hooked attention module runs with gradients enabled, a
``TorchFunctionMode`` takes over its call of ``F.multi_head_attention_forward``. It computes
the in-projection itself (``F.linear``, batch first, where the capture hooks it), calls the
functional with identity projections on the projected Q, K, V (so masks, dropout, ``bias_k``,
``add_zero_attn`` and the attention weights are the functional's own), and applies the
out-projection itself. Multiplying by an identity matrix is exact, so the output equals the
module's to round-off (tested); it costs four extra :math:`E \times E` products per position
while factors are being captured. Attention called with a different key or value
(cross-attention) has no single Kronecker block for its packed weight: it raises, naming the
module, with the advice to pass it in ``skip_layers``. Modules with separate ``kdim`` /
``vdim`` weights and ``nn.TransformerDecoderLayer.multihead_attn`` (cross-attention) take the
Adam path with a warning.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

_FUNCTIONAL = F.multi_head_attention_forward
_SIGNATURE = inspect.signature(_FUNCTIONAL)


@dataclass
class AttentionProjections:
    """The KFAC layers of one attention module: ``in_proj`` (a linear layer that shares the
    module's ``in_proj_weight`` / ``in_proj_bias``, not a submodule of the model) and
    ``out_proj`` (the module's own); ``None``: that projection is not preconditioned."""

    name: str
    module: nn.MultiheadAttention
    in_proj: nn.Linear | None
    out_proj: nn.Linear | None


def packed_in_projection(module: nn.MultiheadAttention) -> nn.Linear:
    """A linear layer ``E -> 3E`` whose weight and bias are the module's packed in-projection
    parameters (the same ``nn.Parameter`` objects: no copy, the model's parameters)."""
    embed = module.embed_dim
    layer = nn.Linear(embed, 3 * embed, bias=False, device="meta")
    layer.weight = module.in_proj_weight
    layer.bias = module.in_proj_bias  # None, or the module's bias parameter
    return layer


def unsupported_attention(module: nn.MultiheadAttention, cross: bool) -> str | None:
    """Why an attention module's projections are not preconditioned (``None``: they are);
    ``cross``: the module is a decoder layer's cross-attention."""
    if not module._qkv_same_embed_dim:
        return "nn.MultiheadAttention with kdim/vdim has separate q/k/v weights and a packed bias"
    if cross:
        return "cross-attention: its key/value differ from its query (no Kronecker block)"
    return None


def cross_attention_modules(model: nn.Module) -> set[int]:
    """The ids of the cross-attention modules of ``nn.TransformerDecoderLayer`` s."""
    return {
        id(module.multihead_attn)
        for module in model.modules()
        if isinstance(module, nn.TransformerDecoderLayer)
    }


#: ``(layer, inputs, output)``: the capture's layer hook.
LayerHook = Callable[[nn.Linear, tuple[Tensor], Tensor], None]


class ProjectionMode(TorchFunctionMode):
    """Active while one hooked attention module runs: computes its projections where the
    capture sees them (module docstring)."""

    def __init__(self, projections: AttentionProjections, on_layer: LayerHook) -> None:
        super().__init__()
        self.projections = projections
        self.on_layer = on_layer

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is not _FUNCTIONAL:
            return func(*args, **kwargs)
        return self._attention(_SIGNATURE.bind(*args, **kwargs).arguments)

    def _attention(self, call: dict[str, object]) -> tuple[Tensor, Tensor | None]:
        projections = self.projections
        query, key, value = call["query"], call["key"], call["value"]
        if not (query is key and key is value) or call.get("use_separate_proj_weight", False):
            raise RuntimeError(
                f"KFAC: {projections.name} is called as cross-attention (its key or value "
                "differs from its query): its packed in-projection has no single Kronecker "
                f"block. Pass skip_layers=[{projections.name!r}] to send it down the Adam path"
            )
        assert isinstance(query, Tensor)
        embed = projections.module.embed_dim
        eye = torch.eye(embed, dtype=query.dtype, device=query.device)
        qkv = self._linear(projections.in_proj, query, call["in_proj_weight"], call["in_proj_bias"])
        q, k, v = qkv.chunk(3, dim=-1)
        arguments = {
            **call,
            "query": q,
            "key": k,
            "value": v,
            "in_proj_weight": None,
            "in_proj_bias": None,
            "use_separate_proj_weight": True,
            "q_proj_weight": eye,
            "k_proj_weight": eye,
            "v_proj_weight": eye,
            "out_proj_weight": eye,
            "out_proj_bias": None,
        }
        heads, weights = _FUNCTIONAL(**arguments)
        output = self._linear(
            projections.out_proj, heads, call["out_proj_weight"], call["out_proj_bias"]
        )
        return output, weights

    def _linear(
        self, layer: nn.Linear | None, inputs: Tensor, weight: object, bias: object
    ) -> Tensor:
        """``inputs @ weight.T + bias`` on sequence-first ``inputs`` (``(L, N, E)`` or
        ``(L, E)``), computed batch first so the capture's rows and samples are those of an
        ``nn.Linear`` on ``(N, L, E)``; hooked when ``layer`` is preconditioned."""
        assert isinstance(weight, Tensor)
        batched = inputs.transpose(0, 1) if inputs.ndim == 3 else inputs.unsqueeze(0)
        outputs = F.linear(batched, weight, bias)  # type: ignore[arg-type]
        if layer is not None:
            self.on_layer(layer, (batched,), outputs)
        return outputs.transpose(0, 1) if inputs.ndim == 3 else outputs.squeeze(0)
