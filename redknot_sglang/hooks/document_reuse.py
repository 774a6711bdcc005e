"""Placement of cached documents at admission: AROUND ``PrefillAdder.add_one_req``.

Before SGLang's admission checks, a request with marked documents gets placed KV for the cached
documents after its exact prefix (:meth:`DocumentReuse.place`): its prefix grows, its extend
shrinks, and SGLang's budget sees the placed slots as already taken (they are allocated). If the
request is not admitted, the placement is undone, so a waiting request holds nothing.
"""

from __future__ import annotations

from typing import Any, Callable

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"


def place_documents(original: Callable[..., Any], adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    reuse = getattr(adder.tree_cache, "document_reuse", None)
    if reuse is None or not reuse.place(req, adder.tree_cache):
        return original(adder, req, *args, **kwargs)
    result = original(adder, req, *args, **kwargs)
    if req not in adder.can_run_list:
        reuse.unplace(req)
    return result
