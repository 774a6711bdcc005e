"""Document reuse end to end on CPU: a SmolLM2 head-split server (15% global heads, window 64,
sink 4) captures marked documents at first use and places them in later requests that put them in
a new order: placed only, and with selective recompute (the default, which ``redknot_recovery:
true`` asks for explicitly; with every placed token recomputed it answers as the full prefill);
approximate KV never serves an unmarked request, other tenants never see a document, and every
slot comes back. Documents preloaded over HTTP are placed at first use; the store's counters are
Prometheus metrics."""

from __future__ import annotations

import random

import pytest
import requests

from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

pytestmark = pytest.mark.reuse

rng = random.Random(0)
SYS, D1, D2, D3, Q = ([rng.randrange(100, 40000) for _ in range(n)] for n in (20, 150, 90, 120, 10))


def body(docs, *, recovery=None, ratio=None, marks=True, salt=None, question=Q):
    ids, spans = list(SYS), []
    for d in docs:
        spans.append([len(ids), len(ids) + len(d)])
        ids += d
    params = {"temperature": 0, "max_new_tokens": 6}
    if marks:
        params["custom_params"] = {"redknot_documents": spans}
        if recovery is not None:
            params["custom_params"]["redknot_recovery"] = recovery
        if ratio is not None:
            params["custom_params"]["redknot_recompute_ratio"] = ratio
    out = {"input_ids": ids + question, "sampling_params": params}
    if salt is not None:
        out["extra_key"] = salt
    return out


def assert_all_slots_back(s):
    assert s["full_available"] + s["full_evictable"] == s["full_size"], s
    assert s["swa_available"] + s["swa_evictable"] == s["swa_size"], s
    assert s["full_protected"] == s["swa_protected"] == 0 and s["req_rows_free"] == s["req_rows_total"], s


def server_args(smollm2_fingerprint, tmp_path_factory) -> tuple[str, ...]:
    path = tmp_path_factory.mktemp("reuse") / "profile.json"
    synthetic_profile(smollm2_fingerprint, global_ratio=0.15, window=64, sink=4, seed=1).save(path)
    return (*CPU_ARGS, *REDKNOT_ARGS, "--max-total-tokens", "8192", "--random-seed", "0",
            "--redknot-head-profile", str(path), "--redknot-window-pool-ratio", "0.5",
            "--chunked-prefill-size", "128",  # documents span chunks
            "--enable-metrics")


@pytest.fixture(scope="module")
def server(smollm2, smollm2_fingerprint, tmp_path_factory):
    with Server(smollm2, server_args(smollm2_fingerprint, tmp_path_factory)) as s:
        yield s


def generate(server, payload):
    r = server.post("/generate", payload)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["output_ids"], out["meta_info"]["cached_tokens"]


def test_documents_are_captured_then_placed_in_a_new_order(server):
    _, cached = generate(server, body([D1, D2]))
    docs = server.redknot_stats()["documents"]
    assert cached == 0 and docs["captured_documents"] == 2 and docs["documents"] == 2

    # place only: both documents are placed, only the query is computed, nothing recomputed
    _, cached = generate(server, body([D2, D1], recovery=False))
    docs = server.redknot_stats()["documents"]
    assert cached == len(SYS) + len(D2) + len(D1)
    assert (docs["placed_requests"], docs["placed_tokens"]) == (1, len(D2) + len(D1))
    assert docs["recomputed_tokens"] == 0

    # redknot_recovery true is the default, selective recompute at the server's ratio (0.1): both
    # documents placed, then the query, each document's first 8 tokens and 10% of the placed tokens
    recomputed, outputs = [], []
    for recovery in (True, None):
        before = server.redknot_stats()["documents"]
        out, cached = generate(server, body([D2, D1], recovery=recovery))
        after = server.redknot_stats()["documents"]
        assert cached == len(SYS) + len(D2) + len(D1)
        assert after["placed_tokens"] - before["placed_tokens"] == len(D2) + len(D1)
        recomputed.append(after["recomputed_tokens"] - before["recomputed_tokens"])
        outputs.append(out)
    assert recomputed == [len(Q) + 2 * 8 + round(0.1 * (len(D2) + len(D1)))] * 2
    assert outputs[0] == outputs[1]

    # the same prompt unmarked: only the exact system prompt is reused, never placed KV
    plain, cached = generate(server, body([D2, D1], marks=False))
    assert cached == len(SYS)
    assert len(outputs[0]) == len(plain) == 6

    # a new first document is computed and captured; the cached ones after it are placed before
    # the request's next chunk
    placed = server.redknot_stats()["documents"]["placed_tokens"]
    _, cached = generate(server, body([D3, D1, D2], recovery=False))
    s = server.redknot_stats()
    assert cached == len(SYS) + len(D1) + len(D2)  # D3 computed, cut where D1 starts, D1 + D2 placed
    assert s["documents"]["captured_documents"] == 3
    assert s["documents"]["placed_tokens"] == placed + len(D1) + len(D2)
    assert_all_slots_back(s)


