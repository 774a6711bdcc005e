"""Soak on CPU: 1,000 mixed requests (fewer with ``REDKNOT_SOAK_REQUESTS``) through a head-split
server (small windows, tight pools so the window slides, the tree tombstones and evicts, and
admission waits), with shared prefixes, marked documents in random orders (captured, placed:
selective recompute at the server's ratio, place only, selective recompute at a ratio of the
request's own) and aborts mid-prefill and mid-decode. Afterwards every slot of both pools and
every request row must be free (the allocators' counts, read from /get_server_info), and the
server still answers."""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

# CI's second SGLang lane runs a shorter soak (REDKNOT_SOAK_REQUESTS) to stay within its time
N_REQUESTS = int(os.environ.get("REDKNOT_SOAK_REQUESTS", "1000"))
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _marked(rng: random.Random, system: list[int], docs: list[list[int]]) -> dict:
    """A prompt of token ids: a system prompt, 2-4 documents in random order, a question; marked."""
    ids, spans = list(system), []
    for d in rng.sample(docs, rng.randint(2, 4)):
        spans.append([len(ids), len(ids) + len(d)])
        ids += d
    params = {"redknot_documents": spans}
    mode = rng.random()  # selective recompute (the default), place only, selective at 0.3: a third each
    if mode < 1 / 3:
        params["redknot_recovery"] = False
    elif mode < 2 / 3:
        params["redknot_recompute_ratio"] = 0.3
    return {"input_ids": ids + [rng.randrange(100, 40000) for _ in range(8)], "custom_params": params}


def _one(server: Server, i: int, prefixes: list[str], docs: list[list[int]], outcome: dict) -> None:
    rng = random.Random(i)
    kind = rng.random()
    prefix = rng.choice(prefixes) if rng.random() < 0.6 else ""
    body = _text(rng, rng.choice([3, 20, 80, 300, 700]))
    payload = {"text": prefix + body, "rid": f"soak-{i}",
               "sampling_params": {"temperature": 0.7, "max_new_tokens": rng.choice([1, 4, 16]), "ignore_eos": True}}
    if rng.random() < 0.3:  # marked documents
        marked = _marked(rng, docs[0], docs[1:])
        del payload["text"]
        payload["input_ids"] = marked["input_ids"]
        payload["sampling_params"]["custom_params"] = marked["custom_params"]
    abort_after = None
    if kind < 0.05:  # abort during prefill: a long prompt, cancelled almost at once
        payload.pop("input_ids", None)
        payload["sampling_params"].pop("custom_params", None)
        payload["text"] = prefix + _text(rng, 900)
        abort_after = 0.05
    elif kind < 0.10:  # abort during decode
        payload["sampling_params"]["max_new_tokens"] = 400
        abort_after = 1.5
    if abort_after is not None:
        timer = threading.Timer(abort_after, lambda: requests.post(
            server.url + "/abort_request", json={"rid": payload["rid"]}, timeout=60))
        timer.start()
    r = requests.post(server.url + "/generate", json=payload, timeout=900)
    reason = r.json().get("meta_info", {}).get("finish_reason", {}).get("type") if r.ok else f"http {r.status_code}"
    outcome[i] = reason


def test_thousand_mixed_requests_free_every_slot(smollm2, smollm2_fingerprint, tmp_path):
    profile = synthetic_profile(smollm2_fingerprint, global_ratio=0.15, window=48, sink=4, seed=2)
    path = tmp_path / "soak.json"
    profile.save(path)
    args = (*CPU_ARGS, *REDKNOT_ARGS, "--redknot-head-profile", str(path),
            "--max-total-tokens", "6000", "--redknot-window-pool-ratio", "0.3",
            "--chunked-prefill-size", "256", "--max-running-requests", "24",
            "--redknot-sink-cache-blocks", "4")
    rng = random.Random(0)
    prefixes = [f"System prompt {k}: " + _text(rng, 150) + " " for k in range(6)]
    docs = [[rng.randrange(100, 40000) for _ in range(n)] for n in (24, 60, 90, 120, 45, 150, 75, 30, 100)]
    with Server(smollm2, args) as server:
        before = server.redknot_stats()
        outcome: dict = {}
        t0 = time.monotonic()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: _one(server, i, prefixes, docs, outcome), range(N_REQUESTS)))
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while (s := server.redknot_stats())["running_reqs"] or s["waiting_reqs"]:
            assert time.monotonic() < deadline, s
            time.sleep(1)
        busy = server.redknot_stats()
        assert requests.post(server.url + "/flush_cache", timeout=60).ok
        time.sleep(1)
        after = server.redknot_stats()
        answer = server.generate({"text": "The capital of France is",
                                  "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}})
    kinds = {k: sum(1 for v in outcome.values() if v == k) for k in set(outcome.values())}
    print(f"\nsoak: {N_REQUESTS} requests in {elapsed:.0f} s, outcomes {kinds}, before {before}, idle {busy}")
    assert len(outcome) == N_REQUESTS
    assert kinds.get("abort", 0) >= N_REQUESTS // 25 and kinds.get("length", 0) >= N_REQUESTS * 4 // 5, kinds
    assert busy["full_evictable"] > 0 and busy["sink_blocks_used"] > 0  # the tree and sink cache were used
    reuse = busy["documents"]
    assert reuse["captured_documents"] >= 8 and reuse["placed_requests"] >= N_REQUESTS // 20, reuse  # reused
    assert reuse["recomputed_tokens"] > 0, reuse  # selective requests recomputed
    assert after["documents"]["documents"] == 0 and after["documents"]["device_bytes"] == 0
    for pool in ("full", "swa"):
        assert after[f"{pool}_available"] == after[f"{pool}_size"], (pool, after)
        assert after[f"{pool}_evictable"] == after[f"{pool}_protected"] == 0, (pool, after)
    assert after["req_rows_free"] == after["req_rows_total"]
    assert len(answer["output_ids"]) == 4
