"""The reuse frontier: time to first token of RAG prompts at 32K against stock SGLang, per recompute
ratio of selective recompute, next to the fidelity of the same ratio (bench/results/fidelity.json,
``fidelity.py --reuse``: SmolLM2 on the document-QA test split).

Workload (seeded, :mod:`redknot_sglang.testing.rag`): a system prompt of ``sys_len`` tokens, ``k``
documents and a question of ``q_len`` tokens, ``context`` tokens in all (8B shape, dummy weights).

* warm, one at a time: a pool of ``pool`` documents is in the store first (redknot: preloaded
  through ``POST /redknot/documents``; stock: the same documents sent once as prompts, which its
  radix cache keeps but cannot reuse in a new order); then ``warm_requests`` prompts, each ``k``
  documents of the pool in a new order, one at a time;
* cold, concurrency ``concurrency``: ``/flush_cache``, then ``cold_requests`` prompts whose documents
  come from earlier prompts with probability ``reuse_rate`` (captured at their first use).

Before its first mode each server answers ``warmup_requests`` cold prompts of another seed in that
mode, unmeasured, so that no mode pays the server's first compiles and pinned buffers.

Modes of the redknot side: ``full`` (unmarked: the head split's own prefill), ``R`` (documents
marked, ``redknot_recompute_ratio`` R; 0 = place only). Sides run one per device call
(:mod:`redknot_sglang.testing.bench_sides`); once both are in, writes bench/results/reuse_frontier.json
and reuse_frontier.png (fidelity against speed-up). A redknot row that carries a ``stock`` entry
(rows composed from two leases) is compared with that stock, measured on its own lease. ``--cpu-smoke`` checks the procedure with
SmolLM2 on this CPU at tiny sizes (to /tmp).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import requests

from redknot_sglang.reuse.spans import RATIO_KEY
from redknot_sglang.testing.bench_sides import SIDES, SidesFile, bench_setup, device_name, side_flags
from redknot_sglang.testing.rag import documents, reuse_counters, ttft, workload
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
# the redknot server's reuse counters each row reports (tokens placed, computed between placed
# documents, recomputed; placements given up for lack of KV slots)
COUNTERS = ("placed_tokens", "gap_tokens", "recomputed_tokens", "placement_misses")


def concurrently(url: str, prompts: list[dict], custom: Optional[dict], args: argparse.Namespace,
                 trace: Optional[Path] = None) -> list[float]:
    """TTFT of each prompt, ``args.concurrency`` in flight at once; ``trace``: once ``args.trace_after``
    prompts are answered, SGLang's torch profiler traces the next ``args.trace_steps`` scheduler
    steps into this folder, without Python stacks, which would inflate host times
    (``scripts/device/trace_summary.py`` summarizes it)."""
    answered = itertools.count(1)

    def one(q: dict) -> float:
        t = ttft(url, q, args.max_new, custom)
        if trace is not None and next(answered) == args.trace_after:
            requests.post(url + "/start_profile", json={"output_dir": str(trace), "num_steps": args.trace_steps,
                                                        "activities": ["CPU", "GPU"], "with_stack": False,
                                                        "record_shapes": False}, timeout=60).raise_for_status()
        return t

    with ThreadPoolExecutor(args.concurrency) as ex:
        return list(ex.map(one, prompts))


def p50(times: list[float]) -> float:
    return round(statistics.median(times), 4)


def run_side(side: str, args: argparse.Namespace, model: Path, profile: Path, partial: SidesFile) -> None:
    flags = side_flags(side, context_len=args.context, cpu_smoke=args.cpu_smoke,
                       mem_fraction_static=args.mem_fraction_static, profile=profile)
    if side == "redknot":
        flags += ["--redknot-segment-store-gb", str(args.segment_store_gb),
                  "--redknot-segment-host-gb", str(args.segment_host_gb),
                  "--redknot-window-pool-ratio", str(args.window_pool_ratio)]
    if side == "redknot" and args.fast_start:
        flags += ["--redknot-base-backend", "triton", "--disable-cuda-graph"]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    doc_len = (args.context - args.sys_len - args.q_len) // args.k
    pool = documents("pool", args.pool, doc_len, vocab)
    shape = dict(context_len=args.context, k=args.k, sys_len=args.sys_len, q_len=args.q_len, vocab=vocab)
    warm = workload("warm", args.warm_requests, reuse_rate=1.0, pool=pool, **shape)
    cold = workload("cold", args.cold_requests, reuse_rate=args.reuse_rate, **shape)
    out: dict = {"device": device_name(), "flags": flags, "results": partial.side(side).get("results", {})}
    modes = {"stock": None} if side == "stock" else {**{str(r): r for r in args.ratios}, "full": None}
    modes = {m: r for m, r in modes.items() if m not in out["results"]}  # measured by an earlier call
    with Server(model, flags, log_path=Path(args.log_dir) / f"frontier_{side}.log", timeout_s=900) as server:
        if modes and args.warmup_requests:  # first compiles and pinned buffers, not measured
            first = next(iter(modes.values()))
            warmup = workload("warmup", args.warmup_requests, reuse_rate=args.reuse_rate, **shape)
            concurrently(server.url, warmup, None if first is None else {RATIO_KEY: first}, args)
        for mode, ratio in modes.items():
            custom = None if ratio is None else {RATIO_KEY: ratio}
            requests.post(server.url + "/flush_cache", timeout=60).raise_for_status()
            if side == "redknot":
                r = requests.post(server.url + "/redknot/documents", json={"documents": [{"input_ids": d} for d in pool]},
                                  timeout=3600)
                r.raise_for_status()
            else:  # the same documents through the stock server once
                for d in pool:
                    ttft(server.url, {"input_ids": d, "spans": []}, 1, None)
            before = reuse_counters(server.url)
            warm_times = [ttft(server.url, q, args.max_new, custom) for q in warm]
            after = reuse_counters(server.url)
            row = {"warm_c1_ttft_p50_s": p50(warm_times),
                   **{f"warm_{k}": after[k] - before.get(k, 0) for k in COUNTERS if k in after}}
            if mode not in args.warm_only_modes:
                requests.post(server.url + "/flush_cache", timeout=60).raise_for_status()
                c0, t0 = reuse_counters(server.url), time.perf_counter()
                trace = args.trace / f"{side}-{mode}" if args.trace else None
                cold_times = concurrently(server.url, cold, custom, args, trace)
                wall, counters = round(time.perf_counter() - t0, 2), reuse_counters(server.url)
                row.update(cold_c4_ttft_p50_s=p50(cold_times), cold_wall_s=wall,
                           **{f"cold_{k}": counters[k] - c0.get(k, 0) for k in COUNTERS if k in counters})
            out["results"][mode] = {**row, "flags": flags}  # calls may differ (--fast-start)
            partial.save(side, out)
            print(f"[{side} {mode}] {row}", flush=True)


def fidelity_of(path: Path) -> dict:
    """``{ratio: fidelity.json's reuse rows of that ratio, every bucket}`` (``placed`` is ratio 0)."""
    if not path.exists():
        return {}
    rows, out = json.loads(path.read_text()).get("reuse", []), {}
    for r in rows:
        mode = r["mode"]
        ratio = 0.0 if mode == "placed" else float(mode.removeprefix("selective-")) if mode.startswith("selective-") else None
        if ratio is not None:
            out.setdefault(ratio, []).append(r)
    return out


def write(sides: dict, args: argparse.Namespace, results: Path, model: Path) -> None:
    stock = sides["stock"]["results"]["stock"]
    fid = fidelity_of(args.fidelity)
    rows = []
    measured = sides["redknot"]["results"]
    fidelity_only = {str(r): None for r in sorted(fid) if str(r) not in measured}  # no TTFT measured yet
    for mode, r in {**measured, **fidelity_only}.items():
        ratio = None if mode == "full" else float(mode)
        r = r or {}
        base = r.get("stock", stock)  # a row measured on another lease keeps that lease's stock
        q = [x for x in fid.get(ratio, []) if "accuracy" in x]
        n = sum(x["n_questions"] for x in q)
        mean = (lambda key: round(sum(x[key] * x["n_questions"] for x in q) / n, 4)) if n else (lambda key: None)
        rows.append({"recompute_ratio": ratio, "default": ratio == args.default_ratio,
                     "ttft_speedup_warm_c1_32k": (round(base["warm_c1_ttft_p50_s"] / r["warm_c1_ttft_p50_s"], 3)
                                                  if "warm_c1_ttft_p50_s" in r else None),
                     "ttft_speedup_cold_c4_32k": (round(base["cold_c4_ttft_p50_s"] / r["cold_c4_ttft_p50_s"], 3)
                                                  if "cold_c4_ttft_p50_s" in r else None),
                     "accuracy": mean("accuracy"), "headsplit_accuracy": mean("headsplit_accuracy"),
                     "dense_accuracy": mean("dense_accuracy"), "top1_agreement": mean("top1_agreement_vs_full_prefill"),
                     "n_questions": n, "redknot": r})
    rows.sort(key=lambda row: -1 if row["recompute_ratio"] is None else row["recompute_ratio"])
    out = {"device": sides["redknot"]["device"], "model": f"{model.name} (dummy weights) for TTFT; SmolLM2-135M-Instruct for fidelity",
           "workload": {k: getattr(args, k) for k in ("context", "k", "sys_len", "q_len", "pool", "warm_requests",
                                                       "cold_requests", "reuse_rate", "concurrency", "max_new")},
           "stock": stock, "flags": {k: v["flags"] for k, v in sides.items()}, "results": rows,
           "notes": args.note,
           "sides": sides}  # what each side measured: --resume starts from it
    (results / "reuse_frontier.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nstock: warm c1 p50 {stock['warm_c1_ttft_p50_s']:.3f} s, cold c{args.concurrency} p50 "
          f"{stock.get('cold_c4_ttft_p50_s', float('nan')):.3f} s ({out['device']})")
    print(f"{'ratio':>6} {'warm x':>7} {'cold x':>7} {'acc':>6} {'split':>6} {'dense':>6} {'top1':>7} {'n':>4}")
    fmt = lambda v, spec: format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0].lstrip(">")))
    for r in rows:
        print(f"{'full' if r['recompute_ratio'] is None else r['recompute_ratio']:>6} "
              f"{fmt(r['ttft_speedup_warm_c1_32k'], '>7.2f')} {fmt(r['ttft_speedup_cold_c4_32k'], '>7.2f')} "
              f"{fmt(r['accuracy'], '>6.3f')} {fmt(r['headsplit_accuracy'], '>6.3f')} {fmt(r['dense_accuracy'], '>6.3f')} "
              f"{fmt(r['top1_agreement'], '>7.4f')} {r['n_questions']:>4}")
    plot(rows, results / "reuse_frontier.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["top1_agreement"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, marker in (("ttft_speedup_warm_c1_32k", "o"), ("ttft_speedup_cold_c4_32k", "s")):
        xs = [r[key] for r in pts if r[key] is not None]
        ys = [r["top1_agreement"] for r in pts if r[key] is not None]
        ax.plot(xs, ys, marker=marker, label=key.removeprefix("ttft_speedup_").replace("_", " "))
        for r in pts:
            if r[key] is not None:
                ax.annotate(f"R={r['recompute_ratio']}", (r[key], r["top1_agreement"]), fontsize=7)
    ax.axhline(0.95, ls="--", c="gray", lw=0.8)
    ax.set_xlabel("TTFT speed-up vs stock SGLang at 32K (x)")
    ax.set_ylabel("top-1 agreement vs the server's full prefill")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("both", "none", *SIDES), default="both",
                    help="none: measure nothing, write the JSON from the sides measured before")
    ap.add_argument("--context", type=int, default=32768 - 2048)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.0, 0.2, 0.05, 0.4])
    ap.add_argument("--default-ratio", type=float, default=0.1)
    ap.add_argument("--warm-only-modes", nargs="*", default=["full"], help="modes measured warm only")
    ap.add_argument("--k", type=int, default=10, help="documents per prompt")
    ap.add_argument("--sys-len", type=int, default=200)
    ap.add_argument("--q-len", type=int, default=300)
    ap.add_argument("--pool", type=int, default=30)
    ap.add_argument("--warm-requests", type=int, default=16)
    ap.add_argument("--cold-requests", type=int, default=128)
    ap.add_argument("--reuse-rate", type=float, default=0.8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--warmup-requests", type=int, default=32,
                    help="cold-workload requests of another seed each server answers before its first mode "
                    "(its first kernel compiles and the store's first pinned host buffers), not measured")
    ap.add_argument("--max-new", type=int, default=1)
    ap.add_argument("--mem-fraction-static", type=float, default=0.35)
    ap.add_argument("--segment-store-gb", type=float, default=64.0,
                    help="redknot side's document store on the GPU (the cold run's ~240 documents of 393 MB, local "
                    "heads whole for selective recompute, fit with --segment-host-gb)")
    ap.add_argument("--segment-host-gb", type=float, default=32.0, help="redknot side's store spill tier (host)")
    ap.add_argument("--window-pool-ratio", type=float, default=0.25,
                    help="redknot side: window slots per full slot, room for 5 prompts' placed documents at once "
                    "(a selective request holds a window slot for every placed position until its recompute)")
    ap.add_argument("--fidelity", type=Path, default=RESULTS / "fidelity.json")
    ap.add_argument("--note", action="append", default=[], help="a line of provenance for the JSON (repeatable)")
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--partial", type=Path, help="the sides file (default: _partial_reuse_frontier.json next to the "
                    "results; on the device a path under $OUT comes back even if the call is cut)")
    ap.add_argument("--resume", action="store_true", help="start from the sides of the committed "
                    "reuse_frontier.json (modes measured there are not measured again)")
    ap.add_argument("--remeasure", nargs="*", default=[], help="with --resume: modes (e.g. 0.1) measured again")
    ap.add_argument("--fast-start", action="store_true", help="redknot side: SGLang's Triton kernels for the global "
                    "heads and no CUDA graphs (no FlashInfer JIT, no capture: a server up within a short device "
                    "call; TTFT of max_new 1 runs no decode graph); recorded in the flags")
    ap.add_argument("--trace", type=Path, help="a torch-profiler trace of each cold run's steady state into "
                    "TRACE/SIDE-MODE (SGLang's /start_profile; its steps run slower)")
    ap.add_argument("--trace-after", type=int, default=32, help="with --trace: cold prompts answered before it starts")
    ap.add_argument("--trace-steps", type=int, default=12, help="with --trace: scheduler steps traced")
    ap.add_argument("--cpu-smoke", action="store_true", help="SmolLM2 on this CPU, tiny sizes, results to /tmp")
    args = ap.parse_args()
    model, results, profile = bench_setup(args.cpu_smoke, RESULTS)
    partial = SidesFile(args.partial or results / "_partial_reuse_frontier.json")
    if args.resume and not partial.load():
        for side, out in json.loads((results / "reuse_frontier.json").read_text())["sides"].items():
            out["results"] = {m: r for m, r in out["results"].items() if m not in args.remeasure}
            partial.save(side, out)
    for side in {"both": SIDES, "none": ()}.get(args.side, (args.side,)):
        run_side(side, args, model, profile, partial)
    sides = partial.complete()
    if sides is not None:
        write(sides, args, results, model)
        partial.clear()


if __name__ == "__main__":
    main()
