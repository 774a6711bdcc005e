"""``HeadSplitRadixCache`` on SGLang's own unified tree, pools, allocator and requests, built on CPU."""

from __future__ import annotations

from array import array

import pytest
import torch
from sglang.srt.managers.schedule_batch import Req, ReqKvInfo
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import free_swa_out_of_window_slots
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.unified_cache.components import ComponentType
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.session.session_controller import Session
from sglang.srt.session.streaming_session import SessionSlot, _VirtualNode

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.integration import head_split_cache
from redknot_sglang.integration.head_split_cache import HeadSplitRadixCache
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool
from redknot_sglang.mem.sink_cache import SinkCache
from redknot_sglang.patches import compat

W, SIZE = 16, 256
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=1, num_attention_heads=2, num_kv_heads=2,
                      head_dim=8, rope_theta=1e4)


@pytest.fixture
def tree() -> HeadSplitRadixCache:
    profile = HeadProfile.from_classes(FP, [[True, False]], window=W, sink=4, method="test")
    pool = HeadSplitKVPool(layout=RankHeadLayout(profile), size=SIZE, size_swa=SIZE, rows=2, sink_blocks=2,
                           page_size=1, dtype=torch.float32, head_dim=8, device="cpu")
    alloc = SWATokenToKVPoolAllocator(SIZE, SIZE, page_size=1, dtype=torch.float32, device="cpu", kvcache=pool,
                                      need_sort=False)
    params = CacheInitParams(disable=False, req_to_token_pool=ReqToTokenPool(2, SIZE, "cpu", False),
                             token_to_kv_pool_allocator=alloc, page_size=1, sliding_window_size=W,
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


def _prefilled(tree: HeadSplitRadixCache, rid: str, prompt: list[int], max_new: int, first_chunk: int = 0) -> Req:
    """A request whose prompt was just computed into fresh slots (random K/V), as the scheduler
    leaves it before caching it; with ``first_chunk``, the prompt's first tokens were a chunk that
    already entered the tree."""
    req = Req(rid, "", array("q", prompt), SamplingParams(max_new_tokens=max_new))
    req.full_untruncated_fill_ids = req.origin_input_ids
    tree.req_to_token_pool.alloc([req])
    req.kv = ReqKvInfo(kv_allocated_len=0, swa_evicted_seqlen=0)
    req.prefix_indices = torch.empty(0, dtype=torch.int64)
    req.last_node = tree.tree_core.root_node.id
    pool = tree.pool
    for lo, hi in ((0, first_chunk), (first_chunk, len(prompt))):
        if lo == hi:
            continue
        if lo:
            tree.cache_unfinished_req(req, chunked=True)
        req.set_extend_range(lo, hi)
        slots = tree.token_to_kv_pool_allocator.alloc(hi - lo)
        tree.req_to_token_pool.write((req.req_pool_idx, slice(lo, hi)), slots.to(torch.int32))
        for bufs, loc in ((pool.full_kv_pool, slots), (pool.swa_kv_pool, pool.translate_loc_from_full_to_swa(slots))):
            for t in (*bufs.k, *bufs.v):
                t[loc] = torch.randn(hi - lo, *t.shape[1:])
        req.kv.kv_allocated_len = hi
    return req


def _kv(tree: HeadSplitRadixCache, slots: torch.Tensor) -> list[torch.Tensor]:
    pool = tree.pool
    win = pool.translate_loc_from_full_to_swa(slots)
    return [pool.full_kv_pool.k[0][slots], pool.full_kv_pool.v[0][slots],
            pool.swa_kv_pool.k[0][win], pool.swa_kv_pool.v[0][win]]


def _decode(tree: HeadSplitRadixCache, req: Req, steps: int) -> None:
    """``steps`` decoded tokens in fresh slots, then SGLang's slide of the request's window."""
    row, n = req.req_pool_idx, req.seqlen
    slots = tree.token_to_kv_pool_allocator.alloc(steps)
    tree.req_to_token_pool.write((row, slice(n, n + steps)), slots.to(torch.int32))
    req.output_ids.extend([7] * steps)
    req.kv.kv_allocated_len = n + steps
    free_swa_out_of_window_slots(req, req.seqlen - 1, sliding_window_size=W, page_size=1,
                                 req_to_token_pool=tree.req_to_token_pool,
                                 token_to_kv_pool_allocator=tree.token_to_kv_pool_allocator)


def _accounted(tree: HeadSplitRadixCache, req: Req) -> tuple[int, int]:
    """(full, window) slots: free + in the tree + the request's own, each pool's size when none leaks."""
    alloc, n = tree.token_to_kv_pool_allocator, req.seqlen
    own_full = n - req.cache_protected_len
    own_win = n - max(req.cache_protected_len, req.kv.swa_evicted_seqlen)
    return (alloc.full_available_size() + tree.full_evictable_size() + tree.full_protected_size() + own_full,
            alloc.swa_available_size() + tree.swa_evictable_size() + tree.swa_protected_size() + own_win)


@pytest.mark.skipif(compat.SGLANG_0523, reason="SGLang 0.5.23 caches prompts through checkpoint(): no private windows")
@pytest.mark.parametrize("first_chunk", [0, 36], ids=["one-chunk", "short-last-chunk"])
def test_a_long_decode_owns_a_copy_of_its_prompts_last_window(tree, monkeypatch, first_chunk):
    """After its prompt enters the tree, a request that decodes past the eviction interval holds a
    copy of the prompt's last window: the tree's copy stays matchable but unlocked, the request's
    window slides from the copy on, and every slot comes back when it ends, also when the prompt's
    last chunk is shorter than the window (the earlier chunk's end lies inside the copied window)."""
    monkeypatch.setenv("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    prompt = list(range(100, 140))
    req = _prefilled(tree, "long", prompt, max_new=200, first_chunk=first_chunk)
    row = req.req_pool_idx
    before = tree.req_to_token_pool.req_to_token[row, :40].clone()
    kv_before = _kv(tree, before)
    tree.cache_unfinished_req(req)

    after = tree.req_to_token_pool.req_to_token[row, :40]
    start = 40 - W
    assert tree.owns_window(req) and tree.private_windows == 1 and req.cache_protected_len == start
    assert torch.equal(after[:start], before[:start])
    assert not set(after[start:].tolist()) & set(before.tolist())  # fresh slots for the last window
    for got, want in zip(_kv(tree, after[start:].long()), kv_before):
        assert torch.equal(got, want[start:])
    assert tree.swa_protected_size() == 0 and tree.full_protected_size() == start
    assert tree.swa_evictable_size() >= W + 1  # the window SGLang keeps at the prompt end, evictable
    match = tree.match_prefix(MatchPrefixParams(key=RadixKey(array("q", prompt), None)))
    assert compat.matched_len(match) == 40  # and still matchable
    assert _accounted(tree, req) == (SIZE, SIZE)

    _decode(tree, req, 150)  # the window slides over the copies
    assert req.kv.swa_evicted_seqlen == req.seqlen - 1 - W
    assert _accounted(tree, req) == (SIZE, SIZE)

    tree.cache_finished_req(req, kv_len_to_handle=req.seqlen)
    tree.req_to_token_pool.free(req)
    assert not tree.owns_window(req)
    assert tree.full_protected_size() == 0 and tree.swa_protected_size() == 0
    tree.evict(EvictParams(num_tokens=SIZE, swa_num_tokens=SIZE))
    alloc = tree.token_to_kv_pool_allocator
    assert (alloc.full_available_size(), alloc.swa_available_size()) == (SIZE, SIZE)


@pytest.mark.skipif(compat.SGLANG_0523, reason="SGLang 0.5.23 caches prompts through checkpoint(): no private windows")
def test_a_short_answer_keeps_the_trees_lock(tree, monkeypatch):
    """A request that decodes no more than the eviction interval reads the tree's window (SGLang's
    lock): a copy would cost more than the interval it saves."""
    monkeypatch.setenv("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    req = _prefilled(tree, "short", list(range(100, 140)), max_new=4)
    tree.cache_unfinished_req(req)
    assert not tree.owns_window(req) and req.cache_protected_len == 40
    assert tree.swa_protected_size() == W and tree.full_protected_size() == 40
    tree.cache_finished_req(req, kv_len_to_handle=req.seqlen)
    tree.req_to_token_pool.free(req)
    tree.evict(EvictParams(num_tokens=SIZE, swa_num_tokens=SIZE))
    alloc = tree.token_to_kv_pool_allocator
    assert (alloc.full_available_size(), alloc.swa_available_size()) == (SIZE, SIZE)


@pytest.mark.skipif(compat.SGLANG_0523, reason="SGLang 0.5.23 caches prompts through checkpoint(): its Rust tree core")
def test_prompts_keep_their_last_windows_before_their_checkpoints(tree, monkeypatch):
    """Two prompts of two chunks each leave a window at each chunk end; when the window pool needs
    slots, both prompts' chunk checkpoints go before either prompt's last window, so both still
    match whole (SGLang's LRU alone takes the older prompt's checkpoint, then its last window)."""
    monkeypatch.setenv("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    prompts = [list(range(100, 180)), list(range(200, 280))]
    for i, prompt in enumerate(prompts):
        req = _prefilled(tree, f"p{i}", prompt, max_new=4, first_chunk=40)
        tree.cache_unfinished_req(req)
        tree.cache_finished_req(req, kv_len_to_handle=req.seqlen)
        tree.req_to_token_pool.free(req)
    assert tree.swa_evictable_size() >= 4 * W  # two windows per prompt
    evicted = tree.evict(EvictParams(num_tokens=0, swa_num_tokens=W + 4)).swa_num_tokens_evicted
    assert W + 4 <= evicted <= 2 * (W + 1)  # the checkpoints, not more
    for prompt in prompts:
        match = tree.match_prefix(MatchPrefixParams(key=RadixKey(array("q", prompt), None)))
        assert compat.matched_len(match) == len(prompt)
    tree.evict(EvictParams(num_tokens=SIZE, swa_num_tokens=SIZE))
    alloc = tree.token_to_kv_pool_allocator
    assert (alloc.full_available_size(), alloc.swa_available_size()) == (SIZE, SIZE)


@pytest.mark.parametrize("chunked", [True, False])
def test_a_streaming_sessions_turn_leaves_the_tree_alone(tree, monkeypatch, chunked):
    """A later turn of a streaming session carries the session's virtual node as ``last_node``
    (SGLang's session keeps the turn's KV in its own slot, not in the tree): caching it, a chunk or
    the whole prompt, snapshots the row and neither inserts, locks, copies a window nor reorders."""
    monkeypatch.setenv("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    earlier = _prefilled(tree, "p", list(range(100, 180)), max_new=4, first_chunk=40)
    tree.cache_unfinished_req(earlier)
    lru = tree.tree_core.lru_lists[ComponentType.SWA]

    def order() -> list[int]:  # the SWA LRU, most recent first
        node, ids = lru.head.lru_next[lru._pt], []
        while node is not lru.tail:
            ids.append(node.id)
            node = node.lru_next[lru._pt]
        return ids

    before = (tree.full_evictable_size(), tree.swa_evictable_size(), tree.full_protected_size(), order())
    assert before[3]
    turn = _prefilled(tree, "s", list(range(300, 340)), max_new=400)  # decodes past the window: would own one
    turn.session, turn.last_node = Session(1 << 20, "s", streaming=True), _VirtualNode()
    turn.cache_protected_len = 40
    if not chunked:  # the session holds the turn's KV in its slot
        tree.session.slots["s"] = SessionSlot()
    tree.cache_unfinished_req(turn, chunked=chunked)
    assert (tree.full_evictable_size(), tree.swa_evictable_size(), tree.full_protected_size(), order()) == before
    assert not tree.owns_window(turn) and tree.private_windows == 0
    if chunked:
        assert torch.equal(turn.prefix_indices, tree.req_to_token_pool.req_to_token[turn.req_pool_idx, :40].long())
