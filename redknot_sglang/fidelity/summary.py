"""What one answerer (a profile on the HF model, a server mode) did on each question, and the
per-bucket numbers the benchmark, the profiler's gate and its picture report.

* ``accuracy``: the gold value in the greedy answer (:func:`~redknot_sglang.fidelity.docqa.answer_correct`);
* ``top1_agreement``: teacher-forced, over dense's greedy answer tokens (the reference): the answerer
  reads dense's tokens and must predict each next one as dense did; tokens summed over questions;
* ``cosine``: first-answer-token logits against dense's (HF: full logits; servers: log-probabilities
  over dense's top tokens, see :mod:`redknot_sglang.fidelity.server`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from redknot_sglang.fidelity.docqa import BUCKETS


@dataclasses.dataclass(frozen=True)
class Answer:
    qid: str
    bucket: str
    kind: str
    text: str
    correct: bool
    agree: int  # teacher-forced top-1 equal to the reference's token
    total: int  # reference tokens
    cosine: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class BucketScore:
    bucket: str
    n: int
    accuracy: float
    dense_accuracy: float
    top1_agreement: float
    cosine: Optional[float]

    def passes(self, min_agreement: float, max_accuracy_drop: float) -> bool:
        return self.top1_agreement >= min_agreement and self.accuracy >= self.dense_accuracy - max_accuracy_drop - 1e-9


def bucket_scores(answers: Sequence[Answer], dense: Sequence[Answer]) -> dict[str, BucketScore]:
    """Per bucket (and ``"all"``), ``answers`` against ``dense``'s accuracy on the same questions."""
    dense_by_q = {a.qid: a for a in dense}
    out = {}
    for name in (*BUCKETS, "all"):
        mine = [a for a in answers if name in ("all", a.bucket)]
        if not mine:
            continue
        cos = [a.cosine for a in mine if a.cosine is not None]
        out[name] = BucketScore(
            bucket=name, n=len(mine),
            accuracy=round(sum(a.correct for a in mine) / len(mine), 4),
            dense_accuracy=round(sum(dense_by_q[a.qid].correct for a in mine) / len(mine), 4),
            top1_agreement=round(sum(a.agree for a in mine) / max(1, sum(a.total for a in mine)), 4),
            cosine=round(sum(cos) / len(cos), 5) if cos else None,
        )
    return out