def test_selective_recompute_of_every_placed_token_answers_as_the_full_prefill(server):
    q0, q2, q3 = ([base + i for i in range(12)] for base in (300, 500, 900))  # questions no request asked
    d4, d5 = ([rng.randrange(100, 40000) for _ in range(n)] for n in (110, 80))  # documents no request holds
    generate(server, body([D1], marks=False, question=q0))  # the system prompt is in the tree
    r = server.post("/redknot/documents", {"documents": [{"input_ids": d4}, {"input_ids": d5}]})
    assert r.status_code == 200, r.text
    before = server.redknot_stats()["documents"]
    every, cached = generate(server, body([d4, d5], ratio=1.0, question=q2))
    s = server.redknot_stats()
    assert cached == len(SYS) + len(d4) + len(d5)  # both placed ...
    # ... then the question and every placed token recomputed at its true position, causal by position
    assert s["documents"]["recomputed_tokens"] - before["recomputed_tokens"] == len(d4) + len(d5) + len(q2)
    # the default ratio (0.1): the question, each document's first 8 tokens, 10% of the placed tokens
    default, _ = generate(server, body([d4, d5], question=q3))
    s = server.redknot_stats()
    recomputed = s["documents"]["recomputed_tokens"] - before["recomputed_tokens"] - (len(d4) + len(d5) + len(q2))
    assert recomputed == len(q3) + 2 * 8 + round(0.1 * (len(d4) + len(d5))) and len(default) == 6
    assert s["documents"]["placed_tokens"] == before["placed_tokens"] + 2 * (len(d4) + len(d5))
    # prompt logprobs of the question's last tokens (teacher forcing): the set ends with them
    q4 = [700 + i for i in range(12)]

    def prompt_logprobs(marked: bool) -> list[float]:
        payload = body([d4, d5], ratio=1.0, marks=marked, question=q4)
        payload.update(return_logprob=True, logprob_start_len=len(payload["input_ids"]) - 5, top_logprobs_num=1)
        r = server.post("/generate", payload)
        assert r.status_code == 200, r.text
        return [lp for lp, _, _ in r.json()["meta_info"]["input_token_logprobs"][1:]]

    marked_logprobs = prompt_logprobs(True)
    assert server.redknot_stats()["documents"]["recomputed_tokens"] - before["recomputed_tokens"] == (
        2 * (len(d4) + len(d5)) + len(q2) + len(q3) + len(q4) + 2 * 8 + round(0.1 * (len(d4) + len(d5))))
    # the same prompts unmarked: exact KV only (approximate requests never entered the tree)
    plain, _ = generate(server, body([d4, d5], marks=False, question=q2))
    assert every == plain
    assert len(marked_logprobs) == 4 and marked_logprobs == pytest.approx(prompt_logprobs(False), abs=1e-3)
    assert_all_slots_back(server.redknot_stats())


