"""A Hugging Face causal LM whose attention can (a) report every head's attention map and (b) apply a
head profile: local heads see only ``[0, sink)`` and ``[i - window + 1, i]``, as in the redknot
server. Both go through one attention function registered with ``transformers``' AttentionInterface,
so the profiler and the fidelity gate run the model's own code, offline, on CPU or GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.lean import LeanCache, LeanLlama

IMPLEMENTATION = "redknot_profile"


@dataclasses.dataclass
class _State:
    # per layer (local, window, sink), each [B, Hkv] on the host: row b of the batch runs profile b (B = 1: all rows)
    masks: Optional[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
    collector: Optional[Callable[[int, torch.Tensor], None]] = None
    kinds: dict = dataclasses.field(default_factory=dict)  # _head_kinds' answers for the masks set


_STATE = _State()


def allowed_keys(masks: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], group: int, t: int, s: int,
                 device: torch.device) -> torch.Tensor:
    """Which keys each query may read: ``[B|1, Hq|1, T, S]``, queries at the last ``t`` of ``s``
    positions. A local head reads ``[0, sink)`` and ``[i - window + 1, i]``, a global head ``[0, i]``."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    causal = k_pos <= q_pos  # [T, S]
    if masks is None:
        return causal[None, None]
    local, window, sink = (x.to(device).repeat_interleave(group, dim=-1)[..., None, None] for x in masks)  # [B, Hq, 1, 1]
    in_local = (k_pos < sink) | (k_pos > q_pos - window)
    return causal & (~local | in_local)


