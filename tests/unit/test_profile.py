"""Head profile: schema, validation messages, model fingerprint checks, per-rank layout."""

from __future__ import annotations

import json

import pytest

from redknot_sglang.heads import HeadProfile, ProfileError, RankHeadLayout, kv_heads_of_rank
from redknot_sglang.heads.profile import ModelFingerprint


def fp(**kw) -> ModelFingerprint:
    base = dict(architecture="LlamaForCausalLM", num_layers=4, num_attention_heads=8,
                num_kv_heads=4, head_dim=64, rope_theta=10000.0)
    return ModelFingerprint(**{**base, **kw})


def mixed(model=None, window=128, sink=4) -> HeadProfile:
    model = model or fp()
    glob = [[(layer + h) % 4 == 0 for h in range(model.num_kv_heads)] for layer in range(model.num_layers)]
    return HeadProfile.from_classes(model, glob, window=window, sink=sink, method="test")


def test_roundtrip_keeps_every_field(tmp_profile):
    p = mixed()
    q = HeadProfile.load(tmp_profile(p))
    assert q == p
    assert q.heads[0][0].is_global and not q.heads[0][1].is_global
    assert q.heads[0][1].window == 128 and q.heads[0][1].sink == 4


def test_saved_file_has_one_line_per_layer(tmp_profile):
    text = tmp_profile(mixed()).read_text()
    rows = [line for line in text.splitlines() if line.strip().startswith("[{")]
    assert len(rows) == 4


def test_all_global_builtin(smollm2_fingerprint):
    p = HeadProfile.all_global(smollm2_fingerprint)
    assert p.all_heads_global and p.global_fraction == 1.0
    assert p.provenance.method == "builtin:all-global"
    assert p.ideal_factor(32768) == pytest.approx(1.0)
    p.check_model(smollm2_fingerprint, context_len=8192)


def test_fingerprint_reads_rope_scaling_from_either_transformers_layout():
    """A profile made for Llama 3's scaled RoPE must not pass for the same shapes unscaled."""
    from types import SimpleNamespace

    from redknot_sglang.heads.fingerprint import fingerprint_from_hf_config

    shapes = dict(architectures=["LlamaForCausalLM"], num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, hidden_size=512, head_dim=64)
    v4 = fingerprint_from_hf_config(SimpleNamespace(**shapes, rope_theta=5e5,
                                                    rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    v5 = fingerprint_from_hf_config(SimpleNamespace(**shapes, rope_parameters={"rope_theta": 5e5,
                                                                               "rope_type": "llama3", "factor": 8.0}))
    plain = fingerprint_from_hf_config(SimpleNamespace(**shapes, rope_theta=5e5))
    assert v4 == v5 and (v4.rope_type, v4.rope_factor, v4.rope_theta) == ("llama3", 8.0, 5e5)
    assert plain.rope_type == "default" and plain.rope_factor is None
    assert {m.split(":")[0] for m in v4.mismatches(plain)} == {"rope_type", "rope_factor"}


def test_ideal_factor_matches_formula():
    model = fp(num_layers=10, num_kv_heads=10)
    glob = [[h < 2 for h in range(10)] for _ in range(10)]  # g = 0.2
    p = HeadProfile.from_classes(model, glob, window=1024, sink=64, method="test")
    g, length = 0.2, 32768
    assert p.ideal_factor(length) == pytest.approx(1 / (g + (1 - g) * (1024 + 64) / length))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_layers", 30, "num_layers: profile has 4, served model has 30"),
        ("num_kv_heads", 8, "num_kv_heads: profile has 4, served model has 8"),
        ("head_dim", 128, "head_dim: profile has 64, served model has 128"),
        ("rope_theta", 500000.0, "rope_theta: profile has 10000.0, served model has 500000.0"),
        ("architecture", "Qwen3ForCausalLM", "architecture: profile has 'LlamaForCausalLM'"),
        ("rope_type", "llama3", "rope_type: profile has 'default', served model has 'llama3'"),
        ("rope_factor", 8.0, "rope_factor: profile has None, served model has 8.0"),
    ],
)
def test_profile_for_another_model_names_the_field(field, value, message):
    with pytest.raises(ProfileError, match="made for another model") as e:
        mixed().check_model(fp(**{field: value}))
    assert message in str(e.value)


def test_window_plus_sink_must_fit_the_context():
    with pytest.raises(ProfileError, match=r"layer 0, kv_head 1: window \+ sink = 132 >= context length 100"):
        mixed().check_model(fp(), context_len=100)
    mixed().check_model(fp(), context_len=133)


