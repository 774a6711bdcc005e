"""Local-head attention in plain torch: the CPU serving path and the reference for the kernels.

A local head with window ``W`` and sink ``S`` at query position ``i`` attends to keys ``p <= i``
with ``p < S`` or ``p >= i - W + 1``. Keys come from two places (see ``HeadSplitKVPool``)::

    positions   [0, S_max)                       [lo, seq_len)         lo = max(S_max, i0 - W_max + 1)
    source      sink row of the request          window slots: req_to_token[row, p] -> full slot
                                                 -> full_to_swa mapping -> window slot

``i0`` is the first query position of the request in this forward; no head of the layer can see a
position in ``[S_max, lo)`` from any of its queries, so those (possibly freed) slots are never read.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.nn.functional import scaled_dot_product_attention


def local_keys(
    k_win: torch.Tensor, v_win: torch.Tensor, k_sink: Optional[torch.Tensor], v_sink: Optional[torch.Tensor],
    req_to_token: torch.Tensor, mapping: Optional[torch.Tensor],
    row: int, first_q: int, seq_len: int, max_window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions, K, V) a request's local heads may read: ``[n_keys]``, ``[n_keys, Lh, D]`` x2.
    Without ``mapping`` the slots of ``req_to_token`` index ``k_win``/``v_win`` themselves; without
    a sink row every key comes from there."""
    sink_rows = 0 if k_sink is None else k_sink.shape[1]
    n_sink = min(sink_rows, seq_len)
    lo = min(seq_len, max(sink_rows, first_q - max_window + 1))
    win_pos = torch.arange(lo, seq_len, device=k_win.device)
    slots = req_to_token[row, lo:seq_len].long()
    if mapping is not None:
        slots = mapping[slots]
    if k_sink is None:
        return win_pos, k_win[slots], v_win[slots]
    pos = torch.cat([torch.arange(n_sink, device=k_win.device), win_pos])
    return pos, torch.cat([k_sink[row, :n_sink], k_win[slots]]), torch.cat([v_sink[row, :n_sink], v_win[slots]])


def local_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: Sequence[int], sink: Sequence[int], group: int) -> torch.Tensor:
    """``[Hq_local, q, k]`` boolean: which key each query head may see."""
    w = torch.tensor(window, device=q_pos.device).repeat_interleave(group)[:, None, None]
    s = torch.tensor(sink, device=q_pos.device).repeat_interleave(group)[:, None, None]
    qp, kp = q_pos[None, :, None], k_pos[None, None, :]
    return (kp <= qp) & ((kp < s) | (kp >= qp - w + 1))


def local_attention_torch(
    q: torch.Tensor, o: torch.Tensor,
    k_win: torch.Tensor, v_win: torch.Tensor, k_sink: Optional[torch.Tensor], v_sink: Optional[torch.Tensor],
    req_to_token: torch.Tensor, mapping: Optional[torch.Tensor],
    rows: Sequence[int], seq_lens: Sequence[int], q_lens: Sequence[int],
    window: Sequence[int], sink: Sequence[int], scale: float,
    q_positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``q``/``o``: ``[tokens, Hq_local, D]``, tokens grouped by request in order; request ``b``
    has ``q_lens[b]`` queries at positions ``[seq_lens[b] - q_lens[b], seq_lens[b])``, or at
    ``q_positions`` (per query token, increasing within a request: a recompute set), attending
    causally by position. Heads that read every key (global heads over the full slots): no
    ``mapping``, no sink row, a window of at least the sequence."""
    group = q.shape[1] // k_win.shape[1]
    start = 0
    for row, seq_len, q_len in zip(rows, seq_lens, q_lens):
        if q_positions is None:
            q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        else:
            q_pos = q_positions[start : start + q_len].to(q.device)
        k_pos, k, v = local_keys(k_win, v_win, k_sink, v_sink, req_to_token, mapping, row, int(q_pos[0]), seq_len,
                                 max(window))
        mask = local_mask(q_pos, k_pos, window, sink, group)
        out = scaled_dot_product_attention(
            q[start : start + q_len].movedim(0, 1).unsqueeze(0),
            k.movedim(0, 1).unsqueeze(0).to(q.dtype),
            v.movedim(0, 1).unsqueeze(0).to(q.dtype),
            attn_mask=mask.unsqueeze(0),
            scale=scale,
            enable_gqa=group > 1,
        )
        o[start : start + q_len] = out.squeeze(0).movedim(0, 1)
        start += q_len
    return o
