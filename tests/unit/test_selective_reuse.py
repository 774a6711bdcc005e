"""Selective recompute over placed document KV (the reference of the serving path): attention by
position over scattered queries, placement exact where KV does not depend on context, and a
recompute set covering the whole prompt giving the full prefill."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.profile.hf_model import _sdpa
from redknot_sglang.reuse.selective import Recompute, SelectiveReuse


@pytest.mark.parametrize("window,sink", [(0, 0), (5, 2), (3, 0)])
def test_attention_by_position_over_scattered_queries_equals_float64_reference(window, sink):
    torch.manual_seed(window)
    s, d = 23, 8
    q_pos = torch.tensor([0, 3, 4, 9, 10, 11, 17, 22])
    q = torch.randn(2, 3, len(q_pos), d, dtype=torch.float64)
    k, v = torch.randn(2, 3, s, d, dtype=torch.float64), torch.randn(2, 3, s, d, dtype=torch.float64)
    got = _sdpa(q.float(), k.float(), v.float(), window, sink, 0.5, q_pos)
    want = torch.empty_like(q)
    for t, p in enumerate(q_pos.tolist()):
        keys = [j for j in range(p + 1) if not window or j < sink or j > p - window]
        att = torch.softmax(torch.einsum("bhd,bhkd->bhk", q[:, :, t], k[:, :, keys]) * 0.5, dim=-1)
        want[:, :, t] = torch.einsum("bhk,bhkd->bhd", att, v[:, :, keys])
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reuse(smollm2):
    from redknot_sglang.fidelity.docqa import DocQA
    from redknot_sglang.profile.hf_model import ProfiledModel

    model = ProfiledModel(str(smollm2))
    q = DocQA(model.tokenizer).questions("dev", 1, buckets=("2k",))[0]
    head = list(q.ids[: q.doc_spans[0][0]])
    return SelectiveReuse(model, None, head), q


def test_placed_layer0_kv_equals_the_full_prefill(reuse):
    """Layer 0's K/V depend on the token and its position only: relocation must give them exactly."""
    sel, q = reuse
    full, _, _ = sel.prefill(q.ids, q.doc_spans, None, len(q.ids))
    placed = sel.place(q.ids, q.doc_spans, len(q.ids))
    for a, b in q.doc_spans:
        torch.testing.assert_close(placed.k[0, 0, :, a:b], full.k[0, 0, :, a:b], atol=1e-3, rtol=1e-3)  # float32 RoPE at ~2K
        torch.testing.assert_close(placed.v[0, 0, :, a:b], full.v[0, 0, :, a:b])
    # deeper layers carry the context: the documents' first tokens differ most (other prefix)
    a, b = q.doc_spans[1]
    assert (placed.k[5, 0, :, a:b] - full.k[5, 0, :, a:b]).abs().max() > 1e-2


def test_recomputing_every_position_is_the_full_prefill(reuse):
    sel, q = reuse
    full, want, _ = sel.prefill(q.ids, q.doc_spans, None, len(q.ids))
    longest = max(b - a for a, b in q.doc_spans)
    cache, got, n = sel.prefill(q.ids, q.doc_spans, Recompute("none", 0.0, boundary=longest), len(q.ids))
    assert n == len(q.ids)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(cache.k, full.k, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("selection", ["deviation", "query"])
def test_recompute_set_has_unmarked_text_boundaries_and_the_ratio(reuse, selection):
    sel, q = reuse
    placed = sel.place(q.ids, q.doc_spans, len(q.ids))
    how = Recompute(selection, 0.1, boundary=4)
    got = set(sel.recompute_set(q.ids, q.doc_spans, placed, how).tolist())
    in_doc = {i for a, b in q.doc_spans for i in range(a, b)}
    boundary = {i for a, b in q.doc_spans for i in range(a, a + 4)}
    assert set(range(len(q.ids))) - in_doc <= got and boundary <= got
    assert len(got & in_doc) == len(boundary) + round(0.1 * len(in_doc))


def test_recompute_of_global_heads_only_keeps_the_local_heads_placed_kv(reuse):
    from redknot_sglang.heads.profile import HeadProfile

    sel, q = reuse
    profile = HeadProfile.load("smollm2-135m-instruct")
    ours = SelectiveReuse(sel.pm, profile, sel.canonical)
    placed = ours.place(q.ids, q.doc_spans, len(q.ids))
    how = Recompute("none", 0.0, boundary=4, heads="global")
    cache, _, _ = ours.prefill(q.ids, q.doc_spans, how, len(q.ids))
    every, _, _ = ours.prefill(q.ids, q.doc_spans, Recompute("none", 0.0, boundary=4), len(q.ids))
    docs = [a + i for a, _ in q.doc_spans for i in range(4)]  # the recomputed document positions
    local = [(layer, h) for layer, h, _ in profile.local_heads() if layer > 0]
    glob = [(layer, h) for layer, row in enumerate(profile.heads) for h, spec in enumerate(row) if spec.is_global]
    for layer, h in local:
        torch.testing.assert_close(cache.k[layer, 0, h, docs], placed.k[layer, 0, h, docs])
    # every head overwritten: the local heads' K/V there are fresh (computed in this prompt's context)
    assert max((every.k[layer, 0, h, docs] - placed.k[layer, 0, h, docs]).abs().max() for layer, h in local) > 1e-2
    # the global heads are overwritten (past layer 0, whose K/V do not depend on context)
    assert max((cache.k[layer, 0, h, docs] - placed.k[layer, 0, h, docs]).abs().max() for layer, h in glob
               if layer > 0) > 1e-2
