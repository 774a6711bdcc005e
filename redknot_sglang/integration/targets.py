"""Every SGLang name RedKnot relies on, in one table, and the start-up check that they all resolve.

SGLang's ``HookRegistry.apply_hooks`` logs and skips a target it cannot find, and a renamed attribute
fails only when a request reaches it, so an SGLang upgrade would break a server silently. The plugin
checks this table when a server selects RedKnot (:func:`check`) and stops with one line naming what
is missing and the SGLang version.

* :data:`HOOKS`: the hook registrations (target, our function, kind); the plugin registers exactly these.
* :data:`RELIED`: per SGLang class or module, the other names we call, read, write or override. A name
  resolves when the owner has it (method, class attribute, dataclass field, module global), or when
  the source of the owner or of one of its SGLang bases assigns ``self.<name>`` (instance attributes).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import inspect
import pkgutil
import re
from typing import Any, Callable

from redknot_sglang.patches import compat
from redknot_sglang.integration.hooks import (admission_placement, backend_name, canonical_capture, cpu_rope,
                                              head_split, metrics, preload, request_spans, server_args, stats,
                                              swa_admission)


@dataclasses.dataclass(frozen=True)
class Hook:
    target: str
    function: Callable[..., Any]
    kind: str  # a ``HookType`` member name: "AROUND" or "AFTER"


HOOKS: tuple[Hook, ...] = (
    Hook(server_args.ADD_CLI_ARGS, server_args.add_cli_args, "AROUND"),
    Hook(server_args.FROM_CLI_ARGS, server_args.from_cli_args, "AROUND"),
    Hook(backend_name.TARGET, backend_name.support_triton, "AROUND"),
    Hook(cpu_rope.TARGET, cpu_rope.rope_init, "AROUND"),
    Hook(stats.TARGET, stats.get_internal_state, "AFTER"),
    Hook(metrics.PREFILL, metrics.report, "AFTER"),
    Hook(metrics.DECODE, metrics.report, "AFTER"),
    Hook(request_spans.TARGET, request_spans.validate_documents, "AFTER"),
    Hook(preload.TARGET, preload.launch_server, "AROUND"),
    Hook(canonical_capture.TARGET, canonical_capture.tokenize_one_request, "AROUND"),
    Hook(swa_admission.INIT, swa_admission.reserve_running, "AFTER"),
    Hook(swa_admission.ADD, swa_admission.reserve_new, "AROUND"),
    Hook(admission_placement.ADD, admission_placement.place_documents, "AROUND"),
    Hook(admission_placement.ADD_CHUNKED, admission_placement.place_chunk, "AROUND"),
    Hook(head_split.MODEL_CONFIG, head_split.model_config_from_server_args, "AROUND"),
    Hook(head_split.POOL_CONFIGURATOR, head_split.create_memory_pool_configurator, "AROUND"),
    Hook(head_split.BUILD_POOL, head_split.build_token_to_kv_pool, "AROUND"),
    Hook(head_split.ALLOC_EXTEND, head_split.alloc_for_extend, "AROUND"),
    Hook(head_split.PREPARE_EXTEND, head_split.prepare_for_extend, "AROUND"),
)

_S = "sglang.srt."
RELIED: dict[str, tuple[str, ...]] = {
    # registries and hooks (plugin.py)
    _S + "plugins.hook_registry": ("HookRegistry", "HookType"),
    _S + "layers.attention.attention_registry": ("ATTENTION_BACKENDS", "register_attention_backend"),
    _S + "mem_cache.registry": ("get_radix_cache_factory", "register_radix_cache_backend",
                                "default_radix_cache_factory"),
    _S + "server_args": ("ATTENTION_BACKEND_CHOICES", "add_attention_backend_choices"),
    _S + "server_args.ServerArgs": ("attention_backend", "radix_cache_backend", "cuda_graph_backend_prefill",
                                    "speculative_algorithm", "enable_hierarchical_cache", "disaggregation_mode",
                                    "enable_dp_attention", "enable_unified_memory", "page_size", "kv_cache_dtype",
                                    "model_path", "trust_remote_code", "context_length", "device"),
    _S + "runtime_context": ("get_parallel", "get_schedule", "get_server_args"),
    # flags read by SGLang whose effect the head split depends on (an unknown name is ignored silently)
    _S + "environ.envs": ("SGLANG_SWA_EVICTION_INTERVAL", "SGLANG_OPT_UNIFIED_CACHE_FREE_OUT_OF_WINDOW_SLOTS"),
    # the hybrid-SWA memory path (hooks/head_split.py, head_split_pool.py, pool_sizing.py)
    _S + "configs.model_config.ModelConfig": ("context_len", "hf_config", "num_hidden_layers", "head_dim",
                                              "is_hybrid_swa", "is_hybrid_swa_compress", "is_deepseek_v4_arch",
                                              "swa_attention_layer_ids", "full_attention_layer_ids",
                                              "sliding_window_size"),
    _S + "mem_cache.kv_cache_configurator.KVCacheConfigurator": ("server_args", "model_config", "page_size",
                                                                 "kv_cache_dtype", "device"),
    _S + "model_executor.pool_configurator": ("MemoryPoolConfig",),
    _S + "model_executor.pool_configurator.MemoryPoolConfigurator": (
        "calculate_pool_sizes", "calculate_pool_sizes_from_max_tokens", "finalize_with_max_running_requests"),
    _S + "model_executor.pool_configurator.MemoryPoolConfig": ("max_total_num_tokens", "full_max_total_num_tokens",
                                                               "swa_max_total_num_tokens", "max_running_requests"),
    _S + "mem_cache.base_swa_memory_pool.BaseSWAKVPool": ("swa_kv_pool", "translate_loc_from_full_to_swa"),
    _S + "mem_cache.memory_pool": ("unwrap_write_loc", "KVWriteLoc"),
    _S + "mem_cache.memory_pool.ReqToTokenPool": ("req_to_token", "req_generation", "size", "available_size"),
    _S + "mem_cache.allocator.swa.SWATokenToKVPoolAllocator": (
        "full_available_size", "swa_available_size", "full_attn_allocator", "size_swa", "page_size", "free",
        "get_kvcache"),
    # the radix tree (head_split_cache.py, tree_cache.py)
    _S + "mem_cache.unified_radix_cache.UnifiedRadixCache": (
        "match_prefix", "reset", "evict", "inc_lock_ref",
        "dec_lock_ref", "full_evictable_size", "swa_evictable_size", "full_protected_size", "swa_protected_size",
        "sliding_window_size", "page_size", "req_to_token_pool", "token_to_kv_pool_allocator", "disable"),
    _S + "mem_cache.base_prefix_cache": ("MatchPrefixParams", "MatchResult", "zero_match_result", "EvictParams"),
    _S + "mem_cache.base_prefix_cache.MatchPrefixParams": ("key", "req"),
    _S + "mem_cache.common": ("free_swa_out_of_window_slots",),
    _S + "mem_cache.unified_cache.components.ComponentType": ("FULL", "SWA"),
    # admission and requests (hooks/swa_admission.py, hooks/admission_placement.py, document_reuse.py)
    _S + "managers.schedule_policy.PrefillAdder": (
        "budget_state", "_swa_new_tokens", "can_run_list", "new_chunked_req",
        "is_hybrid_swa", "rem_chunk_tokens", "running_batch", "tree_cache"),
    _S + "managers.schedule_batch.Req": (
        "rid", "origin_input_ids", "output_ids", "sampling_params", "extra_key", "last_node",
        "full_untruncated_fill_ids", "get_fill_ids", "return_logprob", "logprob_start_len"),
    _S + "managers.schedule_batch.ScheduleBatch": ("reqs", "prefix_lens", "extend_lens", "tree_cache",
                                                   "prefill_input_ids_cpu", "out_cache_loc", "extend_num_tokens",
                                                   "extend_logprob_start_lens"),
    _S + "managers.scheduler.Scheduler": ("token_to_kv_pool_allocator", "tree_cache",
                                         "req_to_token_pool", "running_batch", "waiting_queue"),
    _S + "managers.tokenizer_manager.TokenizerManager": ("server_args", "tokenizer", "generate_request"),
    _S + "managers.scheduler_components.metrics_reporter.SchedulerMetricsReporter": (
        "scheduler", "metrics_collector", "enable_metrics"),
    _S + "observability.metrics_collector.SchedulerMetricsCollector": ("labels",),
    # the preload route (hooks/preload.py)
    _S + "entrypoints.http_server": ("app", "_global_state"),
    _S + "entrypoints.http_server._GlobalState": ("tokenizer_manager",),
    _S + "managers.io_struct.GenerateReqInput": ("input_ids", "sampling_params", "extra_key"),
    # the attention side (attention.py, head_split_backend.py)
    _S + "layers.attention.base_attn_backend.AttentionBackend": ("init_forward_metadata", "forward_extend",
                                                                "forward_decode"),
    _S + "model_executor.forward_batch_info.ForwardBatch": (
        "forward_mode", "positions", "input_ids", "out_cache_loc", "seq_lens", "req_pool_indices",
        "extend_seq_lens", "extend_seq_lens_cpu", "extend_start_loc", "seq_lens_cpu"),
    _S + "model_executor.model_runner.ModelRunner": ("model", "model_config", "server_args", "device",
                                                     "req_to_token_pool", "token_to_kv_pool",
                                                     "sliding_window_size"),
    _S + "layers.radix_attention.RadixAttention": ("layer_id", "tp_q_head_num", "tp_k_head_num", "tp_v_head_num",
                                                   "head_dim", "scaling"),
    # the frontend (frontend.py)
    "sglang.lang.backend.runtime_endpoint": ("RuntimeEndpoint",),
}
for _owner, _names in compat.RELIED.items():  # what moved between the supported versions
    RELIED[_owner] = RELIED.get(_owner, ()) + _names


def sglang_version() -> str:
    try:
        return importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=None)
def _source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return ""


def _has(owner: Any, name: str) -> bool:
    if hasattr(owner, name) or name in getattr(owner, "__dataclass_fields__", {}):
        return True
    if not isinstance(owner, type):
        return False
    bases = [c for c in owner.__mro__ if c.__module__.startswith("sglang")]
    # ``self.name = ...``, ``self.name: T = ...``, ``self.name, self.other = ...``, or a class annotation
    assigned = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]+)?(,\s*self\.\w+\s*)*=[^=]")
    return any(name in c.__dict__.get("__annotations__", {}) or assigned.search(_source(c)) for c in bases)


def _resolve(path: str) -> Any:
    try:
        return pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError):
        return None


def missing(hooks: tuple[Hook, ...] = HOOKS, relied: dict[str, tuple[str, ...]] = RELIED) -> list[str]:
    """Dotted names of hook targets and relied-on names the installed SGLang lacks (empty: all there)."""
    lost = []
    for hook in hooks:
        owner_path, name = hook.target.rsplit(".", 1)
        owner = _resolve(owner_path)
        if owner is None or not _has(owner, name):
            lost.append(hook.target)
    for owner_path, names in relied.items():
        owner = _resolve(owner_path)
        lost.extend(f"{owner_path}.{n}" for n in names if owner is None or not _has(owner, n))
    return lost


class IntegrationError(RuntimeError):
    """The installed SGLang lacks names RedKnot relies on."""


def check() -> None:
    """Raise :class:`IntegrationError` naming what the installed SGLang lacks."""
    lost = missing()
    if lost:
        raise IntegrationError(f"SGLang {sglang_version()} lacks {len(lost)} name(s) redknot_sglang relies on: "
                               f"{', '.join(lost)} (supported: SGLang {' and '.join(compat.SUPPORTED)})")
