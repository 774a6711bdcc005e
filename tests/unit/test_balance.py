"""Balancing global heads over TP ranks: the renumbering is exact (float64 logits equal on a small
Llama), and the per-rank spread of the shipped and synthetic profiles before and after."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.heads import HeadProfile
from redknot_sglang.heads.balance import balanced_order, renumber_checkpoint, renumbered_profile
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.heads.tp import tp_spread

LLAMA8B = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=32, num_attention_heads=32, num_kv_heads=8,
                           head_dim=128, rope_theta=500000.0)


@pytest.mark.parametrize("tp, overhead", [(2, 0.2105), (4, 0.4737), (8, 0.8947)])
def test_synthetic_profile_is_balanced_to_one_head_layer(tp, overhead):
    profile = synthetic_profile(LLAMA8B, global_ratio=0.15, window=1024, sink=4, placement="random", seed=0)
    order = balanced_order(profile, tp)
    assert all(sorted(perm) == list(range(8)) for perm in order)
    before, after = tp_spread(profile, tp), tp_spread(renumbered_profile(profile, order), tp)
    assert sum(after["global_heads_per_rank"]) == sum(before["global_heads_per_rank"]) == 38
    assert max(after["global_heads_per_rank"]) - min(after["global_heads_per_rank"]) <= 1
    assert before["full_pool_overhead"] == overhead  # in checkpoint order (TP 8: 9 on one rank, 1 on another)
    # 38 over tp ranks: the busiest holds ceil(38 / tp), the least overhead any renumbering can reach
    assert after["full_pool_overhead"] == pytest.approx(-(-38 // tp) / (38 / tp) - 1, abs=1e-4)


def test_shipped_profile_spread_at_tp3():
    profile = HeadProfile.load("smollm2-135m-instruct")
    assert tp_spread(profile, 3)["global_heads_per_rank"] == [11, 12, 13]  # 8.3% full-pool overhead
    after = tp_spread(renumbered_profile(profile, balanced_order(profile, 3)), 3)
    assert after["global_heads_per_rank"] == [12, 12, 12] and after["full_pool_overhead"] == 0.0


def test_tp_that_does_not_divide_the_kv_heads_is_refused():
    with pytest.raises(ValueError, match=r"tp_size \(3\) to divide the 8 KV heads"):
        balanced_order(synthetic_profile(LLAMA8B, global_ratio=0.15, window=64, sink=4), 3)


def test_renumbered_checkpoint_gives_the_same_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=8, max_position_embeddings=64, attention_bias=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).double().eval()
    for p in model.parameters():  # biases start at zero: make them count
        torch.nn.init.normal_(p, std=0.2)
    fp = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=3, num_attention_heads=8, num_kv_heads=4,
                          head_dim=8, rope_theta=cfg.rope_parameters["rope_theta"] if hasattr(cfg, "rope_parameters")
                          else cfg.rope_theta)
    profile = synthetic_profile(fp, global_ratio=0.34, window=4, sink=1, placement="deep")
    order = balanced_order(profile, 2)
    assert any(perm != tuple(range(4)) for perm in order)
    ids = torch.randint(0, 96, (2, 20))
    with torch.no_grad():
        want = model(ids).logits
        state = renumber_checkpoint(model.state_dict(), order, num_heads=8, num_kv_heads=4, head_dim=8)
        assert not torch.equal(state["model.layers.2.self_attn.k_proj.weight"],
                               model.state_dict()["model.layers.2.self_attn.k_proj.weight"])
        renumbered = LlamaForCausalLM(cfg).double().eval()
        renumbered.load_state_dict(state)
        torch.testing.assert_close(renumbered(ids).logits, want, rtol=0, atol=1e-10)
