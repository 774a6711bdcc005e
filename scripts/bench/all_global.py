"""What the plugin costs when it has nothing to split: stock SGLang vs RedKnot with an all-global
profile (every head reads every key), same model, same flags (issue 13, item 3: within 3%).

An all-global profile makes the attention factory hand back the base backend itself and the cache
factory SGLang's own radix cache, so the two servers should run the same kernels; what can differ
is what the plugin adds around them (hooks, flag parsing, the profile check, the weights' head
order). Per context (8K and 32K): time to the first token of fresh random prompts (``context -
300`` tokens, 1 new token; median of ``--prompts``) and decode throughput of one request at batch 1
(``--decode-tokens``, 512, ``ignore_eos``; output tokens after the first over the time after the first,
measured by the streaming client). Sides (one server each, decode CUDA graphs up to batch 1):
``stock`` (FlashInfer) and ``redknot`` (``--attention-backend redknot --radix-cache-backend
redknot`` and the all-global profile). ``--side`` runs one side into a partial file (a device call
per side, both on one warm machine); once both are in, writes bench/results/all_global.json and
prints the table. ``--cpu-smoke`` checks the procedure with SmolLM2 on this CPU (to /tmp).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from redknot_sglang.testing.bench_sides import (
    SidesFile, bench_profile, bench_setup, device_name, side_flags, sides_result,
)
from redknot_sglang.testing.rag import stream
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
SIDES = ("stock", "redknot")


def measure(url: str, length: int, n: int, vocab: int, decode_tokens: int) -> dict:
    rng = random.Random(f"all-global-{length}")
    prompt = lambda: [rng.randrange(100, vocab - 100) for _ in range(length - 300)]  # noqa: E731
    ttfts = [stream(url, prompt(), {"temperature": 0, "max_new_tokens": 1})[0] for _ in range(n)]
    t0 = time.perf_counter()
    first, last = stream(url, prompt(), {"temperature": 0, "max_new_tokens": decode_tokens, "ignore_eos": True})
    total = time.perf_counter() - t0
    return {"prompt_len": length - 300, "ttft_s": statistics.median(ttfts), "ttfts_s": ttfts,
            "decode_tok_s": (last["meta_info"]["completion_tokens"] - 1) / (total - first)}


def run_side(side: str, args: argparse.Namespace, model: Path, profile: Path, partial: SidesFile) -> None:
    flags = side_flags(side, context_len=max(args.lengths) + args.decode_tokens, cpu_smoke=args.cpu_smoke,
                       mem_fraction_static=args.mem_fraction_static, profile=profile)
    flags += ["--max-total-tokens", "16000"] if args.cpu_smoke else ["--cuda-graph-max-bs", "1"]
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    out = {"device": device_name(), "flags": flags, "decode_tokens": args.decode_tokens, "results": {}}
    with Server(model, flags, log_path=Path(args.log_dir) / f"all_global_{side}.log", timeout_s=900) as server:
        out["startup_s"] = round(server.startup_s, 1)
        for length in args.lengths:
            out["results"][str(length)] = row = measure(server.url, length, args.prompts, vocab, args.decode_tokens)
            partial.save(side, out)
            print(f"[{side} {length}] {row}", flush=True)


def write(sides: dict, results: Path, model: Path) -> None:
    rows = []
    for length, s in sides["stock"]["results"].items():
        r = sides["redknot"]["results"].get(length)
        if r is None:
            continue
        rows.append({"context": int(length), "prompt_len": s["prompt_len"],
                     "stock_ttft_s": round(s["ttft_s"], 4), "redknot_ttft_s": round(r["ttft_s"], 4),
                     "ttft_overhead": round(r["ttft_s"] / s["ttft_s"] - 1, 4),
                     "stock_decode_tok_s": round(s["decode_tok_s"], 1), "redknot_decode_tok_s": round(r["decode_tok_s"], 1),
                     "decode_overhead": round(s["decode_tok_s"] / r["decode_tok_s"] - 1, 4)})
    out = sides_result(sides, model, "TTFT: fresh prompts of context - 300 random tokens, 1 new token (median); "
                       f"decode: one request, {sides['stock']['decode_tokens']} new tokens, client-side rate after "
                       "the first token", rows, target="overhead <= 0.03 (issue 13, item 3)")
    (results / "all_global.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'context':>8} | {'TTFT s: stock':>13} {'redknot':>8} {'overhead':>8} | {'decode tok/s: stock':>19} "
          f"{'redknot':>8} {'overhead':>8}  ({out['device']})")
    for r in rows:
        print(f"{r['context']:>8} | {r['stock_ttft_s']:>13} {r['redknot_ttft_s']:>8} {r['ttft_overhead']:>8.1%} | "
              f"{r['stock_decode_tok_s']:>19} {r['redknot_decode_tok_s']:>8} {r['decode_overhead']:>8.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", nargs="+", choices=SIDES, default=list(SIDES))
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--prompts", type=int, default=5, help="fresh prompts per length for the TTFT median")
    ap.add_argument("--mem-fraction-static", type=float, default=0.35)
    ap.add_argument("--decode-tokens", type=int, default=512)
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--partial", type=Path, help="the sides file (default: _partial_all_global.json next to the results)")
    ap.add_argument("--cpu-smoke", action="store_true", help="SmolLM2 on this CPU, tiny sizes, results to /tmp")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.lengths, args.prompts, args.decode_tokens = [400, 700], 2, 16
    model, results, _ = bench_setup(args.cpu_smoke, RESULTS)
    profile = bench_profile(model, 0, 0, results, global_ratio=1.0)  # every head global
    partial = SidesFile(args.partial or results / "_partial_all_global.json")
    for side in args.side:
        run_side(side, args, model, profile, partial)
    sides = partial.complete(SIDES)
    if sides is not None:
        write(sides, results, model)
        partial.clear()


if __name__ == "__main__":
    main()
