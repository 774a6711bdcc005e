"""The profiler's measuring tools: the lost attention mass by cumulative sums, the choice among
measured candidates, and the HF evaluator (several profiles per forward, greedy answers resumed
from the first divergence) against plain greedy decoding."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.fidelity.summary import BucketScore
from redknot_sglang.profile.scores import lost_mass
from redknot_sglang.profile.search import Candidate, Criteria, choose, finer_candidates


@pytest.mark.parametrize("window,sink", [(3, 0), (4, 2), (9, 1), (40, 2)])
def test_lost_mass_equals_the_sum_outside_sink_and_window(window, sink):
    torch.manual_seed(window)
    first, t, s = 10, 6, 16
    probs = torch.rand(3, t, s)
    for r in range(t):
        probs[:, r, first + r + 1:] = 0  # causal
    probs /= probs.sum(-1, keepdim=True)
    mass, n = lost_mass(probs.cumsum(-1), first, window, sink)
    want, rows = torch.zeros(3), 0
    for r in range(t):
        i = first + r
        outside = [k for k in range(s) if sink <= k < i - window + 1]
        if outside:
            want += probs[:, r, outside].sum(-1)
            rows += 1
    assert n == rows
    torch.testing.assert_close(mass, want)


def _score(agree: float, acc: float = 0.5, dense: float = 0.5) -> dict[str, BucketScore]:
    return {b: BucketScore(b, 10, acc, dense, agree, None) for b in ("2k", "4k", "7k")}


def test_choose_takes_the_least_memory_that_passes_within_the_global_budget():
    cands = [Candidate("task", w, 4, n) for w in (128, 512) for n in (5, 10, 20)]
    measured = {c.key: _score(0.9 + 0.002 * c.n_global + (0.03 if c.window == 512 else 0)) for c in cands}
    cost = lambda c: c.n_global / 90 + c.window / 8000  # noqa: E731
    crit = Criteria(7168, min_agreement=0.95, max_accuracy_drop=0.02, max_global_ratio=0.15)
    # passing: w512 with 10 (0.95) and 20 heads (over the budget of 14); w128 never reaches 0.95
    assert choose(cands, measured, crit, cost, max_n=14) == Candidate("task", 512, 4, 10)
    # a budget of 9 global heads excludes every passing candidate: the best agreement within it
    assert choose(cands, measured, crit, cost, max_n=9) == Candidate("task", 512, 4, 5)
    measured[Candidate("task", 512, 4, 10).key] = _score(0.96, acc=0.4)  # accuracy drop 0.1: fails
    assert not crit.passes(measured[Candidate("task", 512, 4, 10).key])
    # nothing passes within the budget: the best agreement at the target bucket, reported as is
    assert choose(cands, measured, crit, cost, max_n=14) == Candidate("task", 512, 4, 10)
    crit4k = Criteria(4096)  # gates 2k and 4k only
    assert crit4k.gated_buckets(_score(0.9)) == ["2k", "4k"] and crit4k.target_bucket(_score(0.9)) == "4k"
    assert finer_candidates(Candidate("task", 512, 4, 10), cands) == [Candidate("task", 512, 4, n) for n in range(6, 10)]
    assert [c.n_global for c in finer_candidates(Candidate("task", 512, 4, 45), [])] == [1, 10, 18, 27, 35, 44]


@pytest.fixture(scope="module")
def evaluated(smollm2, smollm2_fingerprint):
    from redknot_sglang.fidelity.docqa import DocQA
    from redknot_sglang.fidelity.hf import dense_reference, evaluate
    from redknot_sglang.heads.synthetic import synthetic_profile
    from redknot_sglang.profile.hf_model import ProfiledModel

    model = ProfiledModel(str(smollm2))
    q = DocQA(model.tokenizer).questions("dev", 2, buckets=("2k",))[1]  # its answer is lost at window 64
    local = synthetic_profile(smollm2_fingerprint, global_ratio=0.1, window=64, sink=4, seed=0)
    refs = dense_reference(model, [q], 24)
    return model, q, local, refs[0], evaluate(model, refs, [None, local], batch=2)


def test_dense_row_reproduces_the_reference(evaluated):
    _, _, _, ref, (dense, _) = evaluated
    assert dense[0].text == ref.answer.text and dense[0].agree == dense[0].total == len(ref.tokens)
    assert dense[0].cosine == pytest.approx(1.0, abs=1e-4)


def test_profile_row_answers_as_its_own_greedy_decoding(evaluated):
    model, q, local, ref, (_, ours) = evaluated
    with model.profile(local):
        direct = model.greedy(list(q.ids), 24)
    assert ours[0].text == model.tokenizer.decode(direct, skip_special_tokens=True)
    assert ours[0].agree < ours[0].total  # window 64 on a 2K prompt diverges from dense


@pytest.mark.parametrize("t,s", [(12, 12), (1, 12), (4, 12)])
def test_grouped_attention_equals_the_masked_reference(t, s):
    """Rows of a batch under different profiles (global heads, two windows, sinks): the per-kind
    SDPA calls give the masked softmax attention of every (row, head)."""
    from types import SimpleNamespace

    from redknot_sglang.profile import hf_model

    torch.manual_seed(t)
    b, hkv, group, d = 3, 2, 2, 8
    q = torch.randn(b, hkv * group, t, d, dtype=torch.float64)
    k, v = torch.randn(b, hkv, s, d, dtype=torch.float64), torch.randn(b, hkv, s, d, dtype=torch.float64)
    local = torch.tensor([[False, False], [True, False], [True, True]])
    window = torch.tensor([[0, 0], [3, 0], [3, 5]])
    sink = torch.tensor([[0, 0], [1, 0], [1, 2]])
    masks = (local, window, sink)
    allowed = hf_model.allowed_keys(masks, group, t, s, q.device)
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ kk.transpose(2, 3) * 0.3).masked_fill(~allowed, float("-inf"))
    want = (torch.softmax(scores, -1) @ vv).transpose(1, 2)
    saved = hf_model._STATE.masks
    hf_model._STATE.masks = [masks]
    try:
        got, _ = hf_model._attention(SimpleNamespace(layer_idx=0), q, k, v, None, 0.3)
    finally:
        hf_model._STATE.masks = saved
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("window", [None, 32])
def test_lean_forward_equals_the_hf_model(smollm2, smollm2_fingerprint, window):
    """The lean forward (fused projections, preallocated cache, fed in two pieces) computes the HF
    model's logits, dense and under a profile with local heads."""
    from redknot_sglang.heads.synthetic import synthetic_profile
    from redknot_sglang.profile.hf_model import ProfiledModel

    model = ProfiledModel(str(smollm2))
    ids = torch.randint(0, 49000, (2, 300), generator=torch.Generator().manual_seed(0))
    profile = None if window is None else synthetic_profile(smollm2_fingerprint, global_ratio=0.2, window=window,
                                                            sink=4, seed=0)
    with model.profile(profile):
        want = model.model(input_ids=ids).logits.float()
        cache = model.lean.cache(2, 310)
        got = torch.cat([model.step(ids[:, :200], cache, 200), model.step(ids[:, 200:], cache, 100)], dim=1)
    assert cache.length == 300
    torch.testing.assert_close(got, want, atol=5e-4, rtol=1e-4)
