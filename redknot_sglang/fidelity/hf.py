"""The fidelity benchmark on the Hugging Face model (offline, CPU or GPU), for choosing profiles:
dense's greedy answers are the reference, then any number of head profiles are scored against it,
several per forward (row ``b`` of a batch runs profile ``b``).

Per question and chunk of profiles, one forward of the lean model (:mod:`redknot_sglang.profile.lean`)
over ``prompt + reference[:-1]`` gives every row's teacher-forced top-1 (agreement) and
first-answer logits (cosine), and keeps the KV. A row whose
top-1 first differs from the reference at answer token ``d`` answers differently from there: its
greedy answer is ``reference[:d]`` followed by its own tokens, decoded for the diverging rows
together from the cached KV (cut to the earliest divergence; rows that diverge later feed the
reference's tokens until they do). Rows that never diverge answer as dense did.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from redknot_sglang.fidelity.docqa import Question, answer_correct
from redknot_sglang.fidelity.summary import Answer
from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.profile.lean import LeanCache


@dataclasses.dataclass(frozen=True)
class Reference:
    """Dense's greedy answer to one question (through its end-of-sequence token, at most ``n`` tokens)."""

    question: Question
    tokens: tuple[int, ...]
    answer: Answer
    first_logits: torch.Tensor  # [vocab] float16, CPU (a work folder of 120 references: 12 MB)


def eos_ids(model: ProfiledModel) -> set[int]:
    eos = model.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


@torch.no_grad()
def greedy_decode(model: ProfiledModel, cache: LeanCache, first: list[int], start: int, plan: list[list[int]], n: int,
            eos: set[int]) -> list[list[int]]:
    """Lock-step greedy decoding of the cache's rows: row ``r``'s answer token ``j`` is
    ``plan[r][j]`` while that is known, then its own greedy choice. ``cache`` holds positions
    before answer token ``start`` (``first[r]`` is token ``start``'s input). Stops at ``n`` tokens or
    when every row has ended."""
    answers = [list(p[:start]) + [f] for p, f in zip(plan, first)]
    tokens = list(first)
    for j in range(start, n - 1):
        if all(eos & set(a) for a in answers):
            break
        x = torch.tensor(tokens, device=model.device)[:, None]
        nxt = model.step(x, cache, 1)[:, -1].argmax(-1).tolist()
        for r, a in enumerate(answers):
            if eos & set(a):
                continue
            a.append(plan[r][j + 1] if j + 1 < len(plan[r]) else nxt[r])
        tokens = [a[-1] for a in answers]
    return [a[: next((i + 1 for i, t in enumerate(a) if t in eos), len(a))] for a in answers]


def _answer(model: ProfiledModel, q: Question, tokens: Sequence[int], agree: int, total: int,
            cosine: Optional[float]) -> Answer:
    text = model.tokenizer.decode(list(tokens), skip_special_tokens=True)
    return Answer(q.qid, q.bucket, q.kind, text, answer_correct(text, q.answer), agree, total, cosine)


@torch.no_grad()
def dense_reference(model: ProfiledModel, questions: Sequence[Question], n_new: int = 24) -> list[Reference]:
    eos, out = eos_ids(model), []
    with model.profile(None):
        for q in tqdm(questions, desc="dense reference", leave=False):
            cache = model.lean.cache(1, len(q.ids) + n_new)
            logits = model.step(torch.tensor([list(q.ids)], device=model.device), cache, 1)[0, -1]
            tokens = greedy_decode(model, cache, [int(logits.argmax())], 0, [[]], n_new, eos)[0]
            out.append(Reference(q, tuple(tokens), _answer(model, q, tokens, len(tokens), len(tokens), 1.0), logits.cpu()))
    return out


@torch.no_grad()
def evaluate(model: ProfiledModel, refs: Sequence[Reference], profiles: Sequence[Optional[HeadProfile]],
             batch: int = 4, n_new: int = 24, desc: str = "profiles") -> list[list[Answer]]:
    """``answers[p][q]``: profile ``p`` (None: dense) on ``refs[q]``'s question."""
    eos = eos_ids(model)
    out: list[list[Answer]] = [[] for _ in profiles]
    for ref in tqdm(refs, desc=desc, leave=False):
        q, want = ref.question, list(ref.tokens)
        target = torch.tensor(want, device=model.device)
        for lo in range(0, len(profiles), batch):
            chunk = list(profiles[lo:lo + batch])
            cache = model.lean.cache(len(chunk), len(q.ids) + n_new)
            with model.profile(chunk):
                x = torch.tensor([list(q.ids) + want[:-1]], device=model.device).expand(len(chunk), -1)
                logits = model.step(x, cache, len(want))
                top1 = logits.argmax(-1)  # [rows, len(want)]
                same = top1 == target
                cos = torch.nn.functional.cosine_similarity(logits[:, 0].cpu(), ref.first_logits[None].float(), dim=-1)
                diverged = [r for r in range(len(chunk)) if not bool(same[r].all())]
                firsts = {r: int((~same[r]).nonzero()[0]) for r in diverged}
                answers = {r: want for r in range(len(chunk)) if r not in firsts}
                if diverged:
                    start = min(firsts.values())
                    cache.keep(diverged, len(q.ids) + start)  # positions before answer token `start`
                    plan = [want[: firsts[r]] + [int(top1[r, firsts[r]])] for r in diverged]
                    with model.profile([chunk[r] for r in diverged]):
                        got = greedy_decode(model, cache, [p[start] for p in plan], start, plan, n_new, eos)
                    answers.update(zip(diverged, got))
            for r in range(len(chunk)):
                out[lo + r].append(_answer(model, q, answers[r], int(same[r].sum()), len(want), round(float(cos[r]), 5)))
    return out
