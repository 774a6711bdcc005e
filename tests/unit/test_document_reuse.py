"""DocumentReuse on SGLang's real allocator and Req, with our pool and store (CPU): the planner places
a cached document after a request's exact prefix (full slots for every position, window slots for
the last ``W``), the writer puts the document's K turned by its prompt offset into those slots, the
tenant's namespace is respected, an undone placement frees every slot, and a document computed by a
request is captured turned back to position 0."""

from __future__ import annotations

import types

import pytest
import torch
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.sampling.sampling_params import SamplingParams

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.integration.document_reuse import DocumentReuse
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool
from redknot_sglang.patches.compat import SGLANG_0523, prefix_len
from redknot_sglang.reuse.rope import RopeSpec, relocate_torch
from redknot_sglang.reuse.segment_store import DocumentKV, Namespace, SegmentStore
from redknot_sglang.reuse.spans import DOCUMENTS_KEY, RECOVERY_KEY

pytestmark = pytest.mark.reuse

D, HKV, WINDOW, SINK = 16, 3, 5, 2
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=HKV, num_kv_heads=HKV,
                      head_dim=D, rope_theta=1e4)
PREFIX = list(range(1, 9))  # 8 tokens the tree holds
DOC = list(range(100, 112))  # 12 tokens, cached
QUERY = [7, 7, 7, 7]
SPEC = RopeSpec(inv_freq=1.0 / (1e4 ** (torch.arange(0, D, 2).float() / D)), rotary_dim=D, neox=True)


def _at_positions(k0: torch.Tensor, first: int) -> torch.Tensor:
    """Un-rotated ``k0`` ``[n, heads, D]`` rotated for positions ``first, first + 1, ...``."""
    return torch.cat([relocate_torch(k0[i : i + 1], SPEC, first + i) for i in range(k0.shape[0])])


@pytest.fixture
def setup():
    torch.manual_seed(0)
    profile = HeadProfile.from_classes(FP, [[True, False, False], [False, False, True]], window=WINDOW, sink=SINK,
                                       method="test")
    layout = RankHeadLayout(profile)
    pool = HeadSplitKVPool(layout=layout, size=200, size_swa=120, rows=4, sink_blocks=2, page_size=1,
                           dtype=torch.float32, head_dim=D, device="cpu")
    alloc = SWATokenToKVPoolAllocator(200, 120, page_size=1, dtype=torch.float32, device="cpu", kvcache=pool,
                                      need_sort=False)
    store = SegmentStore(layout, head_dim=D, dtype=torch.float32, device="cpu", device_bytes=1 << 20, host_bytes=0,
                         max_document_tokens=64)
    rows = ReqToTokenPool(4, 64, "cpu", False)
    reuse = DocumentReuse(store, pool=pool, allocator=alloc, req_to_token=rows.req_to_token, model_key="m")
    reuse.rope = SPEC
    cols = store.cols
    k0 = torch.randn(len(DOC), cols.num_global + cols.num_local, D)  # un-rotated K, global heads' columns first
    v = torch.randn_like(k0)
    k = _at_positions(k0, 0)  # as computed alone at positions [0, n)
    g = cols.num_global
    kv = DocumentKV(k_global=k[:, :g], v_global=v[:, :g], k_sink=k[:SINK, g:], v_sink=v[:SINK, g:],
                    k_tail=k[-WINDOW:, g:], v_tail=v[-WINDOW:, g:])
    store.insert(Namespace("m"), DOC, kv)
    return types.SimpleNamespace(pool=pool, alloc=alloc, store=store, reuse=reuse, k0=k0, v=v, cols=cols)


