"""One launch that stores a layer's new K/V into the head-split pool.

Token ``t`` (full slot ``loc[t]``, request row ``rows[t]``, position ``pos[t]``), KV head ``h`` in
placed order (the layer's ``G`` global heads first)::

    h <  G   ->  full_k[loc[t], h]                             global heads: full pool
    h >= G   ->  win_k[map[loc[t]], h - G]                     local heads: window pool
                 sink_k[rows[t], pos[t], h - G]  if pos < S    and their sink row

(and the same for V). It replaces per-layer gathers and index writes (the window-slot translate,
two writes per pool, the sink targets and writes: about ten small kernels a layer in a decode step).
Programs are ``(token, kv head)``; the copy is exact (a cast to the pool's dtype at most).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv(
    K, V, Loc, Map, Rows, Pos, FullK, FullV, WinK, WinV, SinkK, SinkV,
    num_global, sink,
    s_kt, s_kh, s_vt, s_vh, s_fn, s_fh, s_wn, s_wh, s_sr, s_sp, s_sh,
    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < HEAD_DIM
    k = tl.load(K + t * s_kt + h * s_kh + offs, mask=mask)
    v = tl.load(V + t * s_vt + h * s_vh + offs, mask=mask)
    loc = tl.load(Loc + t)
    if h < num_global:
        dst = loc * s_fn + h * s_fh + offs
        tl.store(FullK + dst, k.to(FullK.dtype.element_ty), mask=mask)
        tl.store(FullV + dst, v.to(FullV.dtype.element_ty), mask=mask)
    else:
        hl = h - num_global
        dst = tl.load(Map + loc) * s_wn + hl * s_wh + offs
        tl.store(WinK + dst, k.to(WinK.dtype.element_ty), mask=mask)
        tl.store(WinV + dst, v.to(WinV.dtype.element_ty), mask=mask)
        pos = tl.load(Pos + t)
        if pos < sink:
            dst = tl.load(Rows + t) * s_sr + pos * s_sp + hl * s_sh + offs
            tl.store(SinkK + dst, k.to(SinkK.dtype.element_ty), mask=mask)
            tl.store(SinkV + dst, v.to(SinkV.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, loc: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
    full_k: torch.Tensor, full_v: torch.Tensor, win_k: torch.Tensor, win_v: torch.Tensor,
    sink_k: torch.Tensor, sink_v: torch.Tensor, full_to_swa: torch.Tensor, num_global: int,
) -> None:
    """``k``/``v`` ``[T, H, D]`` (any strides with a unit last one); pools as in the diagram above,
    ``sink_k``/``sink_v`` ``[rows + 1, S, H - G, D]``."""
    tokens, heads, head_dim = k.shape
    if tokens == 0:
        return
    sink = sink_k.shape[1]
    _store_kv[(tokens, heads)](
        k, v, loc, full_to_swa, rows, positions, full_k, full_v, win_k, win_v, sink_k, sink_v,
        num_global, sink,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), full_k.stride(0), full_k.stride(1),
        win_k.stride(0), win_k.stride(1), sink_k.stride(0), sink_k.stride(1), sink_k.stride(2),
        BLOCK_D=triton.next_power_of_2(head_dim), HEAD_DIM=head_dim, num_warps=1,
    )