def test_a_selective_request_computes_the_gap_before_a_placed_document_in_one_extend(server):
    q5, q6 = ([base + i for i in range(12)] for base in (1100, 1300))
    new, old = ([rng.randrange(100, 40000) for _ in range(n)] for n in (70, 100))  # a gap within the 128-token chunk
    generate(server, body([D1], marks=False, question=q5))  # the system prompt is in the tree
    assert server.post("/redknot/documents", {"documents": [{"input_ids": old}]}).status_code == 200
    before = server.redknot_stats()["documents"]
    every, cached = generate(server, body([new, old], ratio=1.0, question=q6))
    after = server.redknot_stats()["documents"]
    # `old` placed after the uncached `new`, which the next extend computed with the question at
    # their positions (counted as gap tokens, not as cached ones); then `old` and the question recomputed
    assert cached == len(SYS) + len(old)
    assert after["placed_tokens"] - before["placed_tokens"] == len(old)
    assert after["gap_tokens"] - before["gap_tokens"] == len(new)
    assert after["recomputed_tokens"] - before["recomputed_tokens"] == len(old) + len(q6)
    # `new` computed right after the exact prefix is exact, the rest recomputed: the full prefill's answer
    plain, _ = generate(server, body([new, old], marks=False, question=q6))
    assert every == plain
    # `new` was captured from the gap at its prompt offset: a later request places both
    assert after["captured_documents"] == before["captured_documents"] + 1
    generate(server, body([old, new], recovery=False, question=q5))
    assert server.redknot_stats()["documents"]["placed_tokens"] - after["placed_tokens"] == len(old) + len(new)
    assert_all_slots_back(server.redknot_stats())


def test_documents_are_not_shared_across_tenants_and_bad_flags_get_400(server):
    generate(server, body([D1, D2], salt="tenant-a"))  # its own capture: no document is placed
    placed = server.redknot_stats()["documents"]["placed_tokens"]
    _, cached = generate(server, body([D2, D1], recovery=False, salt="tenant-a"))
    assert cached == len(SYS) + len(D2) + len(D1)
    _, cached = generate(server, body([D2, D1], recovery=False, salt="tenant-b"))
    assert cached == 0  # tenant b shares neither the system prompt nor the documents
    assert server.redknot_stats()["documents"]["placed_tokens"] == placed + len(D2) + len(D1)
    bad = body([D1])
    bad["sampling_params"]["custom_params"]["redknot_recovery"] = "yes"
    r = server.post("/generate", bad)
    assert r.status_code == 400 and "redknot_recovery must be true or false" in r.text
    bad = body([D2, D1], ratio=1.5)
    r = server.post("/generate", bad)
    assert r.status_code == 400 and "redknot_recompute_ratio must be a number in [0, 1]" in r.text
    r = server.post("/generate", body([D2, D1], ratio=0.2, recovery=True))
    assert r.status_code == 400 and "give redknot_recompute_ratio or redknot_recovery, not both" in r.text


def test_preloaded_documents_are_placed_at_first_use_and_bad_ones_get_400(server):
    from redknot_sglang.integration.frontend import RedknotEndpoint

    d4, d5 = ([rng.randrange(100, 40000) for _ in range(n)] for n in (110, 70))
    before = server.redknot_stats()["documents"]
    r = server.post("/redknot/documents", {"documents": [{"input_ids": d4}, {"input_ids": d5}], "cache_salt": "pre"})
    assert r.status_code == 200, r.text
    assert [d["tokens"] for d in r.json()["stored"]] == [110, 70] and r.json()["canonical_prefix_tokens"] > 0
    assert server.redknot_stats()["documents"]["captured_documents"] == before["captured_documents"] + 2
    placed = server.redknot_stats()["documents"]["placed_tokens"]
    generate(server, body([d5, d4], recovery=False, salt="pre"))  # first use, in a new order and offset
    assert server.redknot_stats()["documents"]["placed_tokens"] == placed + len(d5) + len(d4)
    generate(server, body([d5, d4], recovery=False, salt="other"))  # another tenant computes them
    assert server.redknot_stats()["documents"]["placed_tokens"] == placed + len(d5) + len(d4)
    stored = RedknotEndpoint(server.url).preload(["The red vault is guarded by a lion."], cache_salt="pre")
    assert stored["stored"][0]["tokens"] > 5
    for bad, message in (({"documents": [{"text": ""}]}, "empty document"),
                         ({"documents": [{"input_ids": list(range(100, 9100))}]}, "documents[0]"),
                         ({"documents": []}, "at least 1 item"),
                         ({"documents": [{"input_ids": d4}, {"html": "x"}]}, "redknot documents")):
        r = server.post("/redknot/documents", bad)
        assert r.status_code == 400 and message in r.text, (bad, r.text[:300])
    generate(server, body([D1]))  # the server goes on serving
    assert_all_slots_back(server.redknot_stats())