def _request(s, rid: str, *, salt: str | None = None) -> Req:
    """A place-only request whose prompt is PREFIX + DOC + QUERY, after SGLang matched PREFIX in the tree."""
    ids = PREFIX + DOC + QUERY
    params = SamplingParams(max_new_tokens=4, custom_params={DOCUMENTS_KEY: [8, 20], RECOVERY_KEY: False})
    req = Req(rid, "", ids, params, extra_key=salt)
    req.full_untruncated_fill_ids = ids  # what init_next_round_input sets
    _set_prefix(req, s.alloc.alloc(len(PREFIX)))  # the tree's slots of the exact prefix
    return req


def _set_prefix(req: Req, slots: torch.Tensor) -> None:
    """What SGLang's match leaves on a new request: its prefix (0.5.23 reads the slots off the
    tree's path when it writes the row, so only the length is on the request)."""
    if SGLANG_0523:
        req.prefix_len = len(slots)
    else:
        req.prefix_indices = slots


def test_placed_slots_hold_the_document_turned_to_its_offset(setup):
    s = setup
    full0, swa0 = s.alloc.full_available_size(), s.alloc.swa_available_size()
    req = _request(s, "a")
    assert s.reuse.place(req, tree=None)
    placed = s.reuse.pending_slots(req)
    assert prefix_len(req) == len(PREFIX) + len(DOC) and len(placed) == len(DOC) and s.reuse.is_approximate(req)
    assert not s.reuse.holds_placed_windows(req)  # place only: no recompute extend to keep them for
    assert s.alloc.full_available_size() == full0 - 8 - 12
    assert s.alloc.swa_available_size() == swa0 - 8 - WINDOW  # window slots for the last W only
    s.reuse.begin_forward(is_extend=True)  # the writer
    k_true = _at_positions(s.k0, len(PREFIX))  # the document's K at its prompt positions
    to_swa = s.pool.full_to_swa_index_mapping[placed]
    assert (to_swa[:-WINDOW] == 0).all() and (to_swa[-WINDOW:] > 0).all()
    for layer in range(2):
        g, lo = s.cols.global_cols(layer), s.cols.local_cols(layer)
        torch.testing.assert_close(s.pool.full_kv_pool.k[layer][placed], k_true[:, g])
        torch.testing.assert_close(s.pool.full_kv_pool.v[layer][placed], s.v[:, g])
        win = to_swa[-WINDOW:]
        torch.testing.assert_close(s.pool.swa_kv_pool.k[layer][win], k_true[-WINDOW:, s.cols.num_global:][:, lo])
        torch.testing.assert_close(s.pool.swa_kv_pool.v[layer][win], s.v[-WINDOW:, s.cols.num_global:][:, lo])
    assert s.reuse.stats["placed_requests"] == 1 and s.reuse.stats["placed_tokens"] == len(DOC)


def test_another_tenant_does_not_see_the_document(setup):
    s = setup
    full0 = s.alloc.full_available_size()
    req = _request(s, "b", salt="tenant-b")
    assert not s.reuse.place(req, tree=None)
    assert prefix_len(req) == len(PREFIX) and s.alloc.full_available_size() == full0 - len(PREFIX)


def test_an_undone_placement_frees_every_slot(setup):
    s = setup
    req = _request(s, "c")
    full0, swa0 = s.alloc.full_available_size(), s.alloc.swa_available_size()
    assert s.reuse.place(req, tree=None)
    s.reuse.unplace(req)  # not admitted
    assert s.alloc.full_available_size() == full0 and s.alloc.swa_available_size() == swa0
    assert prefix_len(req) == len(PREFIX) and not s.reuse.is_approximate(req)
    assert s.reuse._requests == {}  # the side table holds nothing for it
    assert all(node.lock == 0 for node in s.store.match(Namespace("m"), DOC).nodes)  # evictable again
    s.reuse.begin_forward(is_extend=True)
    assert s.reuse.stats["placed_requests"] == 0  # nothing left queued to write
    assert s.reuse.place(_request(s, "d"), tree=None)  # the store's lock was given back: usable again


