"""Placement of cached documents at admission: AROUND ``PrefillAdder.add_one_req`` and
``PrefillAdder.add_chunked_req``.

Before SGLang's admission checks, a request with marked documents gets placed KV for the cached
documents right after its prefix (:meth:`DocumentReuse.place`): its prefix grows, its extend
shrinks, and SGLang's budget sees the placed slots as already taken (they are allocated). If the
request is not admitted, the placement is undone, so a waiting request holds nothing.

A request whose document another running request is capturing waits (admission stops there for
this round, as SGLang stops it when a request does not fit) and gets the document placed in a
later round instead of computing it again. A cached document may also follow computed text: the
admitted extend is then cut where it starts (:meth:`DocumentReuse.cut_point`), which makes the
request a chunked one, and the next chunk's admission places the run; so is the extend of a
request that computes its system prompt (cut at its first document: the prompt's chunk keeps a
window, the exact prefix of later requests); a
selective request places past computed text (gaps within the round's chunk budget, computed by
its next extend at their positions), its last extend is cut one token short, and its last token's
round recomputes (:meth:`DocumentReuse.rewrite_batch`)::

    prompt:   [ sys ][ A cached ][ B new ][ C cached ][ D cached ][ query    ]
    round 0:  computed | cut                                          (sys not in the tree yet)
    place only:
    round 1:         placed       computed | cut
    round 2:                                 placed     placed      computed
    selective:
    round 1:         placed       computed   placed     placed      computed | cut
    round 2:                                                                  last token -> recompute set
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from redknot_sglang.patches.compat import extend_range, set_extend_range

if TYPE_CHECKING:  # SGLang's types, for annotations only
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.managers.schedule_policy import PrefillAdder

    from redknot_sglang.integration.document_reuse import DocumentReuse

ADD = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"
ADD_CHUNKED = "sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req"


def _cut(adder: PrefillAdder, reuse: DocumentReuse, req: Req) -> bool:
    """Cut an admitted extend where a cached run starts; True if cut. The round's chunk budget is
    then spent, as when SGLang itself truncates a request: one chunked request per round."""
    if adder.rem_chunk_tokens is None:  # chunked prefill off: no next chunk to place before
        return False
    start, end = extend_range(req)
    at = reuse.cut_point(req, start, end)
    if at is None:
        return False
    set_extend_range(req, start, at)
    adder.rem_chunk_tokens = 0
    return True


def _gap_budget(adder: PrefillAdder) -> int:
    """Tokens a selective request's placement may leave between its placed documents, which its
    next extend computes besides SGLang's range: what this round may still compute."""
    budget = adder.rem_chunk_tokens if adder.rem_chunk_tokens is not None else adder.rem_input_tokens
    return max(0, budget)


def place_documents(original: Callable[..., Any], adder: PrefillAdder, req: Req, has_chunked_req: bool,
                    *args: Any, **kwargs: Any) -> Any:
    reuse = getattr(adder.tree_cache, "document_reuse", None)
    if reuse is None:
        return original(adder, req, has_chunked_req, *args, **kwargs)
    if reuse.awaits_capture(req):
        from sglang.srt.managers.schedule_policy import AddReqResult

        return AddReqResult.OTHER  # SGLang's answer for "not this round": admission stops here
    placed = reuse.place(req, adder.tree_cache, gap_budget=_gap_budget(adder))
    result = original(adder, req, has_chunked_req, *args, **kwargs)
    if req not in adder.can_run_list:
        if placed:
            reuse.unplace(req)
        return result
    if placed:
        reuse.admitted(req)
    if not has_chunked_req and adder.new_chunked_req in (None, req) and _cut(adder, reuse, req):
        adder.new_chunked_req = req
        return adder.budget_state()
    return result


def place_chunk(original: Callable[..., Any], adder: PrefillAdder, req: Req, *args: Any, **kwargs: Any) -> Any:
    """The next chunk of a chunked request: place the cached run it starts with, cut again."""
    reuse = getattr(adder.tree_cache, "document_reuse", None)
    if reuse is None:
        return original(adder, req, *args, **kwargs)
    placed = reuse.place(req, adder.tree_cache, next_chunk=True, gap_budget=_gap_budget(adder))
    result = original(adder, req, *args, **kwargs)
    if req not in adder.can_run_list:  # no room for its next chunk this round
        if placed:
            reuse.unplace(req)
        # the placement's eviction may have made room that SGLang's budget sees: spend the round's
        # chunk budget, as when the chunked request is not admitted without a placement, so that
        # no new request is chunked while this one waits (SGLang keeps one chunked request)
        adder.rem_chunk_tokens = 0
        return result
    if placed:
        reuse.admitted(req)
    return req if _cut(adder, reuse, req) else result
