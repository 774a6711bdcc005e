"""Per-(layer, kv_head) scores: how much attention a head would lose as a local head of window
``W`` and sink ``S``, measured on the task prompts at the lengths served (the benchmark's dev
split: 2-7K-token document QA, dense's answer appended).

For a query at position ``i`` a local head keeps keys ``[0, S)`` and ``[i - W + 1, i]``; the mass it
loses is the dense attention on ``[S, i - W + 1)``. Two scores per (W, S), each the mean over the
queries that have such keys, then the max over the query heads of a KV head (with GQA a KV head
must stay global if any of its query heads needs it):

* ``task``: the queries that produce the answer (the question's last tokens and the answer's);
* ``edge``: every query of the prompt.

A ranking orders heads by one score, by the mean of their ranks under both (``task+edge``), or at
random (``random``: the control that shows what the scores are worth);
:mod:`redknot_sglang.profile.search` picks the ranking by measured fidelity.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from redknot_sglang.fidelity.hf import Reference
from redknot_sglang.profile.hf_model import ProfiledModel

RANKINGS = ("task", "edge", "task+edge", "random")
QUESTION_ROWS = 16  # question tokens before the answer counted as answer-producing queries


def lost_mass(cum: torch.Tensor, first_pos: int, window: int, sink: int) -> tuple[torch.Tensor, int]:
    """``cum``: cumulative attention ``[Hq, T, S]`` of queries at positions ``first_pos..``; returns
    the mass outside ``[0, sink) + [i - window + 1, i]`` summed over the queries that have keys
    there ``[Hq]``, and how many such queries there are."""
    hq, t, _ = cum.shape
    pos = torch.arange(first_pos, first_pos + t, device=cum.device)
    start = torch.clamp(pos - window + 1, min=sink)  # first kept key after the sink
    has = start > sink
    upto = cum.gather(-1, (start - 1).clamp(min=0)[None, :, None].expand(hq, t, 1)).squeeze(-1)  # mass on [0, start)
    sink_mass = cum[..., sink - 1] if sink > 0 else torch.zeros_like(upto)
    return ((upto - sink_mass) * has).sum(-1), int(has.sum())


def window_scores(model: ProfiledModel, refs: Sequence[Reference],
                  shapes: Sequence[tuple[int, int]]) -> dict[str, dict[tuple[int, int], torch.Tensor]]:
    """``{"task"|"edge": {(window, sink): [layers, kv_heads]}}`` over the references' prompts."""
    n_q = model.num_kv_heads * model.group
    sums = {name: {ws: torch.zeros(model.num_layers, n_q, dtype=torch.float64) for ws in shapes} for name in ("task", "edge")}
    counts = {name: {ws: torch.zeros(model.num_layers, dtype=torch.float64) for ws in shapes} for name in ("task", "edge")}
    for ref in tqdm(refs, desc="head scores", leave=False):
        ids = list(ref.question.ids) + list(ref.tokens[:-1])
        rows = len(ref.tokens) + QUESTION_ROWS

        def collect(layer: int, probs: torch.Tensor) -> None:
            cum = probs.cumsum(-1)
            for ws in shapes:
                for name, part, first in (("task", cum[:, -rows:], len(ids) - rows), ("edge", cum, 0)):
                    mass, n = lost_mass(part, first, *ws)
                    sums[name][ws][layer] += mass.double().cpu()
                    counts[name][ws][layer] += n

        with model.collect(collect):
            model.attend(ids)
    out: dict[str, dict[tuple[int, int], torch.Tensor]] = {}
    for name in sums:
        out[name] = {}
        for ws in shapes:
            per_q = sums[name][ws] / counts[name][ws].clamp(min=1)[:, None]
            out[name][ws] = per_q.view(model.num_layers, model.num_kv_heads, model.group).amax(-1).float()
    return out


def _ranks(score: torch.Tensor) -> torch.Tensor:
    """Rank in [0, 1] of each head (1: needs the most), ties broken by position."""
    flat = score.flatten()
    return (torch.argsort(torch.argsort(flat, stable=True)).float() / max(1, flat.numel() - 1)).view_as(score)


def ranking_score(scores: dict[str, dict[tuple[int, int], torch.Tensor]], ranking: str,
                  shape: tuple[int, int]) -> torch.Tensor:
    """One score per head in [0, 1] (higher: more global) under ``ranking`` at (window, sink)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if ranking == "random":  # the control: seeded, the same heads at every (window, sink)
        return torch.rand(scores["task"][shape].shape, generator=torch.Generator().manual_seed(0))
    parts = ranking.split("+")
    return torch.stack([_ranks(scores[p][shape]) for p in parts]).mean(0)
