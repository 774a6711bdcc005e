"""Long prompts reused as stock reuses them: prompts of several prefill chunks sent twice, then
extended by a turn, under window-pool pressure (the window pool holds a few windows beyond one
chunk's working set, as on the GPU). Cached tokens equal stock's; with windows covering every
prompt, the answers equal stock's too. A prefix that ends inside an earlier request (a fork point)
is reused up to the last prefill-chunk end before it (SGLang's window checkpoints)."""

from __future__ import annotations

import random

import pytest

from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

CHUNK, WINDOW = 512, 256
COMMON = (*CPU_ARGS, "--max-total-tokens", "30000", "--chunked-prefill-size", str(CHUNK), "--random-seed", "0")
_rng = random.Random(0)
PROMPTS = [[_rng.randrange(100, 40000) for _ in range(2500)] for _ in range(3)]


def _session(server: Server) -> dict:
    """Each prompt once, each again, each extended by a turn, and a fork inside the last one."""
    def ask(ids, n):
        r = server.generate({"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": n}})
        return r["output_ids"], r["meta_info"]["cached_tokens"]

    first = [ask(p, 4) for p in PROMPTS]
    again = [ask(p, 8) for p in PROMPTS]
    turns = [ask(p + out + [300 + i for i in range(40)], 8) for p, (out, _) in zip(PROMPTS, first)]
    fork = ask(PROMPTS[2][:1800] + [7] * 50, 4)
    return {"first": first, "again": again, "turns": turns, "fork": fork}


@pytest.fixture(scope="module")
def stock(smollm2):
    with Server(smollm2, COMMON) as server:
        return _session(server)


def _redknot(smollm2, fingerprint, tmp_path, window: int) -> dict:
    path = tmp_path / f"w{window}.json"
    synthetic_profile(fingerprint, global_ratio=0.15, window=window, sink=64, seed=0).save(path)
    ratio = "0.25" if window == WINDOW else "0.5"  # 7500 window slots: every cached window fits, a cached prompt's every slot does not
    with Server(smollm2, (*COMMON, *REDKNOT_ARGS, "--redknot-head-profile", str(path),
                          "--redknot-window-pool-ratio", ratio)) as server:
        return _session(server)


def test_repeated_and_extended_prompts_reuse_as_stock(smollm2, smollm2_fingerprint, tmp_path, stock):
    ours = _redknot(smollm2, smollm2_fingerprint, tmp_path, WINDOW)
    for key in ("first", "again", "turns"):
        assert [c for _, c in ours[key]] == [c for _, c in stock[key]], key
    assert [c for _, c in stock["again"]] == [len(p) - 1 for p in PROMPTS]
    # the fork at 1800 tokens: stock reuses 1800, local heads keep windows at chunk ends only
    assert stock["fork"][1] == 1800 and ours["fork"][1] == 1800 // CHUNK * CHUNK


def test_covering_windows_answer_as_stock(smollm2, smollm2_fingerprint, tmp_path, stock):
    ours = _redknot(smollm2, smollm2_fingerprint, tmp_path, 4096)
    for key in ("first", "again", "turns"):
        assert [o for o, _ in ours[key]] == [o for o, _ in stock[key]], key
        assert [c for _, c in ours[key]] == [c for _, c in stock[key]], key
