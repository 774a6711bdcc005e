"""Document spans of a request: which pieces of the prompt are reusable documents.

A request marks its documents in ``sampling_params.custom_params`` (native ``/generate``) or
``extra_body={"custom_params": ...}`` (OpenAI-compatible chat), under :data:`DOCUMENTS_KEY`::

    "custom_params": {"redknot_documents": [[120, 1144], [1144, 2100]]}   # token ranges [start, end)
    "custom_params": {"redknot_documents": [{"text": "...doc one..."}, {"text": "...doc two..."}]}
    "custom_params": {"redknot_documents": [...], "redknot_recompute_ratio": 0.1}  # selective recompute
    "custom_params": {"redknot_documents": [...], "redknot_recovery": false}  # place only (ratio 0)
    "custom_params": {"redknot_documents": [...], "redknot_recovery": true}   # selective, the server's ratio

A marked request is served by selective recompute at the server's ``--redknot-recompute-ratio``
unless it says otherwise: ``redknot_recompute_ratio`` sets its own ratio, ``redknot_recovery: false``
places only (ratio 0), ``redknot_recovery: true`` asks for the server's ratio explicitly (refused by
a server whose ratio is 0). A request gives at most one of the two keys.

Text pieces are found in the prompt's token ids, in order (each after the previous span). The
resolved token ranges replace the marks (as ``[[start, end], ...]``), so the scheduler receives
token ranges only. Anything wrong raises :class:`SpanError`, a ``ValueError``: SGLang answers
HTTP 400 with the message and goes on serving other requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

DOCUMENTS_KEY = "redknot_documents"
RECOVERY_KEY = "redknot_recovery"  # optional: true = selective at the server's ratio, false = place only
RATIO_KEY = "redknot_recompute_ratio"  # optional: selective recompute's ratio (default: the server's flag)
CAPTURE_KEY = "redknot_capture"  # set by capture requests (integration/hooks/canonical_capture.py)


class SpanError(ValueError):
    """A request's document marks that cannot be served."""


def _find(haystack: Sequence[int], needle: Sequence[int], start: int) -> int:
    n = len(needle)
    first = needle[0]
    for i in range(start, len(haystack) - n + 1):
        if haystack[i] == first and list(haystack[i : i + n]) == list(needle):
            return i
    return -1


def resolve_spans(
    marks: Any,
    input_ids: Sequence[int],
    encode: Callable[[str], list[int]],
    *,
    max_document_tokens: int,
) -> list[tuple[int, int]]:
    """Token ranges ``[(start, end), ...]`` of the marked documents, checked: a list of ranges or
    ``{"text": ...}`` pieces, each non-empty, inside the prompt, not overlapping, in prompt order,
    at most ``max_document_tokens`` long."""
    if not isinstance(marks, list) or not marks:
        raise SpanError(f"{DOCUMENTS_KEY} must be a non-empty list of [start, end] token ranges or "
                        f"{{\"text\": ...}} pieces, got {type(marks).__name__}")
    n = len(input_ids)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, mark in enumerate(marks):
        where = f"{DOCUMENTS_KEY}[{i}]"
        if isinstance(mark, dict):
            text = mark.get("text")
            if set(mark) != {"text"} or not isinstance(text, str):
                raise SpanError(f"{where}: a text piece is {{\"text\": \"...\"}}, got keys {sorted(mark)}")
            if not text.strip():
                raise SpanError(f"{where}: empty document text")
            tokens = encode(text)
            start = _find(input_ids, tokens, cursor) if tokens else -1
            if start < 0:
                raise SpanError(f"{where}: its text is not in the prompt after token {cursor} as the same "
                                f"tokens ({len(tokens)} tokens); put a separator such as a newline around it")
            span = (start, start + len(tokens))
        elif (isinstance(mark, (list, tuple)) and len(mark) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in mark)):
            span = (mark[0], mark[1])
            if span[0] == span[1]:
                raise SpanError(f"{where}: empty span [{span[0]}, {span[1]})")
            if not 0 <= span[0] < span[1] <= n:
                raise SpanError(f"{where}: span [{span[0]}, {span[1]}) is outside the prompt's {n} tokens")
            if span[0] < cursor:
                raise SpanError(f"{where}: span [{span[0]}, {span[1]}) overlaps or precedes the previous "
                                f"document, which ends at {cursor}; give spans in prompt order, disjoint")
        else:
            raise SpanError(f"{where}: expected [start, end] (two integers) or {{\"text\": ...}}, got {mark!r:.80}")
        if span[1] - span[0] > max_document_tokens:
            raise SpanError(f"{where}: document of {span[1] - span[0]} tokens is longer than the "
                            f"{max_document_tokens} tokens a document may have (--redknot-max-document-tokens)")
        spans.append(span)
        cursor = span[1]
    return spans
