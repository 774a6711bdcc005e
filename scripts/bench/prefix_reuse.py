"""Long prompts reused from the radix cache (issue 13, item 0): each prompt sent once, then again,
then extended by a turn; cached tokens and time to first token of the second and third sending, per
prompt length, on stock SGLang and on RedKnot (local heads keep only sink + window) with its default
chunk window checkpoints and without them (``--no-redknot-chunk-window-checkpoints``).

Per length ``L`` (default 8K, 32K, 64K): ``n`` prompts of ``L - 300`` random tokens (seeded), all
sent once with 4 new tokens, then each again with 1 new token (timed), then each extended by its
4 answer tokens and a 200-token turn (timed). Sides (one server each, context 64K + 64):
``stock`` (FlashInfer + radix cache), ``redknot`` and ``redknot-no-checkpoints`` (the 15% profile,
window 1024, sink 64); decode CUDA graphs up to batch 4 on both. One side per device call is enough (a partial file carries the others);
once stock and redknot are in, writes bench/results/prefix_reuse.json and prints the table.
``--cpu-smoke`` checks the procedure with SmolLM2 on this CPU at tiny sizes (to /tmp). ``--trace DIR``
sends each length's first prompt a third time under SGLang's torch profiler (``/start_profile``,
CPU and GPU activities; Python stacks with ``--trace-stacks``, which inflate host times) and leaves
the scheduler's trace in ``DIR/SIDE-LENGTH`` (``scripts/device/trace_summary.py`` summarizes it).

``--paired`` serves stock and redknot side by side and alternates them request by request (SGLang
sizes a server's KV from the memory free when it starts, so the later server's fraction is scaled to
get the same budget as it would alone: with the same fraction of less free memory, redknot's
window pool held one 8K chunk and a window, and four 32K prompts cycling through it never hit):
the first sendings, then ``--rounds`` rounds of the second sendings (in ``--side`` order in even
rounds, reversed in odd ones), then the turns. A second sending is host-bound (a few ms of GPU work
in ~40 ms) and its time moved by 10-30 ms between machines and calls, more than the gap between the
two servers; side by side both see the same machine at the same moments, and the row adds the
median of the paired ratios (redknot / stock, same prompt, same round).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import requests

from redknot_sglang.testing.bench_sides import SidesFile, bench_setup, device_name, side_flags, sides_result
from redknot_sglang.testing.rag import stream
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
SIDES = {"stock": (), "redknot": (), "redknot-no-checkpoints": ("--no-redknot-chunk-window-checkpoints",)}
TURN = 200


def send(url: str, ids: list[int], max_new: int) -> tuple[float, int, list[int]]:
    """(seconds to the first streamed token, cached prompt tokens, output ids) of one request."""
    first, last = stream(url, ids, {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True})
    return first, int(last["meta_info"].get("cached_tokens", 0)), last["output_ids"]


def traced(url: str, ids: list[int], out: Path, stacks: bool) -> None:
    """One more sending of ``ids`` (1 new token) under SGLang's profiler (``stacks``: with Python
stacks, where host time goes; without, the scheduler's steps at closer to their real length:
``scripts/device/trace_summary.py``); the trace lands in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    requests.post(f"{url}/start_profile", json={"output_dir": str(out), "activities": ["CPU", "GPU"],
                                                "record_shapes": stacks, "with_stack": stacks},
                  timeout=60).raise_for_status()
    send(url, ids, 1)
    requests.post(f"{url}/stop_profile", timeout=600).raise_for_status()
    for _ in range(120):  # the scheduler writes the trace after answering
        if any(out.glob("*.trace.json*")):
            return
        time.sleep(1)


def prompts(length: int, n: int, vocab: int) -> list[list[int]]:
    rng = random.Random(f"prefix-{length}")
    return [[rng.randrange(100, vocab - 100) for _ in range(length - 300)] for _ in range(n)]


