"""Time to first token of RAG requests that reuse documents in new orders: stock SGLang vs RedKnot.

Workload (seeded): a pool of documents of ``doc_len`` random tokens; each request is a fixed system
prompt, ``k`` documents in random order and a question of ``q_len`` random tokens, about
``context_len`` tokens in all. With probability ``reuse_rate`` a document is drawn from those
earlier requests used, else it is new. Stock SGLang's radix cache reuses only the system prompt
(the documents' order changes the prefix); RedKnot's requests mark their documents
(``custom_params.redknot_documents``, token ranges). Requests are sent ``concurrency`` at a time,
streamed, and TTFT is the time to the first streamed token; the streaming client is a plain
``requests`` one (SGLang's bench_serving client needs aiohttp, which the GPU lane does not carry).

Sides: ``stock``, and ``redknot`` (marks sent), which runs each workload twice on one server: with
document-level recovery (``redknot_recovery: true``: the first document after the system prompt is
placed from the segment store, later ones are recomputed at their true positions) and without
(``redknot_recovery: false``: every cached document is placed). Selective recompute, the default
mode, is measured by ``reuse_frontier.py``. ``/flush_cache`` empties the tree and the store before
each run, so each starts cold and documents enter the store at their first use. The server's reuse
counters (placed tokens, captured documents) are recorded with each run. ``--side`` runs one side
per device call (the partial file carries the other, see
:mod:`redknot_sglang.testing.bench_sides`). Writes bench/results/rag_reuse.json; ``--cpu-smoke``
runs the procedure with SmolLM2 on this CPU at tiny sizes (to /tmp).
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
MODES = {"stock": {"stock": None}, "redknot": {"redknot": {RECOVERY_KEY: True}, "norecovery": {RECOVERY_KEY: False}}}


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
                           **{k: after[k] - before.get(k, 0) for k in ("placed_tokens", "captured_documents")
                              if k in after}}
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
    print(f"{'context':>8} {'reuse':>6} {'stock p50':>10} {'redknot p50':>12} {'norecov p50':>12} "
          f"{'stock p99':>10} {'redknot p99':>12} {'speedup':>8}")
    for key, s in res["stock"].items():
        ctx, rate, _ = key.split("/")
        r, n = res["redknot"][f"{ctx}/{rate}/redknot"], res["redknot"][f"{ctx}/{rate}/norecovery"]
        rows.append({"context_len": int(ctx), "reuse_rate": float(rate),
                     "stock_ttft_p50_s": s["ttft_p50_s"], "redknot_ttft_p50_s": r["ttft_p50_s"],
                     "norecovery_ttft_p50_s": n["ttft_p50_s"], "stock_ttft_p99_s": s["ttft_p99_s"],
                     "redknot_ttft_p99_s": r["ttft_p99_s"], "norecovery_ttft_p99_s": n["ttft_p99_s"],
                     "stock_req_per_s": s["req_per_s"], "redknot_req_per_s": r["req_per_s"],
                     "norecovery_req_per_s": n["req_per_s"],
                     "redknot_placed_tokens": r.get("placed_tokens"), "norecovery_placed_tokens": n.get("placed_tokens"),
                     "prompt_tokens": s["prompt_tokens"]})
        print(f"{ctx:>8} {rate:>6} {s['ttft_p50_s']:>10.3f} {r['ttft_p50_s']:>12.3f} {n['ttft_p50_s']:>12.3f} "
              f"{s['ttft_p99_s']:>10.3f} {r['ttft_p99_s']:>12.3f} {s['ttft_p50_s'] / r['ttft_p50_s']:>7.2f}x")
    (results / "rag_reuse.json").write_text(json.dumps(
        {"device": device, "model": model.name, "flags": {k: v["flags"] for k, v in sides.items()},
         "workload": {k: getattr(args, k) for k in ("requests", "concurrency", "k", "sys_len", "q_len", "max_new")},
         "results": rows}, indent=2) + "\n")
    partial.clear()


if __name__ == "__main__":
    main()
