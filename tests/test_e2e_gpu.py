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

# prefill CUDA graphs take minutes to capture per server; decode graphs stay on
GPU = ("--cuda-graph-max-bs", "8", "--cuda-graph-backend-prefill", "disabled", "--random-seed", "0")
STOCK = ("--attention-backend", "flashinfer")


def _servers(model, tmp_path, extra, mem, mixed_window=None, start=True):
    """stock, redknot all-global, and (with ``mixed_window``) redknot with 15% global heads;
    started side by side unless ``start`` is False."""
    common = (*GPU, *extra, "--mem-fraction-static", str(mem))
    servers = [
        Server(model, (*common, *STOCK), log_path=tmp_path / "stock.log"),
        Server(model, (*common, *REDKNOT_ARGS), log_path=tmp_path / "all_global.log"),
    ]
    if mixed_window:
        fp = fingerprint_of_model_path(str(model))
        path = tmp_path / "mixed.json"
        synthetic_profile(fp, global_ratio=0.15, window=mixed_window, sink=4, seed=1).save(path)
        servers.append(Server(model, (*common, *REDKNOT_ARGS, "--redknot-head-profile", str(path),
                                      "--redknot-window-pool-ratio", "0.5"), log_path=tmp_path / "mixed.log"))
    return start_all(servers) if start else servers


def test_smollm2_on_gpu(smollm2, tmp_path):
    servers = _servers(smollm2, tmp_path, (), 0.25, mixed_window=2048)
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
    """Dummy weights (the same random weights on both servers): the all-global server must give
    stock's greedy tokens exactly. (The head-split path on this model runs in the capacity and
    decode benchmarks.)"""
    extra = ("--load-format", "dummy", "--context-length", "16384")
    outputs = []
    for server in _servers(llama8b_dir(), tmp_path, extra, 0.8, start=False):  # one 8B at a time
        with server:
            outputs.append(run_all(server, chat=False))
    stock, all_global = outputs
    for key in ("generate", "batch", "cached"):
        assert all_global[key] == stock[key], key
