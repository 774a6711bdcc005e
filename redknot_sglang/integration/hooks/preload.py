"""``POST /redknot/documents``: store documents before any question asks about them.

An AROUND hook on ``http_server.launch_server`` (the HTTP server's process) adds the route to
SGLang's FastAPI ``app`` before uvicorn starts, on servers with ``--radix-cache-backend redknot``.
Body::

    {"documents": [{"text": "..."} | {"input_ids": [...]}, ...], "cache_salt": "tenant-a"}

Each document goes through the tokenizer manager as a capture request of its own
(:func:`~redknot_sglang.integration.hooks.canonical_capture.capture`: the canonical prefix, then
the document), so the store holds the document as computed after the canonical prefix, whatever
request asks for it later (canonical capture), under the tenant namespace of ``cache_salt``; a
document the store already holds is placed by its capture request and kept as stored. Bad
documents (empty, longer than ``--redknot-max-document-tokens`` or the context) are answered with
HTTP 400 naming the first bad one; the documents before it stay stored, and other requests go on.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from fastapi import Request
from pydantic import BaseModel, Field

from redknot_sglang.config import ATTR, BACKEND_NAME
from redknot_sglang.integration.hooks.canonical_capture import capture

TARGET = "sglang.srt.entrypoints.http_server.launch_server"
ROUTE = "/redknot/documents"


class TextDocument(BaseModel):
    text: str


class TokenDocument(BaseModel):
    input_ids: list[int]


class PreloadRequest(BaseModel):
    documents: list[Union[TextDocument, TokenDocument]] = Field(min_length=1)
    cache_salt: Optional[str] = None


def _refused(index: int, why: str, stored: list[dict]) -> Any:
    from fastapi.responses import ORJSONResponse

    return ORJSONResponse({"error": {"message": f"redknot documents[{index}]: {why}"}, "stored": stored},
                          status_code=400)


async def preload(request: Request) -> Any:
    from fastapi.responses import ORJSONResponse
    from sglang.srt.entrypoints import http_server

    try:
        body = PreloadRequest.model_validate(await request.json())
    except ValueError as e:  # malformed JSON or schema (pydantic's ValidationError is a ValueError)
        return ORJSONResponse({"error": {"message": f"redknot documents: {e}"}}, status_code=400)
    manager = http_server._global_state.tokenizer_manager
    stored, head_len = [], 0
    for i, doc in enumerate(body.documents):
        ids = doc.input_ids if isinstance(doc, TokenDocument) else manager.tokenizer.encode(doc.text, add_special_tokens=False)
        if not ids:
            return _refused(i, "empty document", stored)
        try:
            head_len = await capture(manager, ids, body.cache_salt, request)
        except ValueError as e:
            return _refused(i, str(e), stored)
        stored.append({"tokens": len(ids)})
    return {"stored": stored, "canonical_prefix_tokens": head_len}


def launch_server(original: Any, server_args: Any, *args: Any, **kwargs: Any) -> Any:
    if getattr(server_args, ATTR, None) is not None and server_args.radix_cache_backend == BACKEND_NAME:
        from sglang.srt.entrypoints import http_server

        http_server.app.add_api_route(ROUTE, preload, methods=["POST"])
    return original(server_args, *args, **kwargs)
