"""End to end on the GPU: stock SGLang (FlashInfer) against the redknot backend and cache, servers
started side by side on one GPU. Run with `pytest -m gpu` (docs/DEVICE.md)."""

from __future__ import annotations

import pytest

from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.equality import assert_equivalent, run_all
from redknot_sglang.testing.models import llama8b_dir
from redknot_sglang.testing.server import REDKNOT_ARGS, Server, start_all

pytestmark = [pytest.mark.gpu, pytest.mark.server]

GPU = ("--cuda-graph-max-bs", "8", "--random-seed", "0")
STOCK = ("--attention-backend", "flashinfer")


def _three_servers(model, tmp_path, extra, mem, window, sink):
    """stock, redknot all-global, redknot with 15% global heads (local window ``window``)."""
    profile = synthetic_profile(fingerprint_of_model_path(str(model)), global_ratio=0.15, window=window, sink=sink, seed=1)
    path = tmp_path / "mixed.json"
    profile.save(path)
    common = (*GPU, *extra, "--mem-fraction-static", str(mem))
    return start_all([
        Server(model, (*common, *STOCK), log_path=tmp_path / "stock.log"),
        Server(model, (*common, *REDKNOT_ARGS), log_path=tmp_path / "all_global.log"),
        Server(model, (*common, *REDKNOT_ARGS, "--redknot-head-profile", str(path),
                       "--redknot-window-pool-ratio", "0.5"), log_path=tmp_path / "mixed.log"),
    ])


def test_smollm2_on_gpu(smollm2, tmp_path):
    servers = _three_servers(smollm2, tmp_path, (), 0.25, window=2048, sink=4)
    try:
        stock, all_global, mixed = (run_all(s) for s in servers)
        mixed_log = servers[2].log()
    finally:
        for s in servers:
            s.stop()
    for key in ("generate", "batch", "chat", "cached"):
        assert all_global[key] == stock[key], key
    assert "Paris" in stock["chat"][0]
    assert "impl=HeadSplitRadixCache" in mixed_log and "global heads on triton" in mixed_log
    assert_equivalent(mixed, stock)  # windows cover every prompt: same tokens up to bf16 ties


def test_llama8b_shape_on_gpu(tmp_path):
    """Dummy weights: the all-global server must equal stock exactly; the head-split server
    (window 1024, sink 64) must serve every request (its tokens are noise on random weights)."""
    extra = ("--load-format", "dummy", "--context-length", "16384")
    servers = _three_servers(llama8b_dir(), tmp_path, extra, 0.28, window=1024, sink=64)
    try:
        stock, all_global, mixed = (run_all(s, chat=False) for s in servers)
    finally:
        for s in servers:
            s.stop()
    assert all_global["generate"] == stock["generate"] and all_global["batch"] == stock["batch"]
    assert all(len(ids) == 24 for ids in mixed["generate"] + mixed["batch"])
    assert mixed["cached"][3] > 300
