"""The ``redknot`` radix-cache backend factory (registered by the plugin)."""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)


def create_tree_cache(ctx: Any) -> Any:
    """SGLang's own cache over SGLang's own pool for an all-global profile; the head-split radix
    tree over the head-split pool otherwise (SGLang's chunk cache when the radix cache is off)."""
    from sglang.srt.mem_cache.registry import default_radix_cache_factory

    from redknot_sglang.integration.head_split_pool import HeadSplitKVPool

    pool = ctx.params.token_to_kv_pool_allocator.get_kvcache()
    if not isinstance(pool, HeadSplitKVPool) or ctx.disable_radix_cache:
        return default_radix_cache_factory(ctx)
    from sglang.srt.mem_cache.unified_cache.components import ComponentType

    from redknot_sglang.integration.head_split_cache import HeadSplitRadixCache
    from redknot_sglang.config import get_redknot
    from redknot_sglang.mem.sink_cache import SinkCache

    cfg = get_redknot(ctx.server_args)
    ctx.params.tree_components = (ComponentType.FULL, ComponentType.SWA)
    sinks = SinkCache(cfg.sink_cache_blocks, pool.sink)
    reuse = None
    if cfg.segment_store_gb > 0:
        from redknot_sglang.reuse.segment_store import SegmentStore
        from redknot_sglang.integration.document_reuse import DocumentReuse

        t0 = time.monotonic()
        store = SegmentStore(pool.layout, head_dim=pool.head_dim, dtype=pool.dtype, device=pool.device,
                             device_bytes=int(cfg.segment_store_gb * (1 << 30)),
                             host_bytes=int(cfg.segment_host_gb * (1 << 30)),
                             max_document_tokens=cfg.max_document_tokens,
                             tail=cfg.max_document_tokens if cfg.recompute_ratio > 0 else None)
        logger.info("redknot: segment store %.1f GB on %s, host tier %.1f GB taken in %.1f s", cfg.segment_store_gb,
                    pool.device, store.host_budget / (1 << 30), time.monotonic() - t0)
        model_key = f"{ctx.server_args.model_path}|{cfg.profile.model.model_dump_json()}"
        reuse = DocumentReuse(store, pool=pool, allocator=ctx.params.token_to_kv_pool_allocator,
                              req_to_token=ctx.params.req_to_token_pool.req_to_token, model_key=model_key,
                              recompute_ratio=cfg.recompute_ratio, canonical=cfg.capture == "canonical")
        pool.document_reuse = reuse  # the attention backend's way to it
    return HeadSplitRadixCache(ctx.params, pool, sinks, reuse)
