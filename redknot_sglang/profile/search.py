"""Choosing a profile by measured fidelity at the served length.

A candidate is (ranking, window, sink, number of global heads): the top heads under the ranking's
score at that (window, sink) are global, every other head local with that window and sink. The
search measures candidates on the benchmark's dev split against dense (teacher-forced top-1
agreement and answer accuracy per length bucket, :mod:`redknot_sglang.fidelity`), and keeps every
measurement in a work folder so that an interrupted run resumes where it stopped:

1. ranking: the rankings of :mod:`~redknot_sglang.profile.scores` at a probe candidate (largest
   window, first sink, the largest allowed global ratio); the best agreement at the target bucket
   wins. (At a small window every ranking is equally far from dense: on SmolLM2 at window 512 all
   four agreed 0.74-0.75 at 7K, random first; at window 2048 task led, 0.834 against random's 0.818
   with 14 heads, 0.984 against edge's 0.844 with 36);
2. grid: every window x sink x global ratio under that ranking (the fidelity-vs-memory picture);
3. choice: among candidates with at most ``max_global_ratio`` global heads that pass in every
   bucket up to the target length, the least KV memory at the target length; then the numbers of
   global heads between that candidate and the next smaller grid ratio are measured too and the
   smallest passing one is taken. If none passes, the candidate with the best agreement at the
   target bucket (the profile is then refused unless forced).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from redknot_sglang.fidelity.docqa import BUCKET_LENGTH
from redknot_sglang.fidelity.hf import Reference, evaluate
from redknot_sglang.fidelity.summary import Answer, BucketScore, bucket_scores
from redknot_sglang.heads.profile import HeadProfile, ModelFingerprint
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.profile.scores import RANKINGS, ranking_score


@dataclasses.dataclass(frozen=True)
class Candidate:
    ranking: str
    window: int
    sink: int
    n_global: int

    @property
    def key(self) -> str:
        return f"{self.ranking}/w{self.window}/s{self.sink}/g{self.n_global}"

    @classmethod
    def from_key(cls, key: str) -> Candidate:
        """``ranking/wW/sS/gN``, as :attr:`key` writes it."""
        m = re.fullmatch(r"([\w+]+)/w(\d+)/s(\d+)/g(\d+)", key)
        if m is None or m.group(1) not in RANKINGS:
            raise ValueError(f"candidate {key!r}: expected RANKING/wWINDOW/sSINK/gGLOBAL_HEADS, a ranking of {RANKINGS}")
        return cls(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)))


@dataclasses.dataclass(frozen=True)
class Criteria:
    target_length: int
    min_agreement: float = 0.95
    max_accuracy_drop: float = 0.02
    max_global_ratio: float = 0.15

    def gated_buckets(self, measured: dict[str, BucketScore]) -> list[str]:
        return [b for b, length in BUCKET_LENGTH.items() if length <= self.target_length and b in measured]

    def target_bucket(self, measured: dict[str, BucketScore]) -> str:
        return self.gated_buckets(measured)[-1]

    def passes(self, measured: dict[str, BucketScore]) -> bool:
        gated = self.gated_buckets(measured)
        return bool(gated) and all(measured[b].passes(self.min_agreement, self.max_accuracy_drop) for b in gated)


def top_heads(score: torch.Tensor, n_global: int) -> list[list[bool]]:
    """The ``n_global`` highest-scoring heads are global (ties broken by position: stable)."""
    order = torch.argsort(score.flatten(), descending=True, stable=True)[:n_global]
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(score).tolist()


def kv_ratio(profile: HeadProfile, length: int) -> float:
    """KV bytes of ``profile`` over dense's for one request of ``length`` tokens."""
    return 1.0 / profile.ideal_factor(length)


