"""``HeadSplitPoolConfigurator``: SGLang's pool configurator for the head-split pool (the sizing
math is :mod:`redknot_sglang.mem.sizing`)."""

from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
from sglang.srt.model_executor.pool_configurator import MemoryPoolConfig, MemoryPoolConfigurator
from sglang.srt.runtime_context import get_parallel, get_schedule

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.integration.head_split_cache import private_windows
from redknot_sglang.integration.hooks.swa_admission import eviction_interval
from redknot_sglang.mem.sizing import auto_window_ratio, per_token_bytes

logger = logging.getLogger(__name__)


class HeadSplitPoolConfigurator(MemoryPoolConfigurator):
    """SGLang ``MemoryPoolConfigurator`` for the head-split pool (installed by
    :mod:`redknot_sglang.integration.hooks.head_split` in place of ``HybridSWAPoolConfigurator``)."""

    def __init__(self, kvc: Any, profile: HeadProfile, *, window_ratio: Optional[float], sink_blocks: int):
        layout = RankHeadLayout(profile)
        self.window = layout.max_window()
        self.sink = layout.max_sink()
        self.page_size = kvc.page_size
        kv_size = torch._utils._element_size(kvc.kv_cache_dtype)
        self.full_bytes, self.window_bytes = per_token_bytes(
            profile, get_parallel().attn_tp_size, kvc.model_config.head_dim, kv_size
        )
        self.ratio = window_ratio or auto_window_ratio(self.window, self.page_size, kvc.model_config.context_len,
                                                       eviction_interval(), private_windows(self.page_size))
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
