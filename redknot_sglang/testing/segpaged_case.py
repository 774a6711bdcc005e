"""Random SegPaged attention cases (pools laid out as the server lays them out) and the float64
reference of per-head masked attention they must match. Used by the kernel tests (CPU, small) and
the kernel benchmark (GPU, real sizes).

Layout of a case: every request has true K/V per position. Full slots are a random permutation;
a position gets a window slot only if the server would still hold it (``p >= first_q - W_max + 1``),
all others map to window slot 0; sink rows hold positions ``< min(S_max, seq_len)``. Every slot and
row entry the kernels must never read holds NaN, so a read of a freed slot shows in the output.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch


@dataclasses.dataclass
class SegPagedCase:
    q: torch.Tensor            # [tokens, Hq, D]
    k_win: torch.Tensor        # [window slots, H, D]
    v_win: torch.Tensor
    k_sink: torch.Tensor       # [rows + 1, S_max, H, D]
    v_sink: torch.Tensor
    req_to_token: torch.Tensor  # [rows + 1, ctx] int32
    full_to_swa: torch.Tensor  # [full slots + 2] int64
    rows: torch.Tensor
    seq_lens: torch.Tensor
    q_lens: torch.Tensor
    q_starts: torch.Tensor
    window: torch.Tensor       # [H] int32
    sink: torch.Tensor
    k_true: list[torch.Tensor]  # per request [seq_len, H, D]
    v_true: list[torch.Tensor]
    scale: float

    @property
    def max_keys(self) -> int:
        return int((self.window + self.sink).max())

    def max_keys_of(self, heads: slice) -> int:
        """``sink + window`` bound of some heads (0 for none)."""
        return int((self.window[heads] + self.sink[heads]).max()) if len(self.window[heads]) else 0

    def bytes_read(self) -> int:
        """K and V bytes the kernels must read (each visible key once per KV head)."""
        total = 0
        for b, seq in enumerate(self.seq_lens.tolist()):
            first = seq - int(self.q_lens[b])
            for w, s in zip(self.window.tolist(), self.sink.tolist()):
                total += min(s, seq) + max(0, seq - max(s, first - w + 1))
        return total * 2 * self.k_win.shape[-1] * self.k_win.element_size()


def make_case(
    seq_lens: Sequence[int], q_lens: Sequence[int], window: Sequence[int], sink: Sequence[int],
    *, group: int, head_dim: int, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
) -> SegPagedCase:
    g = torch.Generator(device="cpu").manual_seed(seed)
    heads, s_max, w_max = len(window), max(sink), max(window)
    batch = len(seq_lens)
    ctx = max(seq_lens)
    n_full = sum(seq_lens) + 7
    rows = torch.randperm(batch + 3, generator=g)[:batch] + 1  # rows 1.., never the trash row 0
    full_slots = torch.randperm(n_full, generator=g) + 1
    req_to_token = torch.zeros(batch + 4, ctx, dtype=torch.int32)
    full_to_swa = torch.zeros(n_full + 2, dtype=torch.int64)
    full_to_swa[-1] = -1

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    k_true = [rnd(n, heads, head_dim) for n in seq_lens]
    v_true = [rnd(n, heads, head_dim) for n in seq_lens]
    held = []  # (request, position) whose window slot is held
    cursor = 0
    for b, (n, q_len) in enumerate(zip(seq_lens, q_lens)):
        req_to_token[rows[b], :n] = full_slots[cursor : cursor + n].int()
        cursor += n
        held += [(b, p) for p in range(max(0, n - q_len - w_max + 1), n)]
    n_win = len(held) + 5
    win_slots = torch.randperm(n_win - 1, generator=g)[: len(held)] + 1
    nan = float("nan")
    k_win = torch.full((n_win, heads, head_dim), nan, dtype=torch.float64)
    v_win = torch.full((n_win, heads, head_dim), nan, dtype=torch.float64)
    for (b, p), slot in zip(held, win_slots.tolist()):
        full_to_swa[req_to_token[rows[b], p].long()] = slot
        k_win[slot], v_win[slot] = k_true[b][p], v_true[b][p]
    k_sink = torch.full((batch + 4, s_max, heads, head_dim), nan, dtype=torch.float64)
    v_sink = torch.full_like(k_sink, nan)
    for b, n in enumerate(seq_lens):
        m = min(s_max, n)
        k_sink[rows[b], :m], v_sink[rows[b], :m] = k_true[b][:m], v_true[b][:m]
    q_lens_t = torch.tensor(q_lens, dtype=torch.int32)
    q = rnd(sum(q_lens), heads * group, head_dim)

    def dev(t, dt=None):
        return t.to(device=device, dtype=dt or t.dtype)

    return SegPagedCase(
        q=dev(q, dtype), k_win=dev(k_win, dtype), v_win=dev(v_win, dtype),
        k_sink=dev(k_sink, dtype), v_sink=dev(v_sink, dtype),
        req_to_token=dev(req_to_token), full_to_swa=dev(full_to_swa),
        rows=dev(rows.int()), seq_lens=dev(torch.tensor(seq_lens, dtype=torch.int32)),
        q_lens=dev(q_lens_t), q_starts=dev((torch.cumsum(q_lens_t, 0) - q_lens_t).int()),
        window=dev(torch.tensor(window, dtype=torch.int32)), sink=dev(torch.tensor(sink, dtype=torch.int32)),
        k_true=k_true, v_true=v_true, scale=1 / math.sqrt(head_dim),
    )


def reference(case: SegPagedCase) -> torch.Tensor:
    """float64 per-head masked attention over the true K/V: ``[tokens, Hq, D]``."""
    q = case.q.double().cpu()
    heads = case.k_win.shape[1]
    group = q.shape[1] // heads
    out = torch.empty_like(q)
    start = 0
    for b, (seq, q_len) in enumerate(zip(case.seq_lens.tolist(), case.q_lens.tolist())):
        q_pos = torch.arange(seq - q_len, seq)[:, None]
        k_pos = torch.arange(seq)[None, :]
        for qh in range(q.shape[1]):
            h = qh // group
            w, s = int(case.window[h]), int(case.sink[h])
            mask = (k_pos <= q_pos) & ((k_pos < s) | (k_pos >= q_pos - w + 1))
            scores = q[start : start + q_len, qh] @ case.k_true[b][:, h].T * case.scale
            scores = scores.masked_fill(~mask, float("-inf"))
            out[start : start + q_len, qh] = torch.softmax(scores, -1) @ case.v_true[b][:, h]
        start += q_len
    return out


def full_buffers(case: SegPagedCase, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """K/V buffers indexed by the case's full slots, on the case's device (unused slots NaN): the
    global heads' pool."""
    dev = case.q.device
    slots = case.full_to_swa.shape[0]
    k_full = torch.full((slots, *case.k_win.shape[1:]), float("nan"), dtype=dtype, device=dev)
    v_full = torch.full_like(k_full, float("nan"))
    for b, (row, n) in enumerate(zip(case.rows.tolist(), case.seq_lens.tolist())):
        full = case.req_to_token[row, :n].long()
        k_full[full], v_full[full] = case.k_true[b].to(dev, dtype), case.v_true[b].to(dev, dtype)
    return k_full, v_full


