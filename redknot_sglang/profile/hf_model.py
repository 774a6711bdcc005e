"""A Hugging Face causal LM whose attention can (a) report every head's attention map and (b) apply a
head profile: local heads see only ``[0, sink)`` and ``[i - window + 1, i]``, as in the redknot
server. Both go through one attention function registered with ``transformers``' AttentionInterface,
so the profiler and the fidelity gate run the model's own code, offline, on CPU or GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Optional

import torch

from redknot_sglang.heads.profile import HeadProfile

IMPLEMENTATION = "redknot_profile"


@dataclasses.dataclass
class _State:
    masks: Optional[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None  # per layer (local, window, sink)
    collector: Optional[Callable[[int, torch.Tensor], None]] = None


_STATE = _State()


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """``query`` ``[B, Hq, T, D]``, ``key``/``value`` ``[B, Hkv, S, D]``; batch 1, no padding (the
    profiler's use), so the causal mask is built here and ``attention_mask`` is not needed."""
    hq, hkv = query.shape[1], key.shape[1]
    group = hq // hkv
    t, s = query.shape[2], key.shape[2]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * scaling
    q_pos = torch.arange(s - t, s, device=query.device)[:, None]
    k_pos = torch.arange(s, device=query.device)[None, :]
    allowed = (k_pos <= q_pos)[None]  # [1, T, S]
    if _STATE.masks is not None:
        local, window, sink = (x.repeat_interleave(group) for x in _STATE.masks[module.layer_idx])
        in_local = (k_pos[None] < sink[:, None, None]) | (k_pos[None] >= q_pos[None] - window[:, None, None] + 1)
        allowed = allowed & (~local[:, None, None] | in_local)  # [Hq, T, S]
    scores = scores.masked_fill(~allowed.unsqueeze(0), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if _STATE.collector is not None:
        _STATE.collector(module.layer_idx, probs[0])
    out = torch.matmul(probs.to(value.dtype), v)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _attention)


class ProfiledModel:
    """Tokenizer + model with the switchable attention above."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _register()
        self.device = device
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=IMPLEMENTATION)
        self.model.to(device).eval()
        cfg = self.model.config
        self.num_layers, self.num_kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
        self.group = cfg.num_attention_heads // cfg.num_key_value_heads

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    @contextlib.contextmanager
    def profile(self, profile: Optional[HeadProfile]) -> Iterator[None]:
        """Run with ``profile``'s local heads masked (None: dense)."""
        saved = _STATE.masks
        if profile is None:
            _STATE.masks = None
        else:
            masks = []
            for row in profile.heads:
                local = torch.tensor([not s.is_global for s in row], device=self.device)
                window = torch.tensor([s.window or 0 for s in row], device=self.device)
                sink = torch.tensor([s.sink or 0 for s in row], device=self.device)
                masks.append((local, window, sink))
            _STATE.masks = masks
        try:
            yield
        finally:
            _STATE.masks = saved

    @contextlib.contextmanager
    def collect(self, fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
        """Call ``fn(layer, probs [Hq, T, S])`` for every layer of the forwards run inside."""
        saved, _STATE.collector = _STATE.collector, fn
        try:
            yield
        finally:
            _STATE.collector = saved

    @torch.no_grad()
    def attend(self, ids: list[int]) -> None:
        """Run the decoder layers only (for the collector; no LM head)."""
        self.model.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        return self.model(input_ids=x, use_cache=False).logits[0].float()

    @torch.no_grad()
    def greedy(self, ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids], device=self.device)
        out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                  pad_token_id=self.tokenizer.eos_token_id)
        return out[0, len(ids):].tolist()
