"""The ``redknot`` attention backend factory (registered by the plugin)."""

from __future__ import annotations

import logging
from typing import Any

from redknot_sglang.config import get_redknot
from redknot_sglang.heads.fingerprint import fingerprint_from_hf_config
from redknot_sglang.heads.layout import RankHeadLayout

logger = logging.getLogger(__name__)


def rank_layout(model_runner: Any) -> RankHeadLayout:
    """Validate the profile against the model this rank runs and return the rank's head split."""
    cfg = get_redknot(model_runner.server_args)
    mc = model_runner.model_config
    cfg.profile.check_model(fingerprint_from_hf_config(mc.hf_config), context_len=mc.context_len)
    from sglang.srt.runtime_context import get_parallel

    par = get_parallel()
    return RankHeadLayout(cfg.profile, par.attn_tp_rank, par.attn_tp_size)


def create_attention_backend(model_runner: Any) -> Any:
    """An all-global profile is served by the base backend itself (same kernels as stock)."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    cfg = get_redknot(model_runner.server_args)
    base = cfg.resolve_base_backend(str(model_runner.device))
    layout = rank_layout(model_runner)
    logger.warning("redknot: %s; base backend %s", layout.summary(), base)
    if layout.all_global:
        return ATTENTION_BACKENDS[base](model_runner)
    raise NotImplementedError("redknot: profiles with local heads need the head-split backend")
