"""Document marks checked where SGLang checks a request's length: an AFTER hook on
``TokenizerManager._validate_one_request`` (the HTTP server's process). A ``SpanError`` is a
``ValueError``, which SGLang answers with HTTP 400 and the message; other requests go on.

Valid marks are rewritten in place as flat token ranges ``[s0, e0, s1, e1, ...]`` (a list of
integers, the shape ``custom_params`` values keep through SGLang's IPC) for the scheduler. The mode
keys are checked here too: ``redknot_recovery`` and ``redknot_capture`` booleans,
``redknot_recompute_ratio`` in [0, 1], not both ratio and recovery, and no selective recompute
asked of a server whose ``--redknot-recompute-ratio`` is 0.
"""

from __future__ import annotations

from typing import Any

from redknot_sglang.config import ATTR, BACKEND_NAME
from redknot_sglang.reuse.spans import CAPTURE_KEY, DOCUMENTS_KEY, RATIO_KEY, RECOVERY_KEY, SpanError, resolve_spans

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"


def validate_documents(result: Any, manager: Any, obj: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
    sampling = getattr(obj, "sampling_params", None)
    params = sampling.get("custom_params") if isinstance(sampling, dict) else None
    if not isinstance(params, dict) or DOCUMENTS_KEY not in params:
        return result  # unmarked: exactly stock
    cfg = getattr(manager.server_args, ATTR, None)
    if cfg is None or manager.server_args.radix_cache_backend != BACKEND_NAME:
        raise SpanError(f"{DOCUMENTS_KEY} needs a server started with --radix-cache-backend {BACKEND_NAME}")
    if input_ids is None:
        raise SpanError(f"{DOCUMENTS_KEY} needs a prompt (text or input_ids)")
    for key in (RECOVERY_KEY, CAPTURE_KEY):
        if not isinstance(params.get(key, True), bool):
            raise SpanError(f"{key} must be true or false, got {params[key]!r:.40}")
    if RATIO_KEY in params:
        ratio = params[RATIO_KEY]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise SpanError(f"{RATIO_KEY} must be a number in [0, 1], got {ratio!r:.40}")
        if RECOVERY_KEY in params:
            raise SpanError(f"give {RATIO_KEY} or {RECOVERY_KEY}, not both")
    asked = None  # selective recompute asked for explicitly, in the request's words
    if params.get(RATIO_KEY, 0) > 0:
        asked = f"{RATIO_KEY} > 0"
    elif params.get(RECOVERY_KEY) is True:
        asked = f"{RECOVERY_KEY}: true"
    if asked and cfg.recompute_ratio == 0:
        raise SpanError(f"{asked} (selective recompute) needs a server started with --redknot-recompute-ratio > 0 "
                        "(this one's is 0: it places only, its store keeps no document's local heads whole)")

    def encode(text: str) -> list[int]:
        return manager.tokenizer.encode(text, add_special_tokens=False)

    spans = resolve_spans(params[DOCUMENTS_KEY], input_ids, encode, max_document_tokens=cfg.max_document_tokens)
    params[DOCUMENTS_KEY] = [x for span in spans for x in span]
    return result
