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
    """An all-global profile is served by the base backend itself (same kernels as stock); with
    local heads, the model's heads are reordered (global first) and the head-split backend runs
    the base backend on the global group and the SegPaged kernels on the local group."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    from redknot_sglang.integration.hooks.head_split import head_split_config

    cfg = get_redknot(model_runner.server_args)
    base = cfg.resolve_base_backend(str(model_runner.device))
    prov = cfg.profile.provenance
    logger.warning("redknot: head profile %s (%s, %.1f%% global heads), fidelity gate: %s",
                   cfg.profile_source, prov.method, 100 * cfg.profile.global_fraction, prov.fidelity or "none recorded")
    if head_split_config(model_runner.server_args) is None:
        logger.warning("redknot: all heads global; base backend %s", base)
        return ATTENTION_BACKENDS[base](model_runner)
    global_extend = None
    if base == "flashinfer":
        # SGLang's FlashInfer backend plans one head count for every layer; the global group's
        # count differs per layer: extends run on FlashInfer through our plans (one per head
        # count), decode on SGLang's Triton kernels, which take any count
        from redknot_sglang.attention.global_extend import HEAD_DIMS, FlashInferGlobalExtend

        if model_runner.model_config.head_dim in HEAD_DIMS:
            global_extend = FlashInferGlobalExtend(model_runner.device, model_runner.token_to_kv_pool.dtype)
        base = "triton"
    from redknot_sglang.integration.head_split_backend import HeadSplitAttnBackend
    from redknot_sglang.model.permute import permute_kv_heads

    layout = rank_layout(model_runner)
    changed = permute_kv_heads(model_runner.model, layout)
    logger.warning("redknot: %s; %d layers reordered; global heads on %s%s", layout.summary(), changed, base,
                   " (extends on FlashInfer)" if global_extend is not None else "")
    return HeadSplitAttnBackend(model_runner, layout, base, global_extend)
