"""A lean forward of a Llama-family model for measuring head profiles fast: the Hugging Face
model's own weights (projections fused), a preallocated KV cache, and the profiler's attention
(:func:`~redknot_sglang.profile.hf_model.profiled_attention`: row ``b`` of a batch under profile
``b``). It computes what ``LlamaForCausalLM`` computes, without its per-step Python layers: the
fidelity benchmark decodes thousands of short answers, where those dominated (about 50 ms a step on
the GPU machine's host for a 30-layer model).

Cache layout, per layer: ``k[layer]``/``v[layer]`` ``[B, Hkv, capacity, D]``; positions
``[0, length)`` are filled, alike for every row (rows differ only by profile or by the tokens they
decode)::

    position  0 ........ length-1 | length ... capacity-1
              filled, every row   | free
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class LeanCache:
    def __init__(self, layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, batch, kv_heads, capacity, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    def clone(self) -> LeanCache:
        out = LeanCache.__new__(LeanCache)
        out.k, out.v, out.length = self.k.clone(), self.v.clone(), self.length
        return out

    def keep(self, rows: list[int], length: int) -> None:
        """Keep only ``rows`` (in that order) and the first ``length`` positions."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]
        self.length = min(self.length, length)


class LeanLlama:
    def __init__(self, hf_model):
        cfg = hf_model.config
        if cfg.model_type not in ("llama", "mistral", "qwen2") or getattr(cfg, "attention_bias", False):
            raise ValueError(f"the lean forward covers bias-free Llama-family models, not {cfg.model_type}")
        base = hf_model.model
        self.embed = base.embed_tokens.weight
        self.layers = []
        for layer in base.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append({
                "qkv": torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]),
                "o": att.o_proj.weight,
                "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                "down": mlp.down_proj.weight,
                "ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
            })
        self.norm, self.lm_head = base.norm.weight, hf_model.lm_head.weight
        self.inv_freq = base.rotary_emb.inv_freq.float()
        self.rope_scale = float(base.rotary_emb.attention_scaling)
        self.eps = cfg.rms_norm_eps
        self.n_q, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_q
        self.scaling = base.layers[0].self_attn.scaling
        if cfg.hidden_act != "silu":
            raise ValueError(f"the lean forward covers SiLU MLPs, not {cfg.hidden_act}")

    def cache(self, batch: int, capacity: int) -> LeanCache:
        return LeanCache(len(self.layers), batch, self.n_kv, capacity, self.head_dim, self.embed.dtype, self.embed.device)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """HF's RMSNorm: normalised in float32, cast back, then scaled (one fused kernel where torch has it)."""
        return weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, cache: LeanCache, keep_logits: int, masks: Optional[list] = None,
                positions: Optional[torch.Tensor] = None, layers: Optional[int] = None,
                observe: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None) -> Optional[torch.Tensor]:
        """Feed ``ids`` ``[B, T]`` at positions ``cache.length...``; returns the logits of the last
        ``keep_logits`` positions ``[B, keep_logits, vocab]`` (float32). ``masks``: per layer, the
        profile masks of :meth:`ProfiledModel.profile` (None: dense).

        ``positions`` ``[T]`` (increasing, anywhere below the capacity): the tokens sit there
        instead, overwrite the cache's K/V at those positions, and read every position up to their
        own (what the cache holds there: filled before, or written by this call); the cache's
        length becomes the largest filled position + 1. ``layers``: run only the first ``layers``
        (returns None). ``observe(layer, q, k)``: each layer's rotated queries ``[B, Hq, T, D]``
        and the keys they read ``[B, Hkv, S, D]``."""
        from redknot_sglang.profile.hf_model import profiled_attention

        b, t = ids.shape
        if positions is None:
            start, end = cache.length, cache.length + t
            at: slice | torch.Tensor = slice(start, end)
            pos = torch.arange(start, end, device=ids.device, dtype=torch.float32)
        else:
            at, end = positions, max(cache.length, int(positions.max()) + 1)
            pos = positions.to(torch.float32)
        freqs = pos[:, None] * self.inv_freq.to(ids.device)[None]
        emb = torch.cat([freqs, freqs], dim=-1)
        x = self.embed[ids]
        cos, sin = ((emb.cos() * self.rope_scale).to(x.dtype)[None, None], (emb.sin() * self.rope_scale).to(x.dtype)[None, None])
        nq, nkv, d = self.n_q, self.n_kv, self.head_dim
        for i, w in enumerate(self.layers[:layers]):
            h = self._norm(x, w["ln1"])
            q, k, v = (h @ w["qkv"].T).split([nq * d, nkv * d, nkv * d], dim=-1)
            qk = self._rope(torch.cat([q, k], dim=-1).view(b, t, nq + nkv, d).transpose(1, 2), cos, sin)
            q = qk[:, :nq]
            cache.k[i, :, :, at] = qk[:, nq:]
            cache.v[i, :, :, at] = v.view(b, t, nkv, d).transpose(1, 2)
            if observe is not None:
                observe(i, q, cache.k[i, :, :, :end])
            att = profiled_attention(q, cache.k[i, :, :, :end], cache.v[i, :, :, :end], self.scaling,
                                     None if masks is None else masks[i], positions)
            x = x + att.transpose(1, 2).reshape(b, t, nq * d) @ w["o"].T
            gate, up = (self._norm(x, w["ln2"]) @ w["gate_up"].T).chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ w["down"].T
        cache.length = end
        if layers is not None:
            return None
        return (self._norm(x[:, -keep_logits:], self.norm) @ self.lm_head.T).float()