def measure(urls: dict[str, str], length: int, n: int, rounds: int, vocab: int) -> dict[str, dict]:
    """One length on every side in ``urls`` (one server each), request by request in turn: each
    prompt sent once (4 new tokens), ``rounds`` times again (1 new token; the side order flips each
    round), then extended by its answer and a turn."""
    ps = prompts(length, n, vocab)
    sides = list(urls)
    first = {s: [] for s in sides}
    again = {s: [] for s in sides}
    turn = {s: [] for s in sides}
    for p in ps:
        for s in sides:
            first[s].append(send(urls[s], p, 4))
    for r in range(rounds):
        for p in ps:
            for s in (sides if r % 2 == 0 else sides[::-1]):
                again[s].append(send(urls[s], p, 1))
    for i, p in enumerate(ps):
        for s in sides:
            turn[s].append(send(urls[s], p + first[s][i][2] + [150 + j for j in range(TURN)], 1))
    return {s: {"prompts": n, "rounds": rounds, "prompt_len": length - 300,
                "first_ttft_s": statistics.median(t for t, _, _ in first[s]),
                "again_ttft_s": statistics.median(t for t, _, _ in again[s]),
                "again_ttft_all_s": [round(t, 5) for t, _, _ in again[s]],
                "again_cached_tokens": [c for _, c, _ in again[s]],
                "turn_ttft_s": statistics.median(t for t, _, _ in turn[s]),
                "turn_cached_tokens": [c for _, c, _ in turn[s]]} for s in sides}


def gpu_total_over_free() -> float:
    """The GPU's memory over what is free now (``nvidia-smi``: no CUDA context in this process)."""
    out = subprocess.check_output(["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits"],
                                  text=True)
    free, total = (float(x) for x in out.splitlines()[0].split(","))
    return total / free


def run_sides(sides: list[str], args: argparse.Namespace, model: Path, profile: Path, partial: SidesFile) -> None:
    """``sides`` served together (``--paired``: both at once) or one after the other; each length
    measured on every side of the group, then saved to ``partial`` side by side."""
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    run_id = f"{time.time():.0f}"  # the sides timed together carry the same id
    with contextlib.ExitStack() as stack:
        urls, outs = {}, {}
        for i, side in enumerate(sides):
            fraction = args.mem_fraction_static * (1 if i == 0 or args.cpu_smoke else gpu_total_over_free())
            flags = side_flags("stock" if side == "stock" else "redknot", context_len=max(args.lengths),
                               cpu_smoke=args.cpu_smoke, mem_fraction_static=round(fraction, 4), profile=profile)
            small = ["--chunked-prefill-size", "512", "--max-total-tokens", "16000"]
            # decode keeps its CUDA graphs (few batch sizes: quick capture): SGLang's overlap scheduler
            # launches the next decode step before it hands out a prefill's first token, so an eager
            # decode step would be counted in every time to first token
            flags += [*SIDES[side], *(small if args.cpu_smoke else ["--cuda-graph-max-bs", "4"])]
            server = stack.enter_context(Server(model, flags, log_path=Path(args.log_dir) / f"prefix_{side}.log",
                                                timeout_s=900))
            urls[side] = server.url
            outs[side] = {"device": device_name(), "flags": flags, "results": {}, "started_after": sides[:i],
                          "paired": run_id if len(sides) > 1 else None}
        for length, n in zip(args.lengths, args.prompts):
            rows = measure(urls, length, n, args.rounds, vocab)
            for side, row in rows.items():
                if args.trace:
                    traced(urls[side], prompts(length, 1, vocab)[0], args.trace / f"{side}-{length}", args.trace_stacks)
                outs[side]["results"][str(length)] = row
                partial.save(side, outs[side])
                print(f"[{side} {length}] {({k: v for k, v in row.items() if k != 'again_ttft_all_s'})}", flush=True)


def paired_ratio(sides: dict, length: str) -> float | None:
    """Median of redknot / stock over second sendings timed side by side (same prompt, same round)."""
    s, r = (sides.get(x, {}) for x in ("stock", "redknot"))
    if not s.get("paired") or s.get("paired") != r.get("paired"):
        return None
    ts, tr = (x["results"].get(length, {}).get("again_ttft_all_s") for x in (s, r))
    return round(statistics.median(b / a for a, b in zip(ts, tr)), 3) if ts and tr and len(ts) == len(tr) else None


