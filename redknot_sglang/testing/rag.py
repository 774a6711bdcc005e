"""RAG workloads of the reuse benchmarks and their time to first token, over HTTP.

A prompt is a fixed system prompt, ``k`` documents of random tokens in random order and a question
of random tokens; documents are drawn from those earlier prompts used with probability
``reuse_rate``, else new. TTFT is the time to the first streamed token of a plain ``requests``
client (SGLang's bench_serving client needs aiohttp, which the GPU lane does not carry).
"""

from __future__ import annotations

import random
import time
from typing import Optional

import orjson
import requests

from redknot_sglang.reuse.spans import DOCUMENTS_KEY


def workload(seed: str, n: int, *, context_len: int, k: int, sys_len: int, q_len: int, reuse_rate: float,
             vocab: int, pool: Optional[list[list[int]]] = None) -> list[dict]:
    """``n`` prompts (``input_ids`` and document ``spans``) of about ``context_len`` tokens; with
    ``pool``, every document comes from it (``reuse_rate`` ignored)."""
    rng = random.Random(seed)
    tokens = lambda m: [rng.randrange(100, vocab - 100) for _ in range(m)]
    doc_len = (context_len - sys_len - q_len) // k
    system, seen, out = tokens(sys_len), [], []
    for _ in range(n):
        if pool is not None:
            docs = rng.sample(pool, k)
        else:
            docs = [rng.choice(seen) if seen and rng.random() < reuse_rate else tokens(doc_len) for _ in range(k)]
            seen.extend(d for d in docs if d not in seen)
        ids, spans = list(system), []
        for d in docs:
            spans.append([len(ids), len(ids) + len(d)])
            ids.extend(d)
        out.append({"input_ids": ids + tokens(q_len), "spans": spans})
    return out


def documents(seed: str, n: int, doc_len: int, vocab: int) -> list[list[int]]:
    """A pool of ``n`` documents of random tokens."""
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(doc_len)] for _ in range(n)]


def stream(url: str, input_ids: list[int], params: dict) -> tuple[float, dict]:
    """One streamed ``/generate`` of ``input_ids``: seconds to its first token and its last chunk
    (``meta_info``, ``output_ids``), read to the end so that the request is over when this returns."""
    t0, first, last = time.perf_counter(), None, {}
    with requests.post(url + "/generate", json={"input_ids": input_ids, "sampling_params": params, "stream": True},
                       stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                first = first if first is not None else time.perf_counter() - t0
                last = orjson.loads(line[6:])
    if first is None:
        raise RuntimeError("the stream ended without a token")
    return first, last


def ttft(url: str, req: dict, max_new: int, custom: Optional[dict]) -> float:
    """Seconds to the first streamed token of ``req``; ``custom``: its documents marked with these
    ``custom_params`` besides the spans (None: unmarked)."""
    params = {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}
    if custom is not None:
        params["custom_params"] = {DOCUMENTS_KEY: req["spans"], **custom}
    return stream(url, req["input_ids"], params)[0]


def reuse_counters(url: str) -> dict:
    """The redknot server's document-reuse counters ({} on stock)."""
    state = requests.get(url + "/get_server_info", timeout=60).json()["internal_states"][0]
    return state.get("redknot", {}).get("documents", {})
