"""``DocumentReuse``: the segment store inside SGLang's serving path (head-split servers).

Two halves, one object, the same process (SGLang runs the model in the scheduler's process and
thread; GPU work is queued here and runs on the forward's stream):

* scheduler side, called by :class:`~redknot_sglang.integration.head_split_cache.HeadSplitRadixCache`
  and the admission hook: :meth:`place` gives an admitted request full slots for the cached
  documents right after its exact prefix (:mod:`redknot_sglang.reuse.placement`) and makes them
  part of its prefix, so SGLang computes only the rest; :meth:`plan_batch` notes which tokens of
  an extend batch belong to documents the store does not have yet, and which ones recovery
  recomputes (the sparse FFN's candidates, :mod:`redknot_sglang.reuse.sparse_ffn`).
* forward side, called by the head-split attention backend: :meth:`begin_forward` writes the
  queued placements into the pool, :meth:`capture` copies each layer's new K/V of noted documents,
  and after the last layer a complete document enters the store, turned back to position 0; the
  hooks of :mod:`redknot_sglang.integration.hooks.sparse_ffn` ask :meth:`ffn_rows` in deep layers.

Who owns which slots::

    req_to_token row:  [0, p)           [p, x)                          [x, seq)
                       tree's (locked)  placed: the request's own       the request's own
                                        full slot each; window slot     (SGLang's extend)
                                        only for the last min(x-p, W)

A request with placed KV is *approximate*: its tokens never enter the radix tree (the cache frees
``[p, seq)`` at the end instead of inserting), so no other request takes placed or recovered KV
as an exact prefix. Captured documents are KV computed in their first request's context, at their
prompt positions, and stored turned back to positions ``[0, n)``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Optional

import torch

from redknot_sglang.reuse.placement import Piece, RequestDocuments, plan_pieces, window_rows
from redknot_sglang.reuse.rope import RopeSpec, relocate_torch
from redknot_sglang.reuse.segment_store import DocumentKV, Namespace, SegmentStore, StoreError
from redknot_sglang.reuse.sparse_ffn import SparseFFN, candidate_range, ffn_rows

if TYPE_CHECKING:  # SGLang's types, for annotations only
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache

logger = logging.getLogger(__name__)

# placed slots are allocated in chunks so that the window slots they take at once stay small
_ALLOC_CHUNK = 4096


def documents_of(req: Req) -> Optional[RequestDocuments]:
    return RequestDocuments.of(getattr(req.sampling_params, "custom_params", None))


@dataclasses.dataclass
class _Placement:
    slots: torch.Tensor  # full slots of the placed positions, in prompt order
    pieces: list[Piece]
    keep: int  # the last `keep` positions have window slots


@dataclasses.dataclass
class RequestReuse:
    """What the side table keeps of one admitted request that holds placed KV (keyed by rid)."""

    placed: int = 0  # placed (relocated) tokens in its prefix
    recovered_from: Optional[int] = None  # first prompt position recovery recomputes; None: no recovery


@dataclasses.dataclass(eq=False)
class _Capture:
    """A document being captured from the request that computes it first."""

    key: tuple[Namespace, tuple[int, ...]]
    span: tuple[int, int]
    kv: Optional[DocumentKV] = None  # allocated on the forward side
    filled: int = 0


@dataclasses.dataclass(frozen=True)
class CaptureRun:
    """Tokens ``[batch_offset, batch_offset + tokens)`` of an extend batch are document positions
    ``[doc_offset, doc_offset + tokens)`` of ``capture``."""

    capture: _Capture
    batch_offset: int
    doc_offset: int
    tokens: int


@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Recovery's recomputed tokens of an extend batch (sparse FFN candidates) and how many run."""

    candidates: torch.Tensor  # bool over the batch's extend tokens
    kept: int


