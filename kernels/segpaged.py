"""SegPaged attention for local heads: Triton kernels over a request's sink row and window slots.

Local head ``h`` (window ``W_h``, sink ``S_h``) at query position ``i`` attends to::

    sink keys    p in [0, min(S_h, i + 1))          read from  k_sink[row, p, h]
    window keys  p in [max(S_h, i - W_h + 1), i]    read from  k_win[map[req_to_token[row, p]], h]

No mask tensor exists: each program visits only those two ranges (boundary tiles compare
positions in registers), so the bytes read are the sink and the window, whatever the context
length. One launch serves all local heads of a layer, every request of the batch: programs are
``(request, kv head[, split | query block])`` (a decode's global heads: ``(request, split)``, all
of them in one program); a GQA group of query heads shares each K/V tile.

* :func:`segpaged_decode`: one query per request, split over the key range (flash-decoding) so
  small batches still fill the GPU, then a reduce over splits; the layer's global heads (every key,
  from the full slots) in the same launch, so a decode step runs one attention launch and one
  reduce per layer, as a stock server does.
* :func:`segpaged_extend`: ``q_lens[b]`` queries per request (their K/V already stored), at the
  request's last positions or at any increasing positions (``q_positions``: a recompute set among
  placed KV, causal by position); :func:`full_extend` is the same for global heads over full slots.

Shapes: ``q``/``o`` ``[tokens, Hq_local, D]`` (any strides, e.g. a head slice of the layer's q),
``k_win``/``v_win`` ``[window slots, H_local, D]``, ``k_sink``/``v_sink``
``[rows + 1, S_max, H_local, D]``, ``req_to_token`` ``[rows + 1, ctx]`` int32, ``full_to_swa``
int64; ``rows``/``seq_lens`` per request; ``window``/``sink`` int32 per local head.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_kv(K_sink, V_sink, K_win, V_win, Req2Tok, Map, row, pos, in_sink, in_win, h, offs_d, mask_d,
             s_sr, s_sp, s_sh, s_wn, s_wh, s_r2t, mapped):
    """K and V ``[BLOCK_N, D]`` of positions ``pos`` of one request and KV head: sink row where
    ``in_sink``, window slots where ``in_win`` (full slots themselves unless ``mapped``), zeros
    elsewhere."""
    full = tl.load(Req2Tok + row * s_r2t + pos, mask=in_win, other=0).to(tl.int64)
    slot = tl.where(mapped, tl.load(Map + full, mask=in_win & mapped, other=0), full)
    sink_off = row * s_sr + pos[:, None] * s_sp + h * s_sh + offs_d[None, :]
    win_off = slot[:, None] * s_wn + h * s_wh + offs_d[None, :]
    m_sink = in_sink[:, None] & mask_d[None, :]
    m_win = in_win[:, None] & mask_d[None, :]
    k = tl.load(K_sink + sink_off, mask=m_sink, other=0.0) + tl.load(K_win + win_off, mask=m_win, other=0.0)
    v = tl.load(V_sink + sink_off, mask=m_sink, other=0.0) + tl.load(V_win + win_off, mask=m_win, other=0.0)
    return k, v


@triton.jit
def _softmax_step(q, k, v, valid, m_i, l_i, acc, sm_scale):
    """One key tile of the online softmax: ``q`` ``[rows, D]``, ``k``/``v`` ``[BLOCK_N, D]``, keys
    where ``valid`` (``[rows, BLOCK_N]``) are seen."""
    qk = tl.dot(q, tl.trans(k.to(q.dtype))).to(tl.float32) * sm_scale
    qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
    return m_new, l_i, acc


@triton.jit
def _decode_split(
    Q, K_full, V_full, K_win, V_win, K_sink, V_sink, Req2Tok, Map, Rows, SeqLens, Win, Sink, MidO, MidLse,
    sm_scale, n_global, splits_g, splits_l,
    s_qb, s_qh, s_fn, s_fh, s_wn, s_wh, s_sr, s_sp, s_sh, s_r2t, s_mob, s_moh, s_mos, s_mlb, s_mlh,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, G_P: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_NG: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    # programs: (request, item); items [0, splits_g) are splits of the global heads (all of them
    # in one program: a full slot holds their K/V side by side) over positions [0, seq), the rest
    # (local head, split) over sink + window
    b = tl.program_id(0)
    item = tl.program_id(1)
    is_global = item < splits_g
    local_item = item - splits_g
    h0 = tl.where(is_global, 0, n_global + local_item // splits_l)  # the program's first KV head
    n_heads = tl.where(is_global, n_global, 1)
    split = tl.where(is_global, item, local_item % splits_l)
    num_splits = tl.where(is_global, splits_g, splits_l)
    row = tl.load(Rows + b)
    seq = tl.load(SeqLens + b)
    S = tl.load(Sink + h0)
    n_sink = tl.minimum(S, seq)
    win_lo = tl.maximum(S, seq - tl.load(Win + h0))
    n = n_sink + tl.maximum(seq - win_lo, 0)
    tile = tl.where(is_global, BLOCK_NG, BLOCK_N)  # positions per key tile
    per_split = tl.cdiv(tl.cdiv(n, num_splits), tile) * tile
    start = split * per_split
    end = tl.minimum(n, start + per_split)

    # a tile row is (head of the program, query head of its group)
    offs_r = tl.arange(0, BLOCK_H)
    r_head = offs_r // GROUP_P
    r_g = offs_r % GROUP_P
    qh = (h0 + r_head) * GROUP + r_g
    mask_r = (r_head < n_heads) & (r_g < GROUP)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + b * s_qb + qh[:, None] * s_qh + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :],
                other=0.0)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if is_global:
        # a tile column is (position, global head): the G heads of a slot are one contiguous read
        offs_c = tl.arange(0, BLOCK_NG * G_P)
        c_head = offs_c % G_P
        for t0 in range(start, end, BLOCK_NG):
            t = t0 + offs_c // G_P
            valid = (t < end) & (c_head < n_heads)
            slot = tl.load(Req2Tok + row * s_r2t + t, mask=valid, other=0).to(tl.int64)
            off = slot[:, None] * s_fn + c_head[:, None] * s_fh + offs_d[None, :]
            m_kv = valid[:, None] & mask_d[None, :]
            k = tl.load(K_full + off, mask=m_kv, other=0.0)
            v = tl.load(V_full + off, mask=m_kv, other=0.0)
            seen = valid[None, :] & (c_head[None, :] == r_head[:, None])
            m_i, l_i, acc = _softmax_step(q, k, v, seen, m_i, l_i, acc, sm_scale)
    else:
        for t0 in range(start, end, BLOCK_N):
            t = t0 + tl.arange(0, BLOCK_N)
            valid = t < end
            pos = tl.where(t < n_sink, t, win_lo + t - n_sink)
            k, v = _load_kv(K_sink, V_sink, K_win, V_win, Req2Tok, Map, row, pos, valid & (t < n_sink),
                            valid & (t >= n_sink), h0 - n_global, offs_d, mask_d, s_sr, s_sp, s_sh, s_wn, s_wh,
                            s_r2t, True)
            m_i, l_i, acc = _softmax_step(q, k, v, valid[None, :], m_i, l_i, acc, sm_scale)
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(MidO + b * s_mob + qh[:, None] * s_moh + split * s_mos + offs_d[None, :], out,
             mask=mask_r[:, None] & mask_d[None, :])
    tl.store(MidLse + b * s_mlb + qh * s_mlh + split, lse, mask=mask_r)


@triton.jit
def _decode_reduce(
    MidO, MidLse, O, g_heads, splits_g, splits_l,
    s_mob, s_moh, s_mos, s_mlb, s_mlh, s_ob, s_oh,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0)
    qh = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < tl.where(qh < g_heads, splits_g, splits_l)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(MidLse + b * s_mlb + qh * s_mlh + offs_s, mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.exp(lse - m), 0.0)
    parts = tl.load(MidO + b * s_mob + qh * s_moh + offs_s[:, None] * s_mos + offs_d[None, :],
                    mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(O + b * s_ob + qh * s_oh + offs_d, out.to(O.dtype.element_ty), mask=mask_d)


@triton.jit
def _extend(
    Q, O, K_win, V_win, K_sink, V_sink, Req2Tok, Map, Rows, SeqLens, QStart, QLens, QPos, Win, Sink,
    sm_scale,
    s_qt, s_qh, s_ot, s_oh, s_wn, s_wh, s_sr, s_sp, s_sh, s_r2t,
    GROUP: tl.constexpr, GROUP_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, MAPPED: tl.constexpr, SCATTERED: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    m0 = tl.program_id(2) * BLOCK_M
    q_len = tl.load(QLens + b)
    if m0 >= q_len:
        return
    row = tl.load(Rows + b)
    seq = tl.load(SeqLens + b)
    q_start = tl.load(QStart + b)
    W = tl.load(Win + h)
    S = tl.load(Sink + h)
    first = seq - q_len  # position of the request's first query

    # a tile row is (query, head of the group); GROUP_P = GROUP rounded up to a power of two
    ROWS: tl.constexpr = BLOCK_M * GROUP_P
    offs_r = tl.arange(0, ROWS)
    qi = m0 + offs_r // GROUP_P  # query index within the request
    g = offs_r % GROUP_P
    qh = h * GROUP + g
    mask_r = (qi < q_len) & (g < GROUP)
    if SCATTERED:  # any increasing positions (a recompute set): keys up to each query's own
        qpos = tl.load(QPos + q_start + qi, mask=mask_r, other=0)
        lo_pos = tl.min(tl.where(mask_r, qpos, 1 << 30))  # first and last query position of this block
        last = tl.max(tl.where(mask_r, qpos, -1))
    else:
        qpos = first + qi
        lo_pos = first + m0
        last = first + tl.minimum(m0 + BLOCK_M, q_len) - 1
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + (q_start + qi)[:, None] * s_qt + qh[:, None] * s_qh + offs_d[None, :],
                mask=mask_r[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    # two key ranges: the sink, then the window of this block's queries
    sink_end = tl.minimum(S, last + 1)
    win_lo = tl.maximum(S, lo_pos - W + 1)
    for part in tl.static_range(2):
        if part == 0:
            lo = 0
            hi = sink_end
        else:
            lo = win_lo
            hi = last + 1
        for p0 in range(lo, hi, BLOCK_N):
            pos = p0 + tl.arange(0, BLOCK_N)
            valid = pos < hi
            k, v = _load_kv(K_sink, V_sink, K_win, V_win, Req2Tok, Map, row, pos,
                            valid & (part == 0), valid & (part == 1), h, offs_d, mask_d,
                            s_sr, s_sp, s_sh, s_wn, s_wh, s_r2t, MAPPED)
            seen = valid[None, :] & (pos[None, :] <= qpos[:, None])
            if part == 1:
                seen = seen & (pos[None, :] >= qpos[:, None] - W + 1)
            m_i, l_i, acc = _softmax_step(q, k, v, seen, m_i, l_i, acc, sm_scale)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + (q_start + qi)[:, None] * s_ot + qh[:, None] * s_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_r[:, None] & mask_d[None, :])


def _common(q: torch.Tensor, kv_heads: int) -> tuple[int, int, int]:
    group = q.shape[1] // kv_heads
    if q.shape[1] != group * kv_heads:
        raise ValueError(f"{q.shape[1]} query heads do not group over {kv_heads} KV heads")
    head_dim = q.shape[-1]
    return group, head_dim, triton.next_power_of_2(head_dim)


# A layer's launch (H200 sweeps at batch 1, 8, 32: bench/results/layer_decode.json): local heads'
# block_n 32 (positions per tile); a global tile holds global_block_cols (position, head) pairs,
# global_programs_per_sm programs each walking a long key range of every global head; programs_per_sm
# of local heads from the H100 sweep of local heads alone (decode_kernel.json)
DECODE_TUNING = dict(block_n=32, num_warps=4, num_stages=4, programs_per_sm=4, global_programs_per_sm=8,
                     global_block_cols=64)
# Global heads read the whole context: splits follow the batch up to this cap, which bounds the
# reduce (one program per query head reads every split's partial output)
GLOBAL_MAX_SPLITS = 128


def decode_num_splits(batch: int, heads: int, max_keys: int, block_n: int, target_programs: int) -> int:
    """Key splits per (request, head) so that the heads' programs number about
    ``target_programs``, never more splits than key tiles."""
    wanted = -(-target_programs // max(1, batch * heads))
    return max(1, min(wanted, -(-max_keys // block_n)))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


FULL_WINDOW = 1 << 30  # "every key": a window no context reaches


def full_window(heads: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head window and sink of heads that read every key (global heads)."""
    return (torch.full((heads,), FULL_WINDOW, dtype=torch.int32, device=device),
            torch.zeros(heads, dtype=torch.int32, device=device))


