"""The plugin as SGLang loads it, in this process: entry point, flags, registries, hooks."""

from __future__ import annotations

import pickle
import sys
from importlib.metadata import entry_points

import pytest
import torch

from redknot_sglang.heads import HeadProfile


@pytest.fixture(scope="module")
def sglang_plugins():
    from sglang.srt.plugins import load_plugins

    load_plugins()


def _args(model, *extra):
    return ["--model-path", str(model), "--device", "cpu", "--attention-backend", "redknot",
            "--radix-cache-backend", "redknot", "--cuda-graph-backend-prefill", "disabled", *extra]


def test_entry_point_is_declared():
    (ep,) = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "redknot"]
    assert ep.value == "redknot_sglang.integration.plugin:register"


def test_registries_hold_backend_and_cache(sglang_plugins):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.mem_cache.registry import registered_radix_cache_backends
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    assert "redknot" in ATTENTION_BACKENDS and "redknot" in ATTENTION_BACKEND_CHOICES
    assert "redknot" in registered_radix_cache_backends()


def test_flags_parse_into_a_config_that_survives_pickling(sglang_plugins, smollm2, tmp_profile, smollm2_fingerprint):
    from sglang.srt.server_args import prepare_server_args

    glob = [[h == 0 for h in range(3)] for _ in range(30)]
    path = tmp_profile(HeadProfile.from_classes(smollm2_fingerprint, glob, window=256, sink=4, method="test"))
    sa = prepare_server_args(_args(smollm2, "--redknot-head-profile", str(path), "--redknot-base-backend", "torch_native"))
    assert sa.attention_backend == "redknot" and sa.radix_cache_backend == "redknot"
    cfg = pickle.loads(pickle.dumps(sa))._redknot  # what a scheduler subprocess receives
    assert cfg.profile_source == str(path) and cfg.base_backend == "torch_native"
    assert cfg.profile.global_fraction == pytest.approx(1 / 3)


def test_default_profile_is_all_global(sglang_plugins, smollm2):
    from sglang.srt.server_args import prepare_server_args

    cfg = prepare_server_args(_args(smollm2))._redknot
    assert cfg.profile_source == "all-global" and cfg.profile.all_heads_global
    assert cfg.resolve_base_backend("cpu") == "torch_native"
    assert cfg.resolve_base_backend("cuda") == "flashinfer"


def test_support_triton_answers_for_the_base_backend(sglang_plugins, smollm2):
    from sglang.srt.runtime_context import get_context
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import common

    from redknot_sglang.integration.hooks.backend_name import support_triton

    get_context().set_server_args(prepare_server_args(_args(smollm2)))
    assert common.support_triton("redknot") is False  # the hooked function: torch_native base on CPU
    asked = []
    assert support_triton(lambda b: asked.append(b) or b, "redknot") == "torch_native"
    assert support_triton(lambda b: asked.append(b) or b, "triton") == "triton"  # other names untouched
    assert asked == ["torch_native", "triton"]


def test_cpu_rope_stand_in_matches_forward_native(sglang_plugins):
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    from redknot_sglang.integration.hooks.cpu_rope import rotary_embedding

    for neox in (True, False):
        rope = RotaryEmbedding(64, 64, 256, 10000, neox, torch.float32)  # runs the hooked __init__
        assert "vllm" not in sys.modules  # the stand-in existed only during the constructor
        pos = torch.randint(0, 256, (7,))
        q, k = torch.randn(7, 4 * 64), torch.randn(7, 2 * 64)
        ref_q, ref_k = rope.forward_native(pos, q.clone(), k.clone())
        q2, k2 = q.clone(), k.clone()
        rotary_embedding(pos, q2, k2, 64, rope.cos_sin_cache, neox)
        torch.testing.assert_close(q2, ref_q.reshape(q2.shape))
        torch.testing.assert_close(k2, ref_k.reshape(k2.shape))
