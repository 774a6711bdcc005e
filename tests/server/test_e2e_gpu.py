"""End to end on the GPU: stock SGLang against the redknot backend and cache on the same kernels
(FlashInfer for the 8B shape; SGLang's Triton kernels for SmolLM2, whose first FlashInfer server
spent 4.8 min in JIT on a cold machine). Servers start one at a time: SGLang sizes each from the
memory free when it starts. Run with `pytest -m gpu` (docs/DEVICE.md)."""

from __future__ import annotations

import pytest

from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.equality import assert_equivalent, run_all
from redknot_sglang.testing.models import llama8b_dir
from redknot_sglang.testing.server import REDKNOT_ARGS, Server

pytestmark = pytest.mark.gpu

# prefill CUDA graphs take minutes to capture per server; decode graphs stay on
GPU = ("--cuda-graph-max-bs", "4", "--cuda-graph-backend-prefill", "disabled", "--random-seed", "0")


def _stock_and_all_global(model, tmp_path, extra, mem, kernels, chat=True):
    """The outputs of a stock server and of a redknot all-global one on SGLang's ``kernels``
    backend, run one after the other."""
    common = (*GPU, *extra, "--mem-fraction-static", str(mem))
    outputs = []
    for name, args in (("stock", ("--attention-backend", kernels)),
                       ("all_global", (*REDKNOT_ARGS, "--redknot-base-backend", kernels))):
        with Server(model, (*common, *args), log_path=tmp_path / f"{name}.log") as server:
            outputs.append(run_all(server, chat=chat))
    return outputs


@pytest.fixture(scope="module")
def smollm2_stock_and_all_global(smollm2, tmp_path_factory):
    return _stock_and_all_global(smollm2, tmp_path_factory.mktemp("smollm2"), (), 0.25, "triton")


def test_smollm2_all_global_equals_stock_on_gpu(smollm2_stock_and_all_global):
    stock, all_global = smollm2_stock_and_all_global
    print("stock chat answers:", stock["chat"])  # for the record: bf16 on the GPU, fp32 on CPU
    for key in ("generate", "batch", "chat", "cached"):
        assert all_global[key] == stock[key], key


def test_smollm2_head_split_on_gpu(smollm2, smollm2_stock_and_all_global, tmp_path):
    """15% global heads (extends on FlashInfer, decode on SGLang's Triton kernels), local heads on
    the SegPaged kernels, decode in CUDA graphs; windows cover every prompt, so the tokens are
    stock's up to bf16 ties."""
    stock, _ = smollm2_stock_and_all_global
    path = tmp_path / "mixed.json"
    synthetic_profile(fingerprint_of_model_path(str(smollm2)), global_ratio=0.15, window=2048, sink=4, seed=1).save(path)
    args = (*GPU, "--mem-fraction-static", "0.25", *REDKNOT_ARGS, "--redknot-head-profile", str(path),
            "--redknot-window-pool-ratio", "0.5")
    with Server(smollm2, args, log_path=tmp_path / "mixed.log") as server:
        mixed = run_all(server)
        log = server.log()
    assert "impl=HeadSplitRadixCache" in log and "global heads on triton" in log
    assert_equivalent(mixed, stock)


def test_llama8b_shape_on_gpu(tmp_path):
    """Dummy weights (the same random weights on both servers): the all-global server must give
    stock's greedy tokens exactly. (The head-split path on this model runs in the capacity and
    decode benchmarks.)"""
    extra = ("--load-format", "dummy", "--context-length", "16384")
    stock, all_global = _stock_and_all_global(llama8b_dir(), tmp_path, extra, 0.8, "flashinfer", chat=False)
    for key in ("generate", "batch", "cached"):
        assert all_global[key] == stock[key], key