def test_a_computed_document_is_captured_turned_back_to_position_zero(setup):
    s = setup
    s.store.clear()
    req = _request(s, "e")
    _set_prefix(req, torch.empty(0, dtype=torch.int64))  # no prefix: the request computes everything
    n = len(PREFIX + DOC + QUERY)
    batch = types.SimpleNamespace(reqs=[req], prefix_lens=[0], extend_lens=[n])  # what plan_batch reads
    s.reuse.plan_batch(batch)
    s.reuse.begin_forward(is_extend=True)
    k0 = torch.randn(n, HKV, D)
    k_at = {layer: _at_positions(k0, 0) + layer for layer in range(2)}  # the batch's K at its positions
    v_at = {layer: torch.randn(n, HKV, D) for layer in range(2)}
    for layer in range(2):
        s.reuse.capture(layer, k_at[layer], v_at[layer])
    match = s.store.match(Namespace("m"), DOC)
    assert match is not None and s.reuse.stats["captured_documents"] == 1
    kv = s.store.gather(match)
    for layer in range(2):
        g = s.cols.global_cols(layer)
        ng = g.stop - g.start
        want = relocate_torch(k_at[layer][8:20, :ng], SPEC, -8)
        torch.testing.assert_close(kv.k_global[:, g], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kv.v_global[:, g], v_at[layer][8:20, :ng])
        lo = s.cols.local_cols(layer)
        torch.testing.assert_close(kv.k_tail[:, lo], relocate_torch(k_at[layer][20 - WINDOW:20, ng:], SPEC, -8),
                                   atol=1e-5, rtol=1e-5)


def test_extends_are_cut_at_the_first_document_and_before_a_cached_one(setup):
    """Where an admitted extend stops: at the first document while the text before it is computed
    (that text, a shared system prompt, then ends a chunk and keeps its window); before a cached
    document that follows computed text (placed before the next chunk); nowhere else."""
    s = setup
    new = list(range(300, 306))  # a document the store does not have
    ids = PREFIX + new + DOC + QUERY  # documents at [8, 14) (new) and [14, 26) (cached)
    params = SamplingParams(max_new_tokens=4, custom_params={DOCUMENTS_KEY: [8, 14, 14, 26], RECOVERY_KEY: False})
    req = Req("cut", "", ids, params)
    assert s.reuse.cut_point(req, 0, len(ids)) == 8  # the system prompt is being computed
    assert s.reuse.cut_point(req, 8, len(ids)) == 14  # the new document computed, then the cached one
    assert s.reuse.cut_point(req, 14, len(ids)) is None  # placed from here: the rest is computed at once
    early = Req("early", "", ids, SamplingParams(max_new_tokens=4, custom_params={DOCUMENTS_KEY: [1, 14, 14, 26],
                                                                                  RECOVERY_KEY: False}))
    assert s.reuse.cut_point(early, 0, len(ids)) == 14  # a first document inside the sink: no exact prefix there


def test_a_request_waits_for_a_running_capture_of_its_document(setup):
    s = setup
    s.store.clear()
    capturing = _request(s, "f")
    _set_prefix(capturing, torch.empty(0, dtype=torch.int64))  # computes DOC, which the store lacks
    n = len(PREFIX + DOC + QUERY)
    s.reuse.plan_batch(types.SimpleNamespace(reqs=[capturing], prefix_lens=[0], extend_lens=[n]))
    waiting, other = _request(s, "g"), _request(s, "h", salt="tenant-h")
    assert s.reuse.awaits_capture(waiting)  # DOC is being captured: placed in a later round
    assert not s.reuse.awaits_capture(other)  # another tenant's namespace: computes its own
    s.reuse.begin_forward(is_extend=True)
    for layer in range(2):
        s.reuse.capture(layer, torch.randn(n, HKV, D), torch.randn(n, HKV, D))
    assert not s.reuse.awaits_capture(waiting) and s.reuse.place(waiting, tree=None)  # captured: placed
    s.reuse.release(capturing)