@dataclasses.dataclass
class ForwardPlan:
    """What the scheduler side hands to the next forward: placements to write, document tokens to
    capture, sparse FFN rows (extend batches)."""

    placements: list[_Placement] = dataclasses.field(default_factory=list)
    captures: list[CaptureRun] = dataclasses.field(default_factory=list)
    sparse: Optional[SparseRows] = None


class DocumentReuse:
    def __init__(self, store: SegmentStore, *, pool: Any, allocator: Any, model_key: str,
                 sparse_ffn: Optional[SparseFFN] = None):
        self.store = store
        self.sparse_ffn = sparse_ffn
        self.pool = pool
        self.allocator = allocator
        self.model_key = model_key
        self.cols = store.cols
        self.window, self.sink = self.cols.window, self.cols.sink
        self.rope: Optional[RopeSpec] = None  # set by the attention backend from the model
        self._requests: dict[str, RequestReuse] = {}  # rid -> requests holding placed KV
        self._placed: dict[str, _Placement] = {}  # rid -> placement not yet written
        self._captures: dict[str, list[_Capture]] = {}  # rid -> its documents being captured
        self._capturing: set[tuple[Namespace, tuple[int, ...]]] = set()
        self._next = ForwardPlan()  # scheduler side: filled until the next forward takes it
        self._now = ForwardPlan()  # forward side: the running forward's plan
        self._sparse_candidates = 0
        self._attn_norm: Optional[torch.Tensor] = None
        self.stats = {"placed_requests": 0, "placed_tokens": 0, "document_hits": 0, "captured_documents": 0,
                      "store_errors": 0, "ffn_skipped_token_layers": 0}

    def namespace(self, req: Req) -> Namespace:
        return Namespace(model=self.model_key, salt=req.extra_key)

    def counters(self) -> dict:
        """Reuse and store counters, as ``/get_server_info`` and the Prometheus gauges show them."""
        return {**self.stats, **self.store.stats()}

    def is_approximate(self, req: Req) -> bool:
        """Whether the request holds placed (relocated) KV, which never enters the radix tree."""
        state = self._requests.get(req.rid)
        return state is not None and state.placed > 0

    # ------------------------------------------------------------------ scheduler side
    def place(self, req: Req, tree: BasePrefixCache, *, next_chunk: bool = False) -> bool:
        """Before admission (or, without recovery, before the next chunk of a chunked request):
        replace the cached documents right after the request's prefix by placed KV (its prefix
        grows by them). Undone by :meth:`unplace` if the request is not admitted."""
        if not next_chunk:
            self._requests.pop(req.rid, None)  # a new admission (or one after a retraction)
        docs = documents_of(req)
        exact = len(req.prefix_indices)
        if (docs is None or (next_chunk and docs.recovery) or exact == 0 or exact < self.sink
                or self.allocator.page_size != 1):
            return False
        fill = req.full_untruncated_fill_ids
        ns = self.namespace(req)
        pieces = plan_pieces(docs.spans, exact, len(fill), lambda s, e: self.store.match(ns, fill[s:e]),
                             recovery=docs.recovery)
        if not pieces:
            return False
        n = sum(p.length for p in pieces)
        keep = min(n, self.window)
        slots = self._alloc(n, keep, req, tree)
        if slots is None:
            return False
        for p in pieces:
            self.store.lock(p.match)
        self._placed[req.rid] = _Placement(slots, pieces, keep)
        req.prefix_indices = torch.cat([req.prefix_indices, slots.to(req.prefix_indices.dtype)])
        state = self._requests.setdefault(req.rid, RequestReuse())
        state.placed += n
        state.recovered_from = exact + n if docs.recovery else None
        return True

    def unplace(self, req: Req) -> None:
        pl = self._placed.pop(req.rid)
        n = len(pl.slots)
        self.allocator.free(pl.slots)
        for p in pl.pieces:
            self.store.unlock(p.match)
        req.prefix_indices = req.prefix_indices[: len(req.prefix_indices) - n]
        state = self._requests[req.rid]
        state.placed -= n
        if state.placed == 0:
            del self._requests[req.rid]

    def next_run(self, req: Req, start: int, end: int) -> Optional[int]:
        """Without recovery: where, inside the extend ``[start, end)``, a cached document follows
        computed ones (the extend is then cut there, and the run is placed before the next chunk:
        :meth:`place`); None if nowhere."""
        docs = documents_of(req)
        if docs is None or docs.recovery or self.allocator.page_size != 1:
            return None
        ids, ns = req.origin_input_ids, self.namespace(req)
        for s, e in docs.spans:
            if start < s < end and e < len(ids) and self.store.contains(ns, ids[s:e]):
                return s
        return None

    def _alloc(self, n: int, keep: int, req: Req, tree: BasePrefixCache) -> Optional[torch.Tensor]:
        """``n`` full slots whose last ``keep`` have window slots, evicting from the tree (the
        request's own prefix locked) if needed; None if they cannot be had."""
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        alloc = self.allocator
        swa_peak = keep + min(n, _ALLOC_CHUNK)
        short_full = max(0, n - alloc.full_available_size())
        short_swa = max(0, swa_peak - alloc.swa_available_size())
        if short_full or short_swa:
            locked = tree.inc_lock_ref(req.last_node)
            try:
                tree.evict(EvictParams(num_tokens=short_full, swa_num_tokens=short_swa))
            finally:
                tree.dec_lock_ref(req.last_node, locked.to_dec_params())
        parts: list[torch.Tensor] = []
        for a in range(0, n, _ALLOC_CHUNK):
            b = min(n, a + _ALLOC_CHUNK)
            got = alloc.alloc(b - a)
            if got is None:
                for part in parts:
                    alloc.free(part)
                return None
            out_of_window = max(0, min(b, n - keep) - a)
            alloc.free_swa(got[:out_of_window])
            parts.append(got)
        return torch.cat(parts)

    def plan_batch(self, batch: ScheduleBatch) -> None:
        """After an extend batch has its slots: which of its tokens belong to documents to capture
        (entries ``(capture, batch token offset, document offset, tokens)``), and which are
        recomputed by recovery requests (sparse FFN candidates)."""
        self._next.sparse = self._plan_ffn(batch) if self.sparse_ffn is not None else None
        runs, offset = [], 0
        for req, pre, ext in zip(batch.reqs, batch.prefix_lens, batch.extend_lens):
            caps = self._captures.get(req.rid)
            if caps is None:
                caps = self._captures[req.rid] = self._new_captures(req, pre)
            for cap in caps:
                a, b = max(cap.span[0], pre), min(cap.span[1], pre + ext)
                if a < b:
                    runs.append(CaptureRun(cap, offset + a - pre, a - cap.span[0], b - a))
            offset += ext
        self._next.captures = runs

    def _plan_ffn(self, batch: ScheduleBatch) -> Optional[SparseRows]:
        mask = torch.zeros(sum(batch.extend_lens), dtype=torch.bool)
        offset = 0
        for req, pre, ext in zip(batch.reqs, batch.prefix_lens, batch.extend_lens):
            state = self._requests.get(req.rid)
            start = state.recovered_from if state is not None and state.placed > 0 else None
            if start is not None:
                a, b = candidate_range(len(req.origin_input_ids), start, self.sparse_ffn.keep_last)
                a, b = max(a, pre), min(b, pre + ext)
                if a < b:
                    mask[offset + a - pre : offset + b - pre] = True
            offset += ext
        n = int(mask.sum())
        return SparseRows(mask, self.sparse_ffn.kept(n)) if n else None

    def _new_captures(self, req: Req, prefix_len: int) -> list[_Capture]:
        docs = documents_of(req)
        if docs is None:
            return []
        ns, ids, out = self.namespace(req), req.origin_input_ids, []
        for s, e in docs.spans:
            key = (ns, tuple(ids[s:e]))
            if (s < prefix_len or e - s > self.store.max_document_tokens or key in self._capturing
                    or self.store.contains(*key)):
                continue
            self._capturing.add(key)
            out.append(_Capture(key=key, span=(s, e)))
        return out

    def release(self, req: Req) -> None:
        """The request is done (finished, aborted or retracted): drop its side-table entry and its
        unfinished captures."""
        self._requests.pop(req.rid, None)
        for cap in self._captures.pop(req.rid, []):
            self._capturing.discard(cap.key)

    def clear(self) -> None:
        self._requests.clear()
        self._captures.clear()
        self._capturing.clear()
        self.store.clear()

    # ------------------------------------------------------------------ forward side
    def begin_forward(self, is_extend: bool) -> None:
        """Take the plan the scheduler side made for this forward: write its placements; an extend
        forward also takes its capture runs and sparse FFN rows."""
        plan, self._next = self._next, ForwardPlan()
        plan.placements, self._placed = list(self._placed.values()), {}
        for pl in plan.placements:
            self._write(pl)
        if not is_extend:  # what was planned is for the extend forward still to come
            self._next.captures, self._next.sparse = plan.captures, plan.sparse
            plan.captures, plan.sparse = [], None
        elif plan.sparse is not None:
            self._sparse_candidates = int(plan.sparse.candidates.sum())
            plan.sparse = SparseRows(plan.sparse.candidates.to(self.pool.device, non_blocking=True), plan.sparse.kept)
        self._now = plan

    def sparse_ffn_layer(self, layer: int) -> bool:
        """Whether this forward's layer ``layer`` runs the FFN sparsely."""
        return self._now.sparse is not None and layer >= self.sparse_ffn.from_layer

    def note_attention(self, out: torch.Tensor) -> None:
        """The layer's attention output ``[tokens, hidden]``: its norms rank the FFN candidates."""
        self._attn_norm = out.float().norm(dim=-1)

    def ffn_rows(self) -> torch.Tensor:
        """Rows of the batch's tokens that run this layer's FFN (after :meth:`note_attention`)."""
        mask, kept = self._now.sparse.candidates, self._now.sparse.kept
        importance = self._attn_norm
        self.stats["ffn_skipped_token_layers"] += self._sparse_candidates - kept
        if mask.shape[0] < importance.shape[0]:  # a mixed batch: decode tokens follow, all run
            mask = torch.cat([mask, mask.new_zeros(importance.shape[0] - mask.shape[0])])
        return ffn_rows(mask, importance, kept)

    def _turn(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        """``k`` (``[tokens, heads, D]``) turned by ``delta`` positions, as a new tensor: our Triton
        kernel on CUDA (in place on a copy), the torch path elsewhere."""
        if k.device.type != "cuda":
            return relocate_torch(k, self.rope, delta)
        from redknot_sglang.kernels.rope_relocate import rope_relocate

        out = k.contiguous().clone()
        rope_relocate(out, torch.arange(out.shape[0], device=out.device), self.rope.inv_freq, delta,
                      rotary_dim=self.rope.rotary_dim, neox=self.rope.neox)
        return out

    def _write(self, pl: _Placement) -> None:
        pool, dt = self.pool, self.pool.dtype
        kvs, start = [], 0
        for p in pl.pieces:
            kv = self.store.gather(p.match)
            kvs.append(kv)
            slots = pl.slots[start : start + p.length]
            k = self._turn(kv.k_global[p.doc_from : p.doc_from + p.length], p.delta)
            v = kv.v_global[p.doc_from : p.doc_from + p.length]
            for layer in range(len(pool.full_kv_pool.k)):
                c = self.cols.global_cols(layer)
                pool.full_kv_pool.k[layer][slots] = k[:, c].to(dt)
                pool.full_kv_pool.v[layer][slots] = v[:, c].to(dt)
            start += p.length
        ends = torch.cumsum(torch.tensor([p.length for p in pl.pieces]), 0).tolist()
        for i, row, n in window_rows(pl.pieces, pl.keep, self.window):
            p, kv = pl.pieces[i], kvs[i]
            win = pool.full_to_swa_index_mapping[pl.slots[ends[i] - n : ends[i]]]
            k = self._turn(kv.k_tail[row : row + n], p.delta)
            v = kv.v_tail[row : row + n]
            for layer in range(len(pool.swa_kv_pool.k)):
                c = self.cols.local_cols(layer)
                pool.swa_kv_pool.k[layer][win] = k[:, c].to(dt)
                pool.swa_kv_pool.v[layer][win] = v[:, c].to(dt)
        for p in pl.pieces:
            self.store.unlock(p.match)
        self.stats["placed_requests"] += 1
        self.stats["placed_tokens"] += len(pl.slots)
        self.stats["document_hits"] += len(pl.pieces)

    def capture(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy layer ``layer``'s new K/V (``[tokens, heads, D]``, global heads first) of the
        planned document tokens; after the last layer, store the documents that are complete."""
        if not self._now.captures:
            return
        g = self.cols.global_cols(layer)
        lo = self.cols.local_cols(layer)
        ng = g.stop - g.start
        for run in self._now.captures:
            cap, off, doc_off, n = run.capture, run.batch_offset, run.doc_offset, run.tokens
            kv = cap.kv or self._alloc_capture(cap)
            kv.k_global[doc_off : doc_off + n, g] = k[off : off + n, :ng]
            kv.v_global[doc_off : doc_off + n, g] = v[off : off + n, :ng]
            doc_len = cap.span[1] - cap.span[0]
            for dst_k, dst_v, first in ((kv.k_sink, kv.v_sink, 0),
                                        (kv.k_tail, kv.v_tail, doc_len - kv.k_tail.shape[0])):
                a, b = max(doc_off, first), min(doc_off + n, first + dst_k.shape[0])
                if a < b:
                    src = slice(off + a - doc_off, off + b - doc_off)
                    dst_k[a - first : b - first, lo] = k[src, ng:]
                    dst_v[a - first : b - first, lo] = v[src, ng:]
        if layer == len(self.cols.g_start) - 2:
            self._end_capture()

    def _alloc_capture(self, cap: _Capture) -> DocumentKV:
        n = cap.span[1] - cap.span[0]
        c, d, dt, dev = self.cols, self.store.head_dim, self.pool.dtype, self.pool.device

        def buf(rows: int, heads: int) -> torch.Tensor:
            return torch.empty(rows, heads, d, dtype=dt, device=dev)

        cap.kv = DocumentKV(k_global=buf(n, c.num_global), v_global=buf(n, c.num_global),
                            k_sink=buf(min(n, c.sink), c.num_local), v_sink=buf(min(n, c.sink), c.num_local),
                            k_tail=buf(min(n, c.window), c.num_local), v_tail=buf(min(n, c.window), c.num_local))
        return cap.kv

    def _end_capture(self) -> None:
        runs, self._now.captures = self._now.captures, []
        for run in runs:
            run.capture.filled += run.tokens
        for cap in {id(r.capture): r.capture for r in runs}.values():
            if cap.filled < cap.span[1] - cap.span[0]:
                continue
            self._capturing.discard(cap.key)
            kv, delta = cap.kv, -cap.span[0]
            kv = dataclasses.replace(kv, k_global=self._turn(kv.k_global, delta),
                                     k_sink=self._turn(kv.k_sink, delta), k_tail=self._turn(kv.k_tail, delta))
            cap.kv = None
            try:
                self.store.insert(cap.key[0], cap.key[1], kv)
                self.stats["captured_documents"] += 1
            except StoreError as e:  # too large, or the store is full of documents in use
                self.stats["store_errors"] += 1
                logger.warning("%s; the document is served without reuse", e)
