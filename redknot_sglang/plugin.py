"""The ``sglang.srt.plugins`` entry point: registers RedKnot through SGLang's own hooks.

SGLang calls :func:`register` in the launcher before it parses the command line, and again in every
scheduler subprocess before the model runner is built. Everything here is idempotent and cheap: the
heavy modules (pools, kernels) are imported by the factories, when a server actually selects
``--attention-backend redknot`` / ``--radix-cache-backend redknot``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from redknot_sglang.config import ATTR, BACKEND_NAME, ConfigError, add_cli_args, build_config
from redknot_sglang.heads.profile import ProfileError

_SERVER_ARGS = "sglang.srt.server_args.ServerArgs."


def _add_cli_args(original: Callable[[argparse.ArgumentParser], None], parser: argparse.ArgumentParser) -> None:
    original(parser)
    add_cli_args(parser)


def _from_cli_args(original: Callable[..., Any], cls: type, args: argparse.Namespace) -> Any:
    if not hasattr(args, "redknot_head_profile"):
        return original(cls, args)
    from redknot_sglang.hooks.head_split import check_supported

    try:
        cfg = build_config(args)
        split = args.attention_backend == BACKEND_NAME and not cfg.profile.all_heads_global
        if split:
            check_supported(args)
    except (ProfileError, ConfigError) as e:
        # A clean one-line exit instead of a traceback: the user's input is wrong, not us.
        raise SystemExit(f"redknot: {e}") from None
    if split and args.cuda_graph_backend_prefill is None:
        # prefill graphs narrow the batch inside the attention call; the head split computes
        # per-token sink targets from the whole batch, so prefill runs eagerly (decode graphs stay)
        args.cuda_graph_backend_prefill = "disabled"
    if split:
        # Once a request has decoded a window past its prompt, SGLang can drop the tree's lock on
        # the prompt's last window (off by default): without it a long decode holds two windows of
        # window slots for its whole life. Scheduler processes inherit the variable.
        os.environ.setdefault("SGLANG_OPT_SWA_RELEASE_LEAF_LOCK_AFTER_WINDOW", "1")
        # Free a chunked prefill's out-of-window window slots as each chunk enters the tree (off by
        # default in 0.5.17, on in 0.5.23): without it a cached prompt keeps window slots for all its
        # tokens, and the window pool, sized for windows, holds the last windows of a few prompts
        # only; their eviction made every long prompt miss (issue 13: 0 of 32K tokens reused).
        os.environ.setdefault("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    server_args = original(cls, args)
    setattr(server_args, ATTR, cfg)
    return server_args


def _create_attention_backend(model_runner: Any) -> Any:
    from redknot_sglang.attention import create_attention_backend

    return create_attention_backend(model_runner)


def _create_tree_cache(ctx: Any) -> Any:
    from redknot_sglang.cache import create_tree_cache

    return create_tree_cache(ctx)


def register() -> None:
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )
    from sglang.srt.mem_cache.registry import (
        get_radix_cache_factory,
        register_radix_cache_backend,
    )
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from redknot_sglang.hooks import (backend_name, cpu_rope, document_reuse, head_split, request_spans, sparse_ffn,
                                      stats, swa_admission)

    if BACKEND_NAME in ATTENTION_BACKENDS:  # already registered in this process
        return
    HookRegistry.register(_SERVER_ARGS + "add_cli_args", _add_cli_args, HookType.AROUND)
    HookRegistry.register(_SERVER_ARGS + "from_cli_args", _from_cli_args, HookType.AROUND)
    HookRegistry.register(backend_name.TARGET, backend_name.support_triton, HookType.AROUND)
    HookRegistry.register(cpu_rope.TARGET, cpu_rope.rope_init, HookType.AROUND)
    HookRegistry.register(stats.TARGET, stats.get_internal_state, HookType.AFTER)
    HookRegistry.register(request_spans.TARGET, request_spans.validate_documents, HookType.AFTER)
    HookRegistry.register(swa_admission.INIT, swa_admission.reserve_running, HookType.AFTER)
    HookRegistry.register(swa_admission.ADD, swa_admission.reserve_new, HookType.AROUND)
    HookRegistry.register(document_reuse.ADD, document_reuse.place_documents, HookType.AROUND)
    HookRegistry.register(document_reuse.ADD_CHUNKED, document_reuse.place_chunk, HookType.AROUND)
    HookRegistry.register(sparse_ffn.LAYER, sparse_ffn.decoder_layer, HookType.AROUND)
    HookRegistry.register(sparse_ffn.ATTENTION, sparse_ffn.attention_output, HookType.AFTER)
    HookRegistry.register(sparse_ffn.MLP, sparse_ffn.mlp, HookType.AROUND)
    for target, hook in (
        (head_split.MODEL_CONFIG, head_split.model_config_from_server_args),
        (head_split.POOL_CONFIGURATOR, head_split.create_memory_pool_configurator),
        (head_split.BUILD_POOL, head_split.build_token_to_kv_pool),
        (head_split.ALLOC_EXTEND, head_split.alloc_for_extend),
    ):
        HookRegistry.register(target, hook, HookType.AROUND)
    register_attention_backend(BACKEND_NAME)(_create_attention_backend)
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, _create_tree_cache)
