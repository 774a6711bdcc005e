"""CPU serving: give SGLang's RoPE layer the ``vllm._custom_ops.rotary_embedding`` it imports.

On a host without CUDA and without ``SGLANG_USE_CPU_ENGINE`` (which needs a source build of
sgl-kernel), ``RotaryEmbedding.__init__`` (sglang/srt/layers/rotary_embedding/base.py) runs
``from vllm._custom_ops import rotary_embedding``; vLLM is not installed next to SGLang. On CPU the
layer then dispatches to ``forward_native``, so the function is imported but never called; we
still provide a correct torch implementation (tested against ``forward_native``).

The hook wraps that constructor only: the stand-in module exists in ``sys.modules`` for the
duration of the call and only on CUDA-less hosts without a real ``vllm``, so nothing else in the
process ever sees a fake vLLM.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Callable

import torch

TARGET = "sglang.srt.layers.rotary_embedding.base.RotaryEmbedding.__init__"
_PARENT, _MODULE = "vllm", "vllm._custom_ops"


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool,
) -> None:
    """vLLM's in-place rotary embedding: ``query``/``key`` are ``[tokens, heads * head_size]``."""
    cos, sin = cos_sin_cache.index_select(0, positions.flatten()).chunk(2, dim=-1)
    rot = cos.shape[-1] * 2
    c, s = cos[:, None, :].float(), sin[:, None, :].float()
    for x in (query, key):
        view = x.view(positions.numel(), -1, head_size)
        part = view[..., :rot].float()
        if is_neox:
            x1, x2 = part[..., : rot // 2], part[..., rot // 2 :]
            out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        else:
            x1, x2 = part[..., 0::2], part[..., 1::2]
            out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
        view[..., :rot] = out.to(x.dtype)


def needed() -> bool:
    return not torch.cuda.is_available() and importlib.util.find_spec(_PARENT) is None


def rope_init(original: Callable[..., None], self: Any, *args: Any, **kwargs: Any) -> None:
    if not needed():
        return original(self, *args, **kwargs)
    parent = types.ModuleType(_PARENT)
    parent.__path__ = []
    parent._custom_ops = ops = types.ModuleType(_MODULE)
    ops.rotary_embedding = rotary_embedding
    sys.modules.update({_PARENT: parent, _MODULE: ops})
    try:
        return original(self, *args, **kwargs)
    finally:
        del sys.modules[_MODULE], sys.modules[_PARENT]
