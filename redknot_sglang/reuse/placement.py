"""Which cached documents a request can take instead of computing them: index math only.

SGLang computes one contiguous range of a request, ``[prefix_len, seq_len)``. So placed documents
of a place-only request must follow the exact prefix (what the radix tree matched) without a gap::

    prompt:  [ exact prefix (tree) ][ doc A ][ doc B ] text [ doc C ][ query ]
    placed:                    p -> [  A   ][  B   ]
    computed:                                      [ text ]                     cut before C
    placed (next chunk):                                  [  C   ]
    computed:                                                      [ query, ... ]

The run starts in the document that holds position ``p`` (the tree may have matched into it) and
goes on while the next document starts where the previous one ends and is cached. A document
that ends the prompt is never placed (the last token must be computed to sample from). The
admission hook cuts a request's extend where a later cached run starts, so that run is planned
here again before the next chunk.

A selective request (``gap_budget`` > 0) places past computed text: every cached document up to
the last one whose gaps (uncached documents, text between documents) fit the budget. Its next
extend computes the gaps and the rest at their true positions, causal by position (one scattered
extend, :meth:`~redknot_sglang.integration.document_reuse.DocumentReuse.rewrite_batch`)::

    prompt:  [ exact prefix (tree) ][ doc A ][ doc B new ] text [ doc C ][ query ]
    placed:                    p -> [  A   ]                    [  C   ]
    computed in one extend:                 [  gap: B + text   ]        [ query ... ]

Selective recompute then recomputes some placed tokens at their true positions
(:mod:`redknot_sglang.reuse.recompute`); which tokens is not decided here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Optional

from redknot_sglang.reuse.spans import CAPTURE_KEY, DOCUMENTS_KEY, RATIO_KEY, RECOVERY_KEY


@dataclasses.dataclass(frozen=True)
class RequestDocuments:
    """A request's document marks as the scheduler receives them (validated by the HTTP server).
    ``ratio``: selective recompute of that fraction of the placed tokens (0: place only);
    ``capture``: the request is a document's canonical capture request."""

    spans: tuple[tuple[int, int], ...]
    ratio: float = 0.0
    capture: bool = False

    @property
    def selective(self) -> bool:
        """Whether the request recomputes a set of tokens after placement."""
        return bool(self.ratio)

    @classmethod
    def of(cls, custom_params: Any, default_ratio: float) -> Optional[RequestDocuments]:
        """The marks of ``custom_params`` (None: unmarked); the ratio is the request's own, 0 for
        ``redknot_recovery: false``, else the server's ``default_ratio``."""
        if not isinstance(custom_params, dict) or DOCUMENTS_KEY not in custom_params:
            return None
        flat = custom_params[DOCUMENTS_KEY]
        spans = tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))
        capture = custom_params.get(CAPTURE_KEY) is True
        if custom_params.get(RECOVERY_KEY) is False:
            return cls(spans=spans, ratio=0.0, capture=capture)
        return cls(spans=spans, ratio=float(custom_params.get(RATIO_KEY, default_ratio)), capture=capture)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Document positions ``[doc_from, doc_from + length)`` of the document at prompt ``span``,
    placed at prompt positions ``[span[0] + doc_from, ...)``: K turns by ``span[0]``."""

    span: tuple[int, int]
    match: Any  # the store's DocumentMatch
    doc_from: int
    length: int

    @property
    def delta(self) -> int:
        return self.span[0]

    @property
    def start(self) -> int:
        """The prompt position of the piece's first token."""
        return self.span[0] + self.doc_from

    @property
    def end(self) -> int:
        return self.span[1]

    @property
    def doc_len(self) -> int:
        return self.span[1] - self.span[0]


def plan_pieces(spans: Sequence[tuple[int, int]], exact_len: int, prompt_len: int,
                lookup: Callable[[int, int], Any], *, gap_budget: int = 0) -> list[Piece]:
    """The documents to place after an exact prefix of ``exact_len`` tokens (see the module
    docstring); ``lookup(start, end)`` gives the store's match of a prompt range or None. With
    ``gap_budget`` > 0 the run goes on past gaps while they add up to at most that many tokens."""
    pieces: list[Piece] = []
    pos, gaps = exact_len, 0
    for s, e in spans:
        if e <= pos:
            continue
        if e >= prompt_len:  # it ends the prompt
            break
        gap = max(0, s - pos)
        if gap and (not gap_budget or gaps + gap > gap_budget):
            break
        match = lookup(s, e)
        if match is None:
            if not gap_budget:
                break
            continue  # computed: part of the gap before the next cached document
        gaps += gap
        start = max(s, pos)
        pieces.append(Piece(span=(s, e), match=match, doc_from=start - s, length=e - start))
        pos = e
    return pieces


def gap_ranges(pieces: Sequence[Piece], at: int) -> list[tuple[int, int]]:
    """The prompt ranges between ``at`` (the exact prefix) and the last piece's end that no piece
    covers: computed by the request's next extend."""
    out, pos = [], at
    for p in pieces:
        if p.start > pos:
            out.append((pos, p.start))
        pos = p.end
    return out


def window_rows(pieces: Sequence[Piece], at: int, keep: int, tail: int) -> list[tuple[int, int, int, int]]:
    """Where the local heads' KV of the placed positions among the last ``keep`` of ``[at, last
    piece's end)`` (those with a window slot) comes from: ``(piece index, slot offset from at, first
    tail row, rows)``. A document's tail holds its last ``min(doc_len, tail)`` positions; every
    piece ends at its document's end."""
    out = []
    first = pieces[-1].end - keep
    for i, p in enumerate(pieces):
        a = max(p.start, first)
        if a >= p.end:
            continue
        row = (a - p.span[0]) - (p.doc_len - min(p.doc_len, tail))
        if row < 0:
            raise ValueError(f"placed position {a} is not in its document's tail of {tail} positions")
        out.append((i, a - at, row, p.end - a))
    return out