def test_preloaded_documents_that_begin_alike_are_each_stored(server):
    # every preloaded document follows the same canonical prefix, so a second document that begins
    # as the first one did ("Document 12: ...") meets the first one's tokens in the radix tree: the
    # match is cut where the document starts, so that it is computed whole and captured
    head = [rng.randrange(100, 40000) for _ in range(12)]
    d6, d7 = (head + [rng.randrange(100, 40000) for _ in range(n)] for n in (80, 60))
    before = server.redknot_stats()["documents"]
    for d in (d6, d7):
        r = server.post("/redknot/documents", {"documents": [{"input_ids": d}], "cache_salt": "alike"})
        assert r.status_code == 200, r.text
    after = server.redknot_stats()["documents"]
    assert after["captured_documents"] == before["captured_documents"] + 2
    generate(server, body([d7, d6], recovery=False, salt="alike"))
    assert server.redknot_stats()["documents"]["placed_tokens"] == after["placed_tokens"] + len(d7) + len(d6)
    assert_all_slots_back(server.redknot_stats())


def test_store_counters_are_prometheus_metrics(server):
    generate(server, body([D2, D1], recovery=False))  # places both: the counters move
    s = server.redknot_stats()["documents"]
    text = requests.get(server.url + "/metrics", timeout=60).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("sglang:redknot_")}
    for key in ("documents", "device_bytes", "captured_documents", "document_hits", "placed_requests", "placed_tokens",
                "recomputed_tokens"):
        assert values[f"sglang:redknot_{key}"] == s[key], (key, values, s)
    assert s["document_hits"] > 0
    assert "redknot: segment store 4.0 GB on cpu, host tier 16.0 GB taken in" in server.log()  # the defaults


def test_flush_cache_empties_the_tree_and_the_document_store(server):
    assert server.post("/flush_cache", {}).status_code == 200
    s = server.redknot_stats()
    assert s["full_available"] == s["full_size"] and s["swa_available"] == s["swa_size"]
    assert s["documents"]["documents"] == 0 and s["documents"]["device_bytes"] == 0


def test_canonical_capture_at_first_use_stores_what_a_preload_stores(smollm2, smollm2_fingerprint, tmp_path_factory):
    # --redknot-capture canonical: the first request that marks D1 and D2 has them computed alone
    # after the canonical prefix before it is scheduled, then places them (placed at first use); the
    # store then holds what preloading them holds, so the same request answers the same after a
    # preload. A document's capture is not repeated by later requests.
    args = (*server_args(smollm2_fingerprint, tmp_path_factory), "--redknot-capture", "canonical")
    with Server(smollm2, args) as s:
        first = body([D1, D2], recovery=False)
        before = s.redknot_stats()["documents"]
        out, _ = generate(s, first)
        after = s.redknot_stats()["documents"]
        assert after["captured_documents"] == before["captured_documents"] + 2
        assert after["placed_tokens"] == before["placed_tokens"] + len(D1) + len(D2)
        generate(s, body([D2, D1, D3]))  # D3 is new (selective): captured alone as well
        assert s.redknot_stats()["documents"]["captured_documents"] == after["captured_documents"] + 1
        assert s.post("/flush_cache", {}).status_code == 200
        r = s.post("/redknot/documents", {"documents": [{"input_ids": D1}, {"input_ids": D2}]})
        assert r.status_code == 200, r.text
        again, _ = generate(s, first)
        assert again == out
        assert_all_slots_back(s.redknot_stats())
