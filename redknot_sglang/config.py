"""The ``--redknot-*`` flags and the resolved configuration every process reads.

The flags are added to SGLang's own parser (a hook on ``ServerArgs.add_cli_args``); after parsing, a
hook on ``ServerArgs.from_cli_args`` builds a :class:`RedknotConfig`, checks the head profile
against the served model, and stores it on ``server_args._redknot``. ``ServerArgs`` is pickled
into the scheduler subprocesses with its ``_``-prefixed attributes, so every rank reads the same
configuration from ``get_redknot(server_args)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any, Optional

from redknot_sglang.heads.profile import BUILTIN_ALL_GLOBAL, HeadProfile, ModelFingerprint

BACKEND_NAME = "redknot"
BASE_BACKENDS = ("auto", "flashinfer", "triton", "torch_native")
CAPTURE_MODES = ("in-context", "canonical")
ATTR = "_redknot"
logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A ``--redknot-*`` flag value that cannot be served."""


@dataclasses.dataclass(frozen=True)
class RedknotConfig:
    """Resolved flags. ``profile`` is the validated head profile (all-global by default)."""

    profile_source: str
    profile: HeadProfile
    base_backend: str = "auto"
    window_pool_ratio: Optional[float] = None
    sink_cache_blocks: int = 32
    max_document_tokens: int = 16384
    segment_store_gb: float = 4.0
    segment_host_gb: float = 16.0
    recompute_ratio: float = 0.1  # selective recompute of marked requests (reuse/recompute.py); 0: place only
    capture: str = "in-context"  # how a document first used by a request is stored (CAPTURE_MODES)
    chunk_window_checkpoints: bool = True

    def resolve_base_backend(self, device: Optional[str]) -> str:
        """The SGLang backend whose kernels serve the global heads (and all heads when the
        profile is all-global): FlashInfer on CUDA, torch_native on CPU, unless set."""
        if self.base_backend != "auto":
            return self.base_backend
        return "flashinfer" if str(device or "cuda").startswith("cuda") else "torch_native"


def _default(field: str) -> Any:
    """The flag's default: the :class:`RedknotConfig` field's, the one source of defaults."""
    return RedknotConfig.__dataclass_fields__[field].default


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("redknot (head-aware KV cache)")
    group.add_argument(
        "--redknot-head-profile",
        default=BUILTIN_ALL_GLOBAL,
        metavar="PATH|NAME|all-global",
        help="Head profile JSON (which KV heads are global/local, their window and sink), made "
        "by `python -m redknot_sglang.profile`, or the name of a profile shipped with the package "
        "(smollm2-135m-instruct); `all-global` (default) serves exactly as dense.",
    )
    group.add_argument(
        "--redknot-base-backend",
        default=_default("base_backend"),
        choices=BASE_BACKENDS,
        help="SGLang attention kernels used for global heads: auto = flashinfer on CUDA, "
        "torch_native on CPU.",
    )
    group.add_argument(
        "--redknot-window-pool-ratio",
        type=float,
        default=_default("window_pool_ratio"),
        help="Window-pool slots per full-pool slot (local heads' KV vs global heads'); default "
        "(window + 128 + page) / context length, which fits requests of the context length at "
        "their peak (one window plus SGLang's eviction interval; two windows on SGLang 0.5.23, "
        "where a long decode holds the prompt's last window until it passes its first).",
    )
    group.add_argument(
        "--redknot-sink-cache-blocks",
        type=int,
        default=_default("sink_cache_blocks"),
        help="Cached sink copies (local heads' first tokens) for prefix reuse.",
    )
    group.add_argument(
        "--redknot-max-document-tokens",
        type=int,
        default=_default("max_document_tokens"),
        help="Longest document a request may mark for reuse (custom_params.redknot_documents); "
        "longer marks get HTTP 400.",
    )
    group.add_argument(
        "--redknot-segment-store-gb",
        type=float,
        default=_default("segment_store_gb"),
        help="GPU memory for marked documents' cached KV (global heads' every token, local heads' "
        "sink and window), outside --mem-fraction-static; 0 turns document reuse off (marks are "
        "then checked and served as stock).",
    )
    group.add_argument(
        "--redknot-segment-host-gb",
        type=float,
        default=_default("segment_host_gb"),
        help="Host memory that cold documents spill to before they are dropped: taken when the "
        "server starts (pinned on CUDA: 32 GB took 23 s on an H200 host), so no spill allocates while serving.",
    )
    group.add_argument(
        "--redknot-recompute-ratio",
        type=float,
        default=_default("recompute_ratio"),
        help="Selective recompute of requests that mark documents: every cached document is placed, "
        "then the request's own text, each document's first tokens and this fraction of the placed "
        "tokens (those its question attends to most) are recomputed at their true positions; per "
        "request custom_params.redknot_recompute_ratio, or redknot_recovery false to place only. 0: "
        "place only (the segment store then keeps local heads' sink and window only; > 0 keeps "
        "documents' local heads whole).",
    )
    group.add_argument(
        "--redknot-capture",
        default=_default("capture"),
        choices=CAPTURE_MODES,
        help="How a document that a request marks and the store lacks is stored: in-context (default) "
        "keeps the KV that request computes in its own context; canonical first computes it alone, "
        "after the canonical prefix (as POST /redknot/documents does), so the stored KV does not "
        "depend on which request came first, and the request places it. In context answered better "
        "(bench/results/fidelity_capture_cpu.json: agreement 0.937 vs 0.908 at R = 0.1).",
    )
    group.add_argument(
        "--redknot-chunk-window-checkpoints",
        action=argparse.BooleanOptionalAction,
        default=_default("chunk_window_checkpoints"),
        help="Local heads keep a window only at each prefill chunk's end of a cached prompt (SGLang's "
        "SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS; on by default): long prompts stay reusable "
        "under window-pool pressure, and a prompt that forks inside an earlier one reuses up to the "
        "last chunk end before the fork. --no-redknot-chunk-window-checkpoints: every cached token "
        "keeps its window slot until evicted (repeated long prompts then miss once the window pool "
        "is full).",
    )


