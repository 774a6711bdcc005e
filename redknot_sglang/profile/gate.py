"""The fidelity gate: a profile against dense attention on held-out prompts (never used for scoring).

* ``cosine``: first-token logits (after the prompt), masked vs dense, averaged over prompts;
* ``agreement``: teacher-forced top-1 agreement with dense's greedy continuation of ``n_tokens``
  (the masked model reads dense's tokens and must predict each next one as dense did), on prose and
  on copy prompts (half each) whose continuation depends on text far outside any window;
* ``needle_accuracy``: greedy answers to key-value lookups whose record is far outside the window,
  next to dense's own accuracy on the same prompts.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Optional

import torch
from tqdm import tqdm

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.calibration import copy, lookup, prose
from redknot_sglang.profile.hf_model import ProfiledModel


@dataclasses.dataclass
class HeldOut:
    prompts: list[list[int]]
    continuations: list[list[int]]
    dense_first: list[torch.Tensor]
    needles: list[tuple[list[int], str]]
    dense_needle_accuracy: float


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.9
    min_cosine: float = 0.95
    max_needle_drop: float = 0.25


@dataclasses.dataclass(frozen=True)
class GateResult:
    cosine: float
    agreement: float
    needle_accuracy: float
    dense_needle_accuracy: float
    n_prompts: int
    n_tokens: int
    n_needles: int

    def passes(self, t: Thresholds) -> bool:
        return (self.agreement >= t.min_agreement and self.cosine >= t.min_cosine
                and self.needle_accuracy >= self.dense_needle_accuracy - t.max_needle_drop)


def _answered(model: ProfiledModel, ids: list[int], answer: str) -> bool:
    return answer in model.tokenizer.decode(model.greedy(ids, 6))


def prepare_held_out(
    model: ProfiledModel, *, seed: int, window: int, sink: int,
    n_prompts: int = 4, n_tokens: int = 32, n_needles: int = 6,
) -> HeldOut:
    rng = random.Random(10_000 + seed)  # disjoint from the calibration seed stream
    length = 3 * window + sink
    prompts = [model.encode(prose(rng, 8 * length))[:length] for _ in range(n_prompts - n_prompts // 2)]
    prompts += [model.encode(copy(rng, n_words=40, filler_chars=4 * length).text) for _ in range(n_prompts // 2)]
    continuations, firsts = [], []
    for ids in tqdm(prompts, desc="dense held-out", leave=False):
        continuations.append(model.greedy(ids, n_tokens))
        firsts.append(model.logits(ids)[-1])
    needles = []
    for _ in range(n_needles):
        item = lookup(rng, n_records=6, filler_chars=4 * (window + sink) + 600)
        needles.append((model.encode(item.text), item.answer))
    dense_acc = sum(_answered(model, ids, a) for ids, a in needles) / max(1, n_needles)
    return HeldOut(prompts, continuations, firsts, needles, dense_acc)


def evaluate(model: ProfiledModel, held: HeldOut, profile: Optional[HeadProfile]) -> GateResult:
    cos, agree, total = 0.0, 0, 0
    with model.profile(profile):
        for ids, cont, first in zip(held.prompts, held.continuations, held.dense_first):
            logits = model.logits(ids + cont)
            cos += float(torch.nn.functional.cosine_similarity(logits[len(ids) - 1], first, dim=0))
            pred = logits[len(ids) - 1 : len(ids) - 1 + len(cont)].argmax(-1).tolist()
            agree += sum(int(p == c) for p, c in zip(pred, cont))
            total += len(cont)
        needle = sum(_answered(model, ids, a) for ids, a in held.needles) / max(1, len(held.needles))
    return GateResult(
        cosine=round(cos / len(held.prompts), 5), agreement=round(agree / max(1, total), 5),
        needle_accuracy=round(needle, 4), dense_needle_accuracy=round(held.dense_needle_accuracy, 4),
        n_prompts=len(held.prompts), n_tokens=total // max(1, len(held.prompts)), n_needles=len(held.needles),
    )
