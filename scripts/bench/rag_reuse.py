"""Time to first token of RAG requests that reuse documents in new orders: stock SGLang vs RedKnot.

Workload (seeded): a pool of documents of ``doc_len`` random tokens; each request is a fixed system
prompt, ``k`` documents in random order and a question of ``q_len`` random tokens, about
``context_len`` tokens in all. With probability ``reuse_rate`` a document is drawn from those
earlier requests used, else it is new. Stock SGLang's radix cache reuses only the system prompt
(the documents' order changes the prefix); RedKnot's requests mark their documents
(``custom_params.redknot_documents``, token ranges) but in the ``unmarked`` mode. Requests are sent ``concurrency`` at a time,
streamed, and TTFT is the time to the first streamed token; the streaming client is a plain
``requests`` one (SGLang's bench_serving client needs aiohttp, which the GPU lane does not carry).

Sides: ``stock``, and ``redknot``, which runs each workload three times on one server:
``selective`` (marks sent, the default mode: every cached document placed from the segment store,
then selective recompute at the server's ``--redknot-recompute-ratio``), ``placed`` (marks with
``redknot_recovery: false``: every cached document placed, nothing recomputed) and ``unmarked`` (no
marks: the head split alone, so that its own gain is told apart from reuse's). ``/flush_cache``
empties the tree and the store before each run, so each starts cold and documents enter the store
at their first use. The server's reuse counters (placed and recomputed tokens, captured documents)
are recorded with each run. ``--side`` runs one side per device call (the partial file carries the
other, see :mod:`redknot_sglang.testing.bench_sides`). Writes bench/results/rag_reuse.json:
per context and reuse rate, ``{stock,selective,placed,unmarked}_{ttft_p50_s,ttft_p99_s,req_per_s}``
and ``{selective,placed}_{placed,recomputed}_tokens``. ``--cpu-smoke`` runs the procedure with
SmolLM2 on this CPU at tiny sizes (to /tmp).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from redknot_sglang.reuse.spans import RECOVERY_KEY
from redknot_sglang.testing.rag import reuse_counters, ttft, workload
from redknot_sglang.testing.bench_sides import SIDES, SidesFile, bench_setup, device_name, side_flags
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


# side -> mode -> custom_params besides the spans (None: unmarked)
MODES = {"stock": {"stock": None},
         "redknot": {"selective": {}, "placed": {RECOVERY_KEY: False}, "unmarked": None}}
COUNTERS = ("placed_tokens", "recomputed_tokens", "captured_documents")


def run_side(side: str, args: argparse.Namespace, model: Path, profile: Path, partial: SidesFile) -> None:
    flags = side_flags(side, context_len=max(args.contexts), cpu_smoke=args.cpu_smoke,
                       mem_fraction_static=args.mem_fraction_static, profile=profile)
    if side == "redknot":
        flags += ["--redknot-segment-store-gb", str(args.segment_store_gb)]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    out: dict = {"flags": flags, "results": {}}
    with Server(model, flags, log_path=Path(args.log_dir) / f"rag_{side}.log", timeout_s=900) as server:
        for ctx in args.contexts:
            for rate in args.reuse_rates:
                reqs = workload(f"{ctx}-{rate}", args.requests, context_len=ctx, k=args.k, sys_len=args.sys_len,
                                q_len=args.q_len, reuse_rate=rate, vocab=vocab)
                for mode, custom in MODES[side].items():
                    requests.post(server.url + "/flush_cache", timeout=60).raise_for_status()
                    before = reuse_counters(server.url)
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        times = sorted(pool.map(lambda q: ttft(server.url, q, args.max_new, custom), reqs))
                    wall = time.perf_counter() - t0
                    after = reuse_counters(server.url)
                    row = {"ttft_p50_s": round(statistics.median(times), 4),
                           "ttft_p99_s": round(times[min(len(times) - 1, int(0.99 * len(times)))], 4),
                           "req_per_s": round(len(times) / wall, 3),
                           "prompt_tokens": sum(len(q["input_ids"]) for q in reqs),
                           **{k: after[k] - before.get(k, 0) for k in COUNTERS if k in after}}
                    out["results"][f"{ctx}/{rate}/{mode}"] = row
                    partial.save(side, out)
                    print(f"[{mode}] ctx {ctx} reuse {rate}: {row}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("both", *SIDES), default="both")
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--reuse-rates", type=float, nargs="+", default=[0.8])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--k", type=int, default=4, help="documents per request")
    ap.add_argument("--sys-len", type=int, default=256)
    ap.add_argument("--q-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=8)
    ap.add_argument("--mem-fraction-static", type=float, default=0.6)
    ap.add_argument("--segment-store-gb", type=float, default=12.0, help="redknot side's document store (GPU)")
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--cpu-smoke", action="store_true", help="SmolLM2 on this CPU, tiny sizes, results to /tmp")
    args = ap.parse_args()
    model, results, profile = bench_setup(args.cpu_smoke, RESULTS)
    partial = SidesFile(results / "_partial_rag_reuse.json")
    for side in SIDES if args.side == "both" else (args.side,):
        run_side(side, args, model, profile, partial)
    sides = partial.complete()
    if sides is None:
        return
    device, rows = device_name(), []
    res = {side: sides[side]["results"] for side in SIDES}
    print(f"\nTTFT ({device}; {args.requests} requests, {args.k} documents each, concurrency {args.concurrency})")
    modes = ("stock", *MODES["redknot"])
    print(f"{'context':>8} {'reuse':>6} " + " ".join(f"{m + ' p50':>13}" for m in modes) + " "
          + " ".join(f"{m + ' p99':>13}" for m in modes) + " " + " ".join(f"{m + ' x':>11}" for m in modes[1:]))
    for key, s in res["stock"].items():
        ctx, rate, _ = key.split("/")
        runs = {"stock": s, **{m: res["redknot"][f"{ctx}/{rate}/{m}"] for m in modes[1:]}}
        row = {"context_len": int(ctx), "reuse_rate": float(rate)}
        for stat in ("ttft_p50_s", "ttft_p99_s", "req_per_s"):
            row.update({f"{m}_{stat}": r[stat] for m, r in runs.items()})
        for counter in ("placed_tokens", "recomputed_tokens"):
            row.update({f"{m}_{counter}": runs[m].get(counter) for m in ("selective", "placed")})
        row["prompt_tokens"] = s["prompt_tokens"]
        rows.append(row)
        print(f"{ctx:>8} {rate:>6} " + " ".join(f"{r['ttft_p50_s']:>13.3f}" for r in runs.values()) + " "
              + " ".join(f"{r['ttft_p99_s']:>13.3f}" for r in runs.values()) + " "
              + " ".join(f"{s['ttft_p50_s'] / runs[m]['ttft_p50_s']:>10.2f}x" for m in modes[1:]))
    (results / "rag_reuse.json").write_text(json.dumps(
        {"device": device, "model": model.name, "flags": {k: v["flags"] for k, v in sides.items()},
         "workload": {k: getattr(args, k) for k in ("requests", "concurrency", "k", "sys_len", "q_len", "max_new")},
         "results": rows}, indent=2) + "\n")
    partial.clear()


if __name__ == "__main__":
    main()