def config_from_args(args: argparse.Namespace, served: ModelFingerprint, context_len: Optional[int]) -> RedknotConfig:
    """Build and validate the configuration; raises ``ProfileError`` with a message naming the
    offending layer/head/field."""
    source = args.redknot_head_profile
    if source == BUILTIN_ALL_GLOBAL:
        profile = HeadProfile.all_global(served)
    else:
        profile = HeadProfile.load(source)
    profile.check_model(served, context_len=context_len)
    warning = profile.length_warning(context_len)
    if warning:
        logger.warning(warning)
    if args.redknot_window_pool_ratio is not None and not 0 < args.redknot_window_pool_ratio <= 1:
        raise ConfigError(f"--redknot-window-pool-ratio must be in (0, 1], got {args.redknot_window_pool_ratio}")
    if args.redknot_sink_cache_blocks < 0:
        raise ConfigError(f"--redknot-sink-cache-blocks must be >= 0, got {args.redknot_sink_cache_blocks}")
    if args.redknot_max_document_tokens <= 0:
        raise ConfigError(f"--redknot-max-document-tokens must be > 0, got {args.redknot_max_document_tokens}")
    if not 0 <= args.redknot_recompute_ratio <= 1:
        raise ConfigError(f"--redknot-recompute-ratio must be in [0, 1], got {args.redknot_recompute_ratio}")
    if args.redknot_segment_store_gb < 0 or args.redknot_segment_host_gb < 0:
        raise ConfigError("--redknot-segment-store-gb and --redknot-segment-host-gb must be >= 0")
    return RedknotConfig(
        profile_source=source,
        profile=profile,
        base_backend=args.redknot_base_backend,
        window_pool_ratio=args.redknot_window_pool_ratio,
        sink_cache_blocks=args.redknot_sink_cache_blocks,
        max_document_tokens=args.redknot_max_document_tokens,
        segment_store_gb=args.redknot_segment_store_gb,
        segment_host_gb=args.redknot_segment_host_gb,
        recompute_ratio=args.redknot_recompute_ratio,
        capture=args.redknot_capture,
        chunk_window_checkpoints=args.redknot_chunk_window_checkpoints,
    )


def build_config(args: argparse.Namespace) -> RedknotConfig:
    """The configuration for parsed command-line ``args`` (SGLang's and ours), checked against the
    model at ``args.model_path``."""
    from redknot_sglang.heads.fingerprint import fingerprint_from_hf_config, hf_config_of, max_context_of

    cfg = hf_config_of(args.model_path, trust_remote_code=args.trust_remote_code)
    return config_from_args(args, fingerprint_from_hf_config(cfg), context_len=args.context_length or max_context_of(cfg))


def get_redknot(server_args: Any) -> RedknotConfig:
    """The configuration the plugin stored on ``server_args``; servers built without the CLI
    (``sgl.Engine``) get the defaults (all-global profile)."""
    cfg = getattr(server_args, ATTR, None)
    if cfg is None:
        parser = argparse.ArgumentParser()
        add_cli_args(parser)
        args = parser.parse_args([])
        args.model_path = server_args.model_path
        args.trust_remote_code = server_args.trust_remote_code
        args.context_length = server_args.context_length
        cfg = build_config(args)
        setattr(server_args, ATTR, cfg)
    return cfg
