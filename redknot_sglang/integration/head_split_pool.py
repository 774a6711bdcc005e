"""``HeadSplitKVPool``: KV memory split by head class inside every layer.

SGLang's hybrid sliding-window machinery gives us two index spaces and their allocator
(``SWATokenToKVPoolAllocator``): every token gets a *full* slot, and a *window* slot until it
slides out of the window (the request frees it, or the radix tree tombstones it). SGLang splits
them by layer; we split them by head::

    layer l, KV heads after the load-time permutation (global first):
                       [0, G_l) global heads          [G_l, H) local heads
    full slot f     -> k_glob[l][f], v_glob[l][f]      (nothing)
    window slot w   -> (nothing)                       k_win[l][w], v_win[l][w]
    sink row r, p<S -> (nothing)                       k_sink[l][r, p], v_sink[l][r, p]
    sink block b    -> (nothing)                       k_sink_blk[l][b, p]   (a cached copy)

Who owns which slots:

* full slots ``[1, size]`` and window slots ``[1, size_swa]``: SGLang's allocator hands them out,
  the request (then the radix tree) owns them; slot 0 of each is the padding slot that padded
  CUDA-graph batches write into. ``full_to_swa_index_mapping`` (registered by the allocator) maps
  a full slot to its window slot, 0 once the window slot is freed.
* sink rows ``[1, rows]``: row ``r`` belongs to the request holding ``req_to_token`` row ``r`` and
  holds its local heads' K/V of positions ``[0, sink)``; it is written whenever such a position is
  computed. Row 0 is the trash row that positions ``>= sink`` and padded batches write into.
* sink blocks: owned by :class:`~redknot_sglang.mem.sink_cache.SinkCache`, content-addressed
  copies of sink rows, so a request that reuses a cached prefix gets its sink without recompute.

Copies between rows and blocks are queued by the scheduler side and executed by the attention
backend at the start of the next forward (:meth:`flush_sink_copies`), in stream order with the
forwards that write and read the rows.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from sglang.srt.mem_cache.base_swa_memory_pool import BaseSWAKVPool
from sglang.srt.mem_cache.memory_pool import unwrap_write_loc

from redknot_sglang.heads.layout import RankHeadLayout

logger = logging.getLogger(__name__)
GB = 1 << 30


class KVGroupBuffers:
    """Per-layer K and V buffers of one head group, each ``[slots, heads_l, head_dim]``.

    Stands where SGLang expects a sub-pool (``full_kv_pool`` / ``swa_kv_pool``) on an SWA pool."""

    def __init__(self, slots: int, heads: Sequence[int], head_dim: int, dtype: torch.dtype, device: str):
        self.size = slots
        self.dtype = dtype
        self.device = device
        self.k = [torch.zeros(slots, h, head_dim, dtype=dtype, device=device) for h in heads]
        self.v = [torch.zeros(slots, h, head_dim, dtype=dtype, device=device) for h in heads]

    def nbytes(self) -> tuple[int, int]:
        return sum(t.nbytes for t in self.k), sum(t.nbytes for t in self.v)


class HeadSplitKVPool(BaseSWAKVPool):
    """The KV pool of a rank whose profile has local heads. ``get_key_buffer`` & co. return the
    global heads' buffers (what SGLang's base backends read); local heads live in
    :attr:`swa_kv_pool` and the sink buffers."""

    def __init__(
        self,
        *,
        layout: RankHeadLayout,
        size: int,
        size_swa: int,
        rows: int,
        sink_blocks: int,
        page_size: int,
        dtype: torch.dtype,
        head_dim: int,
        device: str,
    ):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"redknot: KV cache dtype {dtype} is not supported by the head-split pool")
        self.layout = layout
        self.size, self.size_swa, self.rows = size, size_swa, rows
        self.page_size = page_size
        self.dtype = self.store_dtype = dtype
        self.device = device
        self.head_dim = head_dim
        self.layer_num = layout.num_layers
        self.start_layer, self.end_layer = 0, layout.num_layers - 1
        self.layer_transfer_counter = None
        self.mem_usage = 0.0
        self.sink = layout.max_sink()
        glob = [layer.num_global for layer in layout.layers]
        loc = [layer.num_local for layer in layout.layers]
        self.full_kv_pool = KVGroupBuffers(size + page_size, glob, head_dim, dtype, device)
        self.swa_kv_pool = KVGroupBuffers(size_swa + page_size, loc, head_dim, dtype, device)
        # sink rows: row 0 = trash row; sink blocks: the content-addressed cache
        self.k_sink = [torch.zeros(rows + 1, self.sink, h, head_dim, dtype=dtype, device=device) for h in loc]
        self.v_sink = [torch.zeros(rows + 1, self.sink, h, head_dim, dtype=dtype, device=device) for h in loc]
        self.k_sink_blk = [torch.zeros(sink_blocks, self.sink, h, head_dim, dtype=dtype, device=device) for h in loc]
        self.v_sink_blk = [torch.zeros(sink_blocks, self.sink, h, head_dim, dtype=dtype, device=device) for h in loc]
        self.full_to_swa_index_mapping: Optional[torch.Tensor] = None
        self._pending: list[tuple[bool, int, int]] = []  # (to_block, row, block)
        self.document_reuse = None  # set by the radix cache when the segment store is on
        k, v = self.get_kv_size_bytes()
        self.mem_usage = (k + v) / GB
        logger.info(
            "redknot HeadSplitKVPool: %.2f GB (full %d tokens x %d global head-layers, window %d tokens "
            "x %d local head-layers, %d sink rows + %d sink blocks of %d tokens)",
            self.mem_usage, size, sum(glob), size_swa, sum(loc), rows, sink_blocks, self.sink,
        )

    # ------------------------------------------------------------------ SGLang's pool interface
    def register_mapping(self, full_to_swa_index_mapping: torch.Tensor) -> None:
        self.full_to_swa_index_mapping = full_to_swa_index_mapping

    def translate_loc_from_full_to_swa(self, kv_indices: torch.Tensor) -> torch.Tensor:
        return self.full_to_swa_index_mapping[kv_indices]

    def get_state_buf_infos(self):
        raise NotImplementedError("redknot: PD disaggregation of the head-split pool is not supported yet")

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        return self.full_kv_pool.k[layer_id]

    def get_value_buffer(self, layer_id: int) -> torch.Tensor:
        return self.full_kv_pool.v[layer_id]

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.full_kv_pool.k[layer_id], self.full_kv_pool.v[layer_id]

    def get_kv_size_bytes(self) -> tuple[int, int]:
        kf, vf = self.full_kv_pool.nbytes()
        kw, vw = self.swa_kv_pool.nbytes()
        ks = sum(t.nbytes for t in self.k_sink) + sum(t.nbytes for t in self.k_sink_blk)
        vs = sum(t.nbytes for t in self.v_sink) + sum(t.nbytes for t in self.v_sink_blk)
        return kf + kw + ks, vf + vw + vs

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, k_scale=None, v_scale=None, **kwargs) -> None:
        """Store one layer's new tokens: ``cache_k``/``cache_v`` are ``[T, H, D]`` in placed head
        order; ``loc_info`` carries the full slots and their window slots (``KVWriteLoc``)."""
        loc, swa_loc, _ = unwrap_write_loc(loc_info)
        lid = layer.layer_id
        g = self.layout.layers[lid].num_global
        if g:
            self.full_kv_pool.k[lid][loc] = cache_k[:, :g].to(self.dtype)
            self.full_kv_pool.v[lid][loc] = cache_v[:, :g].to(self.dtype)
        if g < cache_k.shape[1]:
            if swa_loc is None:
                swa_loc = self.translate_loc_from_full_to_swa(loc)
            self.swa_kv_pool.k[lid][swa_loc] = cache_k[:, g:].to(self.dtype)
            self.swa_kv_pool.v[lid][swa_loc] = cache_v[:, g:].to(self.dtype)

    def copy_slots(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy every head's K/V of tokens: global heads from full slots ``src`` to ``dst``, local
        heads from their window slots to ``dst``'s window slots (every slot must hold one)."""
        pairs = ((self.full_kv_pool, src, dst),
                 (self.swa_kv_pool, self.translate_loc_from_full_to_swa(src), self.translate_loc_from_full_to_swa(dst)))
        for bufs, s, d in pairs:
            for t in (*bufs.k, *bufs.v):
                if t.shape[1]:
                    t.index_copy_(0, d.long(), t.index_select(0, s.long()))

    def store_sink(self, layer_id: int, rows: torch.Tensor, pos: torch.Tensor, k_local: torch.Tensor, v_local: torch.Tensor) -> None:
        """Write local heads' K/V of tokens at positions ``< sink`` into their sink rows.
        ``rows``/``pos`` come from :func:`sink_targets` (row 0 for every other token)."""
        self.k_sink[layer_id][rows, pos] = k_local.to(self.dtype)
        self.v_sink[layer_id][rows, pos] = v_local.to(self.dtype)

    def local_buffers(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.swa_kv_pool.k[layer_id], self.swa_kv_pool.v[layer_id],
                self.k_sink[layer_id], self.v_sink[layer_id])

    def get_cpu_copy(self, indices, mamba_indices=None):
        raise NotImplementedError("redknot: KV offload of the head-split pool is not supported yet")

    def load_cpu_copy(self, kv_cache_cpu, indices, mamba_indices=None):
        raise NotImplementedError("redknot: KV offload of the head-split pool is not supported yet")

    # ------------------------------------------------------------------ sink row <-> block copies
    def queue_sink_copy(self, *, row: int, block: int, to_block: bool) -> None:
        self._pending.append((to_block, row, block))

    def flush_sink_copies(self) -> None:
        """Run queued row<->block copies in order (called by the backend before a forward)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for to_block, row, block in pending:  # one multi-tensor launch per copy, every layer's K and V
            rows = [r[row] for r in (*self.k_sink, *self.v_sink)]
            blocks = [b[block] for b in (*self.k_sink_blk, *self.v_sink_blk)]
            torch._foreach_copy_(*((blocks, rows) if to_block else (rows, blocks)))


def sink_targets(rows_per_token: torch.Tensor, positions: torch.Tensor, sink: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) where each token's local K/V goes in the sink buffer: its request's row
    for positions below ``sink``, else the trash row 0. Fixed shapes, so CUDA-graph safe."""
    in_sink = positions < sink
    return torch.where(in_sink, rows_per_token, 0), torch.where(in_sink, positions, 0)
