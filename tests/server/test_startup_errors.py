"""Start-up errors of a real launcher process: bad profiles and unsupported features stop it with
one line naming what is wrong, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from redknot_sglang.heads import HeadProfile
from redknot_sglang.heads.profile import ModelFingerprint


def _args(model, *extra):
    return ["--model-path", str(model), "--device", "cpu", "--attention-backend", "redknot",
            "--radix-cache-backend", "redknot", "--cuda-graph-backend-prefill", "disabled", *extra]


def _launch_fails(model, *extra) -> str:
    """The launcher's stderr once it exits non-zero. A launcher that starts serving instead is
    killed with its whole process group (its scheduler children would otherwise keep the pipes
    open, and the test would wait on them forever)."""
    proc = subprocess.Popen([sys.executable, "-m", "sglang.launch_server", *_args(model, *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the launcher did not stop within 240 s (it started serving?)")
    assert proc.returncode != 0
    return err


def test_server_refuses_a_profile_for_another_model(smollm2, tmp_profile):
    other = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=32, num_attention_heads=32,
                             num_kv_heads=8, head_dim=128, rope_theta=500000.0)
    path = tmp_profile(HeadProfile.all_global(other))
    err = _launch_fails(smollm2, "--redknot-head-profile", str(path))
    assert "redknot: head profile was made for another model (LlamaForCausalLM): num_layers: " \
           "profile has 32, served model has 30; num_attention_heads: profile has 32, served model has 9" in err
    assert "Traceback" not in err


def test_server_refuses_a_malformed_profile(smollm2, tmp_profile, smollm2_fingerprint):
    data = HeadProfile.all_global(smollm2_fingerprint).model_dump(mode="json", exclude_none=True)
    data["heads"][7][2] = {"kind": "local", "window": 0, "sink": 4}
    err = _launch_fails(smollm2, "--redknot-head-profile", str(tmp_profile(json.dumps(data))))
    assert "is malformed: profile: Value error, layer 7, kv_head 2: local head needs window >= 1 (got 0)" in err
    assert "Traceback" not in err


def test_server_refuses_a_window_that_covers_the_context(smollm2, tmp_path, smollm2_fingerprint):
    from redknot_sglang.heads.synthetic import synthetic_profile

    path = tmp_path / "wide.json"
    synthetic_profile(smollm2_fingerprint, global_ratio=0.5, window=8190, sink=4, seed=0).save(path)
    err = _launch_fails(smollm2, "--redknot-head-profile", str(path))
    assert "window + sink = 8194 >= context length 8192; such a head is not local" in err
    assert "Traceback" not in err


def test_server_refuses_features_the_head_split_does_not_support(smollm2):
    err = _launch_fails(smollm2, "--redknot-head-profile", "smollm2-135m-instruct", "--page-size", "16",
                        "--enable-streaming-session", "--max-total-tokens", "4096")
    assert "redknot: a profile with local heads does not support --page-size > 1, --enable-streaming-session yet" in err
    assert "Traceback" not in err
