"""``HeadSplitRadixCache``: SGLang's unified radix tree (full + sliding-window components) over the
head-split pool, plus the local heads' sinks.

The tree itself is SGLang's: global heads' KV lives in full slots that the tree keeps until
eviction; local heads' KV lives in window slots that the tree's SWA component tombstones once they
fall out of the window, and a prefix matches only where its trailing window is still held. What the
tree does not know is the sink, the first ``S`` tokens a local head always reads. Here:

* a scheduler match is accepted only if it covers the sink and the sink's K/V is in the
  :class:`~redknot_sglang.mem.sink_cache.SinkCache`; otherwise it is dropped to a miss and the
  request recomputes (never reads a missing sink);
* once a batch has its rows, a request that reuses a prefix gets the cached sink copied into its
  sink row (:meth:`on_extend_allocated`);
* when a request's tokens enter the tree and its sink is complete, the sink is published into a
  block for later requests.

Row ownership: ``_row_filled[row]`` is the ``req_to_token`` row generation whose sink the row holds;
SGLang bumps the generation each time it hands the row to a request.

Document reuse (:class:`~redknot_sglang.integration.document_reuse.DocumentReuse`, when the store is on): a
request holding placed KV is approximate, so its tokens are never inserted; it keeps its own slots
past the exact prefix and frees them when it ends.

Private prompt windows (SGLang 0.5.17, where a prompt enters the tree through
``cache_unfinished_req``): SGLang locks the tree's copy of a prompt's last window for the request
that decodes after it, until it has decoded a whole window, so a long decode holds two windows
(the locked prompt tail and its own decode window) plus the eviction interval. When a request that
will decode past the interval finishes its prefill, :meth:`_own_prompt_window` gives it fresh
slots holding a copy of the prompt's last window and moves its lock to the path before it, full
component only::

    positions        [0 .. T0)                  [T0 .. P)  (T0 = P - window)
    tree             full slots, locked by      the prompt's own full + window slots:
                     the request (full only)    matchable, unlocked (evictable)
    request's row    the tree's slots           fresh copies, the request's own:
                                                window slots freed as they slide out,
                                                full slots freed as duplicates at insert

so a request holds one window plus the interval (admission charges that,
:mod:`~redknot_sglang.integration.hooks.swa_admission`; the pool is sized for it,
:mod:`redknot_sglang.mem.sizing`). Without free slots for the copy the request keeps SGLang's lock;
with pages of more than one token there are no private windows (SGLang's allocator hands out
single slots by token only).

Tails before checkpoints (SGLang 0.5.17): each prefill chunk of a long prompt leaves a window in
the tree at its end (a checkpoint, :mod:`~redknot_sglang.integration.hooks.server_args`), so a
cached 64K prompt holds 8 windows at chunks of 8K where a repeat needs only its last. SGLang's LRU
refreshes a prompt's last window at each match and insert but keeps the checkpoints at the time
they entered, so prompts used in turn leave the window pool in whole (the oldest prompt's
checkpoints, then its tail, then the next prompt's): measured on an H200, four 64K prompts sent in
turn to a window pool of 29K slots never hit (stock: every one). After each insert of a request's
tokens, :meth:`_checkpoints_first` moves the window checkpoints of its path that lie before its
last window to the LRU end, so under pressure every prompt's checkpoints go before any prompt's
last window::

    SWA LRU   MRU | last windows, in order of use | checkpoints (interior windows) | LRU: evicted first

SGLang checks a hybrid tree's invariants (a walk over every node) at each turn of its idle loop, which
spins while no request runs, so a request that arrives waits for the check in progress, a wait that
grows with the tree (stock's tree is not checked). Here the check runs at most once per
``SANITY_CHECK_INTERVAL_S``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams, MatchResult, zero_match_result
from sglang.srt.mem_cache.common import evict_from_tree_cache
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.unified_cache.components import ComponentType
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from redknot_sglang.integration.document_reuse import DocumentReuse
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool
from redknot_sglang.integration.hooks.swa_admission import eviction_interval
from redknot_sglang.mem.sink_cache import SinkCache
from redknot_sglang.patches import compat
from redknot_sglang.patches.compat import matched_len, req_row, slide_window

if TYPE_CHECKING:  # SGLang's types, for annotations only
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams


SANITY_CHECK_INTERVAL_S = 1.0


def private_windows(page_size: int) -> bool:
    """Whether long decodes own a copy of their prompt's last window: SGLang 0.5.17 (its
    ``cache_unfinished_req``), token-granular pages (its allocator's ``alloc``)."""
    return not compat.SGLANG_0523 and page_size == 1


def first_tokens(req: Req, n: int) -> Sequence[int]:
    head = req.origin_input_ids[:n]
    if len(head) < n:
        head = list(head) + list(req.output_ids[: n - len(head)])
    return head


class HeadSplitRadixCache(UnifiedRadixCache):
    def __init__(self, params: CacheInitParams, pool: HeadSplitKVPool, sinks: SinkCache,
                 document_reuse: Optional[DocumentReuse] = None):
        super().__init__(params)
        self.pool = pool
        self.sinks = sinks
        self.document_reuse = document_reuse
        self._row_filled: dict[int, int] = {}
        self._last_sanity_check = float("-inf")
        self.window_owners: set[str] = set()  # rids holding a private copy of their prompt's last window
        self.private_windows = self.private_window_misses = 0  # copies made / refused for want of slots

    def reset(self) -> None:
        super().reset()
        if getattr(self, "document_reuse", None) is not None:  # SGLang's __init__ resets too
            self.document_reuse.clear()

    def sanity_check(self) -> None:
        """SGLang's idle-loop invariant check of the tree, at most once per ``SANITY_CHECK_INTERVAL_S``."""
        now = time.monotonic()
        if now - self._last_sanity_check < SANITY_CHECK_INTERVAL_S:
            return
        self._last_sanity_check = now
        super().sanity_check()

    # ------------------------------------------------------------------ match
    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        """Scheduler matches (they carry the request) end where a marked document that the store
        lacks begins, if they run into it (:meth:`DocumentReuse.capture_cut`), and are cut to a
        miss without a cached sink; the tree's own re-match after an insert (no request) sees the
        tree as it is."""
        result = super().match_prefix(params)
        matched = matched_len(result)
        if params.req is not None and matched and self.document_reuse is not None:
            cut = self.document_reuse.capture_cut(params.req, matched)
            if cut < matched:
                params = dataclasses.replace(params, key=params.key[:cut])
                result = super().match_prefix(params)
                matched = matched_len(result)
        if params.req is None or matched == 0 or self.sinks.sink == 0:
            return result
        key = self.sinks.key(params.key.token_ids, params.key.extra_key)
        if matched >= self.sinks.sink and self.sinks.lookup(key) is not None:
            return result
        return zero_match_result(self, result, extra_key=params.key.extra_key)

    # ------------------------------------------------------------------ rows
    def _generation(self, row: int) -> int:
        return int(self.req_to_token_pool.req_generation[row])

    def _sink_key(self, req: Req):
        return self.sinks.key(first_tokens(req, self.sinks.sink), req.extra_key)

    def on_extend_allocated(self, batch: ScheduleBatch) -> None:
        """Give each request of a new extend batch its sink: computed by the batch itself (no
        prefix), already in its row (a later chunk), or copied from the cache (a reused prefix)."""
        if self.sinks.sink == 0:
            return
        for req, prefix_len in zip(batch.reqs, batch.prefix_lens):
            row = req_row(req)
            gen = self._generation(row)
            if self._row_filled.get(row) == gen:
                continue
            if prefix_len == 0:
                self._row_filled[row] = gen
                continue
            block = self.sinks.lookup(self._sink_key(req))
            if block is None or prefix_len < self.sinks.sink:
                raise RuntimeError(
                    f"redknot: request {req.rid} reuses {prefix_len} tokens without a cached sink"
                )
            self.pool.queue_sink_copy(row=row, block=block, to_block=False)
            self._row_filled[row] = gen

    def _publish_sink(self, req: Req, computed_len: int) -> None:
        row = req_row(req)
        if (
            self.sinks.sink == 0
            or computed_len < self.sinks.sink
            or self._row_filled.get(row) != self._generation(row)
        ):
            return
        block = self.sinks.publish(self._sink_key(req))
        if block is not None:
            self.pool.queue_sink_copy(row=row, block=block, to_block=True)

    # ------------------------------------------------------------------ insert
    def _approximate(self, req: Req) -> bool:
        return self.document_reuse is not None and self.document_reuse.is_approximate(req)

    def cache_unfinished_req(self, req: Req, chunked: bool = False, **kwargs: Any) -> None:
        if self._approximate(req):
            # not inserted: the next chunk extends the request's own row; window slots that fell
            # out of the window are freed as SGLang frees them for a request it does not insert
            # (after a selective request's recompute extend, not before)
            fill = len(req.get_fill_ids())
            req.prefix_indices = self.req_to_token_pool.req_to_token[req_row(req), :fill].to(torch.int64, copy=True)
            if not self.document_reuse.holds_placed_windows(req):  # its recompute extend reads them
                slide_window(self, req, fill - 1)
            return
        if not self.disable:
            self._publish_sink(req, len(req.get_fill_ids()))
        super().cache_unfinished_req(req, chunked=chunked, **kwargs)
        if self.disable or not isinstance(req.last_node, int):
            return  # last_node is no tree node id: a streaming session's later turn (its session holds the KV)
        self._checkpoints_first(req)
        if not chunked:
            self._own_prompt_window(req)

    def _checkpoints_first(self, req: Req) -> None:
        """Move the window checkpoints on the path to ``req.last_node`` that lie before its last
        window (``sliding_window_size`` + a page) to the LRU end of the SWA component (module
        docstring). Not with SGLang's session partitions of the LRU."""
        if compat.SGLANG_0523:
            return
        lru = self.tree_core.lru_lists.get(ComponentType.SWA)
        if lru is None or lru.mid is not None:
            return
        root = self.tree_core.root_node
        node = self.tree_core.node_by_id(req.last_node)
        keep, depth = self.sliding_window_size + self.page_size, 0
        while node is not None and node is not root:
            if depth >= keep and lru.in_list(node):
                lru._remove_node(node)
                lru._add_node_after(lru.tail.lru_prev[lru._pt], node)
            depth += len(node.key)
            node = node.parent

    def owns_window(self, req: Req) -> bool:
        return req.rid in self.window_owners

    def _own_prompt_window(self, req: Req) -> None:
        """After the prompt's last chunk entered the tree: copy its last window into fresh slots
        for the request and lock only the full path before it (module docstring)."""
        if not private_windows(self.page_size):
            return
        tail = self.sliding_window_size
        end = req.cache_protected_len
        start = end - tail
        remaining = req.sampling_params.max_new_tokens - len(req.output_ids)
        if start <= 0 or remaining <= eviction_interval() or req.swa_prefix_lock_released:
            return
        evict_from_tree_cache(self, tail)  # the prompt's tail is still locked by the request
        copies = self.token_to_kv_pool_allocator.alloc(tail)
        if copies is None:
            self.private_window_misses += 1
            return
        row = req_row(req)
        req_to_token = self.req_to_token_pool.req_to_token
        self.pool.copy_slots(req_to_token[row, start:end], copies)
        # stream order: a forward that reads the new row entries finds the copies complete
        self.req_to_token_pool.write((row, slice(start, end)), copies.to(req_to_token.dtype))
        key = RadixKey(req.get_fill_ids()[:start], req.extra_key, is_bigram=self.tree_core.is_eagle)
        anchor = self.insert(InsertParams(key=key, value=req_to_token[row, :start].to(torch.int64),
                                          prev_prefix_len=start)).last_device_node  # splits the path at start
        lock = self.inc_lock_ref(anchor, skip_lock_components=(ComponentType.SWA,))
        self._dec_req_lock(req)
        req.last_node, req.swa_uuid_for_lock = anchor, None
        req.skip_lock_node_ids = lock.skip_lock_node_ids
        req.swa_prefix_lock_released = True  # the release at the end skips the SWA component
        req.cache_protected_len = start
        req.kv.swa_evicted_seqlen = start  # the copies' window slots are live (an earlier chunk's
        # insert may have left it past start: the tree's window of that chunk end)
        req.prefix_indices = req_to_token[row, : len(req.prefix_indices)].to(torch.int64, copy=True)
        self.window_owners.add(req.rid)
        self.private_windows += 1

    def cache_finished_req(self, req: Req, is_insert: bool = True, *, kv_len_to_handle: int, **kwargs: Any) -> None:
        if self.document_reuse is not None:
            is_insert = is_insert and not self.document_reuse.is_approximate(req)
            self.document_reuse.release(req)
        if is_insert and not self.disable:
            self._publish_sink(req, kv_len_to_handle)
        self.window_owners.discard(req.rid)
        super().cache_finished_req(req, is_insert=is_insert, kv_len_to_handle=kv_len_to_handle, **kwargs)

    def checkpoint(self, req: Req, *, up_to: int, **kwargs: Any) -> None:
        """SGLang 0.5.23's one insert path (chunks and finished requests; 0.5.17 calls the two
        methods above): the sink is published before the tokens enter the tree; an approximate
        request is not inserted (SGLang then resumes its next chunk at ``up_to`` and frees its
        own slots at release), its window slides as SGLang slides it for a request it does not
        insert."""
        if self._approximate(req):
            if not req.finished() and not self.document_reuse.holds_placed_windows(req):
                slide_window(self, req, up_to - 1)
            return
        if not self.disable:
            self._publish_sink(req, up_to)
        super().checkpoint(req, up_to=up_to, **kwargs)

    def on_release(self, req: Req, *, checkpointed: bool) -> None:
        """SGLang 0.5.23: the request's row is freed (finished, aborted or retracted)."""
        if self.document_reuse is not None:
            self.document_reuse.release(req)
        super().on_release(req, checkpointed=checkpointed)

    def prefix_device_indices(self, req: Req) -> torch.Tensor:
        """SGLang 0.5.23 writes a new request's row from its prefix: the tree's path for the
        exact prefix, then the slots document reuse placed after it at this admission."""
        placed = self.document_reuse.pending_slots(req) if self.document_reuse is not None else None
        if placed is None:
            return super().prefix_device_indices(req)
        n = len(placed)
        req.prefix_len -= n  # the tree's path covers the exact prefix
        try:
            path = super().prefix_device_indices(req)
        finally:
            req.prefix_len += n
        return torch.cat([path, placed.to(path.dtype)])
