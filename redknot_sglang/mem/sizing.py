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

import logging
import math
from typing import Any, Optional

from sglang.srt.model_executor.pool_configurator import MemoryPoolConfig, MemoryPoolConfigurator

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.heads.profile import HeadProfile

logger = logging.getLogger(__name__)


def per_token_bytes(profile: HeadProfile, tp_size: int, head_dim: int, kv_size: int) -> tuple[int, int]:
    """(full, window) bytes per token slot, the maximum over TP ranks."""
    full = window = 0
    for rank in range(tp_size):
        layout = RankHeadLayout(profile, rank, tp_size)
        full = max(full, layout.global_head_count() * 2 * head_dim * kv_size)
        window = max(window, layout.local_head_count() * 2 * head_dim * kv_size)
    return full, window


def auto_window_ratio(window: int, page_size: int, context_len: int) -> float:
    """Window slots per full slot that fit requests of ``context_len`` tokens at their peak. A
    request that decodes past its window peaks at two windows plus SGLang's eviction interval: the
    tree keeps its lock on the prompt's last window until the request has decoded a whole window
    (then releases it, see ``plugin.py``), while the decode window fills and grows by up to an
    interval between two frees of out-of-window slots (:mod:`redknot_sglang.hooks.swa_admission`)."""
    from redknot_sglang.hooks.swa_admission import eviction_interval

    return min(1.0, (2 * window + eviction_interval() + page_size) / context_len)


class HeadSplitPoolConfigurator(MemoryPoolConfigurator):
    """SGLang ``MemoryPoolConfigurator`` for the head-split pool (installed by
    :mod:`redknot_sglang.mem.hooks` in place of ``HybridSWAPoolConfigurator``)."""

    def __init__(self, kvc: Any, profile: HeadProfile, *, window_ratio: Optional[float], sink_blocks: int):
        from sglang.srt.runtime_context import get_parallel, get_schedule
        import torch

        layout = RankHeadLayout(profile)
        self.window = layout.max_window()
        self.sink = layout.max_sink()
        self.page_size = kvc.page_size
        kv_size = torch._utils._element_size(kvc.kv_cache_dtype)
        self.full_bytes, self.window_bytes = per_token_bytes(
            profile, get_parallel().attn_tp_size, kvc.model_config.head_dim, kv_size
        )
        self.ratio = window_ratio or auto_window_ratio(self.window, self.page_size, kvc.model_config.context_len)
        self.user_rows = get_schedule().max_running_requests
        self.sink_blocks = sink_blocks
        fixed_rows = self.user_rows or 0
        self.fixed_bytes = (fixed_rows + sink_blocks) * self.sink * self.window_bytes
        row_term = 0.0 if self.user_rows else 2 * self.ratio * self.sink * self.window_bytes / self.window
        self.cell = self.full_bytes + self.ratio * self.window_bytes + row_term

    def _solve(self, full_tokens: int, page_size: int) -> MemoryPoolConfig:
        full = full_tokens // page_size * page_size
        swa = int(full * self.ratio) // page_size * page_size
        if swa <= self.window + page_size:
            raise ValueError(
                f"redknot: the window pool ({swa} tokens = {self.ratio:.4f} x {full} full tokens) cannot "
                f"hold one request's window ({self.window} + page {page_size}); raise "
                "--redknot-window-pool-ratio or the KV budget"
            )
        logger.warning(
            "redknot: full pool %d tokens (%d B/token), window pool %d tokens (%d B/token, ratio %.4f)",
            full, self.full_bytes, swa, self.window_bytes, self.ratio,
        )
        return MemoryPoolConfig(max_total_num_tokens=full, full_max_total_num_tokens=full, swa_max_total_num_tokens=swa)

    def calculate_pool_sizes(self, available_bytes: int, page_size: int) -> MemoryPoolConfig:
        return self._solve(int((available_bytes - self.fixed_bytes) // self.cell), page_size)

    def calculate_pool_sizes_from_max_tokens(self, max_total_num_tokens: int, page_size: int) -> MemoryPoolConfig:
        return self._solve(max_total_num_tokens, page_size)

    def finalize_with_max_running_requests(self, config: MemoryPoolConfig) -> MemoryPoolConfig:
        """Cap the running requests at the sink rows budgeted for (unless the user set them)."""
        if not self.user_rows:
            rows = max(1, math.floor(2 * config.swa_max_total_num_tokens / self.window))
            config.max_running_requests = min(config.max_running_requests or rows, rows)
        return config
