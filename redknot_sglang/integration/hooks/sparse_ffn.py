"""Sparse FFN during recovery (``--redknot-sparse-ffn-keep < 1``), on SGLang's Llama layers.

Three hooks around one decoder layer's forward: AROUND ``LlamaDecoderLayer.forward`` marks the
layer as sparse for this forward (the batch has recovery requests' recomputed tokens and the
layer is deep enough, :meth:`DocumentReuse.sparse_ffn_layer`); AFTER ``LlamaAttention.forward``
hands the attention output's norms over; AROUND ``LlamaMLP.forward`` runs the FFN on the rows
:meth:`DocumentReuse.ffn_rows` keeps and returns zeros elsewhere (the residual identity). Any other
forward runs SGLang's code untouched.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from redknot_sglang.reuse.sparse_ffn import sparse_mlp

LAYER = "sglang.srt.models.llama.LlamaDecoderLayer.forward"
ATTENTION = "sglang.srt.models.llama.LlamaAttention.forward"
MLP = "sglang.srt.models.llama.LlamaMLP.forward"

_active: Optional[Any] = None  # the DocumentReuse of the layer running sparsely, if any


def _reuse_of_current_backend() -> Optional[Any]:
    from sglang.srt.model_executor.forward_context import get_attn_backend

    pool = getattr(get_attn_backend(), "token_to_kv_pool", None)
    return getattr(pool, "document_reuse", None)


def decoder_layer(original: Callable[..., Any], layer: Any, *args: Any, **kwargs: Any) -> Any:
    global _active
    reuse = _reuse_of_current_backend()
    if reuse is None or not reuse.sparse_ffn_layer(layer.self_attn.attn.layer_id):
        return original(layer, *args, **kwargs)
    _active = reuse
    try:
        return original(layer, *args, **kwargs)
    finally:
        _active = None


def attention_output(result: Any, *args: Any, **kwargs: Any) -> Any:
    if _active is not None:
        _active.note_attention(result)
    return result


def mlp(original: Callable[..., Any], module: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    if _active is None:
        return original(module, x, *args, **kwargs)
    return sparse_mlp(lambda rows_x: original(module, rows_x, *args, **kwargs), x, _active.ffn_rows())