def _head_kinds(masks: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], group: int,
                batch: int, device: torch.device) -> list[tuple[Optional[torch.Tensor], int, int]]:
    """The kinds of (row, query head) of a batch by what they read: ``(selector, window, sink)``,
    window 0 for global heads (every earlier key); ``selector`` ``[B, Hq, 1, 1]`` bool on ``device``
    picks the pairs of that kind (None: the first kind, the others are written over it). Kept per
    masks and device while the profile is set: every layer of every decode step asks again."""
    if masks is None:
        return [(None, 0, 0)]
    key = (id(masks), batch, str(device))
    if key not in _STATE.kinds or _STATE.kinds[key][0] is not masks:
        local, window, sink = (x.repeat_interleave(group, dim=-1).expand(batch, -1) for x in masks)
        window = torch.where(local, window, torch.zeros_like(window))
        sink = torch.where(local, sink, torch.zeros_like(sink))
        kinds = sorted({(int(a), int(b)) for a, b in zip(window.flatten().tolist(), sink.flatten().tolist())})
        out = [(None if i == 0 else ((window == w) & (sink == sk))[..., None, None].to(device), w, sk)
               for i, (w, sk) in enumerate(kinds)]
        _STATE.kinds[key] = (masks, out)
    return _STATE.kinds[key][1]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, sink: int, scaling: float,
          q_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[B, H, T, D]`` queries at the last ``T`` of ``S`` positions (or at positions ``q_pos``
    ``[T]``, any increasing set: keys are read causally by position); ``window`` 0: causal. One
    query at the end (decode) reads its sink and window as two slices of the keys, without a mask;
    queries that read every earlier key take the causal kernel; the others one mask by position."""
    t, s = q.shape[2], k.shape[2]
    windowed = bool(window) and s > sink + window
    if q_pos is None:
        if windowed and t == 1:
            k = torch.cat([k[:, :, :sink], k[:, :, s - window:]], dim=2)
            v = torch.cat([v[:, :, :sink], v[:, :, s - window:]], dim=2)
            windowed = False
        if not windowed and t in (1, s):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=t > 1, scale=scaling)
        q_pos = torch.arange(s - t, s, device=q.device)
    k_pos = torch.arange(s, device=q.device)[None, :]
    mask = k_pos <= q_pos[:, None]
    if windowed:
        mask = mask & ((k_pos < sink) | (k_pos > q_pos[:, None] - window))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)


def profiled_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                       masks: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                       q_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``query`` ``[B, Hq, T, D]`` at the last ``T`` of ``S`` positions (or at ``q_pos``, see
    :func:`_sdpa`), ``key``/``value`` ``[B, Hkv, S, D]``, row ``b`` under ``masks`` row ``b`` (None:
    dense) -> ``[B, Hq, T, D]``: one SDPA call per kind of head (global; local of a window and sink)
    over the whole batch, each (row, head) taking its kind's output. No per-head mask and no gather
    of heads: a decode step costs a few kernels per kind whatever the profiles (the GPU host, not
    the GPU, bounds the search)."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    out = None
    for select, w, sk in _head_kinds(masks, group, query.shape[0], query.device):
        o = _sdpa(query, k, v, w, sk, scaling, q_pos)
        out = o if select is None else torch.where(select, o, out)
    return out


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' attention interface: no padding (every row of a batch is the same sequence,
    possibly under another profile), so masks are built here and ``attention_mask`` is not needed.
    With a collector the probabilities are materialised (batch 1) and handed to it."""
    masks = None if _STATE.masks is None else _STATE.masks[module.layer_idx]
    if _STATE.collector is None:
        return profiled_attention(query, key, value, scaling, masks).transpose(1, 2).contiguous(), None
    group = query.shape[1] // key.shape[1]
    allowed = allowed_keys(masks, group, query.shape[2], key.shape[2], query.device)
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * scaling
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
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
    def profile(self, profile: Union[None, HeadProfile, Sequence[Optional[HeadProfile]]]) -> Iterator[None]:
        """Run with ``profile``'s local heads masked (None: dense). A list runs row ``b`` of each
        batch under ``profile[b]`` (None rows dense): one forward scores several profiles."""
        saved = _STATE.masks
        _STATE.kinds.clear()
        rows = [profile] if profile is None or isinstance(profile, HeadProfile) else list(profile)
        if all(p is None for p in rows):
            _STATE.masks = None
        else:
            masks = []
            for layer in range(self.num_layers):
                specs = [[None] * self.num_kv_heads if p is None else p.heads[layer] for p in rows]
                local = torch.tensor([[s is not None and not s.is_global for s in r] for r in specs])
                window = torch.tensor([[(s.window or 0) if s is not None else 0 for s in r] for r in specs])
                sink = torch.tensor([[(s.sink or 0) if s is not None else 0 for s in r] for r in specs])
                masks.append((local, window, sink))  # on the host: grouping heads reads them
            _STATE.masks = masks
        try:
            yield
        finally:
            _STATE.masks = saved
            _STATE.kinds.clear()

    @contextlib.contextmanager
    def collect(self, fn: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
        """Call ``fn(layer, probs [Hq, T, S])`` for every layer of the forwards run inside."""
        saved, _STATE.collector = _STATE.collector, fn
        try:
            yield
        finally:
            _STATE.collector = saved

    @functools.cached_property
    def lean(self) -> LeanLlama:
        """The same model as a lean forward with a preallocated cache (for the fidelity benchmark)."""
        return LeanLlama(self.model)

    def step(self, ids: torch.Tensor, cache: LeanCache, keep_logits: int, **kw) -> Optional[torch.Tensor]:
        """:meth:`LeanLlama.forward` under the profile(s) of :meth:`profile`."""
        return self.lean.forward(ids, cache, keep_logits, _STATE.masks, **kw)

    @torch.no_grad()
    def attend(self, ids: list[int]) -> None:
        """Run the decoder layers only (for the collector; no LM head)."""
        self.model.model(input_ids=torch.tensor([ids], device=self.device), use_cache=False)

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        return self.model(input_ids=x, use_cache=False).logits[0].float()

    @torch.no_grad()
    def teacher_forced(self, ids: Sequence[int], cont: Sequence[int], rows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``ids + cont`` (``rows`` copies: one per profile of :meth:`profile`) and return each
        row's top-1 prediction for every token of ``cont`` ``[rows, len(cont)]`` and its logits before
        ``cont[0]`` ``[rows, vocab]`` (float32)."""
        x = torch.tensor([list(ids) + list(cont[:-1])], device=self.device).expand(rows, -1)
        logits = self.model(input_ids=x, use_cache=False, logits_to_keep=len(cont)).logits.float()
        return logits.argmax(-1), logits[:, 0]

    @torch.no_grad()
    def greedy(self, ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids], device=self.device)
        out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                  pad_token_id=self.tokenizer.eos_token_id)
        return out[0, len(ids):].tolist()
