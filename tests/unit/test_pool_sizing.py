"""Sizing the head-split pool: the automatic window ratio, per-rank byte costs, and the pools a KV
budget buys (SGLang's configurator interface, in this process)."""

from __future__ import annotations

import types

import pytest
import torch

from redknot_sglang.heads.profile import HeadProfile, ModelFingerprint
from redknot_sglang.mem.sizing import auto_window_ratio, per_token_bytes
from redknot_sglang.patches import compat

MODEL = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=4, num_attention_heads=8, num_kv_heads=4,
                         head_dim=64, rope_theta=10000.0)


def _profile(window: int = 256, sink: int = 4) -> HeadProfile:
    """Layer l: head 0 global, and head 1 too in layer 0 only (uneven over TP ranks)."""
    glob = [[h == 0 or (layer == 0 and h == 1) for h in range(4)] for layer in range(4)]
    return HeadProfile.from_classes(MODEL, glob, window=window, sink=sink, method="test")


def test_auto_window_ratio_fits_a_decodes_windows_and_an_interval():
    assert auto_window_ratio(256, 1, 8192, 128, private_windows=False) == pytest.approx((512 + 128 + 1) / 8192)
    assert auto_window_ratio(256, 1, 8192, 128, private_windows=True) == pytest.approx((256 + 128 + 1) / 8192)
    assert auto_window_ratio(4096, 16, 8192, 128, private_windows=False) == 1.0  # never more window slots than full slots


def test_per_token_bytes_take_the_largest_rank():
    # 5 global of 16 heads: one rank holds layer 0's two global heads
    assert per_token_bytes(_profile(), 1, 64, 2) == (5 * 2 * 64 * 2, 11 * 2 * 64 * 2)
    # rank 0 (heads 0, 1): 5 global, 3 local; rank 1 (heads 2, 3): 8 local
    assert per_token_bytes(_profile(), 2, 64, 2) == (5 * 2 * 64 * 2, 8 * 2 * 64 * 2)


@pytest.fixture
def published_context(smollm2):
    from sglang.srt.runtime_context import get_context, get_parallel
    from sglang.srt.server_args import prepare_server_args

    get_context().set_server_args(prepare_server_args(["--model-path", str(smollm2), "--device", "cpu"]))
    with get_parallel().override(attn_tp_size=1, attn_tp_rank=0):
        yield


def _kvc(context_len: int):
    """What the configurator reads of SGLang's KVCacheConfigurator."""
    return types.SimpleNamespace(page_size=1, kv_cache_dtype=torch.bfloat16,
                                 model_config=types.SimpleNamespace(head_dim=64, context_len=context_len))


def test_the_automatic_ratio_sizes_pools_within_the_budget(published_context):
    from redknot_sglang.integration.hooks.swa_admission import eviction_interval
    from redknot_sglang.integration.pool_sizing import HeadSplitPoolConfigurator

    conf = HeadSplitPoolConfigurator(_kvc(8192), _profile(), window_ratio=None, sink_blocks=8)
    windows = 2 if compat.SGLANG_0523 else 1  # private prompt windows on 0.5.17 (head_split_cache.py)
    assert conf.ratio == pytest.approx((windows * 256 + eviction_interval() + 1) / 8192)
    budget = 64 << 20
    sizes = conf.finalize_with_max_running_requests(conf.calculate_pool_sizes(budget, 1))
    full, swa, rows = sizes.full_max_total_num_tokens, sizes.swa_max_total_num_tokens, sizes.max_running_requests
    assert swa == int(full * conf.ratio) and rows == 2 * swa // 256
    spent = full * conf.full_bytes + (swa + (rows + 8) * 4) * conf.window_bytes
    assert budget - conf.cell - 2 * conf.window_bytes <= spent <= budget  # the budget, to one cell


def test_a_window_pool_too_small_for_one_window_is_refused(published_context):
    from redknot_sglang.integration.pool_sizing import HeadSplitPoolConfigurator

    conf = HeadSplitPoolConfigurator(_kvc(8192), _profile(), window_ratio=0.01, sink_blocks=0)
    with pytest.raises(ValueError, match=r"cannot hold one request's window \(256 \+ page 1\)"):
        conf.calculate_pool_sizes_from_max_tokens(20000, 1)
