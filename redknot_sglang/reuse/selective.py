"""Selective recompute over placed document KV, on the profiler's lean forward (HF weights, CPU or
GPU): the model of the serving path's reuse and the place where its token selection is chosen by
measurement.

A prompt is ``[head][doc 1][gap] ... [doc k][question]`` with documents at ``spans``. Each
document's KV is *captured canonically*: computed once after a fixed canonical prefix (the chat
head the prompts start with, so the document's first tokens are not the sequence's attention sink)
and stored by content, whatever request uses it. A request then

1. **places** every document: its stored K re-rotated to the document's offset (RoPE delta), V as
   stored, written into the request's cache at the document's positions;
2. **recomputes** a set of positions through all layers at their true positions, reading every
   position up to their own causally *by position* (placed or recomputed KV), their fresh K/V
   overwriting the placed entries layer by layer::

       position   0 ..... head | doc 1 ........ | gap | doc 2 ........ | question .. last
       placed                  | ############## |     | ############## |
       recomputed ############ | ##..#...#...#. | ### | ##....#.#..... | ###########
                                 ^^ boundary B     ^ unmarked text          ^ unmarked text
                                     + selected (importance, up to ratio R of placed tokens)

The set is the unmarked text, each document's first ``boundary`` tokens (EPIC) and the placed
tokens an importance signal picks, ``ratio`` of the placed tokens:

* ``deviation`` (CacheBlend): layers 0-1 run over the whole prompt at its true positions; the
  tokens whose layer-1 K/V deviate most from the placed K/V are taken;
* ``query`` (ProphetKV-like, query-aware): the question (the text after the last document) first
  runs over the placed KV; the tokens it attends to most (summed over layers and heads) are taken;
* ``none``: no importance signal (boundary and unmarked text only; ratio ignored).

``heads``: whether a recomputed document token's fresh K/V overwrite the placed K/V of every head
(``all``, as the serving path does) or of the global heads only (``global``: local heads keep the
placed K/V there, within the pass too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import torch

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.profile.lean import LeanCache
from redknot_sglang.reuse.rope import RopeSpec, relocate_torch

SELECTIONS = ("none", "deviation", "query")
HEADS = ("all", "global")


@dataclasses.dataclass(frozen=True)
class Recompute:
    """What a request recomputes besides its unmarked text."""

    selection: str = "deviation"
    ratio: float = 0.1  # of the placed tokens, picked by the importance signal
    boundary: int = 8  # first tokens of every document
    heads: str = "all"  # whose placed K/V a recomputed document token overwrites

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS or self.heads not in HEADS:
            raise ValueError(f"selection in {SELECTIONS} and heads in {HEADS}, got {self.selection!r}, {self.heads!r}")
        if not 0 <= self.ratio <= 1 or self.boundary < 0:
            raise ValueError(f"ratio in [0, 1] and boundary >= 0, got {self.ratio}, {self.boundary}")


class SelectiveReuse:
    """Documents captured and reused by placement + selective recompute, under one head profile
    (None: dense). ``canonical``: the token ids every document is captured after. ``donors``
    (capture in context instead, for comparison): per document, an earlier prompt holding it and
    its span there; the document's KV is cut from that prompt's full prefill (documents without a
    donor are captured canonically)."""

    def __init__(self, model: ProfiledModel, profile: Optional[HeadProfile], canonical: Sequence[int],
                 donors: Optional[dict[tuple[int, ...], tuple[Sequence[int], tuple[int, int]]]] = None):
        self.pm, self.profile, self.canonical = model, profile, tuple(canonical)
        self.donors = donors or {}
        rotary = model.model.model.rotary_emb
        self.rope = RopeSpec(inv_freq=rotary.inv_freq.float().cpu(), rotary_dim=2 * rotary.inv_freq.numel(), neox=True)
        self._store: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, int]] = {}

    def captured(self, doc: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The document's K/V ``[layers, Hkv, n, D]`` and the position its K is rotated at: after
        the canonical prefix (``len(canonical)``), or where its donor prompt holds it."""
        key = tuple(doc)
        if key not in self._store:
            if key in self.donors:
                ids, (a, b) = self.donors[key]
            else:
                ids, a, b = list(self.canonical) + list(doc), len(self.canonical), len(self.canonical) + len(doc)
            cache = self.pm.lean.cache(1, len(ids))
            with self.pm.profile(self.profile):
                self.pm.step(torch.tensor([list(ids)], device=self.pm.device), cache, 1)
            self._store[key] = (cache.k[:, 0, :, a:b].clone(), cache.v[:, 0, :, a:b].clone(), a)
        return self._store[key]

    @property
    def documents(self) -> list[tuple[int, ...]]:
        """The documents captured so far (token ids)."""
        return list(self._store)

    def place(self, ids: Sequence[int], spans: Sequence[tuple[int, int]], capacity: int) -> LeanCache:
        """A cache holding every document's captured KV at its span (other positions unfilled)."""
        cache = self.pm.lean.cache(1, capacity)
        for a, b in spans:
            k, v, at = self.captured(ids[a:b])
            delta = a - at
            for layer in range(k.shape[0]):
                cache.k[layer, 0, :, a:b] = relocate_torch(k[layer].transpose(0, 1), self.rope, delta).transpose(0, 1)
            cache.v[:, 0, :, a:b] = v
        return cache

    def _deviation(self, ids: Sequence[int], placed: LeanCache) -> torch.Tensor:
        """Per position: how far layer 1's K/V in context are from the placed ones (L2 over heads)."""
        cache = self.pm.lean.cache(1, len(ids))
        with self.pm.profile(self.profile):
            self.pm.step(torch.tensor([list(ids)], device=self.pm.device), cache, 1, layers=2)
        n = len(ids)
        dk = (cache.k[1, 0, :, :n].float() - placed.k[1, 0, :, :n].float()).norm(dim=-1).pow(2).sum(0)
        dv = (cache.v[1, 0, :, :n].float() - placed.v[1, 0, :, :n].float()).norm(dim=-1).pow(2).sum(0)
        return (dk + dv).sqrt()

    def _query_attention(self, ids: Sequence[int], placed: LeanCache, unmarked: torch.Tensor,
                         question: torch.Tensor) -> torch.Tensor:
        """Per position: the attention the question's tokens pay it (summed over layers and heads),
        with the unmarked text computed over the placed documents."""
        mass = torch.zeros(len(ids), device=self.pm.device)
        group = self.pm.group
        rows = torch.isin(unmarked, question).nonzero().flatten()  # the question among the queries

        def observe(layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
            qq = q[0, :, rows].float()  # [Hq, Tq, D]
            kk = k[0].float().repeat_interleave(group, dim=0)  # [Hq, S, D]
            scores = qq @ kk.transpose(1, 2) * self.pm.lean.scaling
            causal = torch.arange(kk.shape[1], device=q.device)[None, :] <= question[:, None]
            probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            mass[: kk.shape[1]] += probs.sum((0, 1))

        cache = placed.clone()
        with self.pm.profile(self.profile):
            self.pm.step(torch.tensor([[ids[i] for i in unmarked.tolist()]], device=self.pm.device), cache, 1,
                         positions=unmarked, observe=observe)
        return mass

    def _in_documents(self, spans: Sequence[tuple[int, int]], n: int) -> torch.Tensor:
        """``[n]`` bool: which positions lie in a document."""
        mask = torch.zeros(n, dtype=torch.bool, device=self.pm.device)
        for a, b in spans:
            mask[a:b] = True
        return mask

    def recompute_set(self, ids: Sequence[int], spans: Sequence[tuple[int, int]], placed: LeanCache,
                      how: Recompute) -> torch.Tensor:
        """Sorted positions to recompute: unmarked text, each document's first ``boundary`` tokens,
        and ``ratio`` of the placed tokens by the importance signal."""
        n, dev = len(ids), self.pm.device
        in_doc = self._in_documents(spans, n)
        chosen = torch.zeros(n, dtype=torch.bool, device=dev)
        for a, b in spans:
            chosen[a:min(b, a + how.boundary)] = True
        chosen |= ~in_doc
        k = round(how.ratio * int(in_doc.sum()))
        if how.selection != "none" and k > 0:
            if how.selection == "deviation":
                score = self._deviation(ids, placed)
            else:
                unmarked = (~in_doc).nonzero().flatten()
                question = torch.arange(spans[-1][1], n, device=dev)
                score = self._query_attention(ids, placed, unmarked, question)
            score = score.masked_fill(~in_doc | chosen, float("-inf"))
            chosen[score.topk(k).indices] = True
        return chosen.nonzero().flatten()

    @torch.no_grad()
    def prefill(self, ids: Sequence[int], spans: Sequence[tuple[int, int]], how: Optional[Recompute],
                capacity: int) -> tuple[LeanCache, torch.Tensor, int]:
        """(cache, last position's logits ``[vocab]``, positions recomputed) after the prompt;
        ``how`` None: full prefill (no reuse)."""
        dev = self.pm.device
        with self.pm.profile(self.profile):
            if how is None or not spans:
                cache = self.pm.lean.cache(1, capacity)
                logits = self.pm.step(torch.tensor([list(ids)], device=dev), cache, 1)
                return cache, logits[0, -1], len(ids)
        cache = self.place(ids, spans, capacity)
        positions = self.recompute_set(ids, spans, cache, how)
        if int(positions[-1]) != len(ids) - 1:
            raise ValueError("the prompt must end with unmarked text (the question)")
        with self.pm.profile(self.profile):
            logits = self.pm.step(torch.tensor([[ids[i] for i in positions.tolist()]], device=dev), cache, 1,
                                  positions=positions, observe=self._keep_local(cache, spans, positions, how))
        return cache, logits[0, -1], len(positions)

    def _keep_local(self, cache: LeanCache, spans: Sequence[tuple[int, int]], positions: torch.Tensor,
                    how: Recompute):
        """``observe`` for the recompute pass when only global heads are overwritten: each layer's
        local heads get their placed K/V back at the recomputed document positions, after the
        layer writes and before it attends (None: every head is overwritten)."""
        if how.heads == "all" or self.profile is None:
            return None
        docs = positions[self._in_documents(spans, cache.k.shape[3])[positions]]
        placed_k, placed_v = cache.k[:, 0][..., docs, :].clone(), cache.v[:, 0][..., docs, :].clone()
        local: dict[int, list[int]] = {}
        for layer, head, _ in self.profile.local_heads():
            local.setdefault(layer, []).append(head)

        def observe(layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
            for h in local.get(layer, ()):
                cache.k[layer, 0, h, docs] = placed_k[layer, h]
                cache.v[layer, 0, h, docs] = placed_v[layer, h]

        return observe
