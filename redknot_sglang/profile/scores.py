"""Per-(layer, kv_head) scores: how much a head needs more than its sink and recent window.

Each score is computed per query head and reduced by max over the query heads of a KV head (with
GQA, a KV head must stay global if any of its query heads needs it):

* ``edge_mass``: attention mass outside ``[0, sink) + [i - window + 1, i]``, averaged over the
  queries that have keys outside that region, on calibration prose;
* ``prefix_shift``: ``1 - cosine`` between a head's attention over a chunk placed after two
  different prefixes of equal length (a head reused at another offset must not care);
* ``retrieval``: attention mass from the last query tokens onto the span that holds what they need,
  in key-value lookups and copies whose span lies far outside any window.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch
from tqdm import tqdm

from redknot_sglang.profile.calibration import copy, lookup, prose
from redknot_sglang.profile.hf_model import ProfiledModel

SCORES = ("edge_mass", "prefix_shift", "retrieval")


def _reduce_groups(per_q: torch.Tensor, group: int) -> torch.Tensor:
    """``[layers, Hq]`` -> ``[layers, Hkv]`` by max over each GQA group."""
    return per_q.view(per_q.shape[0], -1, group).amax(-1)


def edge_mass(model: ProfiledModel, texts: Sequence[list[int]], window: int, sink: int) -> torch.Tensor:
    acc = torch.zeros(model.num_layers, model.num_kv_heads * model.group)
    for ids in tqdm(texts, desc="edge mass", leave=False):
        t = len(ids)
        q = torch.arange(t)[:, None]
        k = torch.arange(t)[None, :]
        outside = ((k >= sink) & (k < q - window + 1)).to(model.device)  # [T, T]
        rows = outside.any(-1)

        def collect(layer: int, probs: torch.Tensor) -> None:
            mass = (probs * outside).sum(-1)[:, rows].mean(-1)  # [Hq]
            acc[layer] += mass.cpu()

        with model.collect(collect):
            model.attend(ids)
    return _reduce_groups(acc / len(texts), model.group)


def prefix_shift(model: ProfiledModel, pairs: Sequence[tuple[list[int], list[int], list[int]]]) -> torch.Tensor:
    """``pairs``: (prefix A, prefix B, chunk), prefixes of equal length."""
    acc = torch.zeros(model.num_layers, model.num_kv_heads * model.group)
    for a, b, chunk in tqdm(pairs, desc="prefix shift", leave=False):
        p = len(a)
        maps: dict[int, torch.Tensor] = {}

        def keep(layer: int, probs: torch.Tensor) -> None:
            maps[layer] = probs[:, p:, p:].flatten(1).cpu()

        with model.collect(keep):
            model.attend(a + chunk)
        first = dict(maps)
        with model.collect(keep):
            model.attend(b + chunk)
        for layer in range(model.num_layers):
            acc[layer] += 1 - torch.nn.functional.cosine_similarity(first[layer], maps[layer], dim=-1)
    return _reduce_groups(acc / len(pairs), model.group)


def retrieval(model: ProfiledModel, prompts: Sequence[tuple[list[int], range, int]]) -> torch.Tensor:
    """``prompts``: (token ids, token positions of the span that answers, number of final query
    tokens that need it)."""
    acc = torch.zeros(model.num_layers, model.num_kv_heads * model.group)
    for ids, span, n_rows in tqdm(prompts, desc="retrieval", leave=False):
        cols = torch.tensor(list(span), device=model.device)

        def collect(layer: int, probs: torch.Tensor) -> None:
            acc[layer] += probs[:, -n_rows:, cols].sum(-1).mean(-1).cpu()

        with model.collect(collect):
            model.attend(ids)
    return _reduce_groups(acc / len(prompts), model.group)


def needle_span(model: ProfiledModel, text: str, needle: str) -> range:
    """Token positions covering ``needle`` in ``text`` (by character offsets)."""
    start = text.index(needle)
    enc = model.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    pos = [i for i, (a, b) in enumerate(offsets) if b > start and a < start + len(needle)]
    return range(pos[0], pos[-1] + 1)


def calibration_scores(
    model: ProfiledModel, *, window: int, sink: int, seed: int, n_texts: int = 4, length: int = 768,
) -> dict[str, torch.Tensor]:
    """The three ``[layers, kv_heads]`` scores on generated calibration data."""
    rng = random.Random(seed)
    texts = [model.encode(prose(rng, 8 * length))[:length] for _ in range(n_texts)]
    half = length // 3
    pairs = []
    for _ in range(n_texts):
        a = model.encode(prose(rng, 4 * half))[:half]
        b = model.encode(prose(rng, 4 * half))[:half]
        chunk = model.encode(prose(rng, 8 * half))[1 : 1 + 2 * half]  # no BOS in the middle
        pairs.append((a, b, chunk))
    probes = []
    filler = 4 * (window + 2 * sink) + 800
    for _ in range(n_texts):
        item = lookup(rng, n_records=8, filler_chars=filler)
        probes.append((model.encode(item.text), needle_span(model, item.text, item.needle), 1))
        item = copy(rng, n_words=24, filler_chars=filler)
        probes.append((model.encode(item.text), needle_span(model, item.text, item.needle), 6))
    return {
        "edge_mass": edge_mass(model, texts, window, sink),
        "prefix_shift": prefix_shift(model, pairs),
        "retrieval": retrieval(model, probes),
    }


def combine(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """One score per head in [0, 1]: the mean of its rank under each signal (scale-free, so no
    signal dominates by its units; measured on SmolLM2 it picks heads better than the max of the
    normalised signals or any single signal)."""
    ranks = [torch.argsort(torch.argsort(s.flatten(), stable=True)).float().view_as(s) for s in scores.values()]
    return torch.stack(ranks).mean(0) / max(1, ranks[0].numel() - 1)
