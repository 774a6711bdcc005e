"""Which positions a selective request recomputes: index math of the serving path (the model
and the measurement that chose it: :mod:`redknot_sglang.reuse.selective`).

A selective request holds placed documents from ``first_placed`` on. Its own text after that
point was computed over placed KV, so it is recomputed; so are each placed document's first
``boundary`` tokens (EPIC) and the ``picks`` placed tokens the question attended to most::

    prompt:   [ exact prefix ][ doc A placed ][ text ][ doc B placed ][ doc C computed ][ question ]
    fixed:                     BBBB            tttttt  BBBB                              qqqqqqqqqq
    picked:                        #  # #  #              #   ##  #
    kept as is: the exact prefix (the tree's KV), computed documents (exact given what precedes
    them), the placed tokens not picked

The prompt's last position is always fixed: the recompute pass ends the prefill and samples there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

BOUNDARY = 8  # first tokens of each placed document, always recomputed (as in the reference's measurement)
_SCORES = 1 << 26  # attention scores held at once by attention_mass (256 MiB of float32)


@dataclasses.dataclass(frozen=True)
class RecomputeSet:
    """``fixed``: sorted positions always recomputed; ``candidates``: the placed positions the
    question's attention picks ``picks`` of (none of them fixed)."""

    fixed: torch.Tensor  # int64 [F]
    candidates: torch.Tensor  # bool [seq_len]
    picks: int

    @property
    def size(self) -> int:
        return self.fixed.numel() + self.picks


def recompute_set(spans: Sequence[tuple[int, int]], placed: Sequence[tuple[int, int]], seq_len: int,
                  ratio: float, boundary: int = BOUNDARY) -> RecomputeSet:
    """The set of a prompt of ``seq_len`` tokens with marked ``spans`` and ``placed`` prompt
    ranges (non-empty, in order): ``round(ratio * placed tokens)`` picks at most."""
    if not placed:
        raise ValueError("a recompute set needs placed KV")
    in_span = torch.zeros(seq_len, dtype=torch.bool)
    for s, e in spans:
        in_span[s:e] = True
    is_placed = torch.zeros(seq_len, dtype=torch.bool)
    for a, b in placed:
        is_placed[a:b] = True
    fixed = torch.zeros(seq_len, dtype=torch.bool)
    for s, e in spans:  # a document placed from its start: its first tokens
        if is_placed[s]:
            fixed[s:min(e, s + boundary)] = True
    fixed[placed[0][0]:] |= ~in_span[placed[0][0]:]
    fixed[seq_len - 1] = True
    candidates = is_placed & ~fixed
    picks = min(round(ratio * int(is_placed.sum())), int(candidates.sum()))
    return RecomputeSet(fixed=fixed.nonzero().flatten(), candidates=candidates, picks=picks)


def pick(mass: torch.Tensor, rs: RecomputeSet) -> torch.Tensor:
    """Sorted positions to recompute (``rs.size`` of them): the fixed ones and the candidates of
    largest ``mass`` (attention the question paid each position). ``rs``'s tensors on
    ``mass``'s device; no host synchronisation."""
    if rs.picks == 0:
        return rs.fixed
    score = mass[: rs.candidates.numel()].float().masked_fill(~rs.candidates, float("-inf"))
    return torch.sort(torch.cat([rs.fixed, score.topk(rs.picks).indices])).values


def attention_mass(q: torch.Tensor, k: torch.Tensor, q_positions: torch.Tensor, scale: float) -> torch.Tensor:
    """``[keys]``: the softmax attention that queries ``q`` (``[n, Hq, D]`` at ``q_positions``)
    pay each key of ``k`` (``[keys, Hkv, D]``, key ``j`` at position ``j``), causal by
    position, summed over queries and heads."""
    group = q.shape[1] // k.shape[1]
    kk = k.float().repeat_interleave(group, dim=1)
    keys = torch.arange(k.shape[0], device=k.device)
    mass = torch.zeros(k.shape[0], device=k.device)
    step = max(1, _SCORES // max(1, q.shape[1] * k.shape[0]))  # queries per pass: bounded scratch
    for a in range(0, q.shape[0], step):
        scores = torch.einsum("qhd,khd->hqk", q[a : a + step].float(), kk) * scale
        seen = keys[None, :] <= q_positions[a : a + step, None]
        mass += torch.softmax(scores.masked_fill(~seen, float("-inf")), dim=-1).sum((0, 1))
    return mass
