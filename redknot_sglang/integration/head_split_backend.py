"""``HeadSplitAttnBackend``: one layer's attention as two launches, one per head class.

Per layer, after the load-time permutation, query heads ``[0, G*grp)`` read global KV heads
``[0, G)`` and the rest read local heads::

    q heads:  | global group: G*grp heads      | local group: (H-G)*grp heads           |
    keys:     | every key, full slots           | sink row + window slots                |
    decode:   | CUDA: one SegPaged launch and one reduce for both groups (CUDA-graph safe)|
              | CPU: SGLang's base backend      | CPU: the torch path                    |
    extend:   | FlashInfer if given, else the   | SegPaged (Triton on CUDA, torch on     |
              | base backend                    | CPU)                                   |
              | CUDA, one new token per request: decode's launch for both groups          |

The base backend is SGLang's own class, built over the head-split pool (whose ``get_key_buffer``
returns the global heads' buffers) and called with a copy of the layer whose head counts are the
global group's; it keeps its metadata and kernels (on CUDA it serves no decode, so neither its
decode metadata nor its CUDA-graph state is built). New K/V are stored once, here: global heads
into full slots, local heads into window slots and (positions below the sink) into the request's
sink row.

An extend holding a selective request's recompute set (queries at scattered positions, see
:mod:`redknot_sglang.integration.document_reuse`) runs both head classes on the position-causal
SegPaged kernels instead (``full_extend`` over the full slots for the global heads); the extends
before it report the question's attention over the global heads (``DocumentReuse.observe``).

With a :class:`~redknot_sglang.attention.global_extend.FlashInferGlobalExtend` (base backend
``flashinfer``, the default on CUDA), the global heads' extends run on FlashInfer's paged prefill
instead of the base backend's extend, whose metadata is then not built.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Any, Optional

import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from redknot_sglang.attention.global_extend import FlashInferGlobalExtend
from redknot_sglang.attention.local_torch import local_attention_torch
from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool, sink_targets
from redknot_sglang.kernels.segpaged import FULL_WINDOW
from redknot_sglang.reuse.rope import RopeSpec

if TYPE_CHECKING:  # SGLang's types, for annotations only
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner


@contextlib.contextmanager
def _without_sliding_window(model_runner: ModelRunner):
    """Build the base backend as for a dense model: its layers have no window of their own."""
    saved = model_runner.sliding_window_size
    model_runner.sliding_window_size = None
    try:
        yield
    finally:
        model_runner.sliding_window_size = saved


def _rotary_of(model: torch.nn.Module) -> torch.nn.Module:
    """The model's rotary embedding (SGLang's ``RotaryEmbedding`` or a variant of it)."""
    for m in model.modules():
        if hasattr(m, "_compute_inv_freq") and hasattr(m, "rotary_dim"):
            return m
    raise RuntimeError("redknot: document reuse needs a model with rotary position embeddings")


@contextlib.contextmanager
def _own_output(forward_batch: ForwardBatch):
    """Hide a preallocated whole-layer output from the base backend, which would write its
    global-group result there; the caller places it."""
    saved = getattr(forward_batch, "_attn_output", None)
    forward_batch._attn_output = None
    try:
        yield
    finally:
        forward_batch._attn_output = saved


class HeadSplitAttnBackend(AttentionBackend):
    def __init__(self, model_runner: ModelRunner, layout: RankHeadLayout, base_backend: str,
                 global_extend: Optional[FlashInferGlobalExtend] = None):
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

        super().__init__()
        self.layout = layout
        self.token_to_kv_pool: HeadSplitKVPool = model_runner.token_to_kv_pool
        self.req_to_token_pool = model_runner.req_to_token_pool
        if not isinstance(self.token_to_kv_pool, HeadSplitKVPool):
            raise RuntimeError("redknot: local heads need --radix-cache-backend redknot's head-split pool")
        with _without_sliding_window(model_runner):
            self.base = ATTENTION_BACKENDS[base_backend](model_runner)
        self.device = model_runner.device
        self.model = getattr(model_runner, "model", None)  # RoPE of document reuse
        # local heads' attention, every decode and every K/V store: our Triton kernels on CUDA, the
        # torch path and the base backend on CPU (tests may pick either)
        self.local_impl = "triton" if str(self.device).startswith("cuda") else "torch"
        self.sink = self.token_to_kv_pool.sink
        # per layer, window and sink of every head, global heads first (every key, no sink)
        self.windows = [torch.tensor((FULL_WINDOW,) * lh.num_global + lh.window, dtype=torch.int32, device=self.device)
                        for lh in layout.layers]
        self.sinks = [torch.tensor((0,) * lh.num_global + lh.sink, dtype=torch.int32, device=self.device)
                      for lh in layout.layers]
        self._global_layers: dict[int, Any] = {}
        self._extend_rows: Optional[torch.Tensor] = None
        self._scattered = False  # this extend holds a recompute set at scattered positions
        self.global_extend = global_extend
        self._on_global_extend = False  # this extend's global heads run on ``global_extend``
        self._extend_as_decode = False  # this extend has one new token per request: decode's launch

    # ------------------------------------------------------------------ metadata
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        self.token_to_kv_pool.flush_sink_copies()
        reuse = self.token_to_kv_pool.document_reuse
        if reuse is not None:
            if reuse.rope is None:
                reuse.rope = RopeSpec.of(_rotary_of(self.model))
            reuse.begin_forward(forward_batch.forward_mode.is_extend())
            if reuse.scattered:
                reuse.fill_recomputes(forward_batch.input_ids, forward_batch.positions, forward_batch.out_cache_loc,
                                      self.req_to_token_pool.req_to_token)
        self._scattered = reuse is not None and reuse.scattered
        extend = forward_batch.forward_mode.is_extend()
        # one new token per request (a prompt sent again, whose prefix is cached): the decode launch
        self._extend_as_decode = (extend and not self._scattered and not self._base_decodes
                                  and max(forward_batch.extend_seq_lens_cpu) == 1)
        self._on_global_extend = (extend and not self._scattered and not self._extend_as_decode
                                  and self.global_extend is not None)
        if self._on_global_extend:
            self.global_extend.begin(self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices,
                                     forward_batch.seq_lens, forward_batch.seq_lens_cpu.tolist(),
                                     forward_batch.extend_seq_lens_cpu)
        elif (extend and not self._extend_as_decode) or self._base_decodes:
            self.base.init_forward_metadata(forward_batch)
        if extend:
            self._extend_rows = torch.repeat_interleave(
                forward_batch.req_pool_indices, forward_batch.extend_seq_lens,
                output_size=sum(forward_batch.extend_seq_lens_cpu),  # no read back from the device
            )

    @property
    def _base_decodes(self) -> bool:
        """Whether decode runs the base backend's kernels (CPU); on CUDA our one launch per layer
        reads ``req_to_token``, rows and sequence lengths straight from the batch."""
        return self.local_impl != "triton"

    # CUDA graphs capture decode only (prefill graphs are off for the head split)
    def init_forward_metadata_out_graph(self, forward_batch: ForwardBatch, in_capture: bool = False) -> None:
        self.token_to_kv_pool.flush_sink_copies()
        if self._base_decodes:
            self.base.init_forward_metadata_out_graph(forward_batch, in_capture)

    def init_forward_metadata_in_graph(self, forward_batch: ForwardBatch) -> None:
        if self._base_decodes:
            self.base.init_forward_metadata_in_graph(forward_batch)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        if self._base_decodes:
            self.base.init_cuda_graph_state(max_bs, max_num_tokens)

    def get_cuda_graph_seq_len_fill_value(self) -> int:
        return self.base.get_cuda_graph_seq_len_fill_value()

    # ------------------------------------------------------------------ forward
    def _global_layer(self, layer: RadixAttention) -> RadixAttention:
        """The layer as the base backend should see it: only the global group's heads."""
        g = self._global_layers.get(layer.layer_id)
        if g is None:
            heads = self.layout.layers[layer.layer_id]
            group = layer.tp_q_head_num // layer.tp_k_head_num
            g = copy.copy(layer)
            g.tp_q_head_num = heads.num_global * group
            g.tp_k_head_num = g.tp_v_head_num = heads.num_global
            self._global_layers[layer.layer_id] = g
        return g

    def _store(self, layer: RadixAttention, forward_batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor) -> None:
        pool = self.token_to_kv_pool
        loc = forward_batch.out_cache_loc
        g = self.layout.layers[layer.layer_id].num_global
        if self.local_impl == "triton":  # one launch for both pools and the sink rows
            from redknot_sglang.kernels.kv_store import store_kv

            full_k, full_v = pool.get_kv_buffer(layer.layer_id)
            store_kv(k, v, loc, rows, forward_batch.positions, full_k, full_v, *pool.local_buffers(layer.layer_id),
                     pool.full_to_swa_index_mapping, g)
            return
        pool.set_kv_buffer(layer, KVWriteLoc(loc, pool.translate_loc_from_full_to_swa(loc)), k, v)
        if self.sink:
            srows, spos = sink_targets(rows, forward_batch.positions, self.sink)
            pool.store_sink(layer.layer_id, srows, spos, k[:, g:], v[:, g:])

    def _forward(self, q, k, v, layer, forward_batch, save_kv_cache: bool, decode: bool) -> torch.Tensor:
        heads = self.layout.layers[layer.layer_id]
        group = layer.tp_q_head_num // layer.tp_k_head_num
        d = layer.head_dim
        if save_kv_cache and k is not None:
            k = k.view(-1, layer.tp_k_head_num, d)
            v = v.view(-1, layer.tp_v_head_num, d)
            rows = forward_batch.req_pool_indices if decode else self._extend_rows
            self._store(layer, forward_batch, k, v, rows)
            if not decode and self.token_to_kv_pool.document_reuse is not None:
                self.token_to_kv_pool.document_reuse.capture(layer.layer_id, k, v)
        q3 = q.view(-1, layer.tp_q_head_num, d)
        o = torch.empty_like(q3)
        ng = heads.num_global * group
        reuse = self.token_to_kv_pool.document_reuse
        if not decode and reuse is not None and heads.num_global:
            reuse.observe(q3[:, :ng], self.token_to_kv_pool.get_key_buffer(layer.layer_id),
                          self.req_to_token_pool.req_to_token, layer.scaling)
        if not decode and self._scattered:
            self._by_position(q3, o, layer, forward_batch)
            return o.view(q.shape[0], -1)
        if (decode or self._extend_as_decode) and not self._base_decodes:
            self._decode(q3, o, layer, forward_batch)
            return o.view(q.shape[0], -1)
        # `not decode`: a CUDA-graph decode does not run init_forward_metadata, so the flag may still
        # hold the last extend's value
        if heads.num_global and not decode and self._on_global_extend:
            pool = self.token_to_kv_pool
            o[:, :ng] = self.global_extend.run(q3[:, :ng], pool.get_key_buffer(layer.layer_id),
                                               pool.get_value_buffer(layer.layer_id), layer.scaling)
        elif heads.num_global:
            base_fwd = self.base.forward_decode if decode else self.base.forward_extend
            kg = None if k is None else k[:, : heads.num_global]
            vg = None if v is None else v[:, : heads.num_global]
            with _own_output(forward_batch):
                out = base_fwd(q3[:, :ng].reshape(q3.shape[0], -1), kg, vg, self._global_layer(layer),
                               forward_batch, save_kv_cache=False)
            o[:, :ng] = out.view(q3.shape[0], ng, d)
        if heads.num_local:
            self._local(q3[:, ng:], o[:, ng:], layer, forward_batch, decode)
        return o.view(q.shape[0], -1)

    def _decode(self, q3: torch.Tensor, o: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> None:
        """Every head of the layer in one SegPaged launch: global heads over the full slots, local
        heads over sink + window (:func:`redknot_sglang.kernels.segpaged.segpaged_decode`)."""
        from redknot_sglang.kernels import segpaged

        pool = self.token_to_kv_pool
        lid = layer.layer_id
        heads = self.layout.layers[lid]
        segpaged.segpaged_decode(
            q3, o, *pool.local_buffers(lid), self.req_to_token_pool.req_to_token, pool.full_to_swa_index_mapping,
            forward_batch.req_pool_indices, forward_batch.seq_lens, self.windows[lid], self.sinks[lid],
            layer.scaling, heads.max_keys, global_kv=pool.get_kv_buffer(lid) if heads.num_global else None,
        )

    def _by_position(self, q3: torch.Tensor, o: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch) -> None:
        """An extend holding a recompute set: every query attends causally by its position
        (``forward_batch.positions``), global heads over the full slots, local heads over sink +
        window; SGLang's base kernels assume one contiguous range per request."""
        pool = self.token_to_kv_pool
        lid = layer.layer_id
        heads = self.layout.layers[lid]
        ng = heads.num_global * (layer.tp_q_head_num // layer.tp_k_head_num)
        r2t = self.req_to_token_pool.req_to_token
        k_win, v_win, k_sink, v_sink = pool.local_buffers(lid)
        full_k, full_v = pool.get_key_buffer(lid), pool.get_value_buffer(lid)
        if self.local_impl == "triton":
            from redknot_sglang.kernels import segpaged

            pos = forward_batch.positions.to(torch.int32)
            common = (r2t, forward_batch.req_pool_indices, forward_batch.seq_lens, forward_batch.extend_start_loc,
                      forward_batch.extend_seq_lens, max(forward_batch.extend_seq_lens_cpu))
            g = heads.num_global
            if g:
                segpaged.full_extend(q3[:, :ng], o[:, :ng], full_k, full_v, *common, self.windows[lid][:g],
                                     self.sinks[lid][:g], layer.scaling, q_positions=pos)
            if heads.num_local:
                segpaged.segpaged_extend(q3[:, ng:], o[:, ng:], k_win, v_win, k_sink, v_sink, r2t,
                                         pool.full_to_swa_index_mapping, *common[1:], self.windows[lid][g:],
                                         self.sinks[lid][g:], layer.scaling, q_positions=pos)
            return
        rows, seq_lens = forward_batch.req_pool_indices.tolist(), forward_batch.seq_lens.tolist()
        q_lens = forward_batch.extend_seq_lens.tolist()
        if heads.num_global:
            local_attention_torch(q3[:, :ng], o[:, :ng], full_k, full_v, None, None, r2t, None, rows, seq_lens,
                                  q_lens, [max(seq_lens)] * heads.num_global, [0] * heads.num_global, layer.scaling,
                                  q_positions=forward_batch.positions)
        if heads.num_local:
            local_attention_torch(q3[:, ng:], o[:, ng:], k_win, v_win, k_sink, v_sink, r2t,
                                  pool.full_to_swa_index_mapping, rows, seq_lens, q_lens, heads.window, heads.sink,
                                  layer.scaling, q_positions=forward_batch.positions)

    def _local(self, q: torch.Tensor, o: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch, decode: bool) -> None:
        """The local group's extend (CUDA, Triton) or extend and decode (CPU, torch)."""
        pool = self.token_to_kv_pool
        lid = layer.layer_id
        k_win, v_win, k_sink, v_sink = pool.local_buffers(lid)
        heads = self.layout.layers[lid]
        if self.local_impl == "triton":
            from redknot_sglang.kernels import segpaged

            g = heads.num_global
            segpaged.segpaged_extend(q, o, k_win, v_win, k_sink, v_sink, self.req_to_token_pool.req_to_token,
                                     pool.full_to_swa_index_mapping, forward_batch.req_pool_indices,
                                     forward_batch.seq_lens, forward_batch.extend_start_loc,
                                     forward_batch.extend_seq_lens, max(forward_batch.extend_seq_lens_cpu),
                                     self.windows[lid][g:], self.sinks[lid][g:], layer.scaling)
            return
        seq_lens = forward_batch.seq_lens.tolist()
        q_lens = [1] * len(seq_lens) if decode else forward_batch.extend_seq_lens.tolist()
        local_attention_torch(
            q, o, k_win, v_win, k_sink, v_sink, self.req_to_token_pool.req_to_token,
            pool.full_to_swa_index_mapping, forward_batch.req_pool_indices.tolist(), seq_lens, q_lens,
            heads.window, heads.sink, layer.scaling,
        )

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, decode=False)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, decode=True)

    def support_triton(self) -> bool:
        return self.base.support_triton()
