"""Admission that reserves the window slots running requests will still take.

SGLang reserves the *full* pool's future growth of running requests when it admits new ones
(``PrefillAdder`` charges each running request's remaining tokens), but nothing for the window
pool: a decoding request's window keeps growing until it holds ``window`` decoded tokens, plus up
to ``SGLANG_SWA_EVICTION_INTERVAL`` (128) tokens decoded since SGLang last freed out-of-window
slots. With the window pool sized to what requests really hold (:mod:`redknot_sglang.mem.sizing`),
admission over-commits it and decode retracts requests in a loop (H200 capacity run: 46 running,
a retraction every second). These hooks (head-split servers only) charge that growth::

    growth = min(decoded + remaining, W) - min(decoded, W) + interval

for each running request (AFTER ``PrefillAdder.__init__``) and for each request admitted
(AROUND ``PrefillAdder.add_one_req``: charged before SGLang's own window gate, so that its gate
and its chunk cap both see it; given back if the request is not admitted).

Window slots of one decoding request (prompt of P tokens, d decoded, window W)::

    positions   [.. P-W)   [P-W .. P)            [P .. P+d-W)     [P+d-W .. P+d)
    slots       tombstoned tree-locked prompt    freed each       the decode window
                           tail (released at     interval         (<= W + interval)
                           d = W, see plugin)

A request that owns a private copy of its prompt's last window
(:meth:`~redknot_sglang.integration.head_split_cache.HeadSplitRadixCache.owns_window`) holds
between ``W`` and ``W + interval`` window slots from its first decode step on: it is charged what
it lacks of ``W + interval``. A request being admitted is charged ``W + interval``: the copy, then
the interval.

SGLang's own formulas (``_swa_budget_for_req``, ``_swa_chunk_cap``) are left as they are.
"""

from __future__ import annotations

from typing import Any, Callable

from redknot_sglang.patches import compat

INIT = "sglang.srt.managers.schedule_policy.PrefillAdder.__init__"
ADD = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"


def eviction_interval() -> int:
    """Decode steps between two frees of out-of-window slots (SGLang's own setting)."""
    from sglang.srt.environ import envs

    return max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get())


def window_growth(decoded: int, remaining: int, window: int, interval: int) -> int:
    """Window slots a decoding request may still add to what it holds now."""
    if remaining <= 0:
        return 0
    return min(decoded + remaining, window) - min(decoded, window) + interval


def owned_window_growth(held: int, remaining: int, window: int, interval: int) -> int:
    """Window slots a request that owns its window (``held`` now) may still add: it peaks at one
    window plus the interval."""
    return max(0, min(remaining, window + interval - held))


def _head_split(adder: Any) -> bool:
    from redknot_sglang.integration.head_split_cache import HeadSplitRadixCache

    return adder.is_hybrid_swa and isinstance(adder.tree_cache, HeadSplitRadixCache)


def _growth(adder: Any, req: Any) -> int:
    if adder.tree_cache.owns_window(req):  # SGLang 0.5.17 only: its request fields
        held = req.seqlen - max(req.cache_protected_len, req.kv.swa_evicted_seqlen)
        return owned_window_growth(held, adder._swa_new_tokens(req), adder.tree_cache.sliding_window_size,
                                   eviction_interval())
    return window_growth(len(req.output_ids), adder._swa_new_tokens(req),
                         adder.tree_cache.sliding_window_size, eviction_interval())


def reserve_running(result: Any, adder: Any, *args: Any, **kwargs: Any) -> Any:
    if adder.running_batch is not None and _head_split(adder):
        compat.add_swa_offset(adder, sum(_growth(adder, r) for r in adder.running_batch.reqs))
    return result


def reserve_new(original: Callable[..., Any], adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    if not _head_split(adder):
        return original(adder, req, *args, **kwargs)
    growth = _growth(adder, req)
    compat.add_swa_offset(adder, growth)
    result = original(adder, req, *args, **kwargs)
    if req not in adder.can_run_list and adder.new_chunked_req is not req:
        compat.add_swa_offset(adder, -growth)
    return result
