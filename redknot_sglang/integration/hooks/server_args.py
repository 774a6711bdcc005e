"""The ``--redknot-*`` flags on SGLang's own parser, and the configuration built after parsing.

AROUND ``ServerArgs.add_cli_args`` adds the flags (:mod:`redknot_sglang.config`); AROUND
``ServerArgs.from_cli_args`` checks the installed SGLang (:mod:`redknot_sglang.integration.targets`),
builds and validates the :class:`~redknot_sglang.config.RedknotConfig` against the served model and
stores it on ``server_args._redknot``. A bad input stops the launcher with one line, no traceback.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from redknot_sglang.config import ATTR, BACKEND_NAME, ConfigError, add_cli_args as add_redknot_args, build_config
from redknot_sglang.heads.profile import ProfileError
from redknot_sglang.patches import compat

ADD_CLI_ARGS = "sglang.srt.server_args.ServerArgs.add_cli_args"
FROM_CLI_ARGS = "sglang.srt.server_args.ServerArgs.from_cli_args"


def add_cli_args(original: Callable[[argparse.ArgumentParser], None], parser: argparse.ArgumentParser) -> None:
    original(parser)
    add_redknot_args(parser)


def _selected(args: argparse.Namespace) -> bool:
    return BACKEND_NAME in (getattr(args, "attention_backend", None), getattr(args, "radix_cache_backend", None))


def from_cli_args(original: Callable[..., Any], cls: type, args: argparse.Namespace) -> Any:
    if not hasattr(args, "redknot_head_profile"):
        return original(cls, args)
    from redknot_sglang.integration.hooks.head_split import check_supported
    from redknot_sglang.integration.targets import IntegrationError, check

    try:
        if _selected(args):
            check()
        cfg = build_config(args)
        split = args.attention_backend == BACKEND_NAME and not cfg.profile.all_heads_global
        if split:
            check_supported(args)
    except (ProfileError, ConfigError, IntegrationError) as e:
        # A clean one-line exit instead of a traceback: the user's input (or install) is wrong, not us.
        raise SystemExit(f"redknot: {e}") from None
    if split and args.cuda_graph_backend_prefill is None:
        # prefill graphs narrow the batch inside the attention call; the head split computes
        # per-token sink targets from the whole batch, so prefill runs eagerly (decode graphs stay)
        args.cuda_graph_backend_prefill = "disabled"
    if split:
        # Once a request has decoded a window past its prompt, SGLang can drop the tree's lock on
        # the prompt's last window (off by default): without it a long decode holds two windows of
        # window slots for its whole life (on 0.5.17 a long decode owns a copy of that window and
        # holds no such lock, head_split_cache.py). Scheduler processes inherit the variable.
        os.environ.setdefault(compat.RELEASE_PREFIX_WINDOW_ENV, "1")
    if split and cfg.chunk_window_checkpoints:
        # Free a chunked prefill's out-of-window window slots as each chunk enters the tree (off by
        # default in 0.5.17, on in 0.5.23): without it a cached prompt keeps window slots for all its
        # tokens, and the window pool, sized for windows, holds the last windows of a few prompts
        # only; their eviction made every long prompt miss (issue 13: 0 of 32K tokens reused). With
        # it, a fork inside an earlier prompt reuses up to that prompt's last chunk end before the
        # fork; a marked request's extend is cut at its first document, so a shared system prompt
        # ends a chunk and keeps its window (DocumentReuse.cut_point).
        os.environ.setdefault("SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS", "1")
    server_args = original(cls, args)
    setattr(server_args, ATTR, cfg)
    return server_args