def write(sides: dict, results: Path, model: Path) -> None:
    rows = []
    for length in sides["stock"]["results"]:
        row: dict = {"prompt_len": sides["stock"]["results"][length]["prompt_len"]}
        for side in SIDES:
            r = sides.get(side, {}).get("results", {}).get(length)
            key = side.replace("-", "_")
            row[f"{key}_cached_tokens"] = r and min(r["again_cached_tokens"])
            row[f"{key}_ttft_s"] = r and round(r["again_ttft_s"], 4)
            row[f"{key}_turn_cached_tokens"] = r and min(r["turn_cached_tokens"])
            row[f"{key}_turn_ttft_s"] = r and round(r["turn_ttft_s"], 4)
            row[f"{key}_first_ttft_s"] = r and round(r["first_ttft_s"], 4)
        row["redknot_over_stock_ttft_paired"] = paired_ratio(sides, length)
        rows.append(row)
    out = sides_result(sides, model, "prompt sent once (4 new tokens), again (1 new token: the row's TTFT and cached "
                       f"tokens, the fewest over the prompts), then extended by its answer and a {TURN}-token turn", rows)
    (results / "prefix_reuse.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'prompt':>7} | {'cached: stock':>13} {'redknot':>8} {'no ckpt':>8} | {'TTFT s: stock':>13} {'redknot':>8} "
          f"{'no ckpt':>8} {'paired':>7} | {'turn cached: stock':>18} {'redknot':>8} {'no ckpt':>8}  ({out['device']})")
    for r in rows:
        print(f"{r['prompt_len']:>7} | {r['stock_cached_tokens']!s:>13} {r['redknot_cached_tokens']!s:>8} "
              f"{r['redknot_no_checkpoints_cached_tokens']!s:>8} | {r['stock_ttft_s']!s:>13} {r['redknot_ttft_s']!s:>8} "
              f"{r['redknot_no_checkpoints_ttft_s']!s:>8} {r['redknot_over_stock_ttft_paired']!s:>7} | {r['stock_turn_cached_tokens']!s:>18} "
              f"{r['redknot_turn_cached_tokens']!s:>8} {r['redknot_no_checkpoints_turn_cached_tokens']!s:>8}")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, not {text!r}")
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", nargs="+", choices=(*SIDES, "none"), default=list(SIDES))
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 65536])
    ap.add_argument("--prompts", type=int, nargs="+", default=[8, 8, 4], help="prompts per length")
    ap.add_argument("--rounds", type=positive_int, default=1, help="second sendings of each prompt")
    ap.add_argument("--paired", action="store_true", help="the sides' servers up together, requests alternating")
    ap.add_argument("--mem-fraction-static", type=float, default=0.35)
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--partial", type=Path, help="the sides file (default: _partial_prefix_reuse.json next to the results)")
    ap.add_argument("--trace", type=Path, help="a profiler trace of one more second sending per side and length here")
    ap.add_argument("--trace-stacks", action="store_true", help="the traces with Python stacks")
    ap.add_argument("--cpu-smoke", action="store_true", help="SmolLM2 on this CPU, tiny sizes, results to /tmp")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.lengths, args.prompts = [1600, 2600], [2, 2]
    model, results, profile = bench_setup(args.cpu_smoke, RESULTS)
    partial = SidesFile(args.partial or results / "_partial_prefix_reuse.json")
    sides = [s for s in args.side if s != "none"]
    if args.paired and len(sides) != 2:
        ap.error("--paired times two sides together (e.g. --side stock redknot)")
    for group in ([sides] if args.paired else [[s] for s in sides]):
        if group:
            run_sides(group, args, model, profile, partial)
    sides = partial.complete(("stock", "redknot"))  # the no-checkpoints side is optional
    if sides is not None:
        write(sides, results, model)
        partial.clear()


if __name__ == "__main__":
    main()
