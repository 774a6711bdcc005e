"""``DocumentReuse``: the segment store inside SGLang's serving path (head-split servers).

Two halves, one object, the same process (SGLang runs the model in the scheduler's process and
thread; GPU work is queued here and runs on the forward's stream):

* scheduler side, called by :class:`~redknot_sglang.integration.head_split_cache.HeadSplitRadixCache`
  and the admission hooks: :meth:`place` gives an admitted request full slots for the cached
  documents right after its exact prefix (a selective request's past gaps too:
  :mod:`redknot_sglang.reuse.placement`) and makes them part of its prefix, so SGLang computes
  only the rest; :meth:`cut_point` says where an admitted extend stops; :meth:`rewrite_batch`
  turns the extend after a placement with gaps into one over the gaps and that extend, and a
  selective request's last extend into its recompute set; :meth:`plan_batch` notes which tokens
  of an extend batch belong to documents the store does not have yet, and whose attention ranks
  the placed tokens.
* forward side, called by the head-split attention backend: :meth:`begin_forward` writes the
  queued placements into the pool and fills the recompute sets' tokens, positions and slots,
  :meth:`observe` sums the question's attention over placed KV, :meth:`capture` copies each
  layer's new K/V of noted documents, and after the last layer a complete document enters the
  store, turned back to position 0.

A marked request's mode is its ratio ``R`` (:class:`~redknot_sglang.reuse.placement.RequestDocuments`):
0 places only; selective recompute (the default, the server's ``R > 0``) takes two extends::

    prompt:        [ exact ][ A placed ][ B new ][ C placed ][ question ... last ]
    admission:               placed: every cached document within the round's gap budget
                             (window slots for every position, the store's local heads are whole)
    extend 1:                           [ B    ]            [ question ... ]     cut one token short;
                             the gaps and SGLang's range at their positions, causal by position;
                             the question's rows (global heads) sum their attention per position
    extend 2:      SGLang schedules the last token; rewritten to the recompute set
                   (reuse/recompute.py) at its true positions: input ids, positions and slots
                   filled on the forward's stream, both kinds of heads on position-causal kernels

A request one of whose documents a running request is capturing waits for that capture
(:meth:`awaits_capture`) and then has it placed.

Who owns which slots::

    req_to_token row:  [0, p)           [p, x)                          [x, seq)
                       tree's (locked)  placed and gaps: the request's  the request's own
                                        own full slot each; window      (SGLang's extend)
                                        slot only for the last
                                        min(x-p, W) (selective: all)

A request with placed KV is *approximate*: its tokens never enter the radix tree (the cache frees
``[p, seq)`` at the end instead of inserting), so no other request takes placed KV, or KV computed
over it, as an exact prefix. Captured documents are KV computed in their first request's context,
at their prompt positions, and stored turned back to positions ``[0, n)``; under canonical capture
(``canonical``) only capture requests store documents, each computed alone after the canonical
prefix (:mod:`~redknot_sglang.integration.hooks.canonical_capture`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Optional

import torch

from redknot_sglang.patches import compat
from redknot_sglang.patches.compat import req_row
from redknot_sglang.reuse.placement import Piece, RequestDocuments, gap_ranges, plan_pieces, window_rows
from redknot_sglang.reuse.recompute import RecomputeSet, attention_mass, pick, recompute_set
from redknot_sglang.reuse.rope import RopeSpec, relocate_torch
from redknot_sglang.reuse.segment_store import DocumentKV, Namespace, SegmentStore, StoreError

if TYPE_CHECKING:  # SGLang's types, for annotations only
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache

logger = logging.getLogger(__name__)

# placed slots are allocated in chunks so that the window slots they take at once stay small
_ALLOC_CHUNK = 4096
# a selective request's question rows whose attention ranks the placed tokens (its last ones)
QUESTION_ROWS = 512


@dataclasses.dataclass
class _Placement:
    slots: torch.Tensor  # full slots of positions [at, the last piece's end), gaps included, in prompt order
    pieces: list[Piece]
    keep: int  # the last `keep` positions have window slots
    at: int  # the prompt position of the first placed token (the prefix before placement)

    @property
    def windowless(self) -> int:
        """The first placed positions, which have no window slot."""
        return len(self.slots) - self.keep

    @property
    def placed(self) -> int:
        """Positions whose KV comes from the store (the rest are gaps the next extend computes)."""
        return sum(p.length for p in self.pieces)


@dataclasses.dataclass
class RequestReuse:
    """What the side table keeps of one admitted request that holds placed KV (keyed by rid)."""

    placed: int = 0  # placed (relocated) tokens in its prefix
    ranges: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # placed prompt ranges
    gaps: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # in its prefix, not yet computed
    mass: Optional[torch.Tensor] = None  # selective: attention the question paid each position
    selective: bool = False  # holds placed window slots until its recompute extend
    awaiting: bool = False  # selective: extend 1 was cut at ``cut``, extend 2 (from there) recomputes
    cut: int = 0


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
class QuestionRows:
    """Tokens ``[batch_offset, batch_offset + rows)`` of an extend batch, at positions from
    ``first_position``, are a selective request's question: their attention over the request's
    row of ``req_to_token`` (``seq_len`` positions) is summed into ``mass``."""

    batch_offset: int
    rows: int
    first_position: int
    req_row: int
    seq_len: int
    mass: torch.Tensor


@dataclasses.dataclass(frozen=True)
class RecomputeRun:
    """Tokens ``[batch_offset, batch_offset + set.size)`` of an extend batch sit at scattered
    positions of one request: its recompute set, picked by ``mass`` on the forward's stream, or
    (``ranges``, known here) the gaps of its placement and the extend after them; ``ids``: the
    prompt."""

    batch_offset: int
    set: RecomputeSet
    req_row: int
    ids: torch.Tensor
    mass: torch.Tensor
    ranges: Optional[list[tuple[int, int]]] = None


@dataclasses.dataclass
class ForwardPlan:
    """What the scheduler side hands to the next forward: placements to write, document tokens to
    capture, question rows to observe and recompute sets (extend batches)."""

    placements: list[_Placement] = dataclasses.field(default_factory=list)
    captures: list[CaptureRun] = dataclasses.field(default_factory=list)
    questions: list[QuestionRows] = dataclasses.field(default_factory=list)
    recomputes: list[RecomputeRun] = dataclasses.field(default_factory=list)

    @property
    def scattered(self) -> bool:
        """Whether some queries of this forward sit at scattered positions (a recompute set)."""
        return bool(self.recomputes)


class DocumentReuse:
    def __init__(self, store: SegmentStore, *, pool: Any, allocator: Any, req_to_token: torch.Tensor, model_key: str,
                 recompute_ratio: float = 0.0, canonical: bool = False):
        self.store = store
        self.recompute_ratio = recompute_ratio
        self.canonical = canonical  # documents are captured only by capture requests (canonical capture)
        self.pool = pool
        self.allocator = allocator
        self.req_to_token = req_to_token  # SGLang's request rows
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
        self.stats = {"placed_requests": 0, "placed_tokens": 0, "gap_tokens": 0, "recomputed_tokens": 0,
                      "document_hits": 0, "captured_documents": 0, "store_errors": 0, "placement_misses": 0}

    def documents(self, req: Req) -> Optional[RequestDocuments]:
        """The request's marks and mode (None: unmarked)."""
        return RequestDocuments.of(getattr(req.sampling_params, "custom_params", None), self.recompute_ratio)

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
    def awaits_capture(self, req: Req) -> bool:
        """Whether a document the request marks is being captured by a running request: it then
        waits for a later round, where the document is placed, rather than compute it again."""
        if not self._capturing:
            return False
        docs = self.documents(req)
        if docs is None:
            return False
        return any(self._key(req, span) in self._capturing for span in docs.spans)

    def capture_cut(self, req: Req, matched: int) -> int:
        """Where a scheduler match of ``matched`` exact tokens must end: at the start of a marked
        document that the match runs into and that the store lacks (and no request is capturing),
        so that this request computes it whole and captures it; else ``matched``. Documents that
        begin alike ("Document 12: ...") meet each other's first tokens in the radix tree, and
        every preloaded document follows the same canonical prefix."""
        docs = self.documents(req)
        for s, e in docs.spans if self._captures_from(docs) else ():
            if s < matched < e and e - s <= self.store.max_document_tokens:
                key = self._key(req, (s, e))
                if key not in self._capturing and not self.store.contains(*key):
                    return s
        return matched

    def _key(self, req: Req, span: tuple[int, int]) -> tuple[Namespace, tuple[int, ...]]:
        """The store's key of the request's document at prompt ``span`` (captures are noted by it)."""
        return self.namespace(req), tuple(req.origin_input_ids[span[0] : span[1]])

    def place(self, req: Req, tree: BasePrefixCache, *, next_chunk: bool = False, gap_budget: int = 0) -> bool:
        """Before admission (or before the next chunk of a chunked request): replace the cached
        documents right after the request's prefix by placed KV (its prefix grows by them); a
        selective request's run goes on past gaps of up to ``gap_budget`` tokens in all, which
        its next extend computes (:meth:`rewrite_batch`). Undone by :meth:`unplace` if the
        request is not admitted."""
        if not next_chunk:
            self._requests.pop(req.rid, None)  # a new admission (or one after a retraction)
        docs = self.documents(req)
        exact = compat.prefix_len(req)
        if docs is None or exact == 0 or exact < self.sink or self.allocator.page_size != 1:
            return False
        fill = req.full_untruncated_fill_ids
        ns = self.namespace(req)
        pieces = plan_pieces(docs.spans, exact, len(fill), lambda s, e: self.store.match(ns, fill[s:e]),
                             gap_budget=gap_budget if docs.selective else 0)
        if not pieces:
            return False
        n = pieces[-1].end - exact
        keep = n if docs.selective else min(n, self.window)
        slots = self._alloc(n, keep, req, tree)
        if slots is None:
            self.stats["placement_misses"] += 1
            return False
        for p in pieces:
            self.store.lock(p.match)
        pl = self._placed[req.rid] = _Placement(slots, pieces, keep, exact)
        compat.grow_prefix(req, slots, self.req_to_token)
        state = self._requests.setdefault(req.rid, RequestReuse())
        state.placed += pl.placed
        state.ranges += [(p.start, p.end) for p in pieces]
        state.gaps = gap_ranges(pieces, exact)
        state.selective = docs.selective
        return True

    def admitted(self, req: Req) -> None:
        """The request was admitted with the placement :meth:`place` made: its placed positions
        without a window slot read as slid out of its window."""
        pl = self._placed[req.rid]
        if pl.windowless:
            compat.skip_window(req, self.req_to_token, self.allocator, pl.at, pl.at + pl.windowless)

    def pending_slots(self, req: Req) -> Optional[torch.Tensor]:
        """The slots placed for a request at this admission (not yet in its row)."""
        pl = self._placed.get(req.rid)
        return None if pl is None else pl.slots

    def unplace(self, req: Req) -> None:
        pl = self._placed.pop(req.rid)
        compat.free_placed(self.allocator, pl.slots, pl.windowless)
        for p in pl.pieces:
            self.store.unlock(p.match)
        compat.shrink_prefix(req, len(pl.slots))
        state = self._requests[req.rid]
        state.placed -= pl.placed
        del state.ranges[len(state.ranges) - len(pl.pieces):]
        state.gaps = []
        if state.placed == 0:
            del self._requests[req.rid]

    def cut_point(self, req: Req, start: int, end: int) -> Optional[int]:
        """Where an admitted extend ``[start, end)`` stops short, or None: at the first document's
        start (the text before it, a system prompt that later requests share, then enters the tree
        as a chunk of its own, whose end keeps a window: an exact prefix to place documents after),
        where a cached document follows computed ones (the run is placed before the next chunk:
        :meth:`place`), or, for a selective request holding placed KV, one token before the
        prompt's end or where its prompt logprobs start, if earlier (the rest's extend becomes the
        recompute set, which ends with it: :meth:`rewrite_batch`)."""
        docs = self.documents(req)
        if docs is None or self.allocator.page_size != 1:
            return None
        first = docs.spans[0][0]
        if start < first < end and first >= self.sink:
            return first
        ids, ns = req.origin_input_ids, self.namespace(req)
        for s, e in docs.spans:
            if start < s < end and e < len(ids) and self.store.contains(ns, ids[s:e]):
                return s
        state = self._requests.get(req.rid)
        if state is not None and state.selective and not state.awaiting and end == len(ids):
            cut = end - 1
            if req.return_logprob and 0 <= req.logprob_start_len < cut:
                cut = req.logprob_start_len
            if cut > start and docs.spans[-1][1] <= cut:
                state.awaiting, state.cut = True, cut
                return cut
            state.selective = False  # no question to rank the placed tokens by: place only
        return None

    def holds_placed_windows(self, req: Req) -> bool:
        """Whether the request's placed window slots must stay until its recompute extend."""
        state = self._requests.get(req.rid)
        return state is not None and state.selective

    def rewrite_batch(self, batch: ScheduleBatch) -> None:
        """After SGLang prepared an extend batch, two kinds of a request's extend run at scattered
        positions (causal by position): the first extend after a placement with gaps computes the
        gaps and then SGLang's range (token ids, positions and slots known here); a selective
        request whose extend is the rest of its prompt after its cut extends its recompute set
        instead, which ends with that rest (unmarked text, so its prompt logprobs keep their place
        at the end), its placed tokens picked on the forward's stream (:meth:`fill_recomputes`).
        The batch gets placeholders of each run's size."""
        before = list(batch.extend_lens)
        runs, offset = [], 0
        for i, req in enumerate(batch.reqs):
            state = self._requests.get(req.rid)
            pre = batch.prefix_lens[i]
            seq = pre + before[i]
            rs = ranges = None
            if state is not None and state.gaps:  # its prefix holds slots it must compute now
                ranges, state.gaps = [*state.gaps, (pre, seq)], []
                fixed = torch.cat([torch.arange(a, b) for a, b in ranges])
                rs = RecomputeSet(fixed, torch.zeros(0, dtype=torch.bool), 0)
                gap_tokens = len(fixed) - before[i]
                if not req.retracted_stain:  # SGLang counted the gaps in the prefix as cached
                    req.cached_tokens -= gap_tokens
                self.stats["gap_tokens"] += gap_tokens
            elif (state is not None and state.awaiting and pre == state.cut and seq == len(req.origin_input_ids)
                  and batch.prefill_input_ids_cpu is not None):
                docs = self.documents(req)
                rs = recompute_set(docs.spans, state.ranges, seq, docs.ratio)
                state.awaiting, state.selective = False, False
                self.stats["recomputed_tokens"] += rs.size
            if rs is not None:
                dev = self.pool.device
                ids = torch.tensor(req.origin_input_ids, dtype=batch.prefill_input_ids_cpu.dtype, device=dev)
                if ranges is not None:  # nothing to pick
                    mass = torch.empty(0, device=dev)
                else:
                    mass = state.mass if state.mass is not None else torch.zeros(seq, device=dev)
                    state.mass = None
                rs = RecomputeSet(rs.fixed.to(dev), rs.candidates.to(dev), rs.picks)
                runs.append(RecomputeRun(offset, rs, req_row(req), ids, mass, ranges))
                batch.extend_lens[i], batch.prefix_lens[i] = rs.size, seq - rs.size
                compat.set_extend_range(req, seq - rs.size, seq)  # what SGLang's logprob output reads
                batch.extend_logprob_start_lens[i] += rs.size - before[i]
            offset += batch.extend_lens[i]
        if not runs:
            return
        # token ids and slots: a placeholder run before each rewritten rest, filled on the forward side
        ids, loc = batch.prefill_input_ids_cpu, batch.out_cache_loc
        id_parts, loc_parts, o = [], [], 0
        for old, new in zip(before, batch.extend_lens):
            if new > old:
                id_parts.append(ids.new_zeros(new - old))
                loc_parts.append(loc.new_zeros(new - old))
            id_parts.append(ids[o : o + old])
            loc_parts.append(loc[o : o + old])
            o += old
        flat = torch.cat(id_parts)
        batch.prefill_input_ids_cpu = flat.pin_memory() if ids.is_pinned() else flat
        batch.out_cache_loc = torch.cat(loc_parts)
        batch.extend_num_tokens = sum(batch.extend_lens)
        self._next.recomputes = runs

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
        parts: list[tuple[torch.Tensor, int]] = []  # (slots, how many first ones lost their window slot)
        for a in range(0, n, _ALLOC_CHUNK):
            b = min(n, a + _ALLOC_CHUNK)
            got = alloc.alloc(b - a)
            if got is None:
                for part, windowless in parts:
                    compat.free_placed(alloc, part, windowless)
                return None
            out_of_window = max(0, min(b, n - keep) - a)
            alloc.free_swa(got[:out_of_window])
            parts.append((got, out_of_window))
        return torch.cat([part for part, _ in parts])

    def plan_batch(self, batch: ScheduleBatch) -> None:
        """After an extend batch has its slots (and :meth:`rewrite_batch`): which of its tokens
        belong to documents to capture (entries ``(capture, batch token offset, document offset,
        tokens)``), and which are a selective request's question, cut one token short. A request's
        tokens are its extend's range, or the ranges of its gap run in prompt order; a recompute
        set has neither."""
        runs_at = {r.batch_offset: r for r in self._next.recomputes}
        runs, questions, offset = [], [], 0
        for req, pre, ext in zip(batch.reqs, batch.prefix_lens, batch.extend_lens):
            run = runs_at.get(offset)
            if run is not None and run.ranges is None:
                offset += ext
                continue
            ranges = run.ranges if run is not None else [(pre, pre + ext)]
            state = self._requests.get(req.rid)
            last, end = ranges[-1]
            if state is not None and state.awaiting and end == state.cut:
                # the question: the text after the last document, its last QUESTION_ROWS tokens
                first = max(last, self.documents(req).spans[-1][1], end - QUESTION_ROWS)
                state.mass = torch.zeros(len(req.origin_input_ids), device=self.pool.device)
                questions.append(QuestionRows(offset + ext - (end - first), end - first, first, req_row(req), end,
                                              state.mass))
            caps = self._captures.get(req.rid)
            if caps is None:
                caps = self._captures[req.rid] = self._new_captures(req, ranges[0][0])
            done = offset
            for a, b in ranges:
                for cap in caps:
                    x, y = max(cap.span[0], a), min(cap.span[1], b)
                    if x < y:
                        runs.append(CaptureRun(cap, done + x - a, x - cap.span[0], y - x))
                done += b - a
            offset += ext
        self._next.captures = runs
        self._next.questions = questions

    def _captures_from(self, docs: Optional[RequestDocuments]) -> bool:
        """Whether a request with these marks stores the documents it computes whole: any marked
        request, or under canonical capture only a capture request."""
        return docs is not None and (docs.capture or not self.canonical)

    def _new_captures(self, req: Req, prefix_len: int) -> list[_Capture]:
        docs = self.documents(req)
        if not self._captures_from(docs):
            return []
        out = []
        for s, e in docs.spans:
            key = self._key(req, (s, e))
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
        forward also takes its capture runs, question rows and recompute sets."""
        plan, self._next = self._next, ForwardPlan()
        plan.placements, self._placed = list(self._placed.values()), {}
        for pl in plan.placements:
            self._write(pl)
        if not is_extend:  # what was planned is for the extend forward still to come
            self._next = dataclasses.replace(plan, placements=[])
            plan = ForwardPlan(placements=plan.placements)
        self._now = plan

    @property
    def scattered(self) -> bool:
        """Whether this forward's queries include recompute sets at scattered positions."""
        return self._now.scattered

    def fill_recomputes(self, input_ids: torch.Tensor, positions: torch.Tensor, out_cache_loc: torch.Tensor,
                        req_to_token: torch.Tensor) -> None:
        """Each recompute set of this forward: pick its placed tokens by the question's attention,
        then write its token ids, true positions and slots (the placed entries it overwrites)
        into the forward's placeholders. Runs on the forward's stream, after extend 1's forward."""
        for run in self._now.recomputes:
            pos = pick(run.mass, run.set)
            span = slice(run.batch_offset, run.batch_offset + run.set.size)
            input_ids[span] = run.ids[pos]
            positions[span] = pos.to(positions.dtype)
            out_cache_loc[span] = req_to_token[run.req_row, pos].to(out_cache_loc.dtype)

    def observe(self, q_global: torch.Tensor, k_global: torch.Tensor, req_to_token: torch.Tensor,
                scale: float) -> None:
        """Sum the attention each selective request's question pays its positions in this layer:
        ``q_global`` the batch's global query heads ``[tokens, Hq, D]``, ``k_global`` the layer's
        global K buffer ``[slots, G, D]``."""
        for run in self._now.questions:
            q = q_global[run.batch_offset : run.batch_offset + run.rows]
            k = k_global[req_to_token[run.req_row, : run.seq_len].long()]
            q_pos = torch.arange(run.first_position, run.first_position + run.rows, device=q.device)
            run.mass[: run.seq_len] += attention_mass(q, k, q_pos, scale)

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
        """Write the placement's pieces one document at a time (a document's KV is gathered on
        the device once, its turned copies live only while it is written)."""
        pool, dt = self.pool, self.pool.dtype
        windows = {i: (at, row, n) for i, at, row, n in window_rows(pl.pieces, pl.at, pl.keep, self.store.tail)}
        for i, p in enumerate(pl.pieces):
            kv = self.store.gather(p.match)
            slots = pl.slots[p.start - pl.at : p.end - pl.at]
            k = self._turn(kv.k_global[p.doc_from : p.doc_from + p.length], p.delta)
            v = kv.v_global[p.doc_from : p.doc_from + p.length]
            for layer in range(len(pool.full_kv_pool.k)):
                c = self.cols.global_cols(layer)
                pool.full_kv_pool.k[layer][slots] = k[:, c].to(dt)
                pool.full_kv_pool.v[layer][slots] = v[:, c].to(dt)
            if i not in windows:
                continue
            at, row, n = windows[i]
            win = pool.full_to_swa_index_mapping[pl.slots[at : at + n]]
            k = self._turn(kv.k_tail[row : row + n], p.delta)
            v = kv.v_tail[row : row + n]
            for layer in range(len(pool.swa_kv_pool.k)):
                c = self.cols.local_cols(layer)
                pool.swa_kv_pool.k[layer][win] = k[:, c].to(dt)
                pool.swa_kv_pool.v[layer][win] = v[:, c].to(dt)
        for p in pl.pieces:
            self.store.unlock(p.match)
        self.stats["placed_requests"] += 1
        self.stats["placed_tokens"] += pl.placed
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

        tail = min(n, self.store.tail)
        cap.kv = DocumentKV(k_global=buf(n, c.num_global), v_global=buf(n, c.num_global),
                            k_sink=buf(min(n, c.sink), c.num_local), v_sink=buf(min(n, c.sink), c.num_local),
                            k_tail=buf(tail, c.num_local), v_tail=buf(tail, c.num_local))
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
