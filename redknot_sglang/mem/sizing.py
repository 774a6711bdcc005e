"""Sizing the head-split pool from SGLang's KV memory budget.

Per token, the full pool costs ``F`` bytes (global heads of all layers) and the window pool ``Sw``
bytes (local heads). With ``r`` window slots per full slot (``--redknot-window-pool-ratio``) and
``R`` running requests each owning a sink row of ``S`` tokens, a budget ``B`` buys::

    B = N_full * (F + r * Sw)  +  R * S * Sw  +  blocks * S * Sw

``R`` defaults to ``2 * N_swa / W`` (a request holds at least its window once it is long enough,
so fewer than half of that many could ever run), i.e. the sink rows cost ``2 r S Sw / W`` per full
token. Every TP rank computes the same sizes from the whole profile, taking the largest per-rank
byte cost: ranks must agree on slot counts because the scheduler's allocator is replicated.
"""

from __future__ import annotations

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.heads.profile import HeadProfile


def per_token_bytes(profile: HeadProfile, tp_size: int, head_dim: int, kv_size: int) -> tuple[int, int]:
    """(full, window) bytes per token slot, the maximum over TP ranks."""
    full = window = 0
    for rank in range(tp_size):
        layout = RankHeadLayout(profile, rank, tp_size)
        full = max(full, layout.global_head_count() * 2 * head_dim * kv_size)
        window = max(window, layout.local_head_count() * 2 * head_dim * kv_size)
    return full, window


def auto_window_ratio(window: int, page_size: int, context_len: int, eviction_interval: int,
                      private_windows: bool) -> float:
    """Window slots per full slot that fit requests of ``context_len`` tokens at their peak.

    A request that owns a private copy of its prompt's last window (``private_windows``, see
    :class:`~redknot_sglang.integration.head_split_cache.HeadSplitRadixCache`) holds one window plus
    up to SGLang's eviction interval (``SGLANG_SWA_EVICTION_INTERVAL``) of decoded tokens between
    two frees of out-of-window slots. Without it a request that decodes past its window peaks at
    two windows plus the interval: the tree keeps its lock on the prompt's last window until the
    request has decoded a whole window (then releases it, see
    :mod:`redknot_sglang.integration.hooks.server_args`), while the decode window fills."""
    windows = 1 if private_windows else 2
    return min(1.0, (windows * window + eviction_interval + page_size) / context_len)
