"""Pool and cache counters in ``/get_server_info`` (``internal_states[i]["redknot"]``).

An AFTER hook on ``Scheduler.get_internal_state`` adds, per scheduler: both allocators' free and
total slots, the tree's evictable/protected tokens per pool, running/waiting requests, the sink
cache occupancy, the private prompt windows made and refused, and the document store's counters.
Tests use it to check that every slot comes back; operators to see the split.
"""

from __future__ import annotations

from typing import Any

TARGET = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"


def pool_stats(scheduler: Any) -> dict:
    alloc = scheduler.token_to_kv_pool_allocator
    tree = scheduler.tree_cache
    stats = {
        "running_reqs": len(scheduler.running_batch.reqs) if scheduler.running_batch else 0,
        "waiting_reqs": len(scheduler.waiting_queue),
        "req_rows_free": scheduler.req_to_token_pool.available_size(),
        "req_rows_total": scheduler.req_to_token_pool.size,
    }
    if hasattr(alloc, "full_available_size"):
        stats.update(
            full_available=alloc.full_available_size(), full_size=alloc.full_attn_allocator.size,
            swa_available=alloc.swa_available_size(), swa_size=alloc.size_swa,
            full_evictable=tree.full_evictable_size(), swa_evictable=tree.swa_evictable_size(),
            full_protected=tree.full_protected_size(), swa_protected=tree.swa_protected_size(),
        )
    else:
        stats.update(available=alloc.available_size(), size=alloc.size,
                     evictable=tree.evictable_size(), protected=tree.protected_size())
    sinks = getattr(tree, "sinks", None)
    if sinks is not None:
        stats.update(sink_blocks_used=len(sinks), sink_blocks_total=sinks.num_blocks,
                     private_windows=tree.private_windows, private_window_misses=tree.private_window_misses)
    reuse = getattr(tree, "document_reuse", None)
    if reuse is not None:
        stats["documents"] = reuse.counters()
    return stats


def get_internal_state(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    result.internal_state["redknot"] = pool_stats(scheduler)
    return result
