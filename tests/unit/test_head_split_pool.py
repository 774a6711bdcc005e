"""HeadSplitKVPool's own write path (SGLang's ``set_kv_buffer`` without a window location): full
slots translated to window slots through the allocator's mapping, on SGLang's real allocator."""

from __future__ import annotations

import torch
from sglang.srt.layers.radix_attention import RadixAttention

from test_head_split_backend import D, GROUP, HKV, _setup


def test_set_kv_buffer_writes_local_heads_to_the_mapped_window_slots():
    layout, pool, alloc, *_ = _setup("torch")
    first = alloc.alloc(6)
    alloc.free(first)  # slots 1..6 go to the back of both free lists
    alloc.alloc(114)  # the window pool's slots 7..120: the next window slots are 1..4, the full ones 121..124
    loc = alloc.alloc(4)
    swa = pool.translate_loc_from_full_to_swa(loc)
    assert loc.tolist() == [121, 122, 123, 124] and swa.tolist() == [1, 2, 3, 4]
    torch.manual_seed(0)
    k, v = torch.randn(4, HKV, D), torch.randn(4, HKV, D)
    layer = RadixAttention(HKV * GROUP, D, D ** -0.5, HKV, layer_id=1)
    pool.set_kv_buffer(layer, loc, k, v)
    g = layout.layers[1].num_global
    assert torch.equal(pool.full_kv_pool.k[1][loc], k[:, :g]) and torch.equal(pool.full_kv_pool.v[1][loc], v[:, :g])
    assert torch.equal(pool.swa_kv_pool.k[1][swa], k[:, g:]) and torch.equal(pool.swa_kv_pool.v[1][swa], v[:, g:])


def test_sink_copies_run_in_queue_order_for_every_layer():
    """A row published to a block, then that block copied into another row in the same flush:
    the second row ends with the first row's sink, K and V, every layer; nothing runs before the flush."""
    _, pool, *_ = _setup("torch")
    torch.manual_seed(1)
    for buf in (*pool.k_sink, *pool.v_sink):
        buf.normal_()
    want = [buf[1].clone() for buf in (*pool.k_sink, *pool.v_sink)]
    pool.queue_sink_copy(row=1, block=1, to_block=True)
    pool.queue_sink_copy(row=3, block=1, to_block=False)
    assert not torch.equal(pool.k_sink[0][3], want[0])  # queued, not run
    pool.flush_sink_copies()
    for buf, blk, w in zip((*pool.k_sink, *pool.v_sink), (*pool.k_sink_blk, *pool.v_sink_blk), want):
        assert torch.equal(blk[1], w) and torch.equal(buf[3], w)
