"""The ``redknot`` radix-cache backend factory (registered by the plugin)."""

from __future__ import annotations

from typing import Any


def create_tree_cache(ctx: Any) -> Any:
    """With an all-global profile the pool is SGLang's own, so is the tree cache."""
    from sglang.srt.mem_cache.registry import default_radix_cache_factory

    return default_radix_cache_factory(ctx)
