"""SegmentStore on CPU: content addressing with shared beginnings, namespace (model, salt)
isolation, reuse-frequency-aware eviction, spill to host and exact restore, locks, bad input."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.reuse.segment_store import DocumentKV, Namespace, SegmentStore, StoreError

D, SINK, WINDOW = 8, 2, 5
HOST_PAGE = 4 * D  # one float32 row of one head: every part's bytes fill whole pages
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=6, num_kv_heads=3,
                      head_dim=D, rope_theta=1e4)
LAYOUT = RankHeadLayout(HeadProfile.from_classes(FP, [[True, False, False], [False, True, True]],
                                                 window=WINDOW, sink=SINK, method="test"))
NS = Namespace(model="smol-fp", salt=None)


def doc_kv(tokens: list[int], layout: RankHeadLayout = LAYOUT) -> DocumentKV:
    """KV of a document computed alone: row i depends on (token, position) only, so documents
    that share a beginning share those rows, as a causal model gives."""
    g = sum(lh.num_global for lh in layout.layers)
    loc = sum(lh.num_local for lh in layout.layers)

    def rows(heads: int, salt: int, positions: range) -> torch.Tensor:
        out = [torch.randn(heads, D, generator=torch.Generator().manual_seed(tokens[i] * 1000 + i * 7 + salt))
               for i in positions]
        return torch.stack(out)

    n = len(tokens)
    return DocumentKV(k_global=rows(g, 1, range(n)), v_global=rows(g, 2, range(n)),
                      k_sink=rows(loc, 3, range(min(n, SINK))), v_sink=rows(loc, 4, range(min(n, SINK))),
                      k_tail=rows(loc, 5, range(max(0, n - WINDOW), n)), v_tail=rows(loc, 6, range(max(0, n - WINDOW), n)))


def doc_bytes(n: int) -> int:
    return sum(t.nbytes for t in vars(doc_kv(list(range(1, n + 1)))).values())


def store(device_docs: float = 100, host_docs: float = 100, n: int = 10) -> SegmentStore:
    return SegmentStore(LAYOUT, head_dim=D, dtype=torch.float32, device="cpu",
                        device_bytes=int(device_docs * doc_bytes(n)), host_bytes=int(host_docs * doc_bytes(n)),
                        max_document_tokens=64, host_page_bytes=HOST_PAGE)


def assert_kv_equal(a: DocumentKV, b: DocumentKV) -> None:
    for part in vars(a):
        assert torch.equal(getattr(a, part), getattr(b, part)), part


A = list(range(1, 11))
B = A[:6] + [50, 51, 52, 53]
C = [90, 91, 92, 93, 94, 95, 96, 97, 98, 99]


def test_documents_are_found_by_content_and_share_their_beginning():
    s = store()
    s.insert(NS, A, doc_kv(A))
    alone = s.stats()["device_bytes"]
    s.insert(NS, B, doc_kv(B))
    st = s.stats()
    assert st["nodes"] == 3 and st["documents"] == 2  # [1..6] shared, then A's and B's own rest
    assert st["device_bytes"] < 2 * alone  # B stored only its 4 own tokens' global KV (+ its tail)
    for doc in (A, B):
        assert_kv_equal(s.gather(s.match(NS, doc)), doc_kv(doc))
    assert s.match(NS, A[:6]) is None and s.match(NS, A[:5]) is None and s.match(NS, A + [11]) is None
    s.insert(NS, A[:6], doc_kv(A[:6]))  # a document that is another's beginning: its tail on the shared node
    assert_kv_equal(s.gather(s.match(NS, A[:6])), doc_kv(A[:6]))
    assert s.stats()["nodes"] == 3 and s.stats()["documents"] == 3
    s.insert(NS, A[:3], doc_kv(A[:3]))  # ends inside the shared edge: split, sink rows follow the cut
    for doc in (A, B, A[:6], A[:3]):
        assert_kv_equal(s.gather(s.match(NS, doc)), doc_kv(doc))


def test_namespaces_never_share():
    s = store()
    tenant = Namespace(model="smol-fp", salt="tenant-a")
    s.insert(tenant, A, doc_kv(A))
    assert s.match(tenant, A) is not None
    for other in (Namespace("smol-fp", "tenant-b"), Namespace("smol-fp", None), Namespace("other-model", "tenant-a")):
        assert s.match(other, A) is None


def test_cold_documents_spill_to_host_and_come_back_exactly():
    s = store(device_docs=2, host_docs=1)
    s.insert(NS, A, doc_kv(A))
    s.insert(NS, C, doc_kv(C))
    for _ in range(3):
        s.match(NS, A)  # A is reused often
    E = [60 + i for i in range(10)]
    s.insert(NS, E, doc_kv(E))  # no room: the colder C spills, A stays
    assert s.stats()["spilled_nodes"] == 1
    assert s.match(NS, A).last.on_device and not s.match(NS, C).last.on_device
    assert s.device_used <= s.device_budget and s.host_used <= s.host_budget
    c = s.match(NS, C)
    assert_kv_equal(s.gather(c), doc_kv(C))  # restored from host, bit for bit
    assert c.last.on_device and not s.match(NS, E).last.on_device  # E, now the coldest, went to host


def test_host_budget_drops_the_least_reused_and_its_stale_matches_fail():
    s = store(device_docs=1, host_docs=1)
    E = [60 + i for i in range(10)]
    s.insert(NS, A, doc_kv(A))
    for _ in range(3):
        s.match(NS, A)
    c = s.insert(NS, C, doc_kv(C))  # A (reused) spills: C is on the device
    s.insert(NS, E, doc_kv(E))  # C spills; host holds one document: C (used once) goes, not A
    assert s.match(NS, C) is None and s.match(NS, A) is not None
    with pytest.raises(StoreError, match="evicted"):
        s.gather(c)
    assert s.clock > 0  # the dropped node's priority ages every later use


def test_documents_sharing_a_spilled_beginning_bring_it_back_and_the_host_pages_come_free():
    s = store(device_docs=1.5, host_docs=3)
    s.insert(NS, A, doc_kv(A))
    s.insert(NS, C, doc_kv(C))  # A spills
    assert s.stats()["spilled_nodes"] == 1 and s.host_used > 0
    s.insert(NS, B, doc_kv(B))  # B's beginning is spilled A's: A's node comes back to be cut
    s.insert(NS, A[:6], doc_kv(A[:6]))  # a tail on the shared node, wherever it went
    for doc in (A, B, C, A[:6]):
        assert_kv_equal(s.gather(s.match(NS, doc)), doc_kv(doc))
    assert s.device_used <= s.device_budget and s.host_used <= s.host_budget
    s.clear()
    assert s.host.free_bytes == s.host_budget > 0


def test_documents_in_use_are_never_moved():
    s = store(device_docs=2, host_docs=0)
    a = s.insert(NS, A, doc_kv(A))
    b = s.insert(NS, C, doc_kv(C))
    s.lock(a)
    s.lock(b)
    E = [60 + i for i in range(10)]
    with pytest.raises(StoreError, match="full on the device"):
        s.insert(NS, E, doc_kv(E))
    assert a.last.on_device and b.last.on_device
    s.unlock(a)
    s.unlock(b)
    assert_kv_equal(s.gather(s.match(NS, A)), doc_kv(A))


def test_bad_documents_get_clear_errors():
    s = store(device_docs=1)
    with pytest.raises(StoreError, match=r"k_global has shape \(10, 2, 8\), expected \(10, 3, 8\)"):
        kv = doc_kv(A)
        kv.k_global = torch.zeros(10, 2, D)
        s.insert(NS, A, kv)
    with pytest.raises(StoreError, match="longer than the 64 tokens"):
        s.insert(NS, list(range(65)), doc_kv(list(range(65))))
    with pytest.raises(StoreError, match="empty document"):
        s.insert(NS, [], doc_kv([1]))
    big = list(range(1, 31))
    with pytest.raises(StoreError, match="larger than the segment store"):
        s.insert(NS, big, doc_kv(big))
    assert s.stats()["nodes"] == 0


def test_flushed_documents_free_their_kv_without_the_cycle_collector():
    store = SegmentStore(LAYOUT, head_dim=D, dtype=torch.float32, device="cpu", device_bytes=1 << 20, host_bytes=0,
                         max_document_tokens=64)
    for tokens in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9]):  # a shared beginning: parent and children nodes
        store.insert(NS, tokens, doc_kv(tokens))
    held = [weakref.ref(t) for node in store._nodes() for t in node.kv.values()]
    assert len(store._nodes()) == 3 and held
    gc.disable()  # as in a serving process between collections: nothing may wait for the collector
    try:
        store.clear()
        assert all(r() is None for r in held)
    finally:
        gc.enable()
