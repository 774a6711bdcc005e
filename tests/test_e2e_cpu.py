"""End to end on CPU: real SGLang servers with the plugin, against a stock server on the same
model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import pytest

from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.equality import assert_equivalent, run_all
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

pytestmark = pytest.mark.server

COMMON = (*CPU_ARGS, "--max-total-tokens", "8192", "--random-seed", "0")


@pytest.fixture(scope="module")
def stock_outputs(smollm2):
    with Server(smollm2, COMMON) as server:
        return run_all(server)


def test_all_global_redknot_matches_stock_token_for_token(smollm2, stock_outputs):
    """With the all-global profile the redknot backend and cache are stock's kernels and cache:
    the same greedy tokens on /generate (single and batched) and /v1/chat/completions."""
    with Server(smollm2, (*COMMON, *REDKNOT_ARGS)) as server:
        ours = run_all(server)
        log = server.log()
    assert "source=registered('redknot')" in log
    assert "all heads global; base backend torch_native" in log
    for key in ("generate", "batch", "chat", "cached"):
        assert ours[key] == stock_outputs[key], key
    # the radix cache works as stock: the second LONG prompt reuses the first one's prefix
    assert ours["cached"][3] > 300
    assert "Paris" in ours["chat"][0]


def test_head_split_with_covering_windows_matches_stock(smollm2, stock_outputs, tmp_path, smollm2_fingerprint):
    """15% global heads; local heads with a window longer than every prompt + output, so each head
    still sees every key: the whole head-split path (hybrid-SWA flip, pools, head permutation,
    sink rows and cache, two-launch backend) must give the stock tokens, up to bf16 near-ties."""
    profile = synthetic_profile(smollm2_fingerprint, global_ratio=0.15, window=2048, sink=4, seed=1)
    path = tmp_path / "covering.json"
    profile.save(path)
    args = (*COMMON, *REDKNOT_ARGS, "--redknot-head-profile", str(path), "--redknot-window-pool-ratio", "0.75")
    with Server(smollm2, args) as server:
        ours = run_all(server)
        log = server.log()
    assert "impl=HeadSplitRadixCache" in log and "layers reordered" in log
    assert_equivalent(ours, stock_outputs)
    assert ours["cached"][3] > 300  # the shared LONG prefix is reused (global + local + sink)