class ProfileSearch:
    """Candidates of one model, measured on ``refs`` (dense's answers to the dev split)."""

    def __init__(self, model: ProfiledModel, fp: ModelFingerprint, refs: Sequence[Reference],
                 scores: dict[str, dict[tuple[int, int], torch.Tensor]], *, batch: int = 4,
                 work_dir: Optional[Path] = None):
        self.model, self.fp, self.refs, self.scores, self.batch = model, fp, refs, scores, batch
        self.dense = [r.answer for r in refs]
        self.log = (work_dir / "answers.jsonl") if work_dir else None
        self.answers: dict[str, list[Answer]] = {}
        if self.log and self.log.exists():
            for line in self.log.read_text().splitlines():
                row = json.loads(line)
                self.answers[row["key"]] = [Answer(**a) for a in row["answers"]]

    @property
    def num_heads(self) -> int:
        return self.fp.num_layers * self.fp.num_kv_heads

    def profile(self, c: Candidate, **provenance) -> HeadProfile:
        score = ranking_score(self.scores, c.ranking, (c.window, c.sink))
        params = {"ranking": c.ranking, "window": c.window, "sink": c.sink, **provenance.pop("params", {})}
        return HeadProfile.from_classes(self.fp, top_heads(score, c.n_global), window=c.window, sink=c.sink,
                                        method="profiler", params=params, scores=score.tolist(), **provenance)

    def measure(self, cands: Sequence[Candidate]) -> dict[str, dict[str, BucketScore]]:
        # few kinds of heads per forward; the largest windows (those that may pass) first
        todo = sorted({c.key: c for c in cands if c.key not in self.answers}.values(),
                      key=lambda c: (c.ranking, -c.window, c.sink, c.n_global))
        for lo in range(0, len(todo), self.batch):  # kept chunk by chunk: an interrupted search resumes
            chunk = todo[lo:lo + self.batch]
            got = evaluate(self.model, self.refs, [self.profile(c) for c in chunk], batch=len(chunk),
                           desc=f"candidates {lo + 1}-{lo + len(chunk)} of {len(todo)}")
            for c, answers in zip(chunk, got):
                self.answers[c.key] = answers
                if self.log:
                    with self.log.open("a") as f:
                        f.write(json.dumps({"key": c.key, "answers": [dataclasses.asdict(a) for a in answers]}) + "\n")
        return {c.key: bucket_scores(self.answers[c.key], self.dense) for c in cands}

    def n_of(self, ratio: float) -> int:
        return max(1, round(ratio * self.num_heads))

    def run(self, windows: Sequence[int], sinks: Sequence[int], ratios: Sequence[float], criteria: Criteria,
            rankings: Sequence[str] = RANKINGS) -> tuple[Candidate, dict[str, dict[str, BucketScore]], list[Candidate]]:
        """The chosen candidate, every measurement of this run (by key) and the candidates measured."""
        max_n = self.n_of(criteria.max_global_ratio)
        probe_n = max([self.n_of(r) for r in ratios if self.n_of(r) <= max_n], default=self.n_of(min(ratios)))
        probes = [Candidate(r, max(windows), sinks[0], probe_n) for r in rankings]
        measured = self.measure(probes)
        tb = criteria.target_bucket(next(iter(measured.values())))
        ranking = max(probes, key=lambda c: measured[c.key][tb].top1_agreement).ranking
        grid = [Candidate(ranking, w, s, self.n_of(r)) for w in windows for s in sinks for r in ratios]
        measured.update(self.measure(grid))
        cost = lambda c: kv_ratio(self.profile(c), criteria.target_length)  # noqa: E731
        best = choose(grid, measured, criteria, cost, max_n)
        if criteria.passes(measured[best.key]):
            finer = finer_candidates(best, grid)
            measured.update(self.measure(finer))
            best = choose([best, *finer], measured, criteria, cost, max_n)
            grid = [*grid, *finer]
        return best, measured, list(dict.fromkeys([*probes, *grid]))  # a probe may be in the grid too


def choose(cands: Sequence[Candidate], measured: dict[str, dict[str, BucketScore]], criteria: Criteria,
           cost: Callable[[Candidate], float], max_n: int) -> Candidate:
    """The least-``cost`` candidate with at most ``max_n`` global heads that passes; if none passes,
    the one with the best agreement at the target bucket (fewest global heads on ties)."""
    allowed = [c for c in cands if c.n_global <= max_n] or list(cands)
    ok = [c for c in allowed if criteria.passes(measured[c.key])]
    if ok:
        return min(ok, key=lambda c: (cost(c), c.n_global))
    tb = criteria.target_bucket(measured[allowed[0].key])
    return max(allowed, key=lambda c: (measured[c.key][tb].top1_agreement, -c.n_global))


def finer_candidates(best: Candidate, grid: Sequence[Candidate], most: int = 6) -> list[Candidate]:
    """``best`` with the numbers of global heads between the next smaller one of the grid (same
    ranking, window and sink; else none) and its own: each of them, or ``most`` evenly spaced."""
    below = [c.n_global for c in grid if (c.ranking, c.window, c.sink) == (best.ranking, best.window, best.sink)
             and c.n_global < best.n_global]
    ns = list(range(max(below, default=0) + 1, best.n_global))
    if len(ns) > most:
        ns = sorted({ns[round(i * (len(ns) - 1) / (most - 1))] for i in range(most)})
    return [dataclasses.replace(best, n_global=n) for n in ns]
