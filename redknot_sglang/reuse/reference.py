"""Reference implementation of position-independent document reuse, on the Hugging Face model of
the profiler (:class:`~redknot_sglang.profile.hf_model.ProfiledModel`, same attention semantics as
the server): the oracle for the serving path and the model of the fidelity study.

A prompt is ``[pre][doc 1][gap 1] ... [doc k][query]``; each document's KV is computed *offline*,
alone at positions ``[0, n)``, under the same head profile. Three ways to answer:

* ``full``: prefill the whole prompt (no reuse).
* ``norecovery``: compute ``pre`` and the gaps, and for each document append its offline KV, K
  re-rotated to the document's offset (``relocate_torch``); then the query.
* ``recovery`` (head-level recovery): re-prefill everything before the query in one causal pass at
  the true positions (global heads over the whole context, local heads over sink + window, and
  optionally the sparse FFN); keep that KV for global heads, put the offline relocated KV back in
  the local heads at document positions (what the serving path holds); then the query.

``sparse_ffn``: in layers ``>= dense_layers`` of the recovery pass, only the ``keep`` fraction of
tokens with the largest attention-output norm, plus the last ``always_last`` tokens, run the FFN;
the others take the residual path (the FFN output is zeroed).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.reuse.rope import RopeSpec, relocate_torch

MODES = ("full", "recovery", "norecovery")


@dataclasses.dataclass(frozen=True)
class SparseFFN:
    keep: float = 0.5
    dense_layers: int = 0  # layers below run the dense FFN (default: the first half)
    always_last: int = 128


class ReuseReference:
    def __init__(self, model: ProfiledModel, profile: HeadProfile | None):
        self.pm = model
        self.profile = profile
        rotary = model.model.model.rotary_emb
        self.rope = RopeSpec(inv_freq=rotary.inv_freq.float().cpu(), rotary_dim=2 * rotary.inv_freq.numel(),
                             neox=True)  # HF Llama's rotate_half is the neox layout
        heads = profile.heads if profile is not None else []
        self.local = [torch.tensor([not s.is_global for s in row]) for row in heads]
        self._offline: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    # ------------------------------------------------------------------ pieces
    def _forward(self, ids: Sequence[int], cache: object) -> torch.Tensor:
        x = torch.tensor([list(ids)], device=self.pm.device)
        return self.pm.model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1].float()

    @torch.no_grad()
    def offline(self, doc: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The document's per-layer (K, V) ``[1, Hkv, n, D]``, computed alone at positions [0, n)."""
        key = tuple(doc)
        if key not in self._offline:
            from transformers import DynamicCache

            cache = DynamicCache()
            with self.pm.profile(self.profile):
                self._forward(doc, cache)
            self._offline[key] = [(layer.keys, layer.values) for layer in cache.layers]
        return self._offline[key]

    def _relocated(self, doc: Sequence[int], offset: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for k, v in self.offline(doc):
            k_at = relocate_torch(k[0].transpose(0, 1), self.rope, offset).transpose(0, 1)[None]
            out.append((k_at, v))
        return out

    @contextlib.contextmanager
    def _sparse_ffn(self, cfg: SparseFFN | None) -> Iterator[None]:
        if cfg is None:
            yield
            return
        layers = self.pm.model.model.layers
        first = cfg.dense_layers or len(layers) // 2
        norms: dict[int, torch.Tensor] = {}
        handles = []

        def attn_hook(i):
            def hook(module, args, output):
                norms[i] = output[0][0].float().norm(dim=-1)  # [T] per-token attention output norm
            return hook

        def mlp_hook(i):
            def hook(module, args, output):
                score = norms[i]
                t = score.shape[0]
                keep = torch.zeros(t, dtype=torch.bool, device=score.device)
                keep[score.topk(max(1, int(cfg.keep * t))).indices] = True
                keep[max(0, t - cfg.always_last):] = True
                return output * keep[None, :, None].to(output.dtype)
            return hook

        for i in range(first, len(layers)):
            handles.append(layers[i].self_attn.register_forward_hook(attn_hook(i)))
            handles.append(layers[i].mlp.register_forward_hook(mlp_hook(i)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------ answering
    @torch.no_grad()
    def prefill(self, ids: Sequence[int], spans: Sequence[tuple[int, int]], mode: str,
                sparse_ffn: SparseFFN | None = None) -> tuple[object, torch.Tensor]:
        """(cache, last-token logits) after the prompt ``ids`` with documents at ``spans`` (in
        prompt order, before the query)."""
        from transformers import DynamicCache

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cache = DynamicCache()
        query_start = spans[-1][1] if spans else 0
        with self.pm.profile(self.profile):
            if mode == "full" or not spans:
                return cache, self._forward(ids, cache)
            if mode == "norecovery":
                cursor = 0
                for a, b in spans:
                    if a > cursor:
                        self._forward(ids[cursor:a], cache)
                    for i, (k, v) in enumerate(self._relocated(ids[a:b], a)):
                        cache.update(k, v, i)
                    cursor = b
                return cache, self._forward(ids[cursor:], cache)
            with self._sparse_ffn(sparse_ffn):
                self._forward(ids[:query_start], cache)  # the recovery pass: global heads' KV kept
            for a, b in spans:  # local heads: the offline KV, relocated
                for i, (k, v) in enumerate(self._relocated(ids[a:b], a)):
                    if self.local and self.local[i].any():
                        loc = self.local[i].to(k.device)
                        cache.layers[i].keys[:, loc, a:b] = k[:, loc]
                        cache.layers[i].values[:, loc, a:b] = v[:, loc]
            return cache, self._forward(ids[query_start:], cache)

    @torch.no_grad()
    def greedy(self, ids: Sequence[int], spans: Sequence[tuple[int, int]], mode: str, n: int,
               sparse_ffn: SparseFFN | None = None) -> list[int]:
        cache, logits = self.prefill(ids, spans, mode, sparse_ffn)
        out = []
        with self.pm.profile(self.profile):
            for _ in range(n):
                tok = int(logits.argmax())
                out.append(tok)
                if tok == self.pm.tokenizer.eos_token_id:
                    break
                logits = self._forward([tok], cache)
        return out
