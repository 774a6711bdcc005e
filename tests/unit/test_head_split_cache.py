"""``HeadSplitRadixCache`` on SGLang's own unified tree, pools and allocator, built on CPU."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.unified_cache.components import ComponentType

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.integration import head_split_cache
from redknot_sglang.integration.head_split_cache import HeadSplitRadixCache
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool
from redknot_sglang.mem.sink_cache import SinkCache

FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=1, num_attention_heads=2, num_kv_heads=2,
                      head_dim=8, rope_theta=1e4)


@pytest.fixture
def tree() -> HeadSplitRadixCache:
    profile = HeadProfile.from_classes(FP, [[True, False]], window=16, sink=4, method="test")
    pool = HeadSplitKVPool(layout=RankHeadLayout(profile), size=64, size_swa=64, rows=2, sink_blocks=2, page_size=1,
                           dtype=torch.float32, head_dim=8, device="cpu")
    alloc = SWATokenToKVPoolAllocator(64, 64, page_size=1, dtype=torch.float32, device="cpu", kvcache=pool,
                                      need_sort=False)
    params = CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(2, 64, "cpu", False),
                             token_to_kv_pool_allocator=alloc, page_size=1, sliding_window_size=16,
                             tree_components=(ComponentType.FULL, ComponentType.SWA))
    return HeadSplitRadixCache(params, pool, SinkCache(2, pool.sink))


def test_idle_sanity_check_runs_at_most_once_per_interval(tree, monkeypatch):
    """SGLang's idle loop calls the check at every turn; the tree core's own check runs once per
    interval."""
    clock, runs = [100.0], []
    check = tree.tree_core.sanity_check
    monkeypatch.setattr(head_split_cache.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(tree.tree_core, "sanity_check", lambda *a: runs.append(clock[0]) or check(*a))
    for step in (0.0, 0.4, 0.4, 0.4, 0.1, 1.0):  # seconds between idle turns
        clock[0] += step * head_split_cache.SANITY_CHECK_INTERVAL_S
        tree.sanity_check()
    assert runs == pytest.approx([100.0, 101.2, 102.3])
