"""Admission that reserves the window slots a decoding request really holds.

SGLang frees a decoding request's out-of-window slots every ``SGLANG_SWA_EVICTION_INTERVAL`` steps
(128), so it holds up to ``window + interval`` window slots. ``PrefillAdder`` reserves ``window +
page`` for a new request and nothing for the growth of running ones; with the window pool sized to
what requests really hold (:mod:`redknot_sglang.mem.sizing`), admission over-commits it and decode
retracts requests in a loop (H200 capacity run: 46 running, a retraction every second). With the
head split, these hooks on ``PrefillAdder`` charge the interval too: once more per new request
(AROUND ``_swa_reserved_tokens``) and once per running request (AFTER ``__init__``).
"""

from __future__ import annotations

from typing import Any

INIT = "sglang.srt.managers.schedule_policy.PrefillAdder.__init__"
RESERVED = "sglang.srt.managers.schedule_policy.PrefillAdder._swa_reserved_tokens"


def eviction_interval() -> int:
    """Decode steps between two frees of out-of-window slots (SGLang's own setting)."""
    from sglang.srt.environ import envs

    return max(1, envs.SGLANG_SWA_EVICTION_INTERVAL.get())


def _head_split(adder: Any) -> bool:
    from redknot_sglang.cache.head_split_cache import HeadSplitRadixCache

    return isinstance(adder.tree_cache, HeadSplitRadixCache)


def reserve_running(result: Any, adder: Any, *args: Any, **kwargs: Any) -> Any:
    if adder.running_batch is not None and adder.is_hybrid_swa and _head_split(adder):
        adder.rem_swa_token_offset += eviction_interval() * len(adder.running_batch.reqs)
    return result


def reserve_new(original: Any, adder: Any, extend_input_len: int, max_new_tokens: int, *args: Any, **kwargs: Any) -> int:
    reserved = original(adder, extend_input_len, max_new_tokens, *args, **kwargs)
    if _head_split(adder) and extend_input_len + max_new_tokens > adder.tree_cache.sliding_window_size:
        reserved += eviction_interval()
    return reserved
