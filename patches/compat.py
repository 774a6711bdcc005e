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
| a request's prefix | ``req.prefix_indices`` (slots) | ``req.prefix_len`` over its row; before the row exists, the tree's ``prefix_device_indices(req)`` |
| the round's extend | ``req.extend_range`` / ``req.set_extend_range`` | ``[req.prefix_len, req.extend_end)`` |
| freeing slots whose window slot is already gone | ``allocator.free`` (skips unmapped) | ``allocator.free_full`` (``free`` would free window slot 0) |
| a request's freed window prefix | ``req.kv.swa_evicted_seqlen`` (advisory) | ``req.kv`` SWA cursor: ``[swa_dead_lo, cursor)`` is freed full-side only at release |
| sliding a request's window | ``common.free_swa_out_of_window_slots`` | ``tree.evict_sliding_windows`` |

Document reuse (placement) grows a request's prefix by placed slots with :func:`grow_prefix` and
:func:`shrink_prefix`, cuts extends with :func:`set_extend_range`, frees placed slots with
:func:`free_placed` and moves the request's window cursor past placed positions that never had a
window slot with :func:`skip_window`.

:data:`RELIED` names, per installed version, what these shims read (the start-up self-check of
:mod:`redknot_sglang.integration.targets` checks them with the rest).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch


def _version() -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in importlib.metadata.version("sglang").split(".")[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 5, 17)


SUPPORTED = ("0.5.17", "0.5.23")
SGLANG_0523 = _version() >= (0, 5, 23)  # SGLang's request KV record (``req.kv``) and prefill budget

_S = "sglang.srt."
RELIED: dict[str, tuple[str, ...]] = (
    {_S + "managers.schedule_batch.Req": ("kv", "prefix_len", "extend_end"),
     _S + "managers.schedule_batch.ReqKvInfo": ("get_evicted_seqlen", "set_evicted_seqlen", "swa_dead_lo"),
     _S + "mem_cache.unified_radix_cache.UnifiedRadixCache": ("checkpoint", "on_release", "prefix_device_indices",
                                                             "evict_sliding_windows"),
     _S + "mem_cache.base_prefix_cache.MatchResult": ("device_prefix_len",),
     _S + "mem_cache.allocator.swa.SWATokenToKVPoolAllocator": ("free_full", "free_swa_segment"),
     _S + "managers.schedule_policy.PrefillAdder": ("memory_budget",),
     _S + "mem_cache.prefill_budget.PrefillBudget": ("swa_offset",),
     _S + "environ.envs": ("SGLANG_OPT_RELEASE_PREFILL_SWA",)}
    if SGLANG_0523 else
    {_S + "managers.schedule_batch.Req": ("req_pool_idx", "prefix_indices", "extend_range", "set_extend_range"),
     _S + "mem_cache.unified_radix_cache.UnifiedRadixCache": ("cache_unfinished_req", "cache_finished_req", "tree_core"),
     # tails before checkpoints (head_split_cache.py): the SWA component's LRU list
     _S + "mem_cache.unified_cache.unified_tree_core.UnifiedTreeCore": ("lru_lists", "root_node", "node_by_id"),
     _S + "mem_cache.unified_cache.unified_tree_core.UnifiedLRUList": ("_remove_node", "_add_node_after", "in_list",
                                                                       "tail", "mid", "_pt"),
     _S + "mem_cache.common": ("free_swa_out_of_window_slots",),
     _S + "mem_cache.base_prefix_cache.MatchResult": ("device_indices",),
     _S + "managers.schedule_policy.PrefillAdder": ("rem_swa_token_offset",),
     _S + "environ.envs": ("SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW",)}
)

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


def prefix_len(req: Any) -> int:
    """Tokens of the request's prefix: cached (the tree's), placed, or computed by earlier chunks."""
    return req.prefix_len if SGLANG_0523 else len(req.prefix_indices)


def extend_range(req: Any) -> tuple[int, int]:
    """The positions ``[start, end)`` this round's extend computes."""
    if SGLANG_0523:
        return req.prefix_len, req.extend_end
    return req.extend_range.start, req.extend_range.end


def set_extend_range(req: Any, start: int, end: int) -> None:
    if SGLANG_0523:
        req.prefix_len, req.extend_end = start, end
    else:
        req.set_extend_range(start, end)


def grow_prefix(req: Any, slots: torch.Tensor, req_to_token: torch.Tensor) -> None:
    """Append ``slots`` to the request's prefix. On 0.5.23 a request that holds its row (a later
    chunk) gets them written there; a new one's row is written from the tree's
    ``prefix_device_indices(req)``, which the head-split cache extends by its pending placement."""
    if not SGLANG_0523:
        req.prefix_indices = torch.cat([req.prefix_indices, slots.to(req.prefix_indices.dtype)])
        return
    if req.kv.holds_kv:
        row = req_to_token[req.kv.req_pool_idx]
        row[req.prefix_len : req.prefix_len + len(slots)] = slots.to(row.dtype)
    req.prefix_len += len(slots)


def shrink_prefix(req: Any, n: int) -> None:
    """Undo :func:`grow_prefix` of ``n`` slots (the slots themselves are the caller's to free)."""
    if SGLANG_0523:
        req.prefix_len -= n
    else:
        req.prefix_indices = req.prefix_indices[: len(req.prefix_indices) - n]


def free_placed(allocator: Any, slots: torch.Tensor, windowless: int) -> None:
    """Free full slots of which the first ``windowless`` have had their window slot freed."""
    if SGLANG_0523:
        allocator.free_full(slots[:windowless])
        allocator.free(slots[windowless:])
    else:  # 0.5.17's free skips full slots without a window slot
        allocator.free(slots)


def skip_window(req: Any, req_to_token: torch.Tensor, allocator: Any, alive_until: int, upto: int) -> None:
    """An admitted request's positions below ``upto`` read as the window already slid past them:
    those from ``alive_until`` on were placed without a window slot, those before it (text of an
    earlier chunk) still hold theirs and are freed here. 0.5.23 frees ``[swa_dead_lo, cursor)``
    of a row full-side only and slides the window from its cursor, so the cursor moves to
    ``upto``; 0.5.17 skips full slots without a window slot wherever it frees."""
    if not SGLANG_0523:
        return
    from sglang.srt.mem_cache.unified_cache.components import ComponentType

    kv = req.kv
    cursor = max(kv.get_evicted_seqlen(ComponentType.SWA), kv.swa_dead_lo(allocator.page_size))
    if upto <= cursor:
        return
    if kv.holds_kv and cursor < alive_until:
        allocator.free_swa_segment(req_to_token[kv.req_pool_idx, cursor:alive_until], start_pos=cursor)
    kv.set_evicted_seqlen(ComponentType.SWA, upto)


def slide_window(tree: Any, req: Any, pre_len: int) -> None:
    """Free the request's window slots that fell out of its window at ``pre_len`` (a request the
    tree does not take: SGLang slides only what it inserts, or at decode)."""
    if SGLANG_0523:
        tree.evict_sliding_windows(req, pre_len)
    else:
        from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

        free_swa_out_of_window_slots(req, pre_len, sliding_window_size=tree.sliding_window_size,
                                     page_size=tree.page_size, req_to_token_pool=tree.req_to_token_pool,
                                     token_to_kv_pool_allocator=tree.token_to_kv_pool_allocator)
