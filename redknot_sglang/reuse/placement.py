"""Which cached documents a request can take instead of computing them: index math only.

SGLang computes one contiguous range of a request, ``[prefix_len, seq_len)``. So placed documents
must follow the exact prefix (what the radix tree matched) without a gap::

    prompt:  [ exact prefix (tree) ][ doc A ][ doc B ] text [ doc C ][ query ]
    placed:                    p -> [  A   ][  B   ]
    computed:                                      [ text ]                     cut before C
    placed (next chunk):                                  [  C   ]
    computed:                                                      [ query, ... ]

The run starts in the document that holds position ``p`` (the tree may have matched into it) and
goes on while the next document starts where the previous one ends and is cached. A document
that ends the prompt is never placed (the last token must be computed to sample from). The
admission hook cuts a request's extend where a later cached run starts, so that run is planned
here again before the next chunk. Selective recompute then recomputes some placed tokens at their
true positions (:mod:`redknot_sglang.reuse.recompute`); which tokens is not decided here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Optional

from redknot_sglang.reuse.spans import DOCUMENTS_KEY, RATIO_KEY, RECOVERY_KEY


@dataclasses.dataclass(frozen=True)
class RequestDocuments:
    """A request's document marks as the scheduler receives them (validated by the HTTP server).
    ``ratio``: selective recompute of that fraction of the placed tokens (0: place only)."""

    spans: tuple[tuple[int, int], ...]
    ratio: float = 0.0

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
        if custom_params.get(RECOVERY_KEY) is False:
            return cls(spans=spans, ratio=0.0)
        return cls(spans=spans, ratio=float(custom_params.get(RATIO_KEY, default_ratio)))


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
    def doc_len(self) -> int:
        return self.span[1] - self.span[0]


def plan_pieces(spans: Sequence[tuple[int, int]], exact_len: int, prompt_len: int,
                lookup: Callable[[int, int], Any]) -> list[Piece]:
    """The documents to place after an exact prefix of ``exact_len`` tokens (see the module
    docstring); ``lookup(start, end)`` gives the store's match of a prompt range or None."""
    pieces: list[Piece] = []
    pos = exact_len
    for s, e in spans:
        if e <= pos:
            continue
        if s > pos or e >= prompt_len:  # a gap before it, or it ends the prompt
            break
        match = lookup(s, e)
        if match is None:
            break
        pieces.append(Piece(span=(s, e), match=match, doc_from=pos - s, length=e - pos))
        pos = e
    return pieces


def window_rows(pieces: Sequence[Piece], keep: int, tail: int) -> list[tuple[int, int, int]]:
    """Where the last ``keep`` placed positions, those whose local heads' KV is written, come
    from: ``(piece index, first tail row, rows)``, last piece first. A document's tail holds its
    last ``min(doc_len, tail)`` positions, and every piece ends at its document's end."""
    out = []
    for i in range(len(pieces) - 1, -1, -1):
        if keep <= 0:
            break
        p = pieces[i]
        n = min(keep, p.length)
        out.append((i, min(p.doc_len, tail) - n, n))
        keep -= n
    return out
