"""The ``sglang.srt.plugins`` entry point: registers RedKnot through SGLang's own hooks.

SGLang calls :func:`register` in the launcher before it parses the command line, and again in every
scheduler subprocess before the model runner is built. Everything here is idempotent and cheap: the
heavy modules (pools, kernels) are imported by the factories, when a server actually selects
``--attention-backend redknot`` / ``--radix-cache-backend redknot``. What is registered is the table
of :mod:`redknot_sglang.integration.targets`.
"""

from __future__ import annotations

from typing import Any

from redknot_sglang.config import BACKEND_NAME


def _create_attention_backend(model_runner: Any) -> Any:
    from redknot_sglang.integration.attention import create_attention_backend

    return create_attention_backend(model_runner)


def _create_tree_cache(ctx: Any) -> Any:
    from redknot_sglang.integration.tree_cache import create_tree_cache

    return create_tree_cache(ctx)


def register() -> None:
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from redknot_sglang.integration.targets import HOOKS

    if BACKEND_NAME in ATTENTION_BACKENDS:  # already registered in this process
        return
    for hook in HOOKS:
        HookRegistry.register(hook.target, hook.function, HookType[hook.kind])
    register_attention_backend(BACKEND_NAME)(_create_attention_backend)
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, _create_tree_cache)