def _raw(p: HeadProfile) -> dict:
    return json.loads(p.model_dump_json(exclude_none=True))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["heads"][2][1].update(window=0), "layer 2, kv_head 1: local head needs window >= 1 (got 0)"),
        (lambda d: d["heads"][1][0].pop("window"), "layer 1, kv_head 0: local head needs window >= 1 (got None)"),
        (lambda d: d["heads"][3][0].update(sink=-1), "layer 3, kv_head 0: local head needs sink >= 0 (got -1)"),
        (lambda d: d["heads"][0][0].update(window=5), "layer 0, kv_head 0: a global head takes no window/sink"),
        (lambda d: d["heads"].pop(), "heads: 3 layers listed, model.num_layers is 4"),
        (lambda d: d["heads"][1].pop(), "heads[1]: 3 kv heads listed, model.num_kv_heads is 4"),
        (lambda d: d["heads"][0][2].update(kind="medium"), "heads[0][2].kind: Input should be 'global' or 'local'"),
        (lambda d: d["heads"][0][2].update(window="wide"), "heads[0][2].window: Input should be a valid integer"),
        (lambda d: d["model"].pop("head_dim"), "model.head_dim: Field required"),
        (lambda d: d.update(format="other/9"), "format: Input should be 'redknot-head-profile/1'"),
        (lambda d: d["heads"][0][0].update(typo=1), "heads[0][0].typo: Extra inputs are not permitted"),
    ],
)
def test_malformed_profile_names_layer_head_and_field(tmp_profile, mutate, message):
    data = _raw(mixed())
    mutate(data)
    path = tmp_profile(json.dumps(data))
    with pytest.raises(ProfileError, match="is malformed") as e:
        HeadProfile.load(path)
    assert message in str(e.value)


def test_not_json_and_missing_file(tmp_profile, tmp_path):
    with pytest.raises(ProfileError, match="is not valid JSON"):
        HeadProfile.load(tmp_profile("{heads: ["))
    with pytest.raises(ProfileError, match="does not exist"):
        HeadProfile.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "num_kv, tp, expect",
    [(8, 1, [tuple(range(8))]), (8, 2, [(0, 1, 2, 3), (4, 5, 6, 7)]), (2, 4, [(0,), (0,), (1,), (1,)])],
)
def test_kv_heads_of_rank_follows_sglang_sharding(num_kv, tp, expect):
    assert [kv_heads_of_rank(num_kv, r, tp) for r in range(tp)] == expect


def test_rank_layout_puts_global_heads_first():
    p = mixed()  # layer 0: heads 0 global; layer 1: head 3; layer 2: head 2; layer 3: head 1
    layout = RankHeadLayout(p)
    assert layout.layers[1].perm == (3, 0, 1, 2) and layout.layers[1].num_global == 1
    assert layout.layers[1].window == (128, 128, 128) and layout.layers[1].sink == (4, 4, 4)
    assert not layout.all_global and not layout.is_identity_order
    halves = [RankHeadLayout(p, r, 2) for r in range(2)]
    assert [h.kv_heads for h in halves] == [(0, 1), (2, 3)]
    # layer 2's global head is checkpoint head 2 = rank 1's first head; rank 0 has none there
    assert halves[0].layers[2].num_global == 0 and halves[1].layers[2].num_global == 1
    assert halves[0].global_head_count() + halves[1].global_head_count() == layout.global_head_count()
    assert "global per layer [0,1,1,0]" in halves[1].summary()


def test_tp_spread_reports_uneven_global_heads():
    from redknot_sglang.heads.tp import tp_spread

    p = mixed()  # global heads: layer0 h0, layer1 h3, layer2 h2, layer3 h1
    assert tp_spread(p, 2) == {"tp": 2, "global_heads_per_rank": [2, 2], "full_pool_overhead": 0.0}
    model = fp(num_layers=2)
    skewed = HeadProfile.from_classes(model, [[True, True, False, False], [True, False, False, False]],
                                      window=8, sink=0, method="test")
    assert tp_spread(skewed, 2) == {"tp": 2, "global_heads_per_rank": [3, 0], "full_pool_overhead": 1.0}


def test_start_up_warns_when_the_context_exceeds_the_gated_length(tmp_profile, caplog):
    import argparse

    from redknot_sglang.config import add_cli_args, config_from_args

    gated = mixed()
    gated.provenance.fidelity = {"gated_length": 4096}
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(["--redknot-head-profile", str(tmp_profile(gated))])
    with caplog.at_level("WARNING", logger="redknot_sglang.config"):
        config_from_args(args, gated.model, context_len=4096)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="redknot_sglang.config"):
        config_from_args(args, gated.model, context_len=8192)
    assert "prompts of up to 4096 tokens; the context length is 8192" in caplog.text
    assert HeadProfile.load("smollm2-135m-instruct").gated_length == 7168  # gated at the 7K bucket, recorded
