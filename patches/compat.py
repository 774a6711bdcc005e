"""SGLang 0.5.17 / 0.5.23 compatibility shims: one per SGLang symbol that moved or was renamed
between the two, so the rest of the integration layer reads one name.

Why shims and not hooks: these are attribute reads and writes on SGLang's objects (``Req``,
``PrefillAdder``, ``MatchResult``), not functions a ``HookRegistry`` hook could wrap.

| what | 0.5.17 | 0.5.23 |
| --- | --- | --- |
| a request's ``req_to_token`` row | ``req.req_pool_idx`` | ``req.kv.req_pool_idx`` |
| tokens a prefix match covers on the device | ``len(result.device_indices)`` | ``result.device_prefix_len`` |
| the window slots admission holds back | ``adder.rem_swa_token_offset`` | ``adder.memory_budget.swa_offset`` |
| releasing the tree's lock on a prompt's last window once a window is decoded | ``SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW`` | ``SGLANG_OPT_RELEASE_PREFILL_SWA`` |
| a request's tokens entering the tree | ``cache_unfinished_req`` / ``cache_finished_req`` | ``checkpoint(req, up_to=)`` |

Document reuse writes placed slots into ``req.prefix_indices`` and cuts extends with
``req.set_extend_range``; 0.5.23 keeps a prefix as ``req.prefix_len`` over the request's row and
``req.extend_end``, so reuse needs SGLang 0.5.17 for now (:data:`REUSE`): on 0.5.23 the segment
store is off.

:data:`RELIED` names, per installed version, what these shims read (the start-up self-check of
:mod:`redknot_sglang.integration.targets` checks them with the rest).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any


def _version() -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in importlib.metadata.version("sglang").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 5, 17)


SUPPORTED = ("0.5.17", "0.5.23")
SGLANG_0523 = _version() >= (0, 5, 23)  # SGLang's request KV record (``req.kv``) and prefill budget

_S = "sglang.srt."
RELIED: dict[str, tuple[str, ...]] = (
    {_S + "managers.schedule_batch.Req": ("kv",),
     _S + "mem_cache.unified_radix_cache.UnifiedRadixCache": ("checkpoint",),
     _S + "mem_cache.base_prefix_cache.MatchResult": ("device_prefix_len",),
     _S + "managers.schedule_policy.PrefillAdder": ("memory_budget",),
     _S + "mem_cache.prefill_budget.PrefillBudget": ("swa_offset",),
     _S + "environ.envs": ("SGLANG_OPT_RELEASE_PREFILL_SWA",)}
    if SGLANG_0523 else
    {_S + "managers.schedule_batch.Req": ("req_pool_idx", "prefix_indices", "extend_range", "set_extend_range"),
     _S + "mem_cache.unified_radix_cache.UnifiedRadixCache": ("cache_unfinished_req", "cache_finished_req"),
     _S + "mem_cache.base_prefix_cache.MatchResult": ("device_indices",),
     _S + "managers.schedule_policy.PrefillAdder": ("rem_swa_token_offset",),
     _S + "environ.envs": ("SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW",)}
)

REUSE = not SGLANG_0523  # document reuse (the segment store) on this SGLang

RELEASE_PREFIX_WINDOW_ENV = ("SGLANG_OPT_RELEASE_PREFILL_SWA" if SGLANG_0523
                             else "SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW")


def req_row(req: Any) -> int:
    """The request's row of ``req_to_token``."""
    return req.kv.req_pool_idx if SGLANG_0523 else req.req_pool_idx


def matched_len(result: Any) -> int:
    """Tokens of a ``MatchResult`` held on the device."""
    return result.device_prefix_len if SGLANG_0523 else len(result.device_indices)


def add_swa_offset(adder: Any, tokens: int) -> None:
    """Hold back ``tokens`` window slots (negative: give them back) from this admission round."""
    if SGLANG_0523:
        adder.memory_budget.swa_offset += tokens
    else:
        adder.rem_swa_token_offset += tokens
