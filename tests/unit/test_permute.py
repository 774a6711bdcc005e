"""Reordering KV heads (global first) leaves the attention output unchanged, and is applied once per
model however many attention backends SGLang builds for it."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.model.permute import permute_kv_heads

HQ, HKV, D, LAYERS = 8, 4, 4, 3
MODEL = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=LAYERS, num_attention_heads=HQ,
                         num_kv_heads=HKV, head_dim=D, rope_theta=10000.0)


class Attn(torch.nn.Module):
    def __init__(self, layer_id: int):
        super().__init__()
        self.layer_id, self.tp_q_head_num, self.tp_k_head_num, self.head_dim = layer_id, HQ, HKV, D


class SelfAttention(torch.nn.Module):
    """The shape SGLang's Llama attention has: fused qkv_proj, o_proj, and the RadixAttention as attn."""

    def __init__(self, layer_id: int):
        super().__init__()
        self.qkv_proj = torch.nn.Linear(16, (HQ + 2 * HKV) * D, bias=True)
        self.o_proj = torch.nn.Linear(HQ * D, 16, bias=False)
        self.attn = Attn(layer_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([HQ * D, HKV * D, HKV * D], dim=-1)
        q = q.view(-1, HQ, D).transpose(0, 1)
        k = k.view(-1, HKV, D).transpose(0, 1).repeat_interleave(HQ // HKV, 0)
        v = v.view(-1, HKV, D).transpose(0, 1).repeat_interleave(HQ // HKV, 0)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(0, 1).reshape(-1, HQ * D))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[SelfAttention(i) for i in range(LAYERS)])


def _layout(seed: int) -> RankHeadLayout:
    return RankHeadLayout(synthetic_profile(MODEL, global_ratio=0.25, window=8, sink=2, seed=seed))


def test_reordered_heads_give_the_same_output():
    model, x = _model(), torch.randn(5, 16)
    before = model(x)
    weights = model[0].qkv_proj.weight.clone()
    layout = _layout(seed=1)
    assert permute_kv_heads(model, layout) == sum(lh.perm != tuple(range(HKV)) for lh in layout.layers) > 0
    torch.testing.assert_close(model(x), before)
    assert not torch.equal(model[0].qkv_proj.weight, weights) or layout.layers[0].perm == tuple(range(HKV))


def test_a_second_backend_with_an_equal_layout_does_not_reorder_again():
    model, x = _model(), torch.randn(5, 16)
    before = model(x)
    permute_kv_heads(model, _layout(seed=1))
    after = [p.clone() for p in model.parameters()]
    assert permute_kv_heads(model, _layout(seed=1)) == 0  # an equal layout, another object
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters()))
    torch.testing.assert_close(model(x), before)


def test_another_layout_on_reordered_weights_is_refused():
    model = _model()
    permute_kv_heads(model, _layout(seed=1))
    with pytest.raises(ValueError, match="already reordered for another head layout"):
        permute_kv_heads(model, _layout(seed=2))