def make_bench_case(
    batch: int, seq_len: int, window: int, sink: int, *, heads: int, group: int, head_dim: int,
    dtype: torch.dtype = torch.bfloat16, device: str = "cuda", seed: int = 0,
) -> SegPagedCase:
    """A decode case at serving sizes, built on the device without reference K/V: every request
    holds ``seq_len`` tokens, of which the server keeps the sink and the last ``window + 128``
    (SGLang frees out-of-window slots every 128 steps); window slots are scattered at random."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    held = min(seq_len, window + 128)
    n_win = batch * held + 1
    req_to_token = torch.zeros(batch + 1, seq_len, dtype=torch.int32, device=device)
    req_to_token[1:] = torch.arange(1, batch * seq_len + 1, dtype=torch.int32, device=device).view(batch, seq_len)
    full_to_swa = torch.zeros(batch * seq_len + 2, dtype=torch.int64, device=device)
    full_to_swa[-1] = -1
    tail = req_to_token[1:, seq_len - held :].reshape(-1).long()
    full_to_swa[tail] = (torch.randperm(n_win - 1, generator=g) + 1).to(device)
    k_win = torch.randn(n_win, heads, head_dim, generator=g).to(device, dtype)
    v_win = torch.randn(n_win, heads, head_dim, generator=g).to(device, dtype)
    k_sink = torch.randn(batch + 1, sink, heads, head_dim, generator=g).to(device, dtype)
    v_sink = torch.randn(batch + 1, sink, heads, head_dim, generator=g).to(device, dtype)
    ones = torch.ones(batch, dtype=torch.int32, device=device)
    return SegPagedCase(
        q=torch.randn(batch, heads * group, head_dim, generator=g).to(device, dtype),
        k_win=k_win, v_win=v_win, k_sink=k_sink, v_sink=v_sink, req_to_token=req_to_token,
        full_to_swa=full_to_swa, rows=torch.arange(1, batch + 1, dtype=torch.int32, device=device),
        seq_lens=ones * seq_len, q_lens=ones, q_starts=torch.arange(batch, dtype=torch.int32, device=device),
        window=torch.full((heads,), window, dtype=torch.int32, device=device),
        sink=torch.full((heads,), sink, dtype=torch.int32, device=device),
        k_true=[], v_true=[], scale=head_dim ** -0.5,
    )
