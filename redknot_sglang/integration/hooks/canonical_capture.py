"""Canonical capture: a document is computed on its own, after a fixed canonical prefix, whatever
request first uses it (the HTTP server's process).

A *capture request* goes through the tokenizer manager like any request::

    [ canonical prefix ][ document (marked) ][ t ]   -> one new token, shown to nobody
                                              t = the document's last token again

The scheduler captures the document as it captures any marked document that a request computes
whole, so the store holds it as computed after the canonical prefix (K turned back to position 0).
The token after the document makes a document the store already holds a placed one (a document
that ends a prompt is computed, never placed), so the capture request of a stored document
computes one token; usually the radix tree still holds its whole prompt from the first capture.

Two senders:

* ``POST /redknot/documents`` (:mod:`~redknot_sglang.integration.hooks.preload`), one per document;
* with ``--redknot-capture canonical``, an AROUND hook on ``TokenizerManager._tokenize_one_request``:
  once a marked request is tokenized and its marks checked, each of its documents is sent as a
  capture request, and the request goes on to the scheduler when they are answered; concurrent
  requests for one document share its capture. The scheduler then captures only from capture
  requests (``DocumentReuse(canonical=True)``): a document whose capture failed is computed by its
  request and not stored. Batches tokenized as one (``--enable-tokenizer-batch-encode``) do not
  pass here: their documents are computed in context and not stored.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any, Optional, Sequence

from redknot_sglang.config import ATTR, BACKEND_NAME
from redknot_sglang.reuse.spans import CAPTURE_KEY, DOCUMENTS_KEY, RECOVERY_KEY

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._tokenize_one_request"

logger = logging.getLogger(__name__)

# set while a capture request is being sent: its own tokenization must not capture again
_sending = contextvars.ContextVar("redknot_sending_capture", default=False)
# (cache salt, document) -> the capture in flight; every request that needs it awaits this one
_in_flight: dict[tuple[Optional[str], tuple[int, ...]], asyncio.Future] = {}


def canonical_prefix(tokenizer: Any) -> list[int]:
    """The tokens every document is captured after: the chat template's opening of a user turn
    (with the template's default system prompt), where prompts that carry documents usually place
    them; without a chat template, the BOS token if the tokenizer has one."""
    marker = "\x00redknot\x00"
    template = getattr(tokenizer, "chat_template", None)
    if template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
        if marker in text:
            return tokenizer.encode(text.split(marker)[0], add_special_tokens=False)
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if bos is not None else []


def _prefix(manager: Any) -> list[int]:
    head = getattr(manager, "_redknot_canonical_prefix", None)
    if head is None:
        head = manager._redknot_canonical_prefix = canonical_prefix(manager.tokenizer)
    return head


async def capture(manager: Any, doc: Sequence[int], salt: Optional[str], request: Any = None) -> int:
    """Send ``doc``'s capture request under the tenant namespace ``salt`` and wait for its answer;
    returns the canonical prefix's length. A bad document raises SGLang's ``ValueError`` (HTTP 400)."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    head = _prefix(manager)
    params = {"temperature": 0, "max_new_tokens": 1,
              "custom_params": {DOCUMENTS_KEY: [[len(head), len(head) + len(doc)]], RECOVERY_KEY: False,
                                CAPTURE_KEY: True}}
    obj = GenerateReqInput(input_ids=[*head, *doc, doc[-1]], sampling_params=params, extra_key=salt)
    token = _sending.set(True)
    try:
        await manager.generate_request(obj, request).__anext__()
    finally:
        _sending.reset(token)
    return len(head)


async def _shared(manager: Any, doc: tuple[int, ...], salt: Optional[str]) -> None:
    key = (salt, doc)
    task = _in_flight.get(key)
    if task is None:
        task = _in_flight[key] = asyncio.ensure_future(capture(manager, doc, salt))
        task.add_done_callback(lambda _: _in_flight.pop(key, None))
    try:
        await asyncio.shield(task)  # a request that goes away leaves the capture to the others
    except ValueError as e:
        logger.warning("redknot: canonical capture of a %d-token document failed (%s); its request computes it",
                       len(doc), e)


async def tokenize_one_request(original: Any, manager: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
    tokenized = await original(manager, obj, *args, **kwargs)
    cfg = getattr(manager.server_args, ATTR, None)
    if (cfg is None or cfg.capture != "canonical" or manager.server_args.radix_cache_backend != BACKEND_NAME
            or not cfg.segment_store_gb or _sending.get()):
        return tokenized
    sampling = getattr(obj, "sampling_params", None)
    params = sampling.get("custom_params") if isinstance(sampling, dict) else None
    if not isinstance(params, dict) or DOCUMENTS_KEY not in params or params.get(CAPTURE_KEY):
        return tokenized
    flat, ids = params[DOCUMENTS_KEY], tokenized.input_ids  # checked and flattened by request_spans
    docs = dict.fromkeys(tuple(ids[a:b]) for a, b in zip(flat[::2], flat[1::2]))
    await asyncio.gather(*(_shared(manager, doc, getattr(obj, "extra_key", None)) for doc in docs))
    return tokenized
