"""The head profiler on SmolLM2-135M-Instruct (CPU, the 2K bucket of the dev split, a tiny grid): it
writes the profile with its gate numbers, the pictures and the measurements, refuses a profile that
fails unless forced, and resumes from its work folder. (Whether its heads beat random ones is
measured on the GPU, where the search probes the ``random`` ranking next to the scored ones: at
window 64 on 2K prompts every random and scored choice loses the same answer tokens.)"""

from __future__ import annotations

import json

import pytest

from redknot_sglang.heads import HeadProfile
from redknot_sglang.profile.cli import main

TINY = ["--buckets", "2k", "--dev-questions", "2", "--calibration", "1", "--rankings", "task",
        "--target-length", "2048", "--new-tokens", "16"]


@pytest.fixture(scope="module")
def profiled(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "smollm2.heads.json"
    work = out.parent / "work"
    args = ["--model-path", str(smollm2), "--out", str(out), "--work-dir", str(work), *TINY,
            "--windows", "64,1024", "--global-ratios", "0.1,0.3", "--max-global-ratio", "0.3", "--force"]
    assert main(args) == 0
    return out, work, args


def test_profiler_writes_profile_pictures_and_measurements(profiled, smollm2_fingerprint):
    out, _, _ = profiled
    profile = HeadProfile.load(out)
    profile.check_model(smollm2_fingerprint, context_len=8192)
    fid = profile.provenance.fidelity
    assert profile.gated_length == fid["gated_length"] == 2048
    assert 0 < fid["kv_ratio"] < 1 and set(fid["buckets"]) == {"2k", "all"}
    assert {"accuracy", "dense_accuracy", "top1_agreement", "cosine", "n"} <= set(fid["buckets"]["2k"])
    search = json.loads(out.with_suffix(".search.json").read_text())
    keys = [row["key"] for row in search["measured"]]
    grid = {f"task/w{w}/s4/g{n}" for w in (64, 1024) for n in (9, 27)}  # 2 windows x 2 ratios of 90 heads
    assert len(keys) == len(set(keys)) and grid <= set(keys) and search["chosen"] in keys
    for png in (out.with_suffix(".png"), out.with_suffix(".fidelity.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert profile.length_warning(8192) and profile.length_warning(2048) is None


def test_resumed_run_measures_nothing_again(profiled, capsys):
    out, work, args = profiled
    lines = len((work / "answers.jsonl").read_text().splitlines())
    assert main(args) == 0
    assert len((work / "answers.jsonl").read_text().splitlines()) == lines
    assert "candidates" not in capsys.readouterr().err  # no evaluation progress


def test_profile_that_fails_the_gate_is_not_written(smollm2, profiled, tmp_path, capsys):
    _, work, _ = profiled
    out = tmp_path / "strict.heads.json"
    rc = main(["--model-path", str(smollm2), "--out", str(out), "--work-dir", str(work), *TINY,
               "--windows", "64", "--global-ratios", "0.1", "--min-agreement", "0.999"])
    assert rc == 2 and not out.exists()
    assert "fails the fidelity gate: not written" in capsys.readouterr().err
    assert out.with_suffix(".fidelity.png").exists()  # the picture shows why


def test_a_candidate_chosen_by_hand_is_written_from_the_measurements(smollm2, profiled, tmp_path):
    _, work, _ = profiled
    lines = len((work / "answers.jsonl").read_text().splitlines())
    out = tmp_path / "by-hand.heads.json"
    assert main(["--model-path", str(smollm2), "--out", str(out), "--work-dir", str(work), *TINY,
                 "--windows", "64,1024", "--global-ratios", "0.1,0.3", "--max-global-ratio", "0.3", "--force",
                 "--candidate", "task/w1024/s4/g9"]) == 0
    assert len((work / "answers.jsonl").read_text().splitlines()) == lines  # in the grid: measured already
    profile = HeadProfile.load(out)
    assert profile.provenance.params["selection"] == "by hand (--candidate)"
    assert sum(map(sum, profile.is_global_matrix())) == 9
    assert {spec.window for _, _, spec in profile.local_heads()} == {1024}
    with pytest.raises(SystemExit):
        main(["--model-path", str(smollm2), "--out", str(out), "--candidate", "task/w1024/g9"])

