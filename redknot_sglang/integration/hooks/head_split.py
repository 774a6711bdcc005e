"""Hooks that put a model whose profile has local heads on SGLang's hybrid-SWA memory path.

SGLang already runs two index spaces (full and sliding-window slots) through its allocator,
admission control, window sliding and radix tree for hybrid-SWA models. These hooks make a
RedKnot server one of them, with the split made by head instead of by layer:

* ``ModelConfig.from_server_args``: mark the model hybrid-SWA, every layer in both the full and
  the window group, window = the profile's largest local window;
* ``create_memory_pool_configurator``: size the pools with :class:`HeadSplitPoolConfigurator`;
* ``KVCacheConfigurator._build_token_to_kv_pool``: build :class:`HeadSplitKVPool`;
* ``alloc_for_extend``: once a batch has its rows, copy cached sinks into the rows of requests that
  reuse a prefix (:meth:`HeadSplitRadixCache.on_extend_allocated`);
* ``ScheduleBatch.prepare_for_extend``: once an extend batch is prepared, document reuse rewrites
  selective requests' last token into their recompute sets and plans the batch's captures
  (:meth:`DocumentReuse.rewrite_batch`, :meth:`DocumentReuse.plan_batch`).

Each hook does nothing unless the server runs ``--attention-backend redknot`` with local heads.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from redknot_sglang.config import ATTR, BACKEND_NAME, ConfigError, RedknotConfig

MODEL_CONFIG = "sglang.srt.configs.model_config.ModelConfig.from_server_args"
POOL_CONFIGURATOR = "sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator"
BUILD_POOL = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_token_to_kv_pool"
ALLOC_EXTEND = "sglang.srt.mem_cache.allocation.alloc_for_extend"
PREPARE_EXTEND = "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend"


def head_split_config(server_args: Any) -> Optional[RedknotConfig]:
    """The redknot config when this server splits heads, else None."""
    cfg = getattr(server_args, ATTR, None)
    if cfg is None or server_args.attention_backend != BACKEND_NAME or cfg.profile.all_heads_global:
        return None
    return cfg


def check_supported(server_args: Any) -> None:
    """Features whose KV paths assume SGLang's own pools: refuse them with a clear message."""
    unsupported = {
        "--speculative-algorithm": server_args.speculative_algorithm is not None,
        "--enable-hierarchical-cache": server_args.enable_hierarchical_cache,
        "--disaggregation-mode": server_args.disaggregation_mode != "null",
        "--enable-dp-attention": server_args.enable_dp_attention,
        "--enable-unified-memory": server_args.enable_unified_memory,
        "--page-size > 1": (server_args.page_size or 1) > 1,
        "--kv-cache-dtype (fp8/fp4)": server_args.kv_cache_dtype not in ("auto", "bf16", "bfloat16", "fp16", "float16"),
        # a streaming session keeps each turn's KV in its own slot, outside the tree: the sinks,
        # private windows and checkpoints of HeadSplitRadixCache are not wired to it (untested)
        "--enable-streaming-session": getattr(server_args, "enable_streaming_session", False),
    }
    bad = [name for name, on in unsupported.items() if on]
    if bad:
        raise ConfigError(f"a profile with local heads does not support {', '.join(bad)} yet")


def model_config_from_server_args(original: Callable[..., Any], server_args: Any, *args: Any, **kwargs: Any) -> Any:
    mc = original(server_args, *args, **kwargs)
    cfg = head_split_config(server_args)
    if cfg is None or kwargs.get("is_draft_model"):
        return mc
    check_supported(server_args)
    layers = list(range(mc.num_hidden_layers))
    mc.is_hybrid_swa = True
    mc.is_hybrid_swa_compress = False
    mc.is_deepseek_v4_arch = False
    mc.swa_attention_layer_ids = layers
    mc.full_attention_layer_ids = list(layers)
    mc.sliding_window_size = max(spec.window for _, _, spec in cfg.profile.local_heads())
    return mc


def create_memory_pool_configurator(original: Callable[[Any], Any], kvc: Any) -> Any:
    cfg = head_split_config(kvc.server_args)
    if cfg is None:
        return original(kvc)
    from redknot_sglang.integration.pool_sizing import HeadSplitPoolConfigurator

    return HeadSplitPoolConfigurator(
        kvc, cfg.profile, window_ratio=cfg.window_pool_ratio, sink_blocks=cfg.sink_cache_blocks
    )


def build_token_to_kv_pool(original: Callable[..., Any], kvc: Any, *, sizes: Any, req_to_token_pool: Any, **kwargs: Any) -> Any:
    cfg = head_split_config(kvc.server_args)
    if cfg is None:
        return original(kvc, sizes=sizes, req_to_token_pool=req_to_token_pool, **kwargs)
    from sglang.srt.runtime_context import get_parallel

    from redknot_sglang.heads.layout import RankHeadLayout
    from redknot_sglang.integration.head_split_pool import HeadSplitKVPool

    par = get_parallel()
    return HeadSplitKVPool(
        layout=RankHeadLayout(cfg.profile, par.attn_tp_rank, par.attn_tp_size),
        size=sizes.full_max_total_num_tokens,
        size_swa=sizes.swa_max_total_num_tokens,
        rows=req_to_token_pool.size,
        sink_blocks=cfg.sink_cache_blocks,
        page_size=kvc.page_size,
        dtype=kvc.kv_cache_dtype,
        head_dim=kvc.model_config.head_dim,
        device=kvc.device,
    )


def alloc_for_extend(original: Callable[[Any], Any], batch: Any) -> Any:
    result = original(batch)
    hook = getattr(batch.tree_cache, "on_extend_allocated", None)
    if hook is not None:
        hook(batch)
    return result


def prepare_for_extend(original: Callable[[Any], Any], batch: Any) -> Any:
    result = original(batch)
    reuse = getattr(batch.tree_cache, "document_reuse", None)
    if reuse is not None:
        reuse.rewrite_batch(batch)
        reuse.plan_batch(batch)
    return result
