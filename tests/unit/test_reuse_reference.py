"""The reference of document reuse (redknot_sglang.reuse.reference) on SmolLM2, CPU: recovery with
every head global is a full prefill; recovery keeps in-context KV for global heads and relocated
offline KV for local heads; a document at position 0 reused without recovery is exact."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.reuse.reference import ReuseReference, SparseFFN

DOCS = ["Document one. The red vault in Orlin is guarded by a heron and its code is 4821.",
        "Document two. The blue tower of Tavel has three hundred steps and a bell of bronze."]


@pytest.fixture(scope="module")
def model(smollm2):
    return ProfiledModel(str(smollm2))


def _prompt(model):
    parts = ["You answer from the documents.\n", DOCS[0], "\n", DOCS[1], "\nQuestion: what is the code of the red vault? Answer:"]
    ids, spans = [], []
    for i, text in enumerate(parts):
        piece = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if i in (1, 3):
            spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    return ids, spans


def test_recovery_with_all_heads_global_is_full_prefill(model, smollm2_fingerprint):
    ref = ReuseReference(model, HeadProfile.all_global(smollm2_fingerprint))
    ids, spans = _prompt(model)
    _, full = ref.prefill(ids, spans, "full")
    _, rec = ref.prefill(ids, spans, "recovery")
    _, norec = ref.prefill(ids, spans, "norecovery")
    torch.testing.assert_close(rec, full, rtol=1e-4, atol=1e-3)
    assert (norec - full).abs().max() > 0.1  # documents computed alone do change the answer's logits


def test_recovery_keeps_global_heads_in_context_and_local_heads_offline(model):
    profile = HeadProfile.load("smollm2-135m-instruct")
    ref = ReuseReference(model, profile)
    ids, spans = _prompt(model)
    full, _ = ref.prefill(ids, spans, "full")
    rec, _ = ref.prefill(ids, spans, "recovery")
    (a, b) = spans[1]
    # layers with both kinds of heads, past layer 0 (whose K depends only on the token and its position)
    mixed = [i for i, loc in enumerate(ref.local) if i > 0 and loc.any() and not loc.all()]
    assert len(mixed) >= 3
    for layer in (mixed[0], mixed[len(mixed) // 2], mixed[-1]):
        loc = ref.local[layer]
        k_rec = rec.layers[layer].keys[0, :, a:b]
        offline = ref._relocated(ids[a:b], a)[layer][0][0]
        torch.testing.assert_close(k_rec[~loc], full.layers[layer].keys[0, ~loc, a:b])
        torch.testing.assert_close(k_rec[loc], offline[loc])
        assert (offline[loc] - full.layers[layer].keys[0, loc, a:b]).abs().max() > 1e-3


def test_first_document_at_position_zero_is_exact_without_recovery(model):
    ref = ReuseReference(model, HeadProfile.load("smollm2-135m-instruct"))
    doc = model.tokenizer(DOCS[0], add_special_tokens=False)["input_ids"]
    query = model.tokenizer("\nQuestion: what guards the red vault? Answer:", add_special_tokens=False)["input_ids"]
    ids = doc + query
    _, full = ref.prefill(ids, [(0, len(doc))], "full")
    _, norec = ref.prefill(ids, [(0, len(doc))], "norecovery")
    torch.testing.assert_close(norec, full, rtol=1e-4, atol=1e-3)


def test_sparse_ffn_changes_only_deep_layers_and_keeps_the_last_tokens(model, smollm2_fingerprint):
    ref = ReuseReference(model, HeadProfile.all_global(smollm2_fingerprint))
    ids, spans = _prompt(model)
    _, full = ref.prefill(ids, spans, "recovery")
    _, everyone = ref.prefill(ids, spans, "recovery", SparseFFN(keep=0.0, always_last=len(ids)))
    _, sparse = ref.prefill(ids, spans, "recovery", SparseFFN(keep=0.25, always_last=4))
    torch.testing.assert_close(everyone, full, rtol=1e-4, atol=1e-3)  # every token kept: the dense FFN
    assert (sparse - full).abs().max() > 1e-2
