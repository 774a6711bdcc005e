"""Reorder each layer's KV heads once, after the weights are loaded, so global heads come first.

Attention heads are independent, so permuting the rows of the Q/K/V projections (a GQA group of
query heads moves with its KV head) and the matching input columns of the output projection gives
the same model output, with each head class contiguous in every tensor the attention backend sees:
no per-call gathers. The permutation per layer is ``RankHeadLayout.layers[l].perm``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from redknot_sglang.heads.layout import RankHeadLayout


def _attention_modules(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    found = {}
    for module in model.modules():
        attn = getattr(module, "attn", None)
        if attn is not None and hasattr(attn, "layer_id") and hasattr(attn, "tp_k_head_num"):
            if not (hasattr(module, "qkv_proj") and hasattr(module, "o_proj")):
                raise ValueError(
                    f"redknot: cannot reorder the heads of {type(module).__name__}: it has no fused "
                    "qkv_proj / o_proj"
                )
            found[attn.layer_id] = module
    return found


def head_rows(perm: Sequence[int], group: int, head_dim: int) -> torch.Tensor:
    """Row order of a ``[heads * head_dim]`` dimension whose heads come in groups of ``group``
    per KV head, when KV heads are placed in order ``perm``."""
    heads = [kv * group + j for kv in perm for j in range(group)]
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def permute_kv_heads(model: torch.nn.Module, layout: RankHeadLayout) -> int:
    """Apply the layout's per-layer head order to the model's weights in place; returns how many
    layers changed. Applied once per model: every attention backend SGLang builds for it (two-batch
    overlap, draft/target pairs) makes its own equal layout and finds the weights already in that
    order; an order that differs from the one applied is refused."""
    head_order = tuple(layer.perm for layer in layout.layers)
    applied = getattr(model, "_redknot_head_order", None)
    if applied is not None:
        if applied != head_order:
            raise ValueError("redknot: the model's heads were already reordered for another head layout")
        return 0
    modules = _attention_modules(model)
    if sorted(modules) != list(range(layout.num_layers)):
        raise ValueError(f"redknot: found attention layers {sorted(modules)}, profile has {layout.num_layers}")
    changed = 0
    for layer_id, module in modules.items():
        perm = layout.layers[layer_id].perm
        if perm == tuple(range(len(perm))):
            continue
        attn = module.attn
        hq, hkv, d = attn.tp_q_head_num, attn.tp_k_head_num, attn.head_dim
        if hkv != len(perm):
            raise ValueError(f"redknot: layer {layer_id} holds {hkv} KV heads on this rank, layout has {len(perm)}")
        q_rows = head_rows(perm, hq // hkv, d)
        kv_rows = head_rows(perm, 1, d)
        order = torch.cat([q_rows, hq * d + kv_rows, (hq + hkv) * d + kv_rows])
        qkv = module.qkv_proj
        qkv.weight.copy_(qkv.weight[order.to(qkv.weight.device)])
        if getattr(qkv, "bias", None) is not None:
            qkv.bias.copy_(qkv.bias[order.to(qkv.bias.device)])
        o = module.o_proj.weight
        o.copy_(o[:, q_rows.to(o.device)])
        changed += 1
    model._redknot_head_order = head_order
    return changed
