"""The head profiler on SmolLM2-135M-Instruct (CPU): it writes a valid profile and heatmap, and at
15% global heads its profile beats random 15% profiles on greedy agreement with dense."""

from __future__ import annotations

import pytest

from redknot_sglang.heads import HeadProfile
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.profile.cli import main
from redknot_sglang.profile.gate import evaluate, prepare_held_out
from redknot_sglang.profile.hf_model import ProfiledModel

pytestmark = pytest.mark.server  # minutes on 2 cores: runs with the end-to-end tests

WINDOW, SINK = 128, 4
# Measured (SmolLM2-135M-Instruct, CPU fp32, window 128, calibration 2 x 512 tokens, held-out 4 prose +
# 4 copy prompts x 32 tokens): profiler 0.8125 vs random 15% profiles 0.770 / 0.766 / 0.742 / 0.727
# (mean 0.751, +0.061). The test asks for half of that gap over the mean, and a win over each.
MARGIN = 0.03


@pytest.fixture(scope="module")
def profiled(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "smollm2.heads.json"
    rc = main(["--model-path", str(smollm2), "--out", str(out), "--global-ratio", "0.15",
               "--window", str(WINDOW), "--sink", str(SINK), "--n-calibration", "2", "--calib-length", "512",
               "--held-out", "3", "--tokens", "24", "--needles", "2", "--force"])
    assert rc == 0
    return out


def test_profiler_writes_valid_profile_and_heatmap(profiled, smollm2_fingerprint):
    profile = HeadProfile.load(profiled)
    profile.check_model(smollm2_fingerprint, context_len=8192)
    assert profile.provenance.method == "profiler"
    assert round(0.15 * 90) == sum(map(sum, profile.is_global_matrix()))
    fid = profile.provenance.fidelity
    assert {"cosine", "agreement", "needle_accuracy", "passed", "thresholds"} <= set(fid)
    assert set(profile.provenance.params["scores"]) == {"edge_mass", "prefix_shift", "retrieval"}
    assert all(spec.score is not None and 0 <= spec.score <= 1 for row in profile.heads for spec in row)
    png = profiled.with_suffix(".png")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profiler_beats_random_heads(profiled, smollm2):
    profile = HeadProfile.load(profiled)
    model = ProfiledModel(str(smollm2))
    held = prepare_held_out(model, seed=0, window=WINDOW, sink=SINK, n_prompts=8, n_tokens=32, n_needles=0)
    ours = evaluate(model, held, profile).agreement
    randoms = [evaluate(model, held, synthetic_profile(profile.model, global_ratio=0.15, window=WINDOW,
                                                       sink=SINK, seed=s)).agreement for s in (1, 2, 3, 4)]
    print(f"\nagreement: profiler {ours:.3f}, random {randoms}")
    assert ours >= sum(randoms) / len(randoms) + MARGIN, (ours, randoms)
    assert ours > max(randoms), (ours, randoms)


def test_profile_that_fails_the_gate_is_not_written(smollm2, tmp_path, capsys):
    out = tmp_path / "strict.heads.json"
    rc = main(["--model-path", str(smollm2), "--out", str(out), "--global-ratio", "0.05", "--window", "16",
               "--sink", "0", "--n-calibration", "1", "--calib-length", "256", "--held-out", "1", "--tokens", "8",
               "--needles", "1", "--gate-agreement", "0.999"])
    assert rc == 2 and not out.exists()
    assert "fails the fidelity gate: not written" in capsys.readouterr().err
