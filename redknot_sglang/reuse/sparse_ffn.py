"""Sparse FFN during recovery: in deep layers only the most important recomputed tokens run the FFN.

After a deep layer's attention, a recomputed document token whose attention output is small is
well approximated by the residual alone, so its FFN output is taken as zero (the residual identity
path) and only the others run the FFN (the paper's Algorithm 1, lines 20-23). Importance is the
L2 norm of the token's attention output (after the output projection). Only tokens that a
recovery request recomputes are candidates, never the last ``keep_last`` tokens of its prompt (the
question), never any token of another request: unmarked requests are computed exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

KEEP_LAST = 128


@dataclasses.dataclass(frozen=True)
class SparseFFN:
    keep: float  # fraction of candidate tokens that run the FFN, in (0, 1]
    from_layer: int  # layers >= this one are sparse
    keep_last: int = KEEP_LAST

    def kept(self, candidates: int) -> int:
        return math.ceil(self.keep * candidates)


def candidate_range(prompt_len: int, computed_from: int, keep_last: int) -> tuple[int, int]:
    """Prompt positions whose FFN may be skipped: recomputed, and not among the last ``keep_last``."""
    return computed_from, max(computed_from, prompt_len - keep_last)


def ffn_rows(candidates: torch.Tensor, importance: torch.Tensor, kept: int) -> torch.Tensor:
    """Rows (batch tokens) that run the FFN: every non-candidate, and the ``kept`` candidates of
    highest ``importance``; sorted. ``candidates`` is a bool mask over the batch's tokens."""
    score = torch.where(candidates, importance.float(), float("-inf"))
    top = torch.topk(score, kept).indices if kept > 0 else score.new_empty(0, dtype=torch.long)
    run = ~candidates
    run[top] = True
    return run.nonzero().squeeze(1)


def sparse_mlp(mlp_forward, x: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
    """The FFN over ``rows`` of ``x`` only; zeros elsewhere (the residual identity)."""
    if rows is None:
        return mlp_forward(x)
    out = mlp_forward(x[rows])
    full = out.new_zeros((x.shape[0], *out.shape[1:]))
    full[rows] = out
    return full
