"""SinkCache bookkeeping: content keys per tenant, LRU eviction, no block handed out twice."""

from __future__ import annotations

from redknot_sglang.mem.sink_cache import SinkCache


def test_keys_are_the_first_sink_tokens_per_tenant():
    cache = SinkCache(num_blocks=4, sink=3)
    assert cache.key([1, 2], None) is None  # shorter than the sink
    assert cache.key([1, 2, 3, 9], None) == cache.key([1, 2, 3, 7, 7], None)
    assert cache.key([1, 2, 3], "tenant-a") != cache.key([1, 2, 3], "tenant-b")
    assert cache.key([1, 2, 3], "tenant-a") != cache.key([1, 2, 3], None)


def test_tenants_with_the_same_tokens_get_their_own_blocks():
    cache = SinkCache(num_blocks=4, sink=3)
    a, b = cache.publish(cache.key([1, 2, 3], "a")), cache.publish(cache.key([1, 2, 3], "b"))
    assert a is not None and b is not None and a != b
    assert cache.lookup(cache.key([1, 2, 3], "a")) == a and cache.lookup(cache.key([1, 2, 3], None)) is None


def test_publish_once_then_lru_eviction_reuses_the_oldest_block():
    cache = SinkCache(num_blocks=2, sink=2)
    k1, k2, k3 = (cache.key([i, i], None) for i in (1, 2, 3))
    b1, b2 = cache.publish(k1), cache.publish(k2)
    assert {b1, b2} == {0, 1} and cache.publish(k1) is None  # cached already: nothing to copy
    assert cache.lookup(k1) == b1  # k1 now most recently used: k2 is evicted next
    assert cache.publish(k3) == b2
    assert cache.lookup(k2) is None and cache.lookup(k1) == b1 and cache.lookup(k3) == b2
    assert len(cache) == 2


def test_no_blocks_means_nothing_is_cached():
    cache = SinkCache(num_blocks=0, sink=4)
    assert cache.publish(cache.key([1, 2, 3, 4], None)) is None and len(cache) == 0