def segpaged_decode(
    q: torch.Tensor, o: torch.Tensor, k_win: torch.Tensor, v_win: torch.Tensor,
    k_sink: torch.Tensor, v_sink: torch.Tensor, req_to_token: torch.Tensor, full_to_swa: torch.Tensor,
    rows: torch.Tensor, seq_lens: torch.Tensor, window: torch.Tensor, sink: torch.Tensor,
    sm_scale: float, max_keys: int, num_splits: int | None = None, tuning: dict | None = None,
    global_kv: tuple[torch.Tensor, torch.Tensor] | None = None, global_splits: int | None = None,
) -> torch.Tensor:
    """One query per request (``q``/``o`` ``[batch, Hq, D]``), every head of a layer in one launch
    and one reduce::

        q heads:   | G * group global heads       | L * group local heads                 |
        keys:      | [0, seq) from ``global_kv``  | sink row + window slots (mapped)      |
                   | (full slots, unmapped)       |                                       |
        window/sink| FULL_WINDOW / 0              | per local head                        |
        programs:  | (request, split): all G heads | (request, local head, split)          |

    A global program reads the G heads of a full slot side by side (one contiguous read of
    ``G * D`` elements per position and tensor) instead of one head's ``D``: with one or two global
    heads a layer, per-head reads are too short to stream at the memory's rate.
    ``global_kv`` (``[full slots, G, D]`` each) is absent for local heads only (G = 0); ``k_win``
    may have no heads (L = 0). ``window``/``sink`` hold all G + L heads, global first
    (:func:`full_window`). Splits: local heads by ``max_keys`` (a bound of sink + window), the
    global group by the context (``req_to_token``'s width) up to :data:`GLOBAL_MAX_SPLITS`, both by the
    batch; host ints only, so the launch can be captured in a CUDA graph."""
    k_full, v_full = global_kv if global_kv is not None else (k_win, v_win)
    n_global = k_full.shape[1] if global_kv is not None else 0
    n_local = k_win.shape[1]
    group, head_dim, block_d = _common(q, n_global + n_local)
    batch = q.shape[0]
    tune = {**DECODE_TUNING, **(tuning or {})}
    block_n = tune["block_n"]
    g_p = triton.next_power_of_2(max(1, n_global))
    block_ng = max(16 // g_p, tune["global_block_cols"] // g_p)  # a global tile: >= 16 (position, head) columns
    sms = _sm_count(q.device)
    splits_l = num_splits or decode_num_splits(batch, n_local, max_keys, block_n, tune["programs_per_sm"] * sms)
    splits_g = global_splits or min(GLOBAL_MAX_SPLITS, decode_num_splits(
        batch, 1, req_to_token.shape[1], block_ng, tune["global_programs_per_sm"] * sms))
    splits = max(splits_l if n_local else 1, splits_g if n_global else 1)
    mid_o = torch.empty(batch, q.shape[1], splits, head_dim, dtype=torch.float32, device=q.device)
    mid_lse = torch.empty(batch, q.shape[1], splits, dtype=torch.float32, device=q.device)
    group_p = triton.next_power_of_2(group)
    _decode_split[(batch, (splits_g if n_global else 0) + n_local * splits_l)](
        q, k_full, v_full, k_win, v_win, k_sink, v_sink, req_to_token, full_to_swa, rows, seq_lens, window, sink,
        mid_o, mid_lse, sm_scale, n_global, splits_g if n_global else 0, splits_l,
        q.stride(0), q.stride(1), k_full.stride(0), k_full.stride(1), k_win.stride(0), k_win.stride(1),
        k_sink.stride(0), k_sink.stride(1), k_sink.stride(2), req_to_token.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        GROUP=group, GROUP_P=group_p, G_P=g_p, BLOCK_H=max(16, g_p * group_p), BLOCK_N=block_n,
        BLOCK_NG=block_ng, BLOCK_D=block_d, HEAD_DIM=head_dim, num_warps=tune["num_warps"], num_stages=tune["num_stages"],
    )
    _decode_reduce[(batch, q.shape[1])](
        mid_o, mid_lse, o, n_global * group, splits_g, splits_l,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        o.stride(0), o.stride(1),
        BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, HEAD_DIM=head_dim,
    )
    return o


# queries of one request from which an extend takes 128-row tiles
LONG_EXTEND = 1024


def segpaged_extend(
    q: torch.Tensor, o: torch.Tensor, k_win: torch.Tensor, v_win: torch.Tensor,
    k_sink: torch.Tensor, v_sink: torch.Tensor, req_to_token: torch.Tensor, full_to_swa: torch.Tensor | None,
    rows: torch.Tensor, seq_lens: torch.Tensor, q_starts: torch.Tensor, q_lens: torch.Tensor,
    max_q_len: int, window: torch.Tensor, sink: torch.Tensor, sm_scale: float,
    q_positions: torch.Tensor | None = None, tile_rows: int | None = None,
) -> torch.Tensor:
    """``q_lens[b]`` queries per request at token offset ``q_starts[b]`` of ``q``/``o``, positions
    ``[seq_lens[b] - q_lens[b], seq_lens[b])``, or ``q_positions`` (int32 per query token,
    increasing within a request: a recompute set scattered over placed KV), each query attending
    causally *by position* to its request's keys; their K/V and every key they read must already
    be stored. Without ``full_to_swa``, ``k_win``/``v_win`` are indexed by the full slots of
    ``req_to_token`` themselves (:func:`full_extend`). ``tile_rows``: (query, head) rows of a
    program's tile, by default :func:`extend_tile_rows`."""
    group, head_dim, block_d = _common(q, k_win.shape[1])
    group_p = triton.next_power_of_2(group)
    rows_per_tile = tile_rows or extend_tile_rows(max_q_len, head_dim)
    block_m = max(1, rows_per_tile // group_p)
    grid = (rows.shape[0], k_win.shape[1], triton.cdiv(max_q_len, block_m))
    mapped, scattered = full_to_swa is not None, q_positions is not None
    _extend[grid](
        q, o, k_win, v_win, k_sink, v_sink, req_to_token, full_to_swa if mapped else req_to_token, rows, seq_lens,
        q_starts, q_lens, q_positions if scattered else q_lens, window, sink, sm_scale,
        q.stride(0), q.stride(1), o.stride(0), o.stride(1), k_win.stride(0), k_win.stride(1),
        k_sink.stride(0), k_sink.stride(1), k_sink.stride(2), req_to_token.stride(0),
        GROUP=group, GROUP_P=group_p, BLOCK_M=block_m, BLOCK_N=64, BLOCK_D=block_d, HEAD_DIM=head_dim,
        MAPPED=mapped, SCATTERED=scattered, num_warps=8 if block_m * group_p >= 128 else 4, num_stages=2,
    )
    return o


def extend_tile_rows(max_q_len: int, head_dim: int) -> int:
    """(query, head) rows of an extend program's tile: FlashAttention's 128 for long extends (a
    document, a recompute set: each K/V tile is read by a quarter of the programs), fewer for short
    ones (more programs to fill the SMs)."""
    if max_q_len >= LONG_EXTEND:
        return 128
    return 64 if head_dim <= 64 else 32


def full_extend(q: torch.Tensor, o: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                req_to_token: torch.Tensor, rows: torch.Tensor, seq_lens: torch.Tensor, q_starts: torch.Tensor,
                q_lens: torch.Tensor, max_q_len: int, window: torch.Tensor, sink: torch.Tensor, sm_scale: float,
                q_positions: torch.Tensor | None = None, tile_rows: int | None = None) -> torch.Tensor:
    """Extend of heads that read every key (global heads) over the full slots of ``req_to_token``:
    :func:`segpaged_extend` with window :data:`FULL_WINDOW` and sink 0 (:func:`full_window`),
    unmapped; with ``q_positions``, the position-causal attention of a scattered recompute set."""
    return segpaged_extend(q, o, k_buf, v_buf, k_buf, v_buf, req_to_token, None, rows, seq_lens, q_starts, q_lens,
                           max_q_len, window, sink, sm_scale, q_positions, tile_rows)
