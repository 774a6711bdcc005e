"""Capacity and decode speed of long requests: stock SGLang vs RedKnot, same model, same flags.

For each side a server runs a Llama-3.1-8B-shaped model (dummy weights) at the same
``--mem-fraction-static``; RedKnot adds ``--attention-backend redknot --radix-cache-backend
redknot`` and a profile with 15% global heads (window 1024, sink 64; stock uses FlashInfer).
Requests carry distinct random prompts of ``context - max_new`` tokens and decode up to ``max_new``
tokens (``ignore_eos``), so each one holds at most ``context`` tokens of KV and none finishes while
the waves are measured (a finished request would look like lost capacity). ``max_new`` is small
next to the context (2048 of 32768), so every request admitted already holds most of its context:
the count is of such requests, not of shorter ones a scheduler admits on the way (with 8192 new
tokens, stock admitted 10 requests at 24.6K tokens where 8 of 32K fit).

* capacity: requests are sent in waves; the last wave asks for more than fits, and
  ``max_concurrent`` is the largest ``#running-req`` the scheduler reports once admission stalls.
* decode: after each wave (1, 8, 32 requests, then the capacity wave) is fully admitted and no
  prefill runs, the decode throughput SGLang logs (``gen throughput (token/s)``) is averaged.

Writes bench/results/capacity.json and bench/results/decode.json (``--side`` runs one side into a
partial file, which keeps every context measured so far; ``--merge`` writes the JSON from it).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import requests

from redknot_sglang.integration.head_split_cache import private_windows
from redknot_sglang.integration.hooks.swa_admission import eviction_interval
from redknot_sglang.mem.sizing import auto_window_ratio
from redknot_sglang.testing.bench_sides import SidesFile, bench_profile, device_name, side_flags
from redknot_sglang.testing.models import llama8b_dir, smollm2_dir
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
DECODE_RE = re.compile(r"Decode batch.*?#running-req: (\d+).*?gen throughput \(token/s\): ([\d.]+), #queue-req: (\d+)")


class Load:
    """Requests sent from threads; each thread holds one streaming-free /generate call."""

    def __init__(self, server: Server, prompt_len: int, max_new: int, vocab: int):
        self.server, self.prompt_len, self.max_new, self.vocab = server, prompt_len, max_new, vocab
        self.sent = 0
        self.threads: list[threading.Thread] = []

    def send(self, n: int) -> None:
        import random

        for _ in range(n):
            rng = random.Random(self.sent)
            ids = [rng.randrange(1000, self.vocab) for _ in range(self.prompt_len)]
            payload = {"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": self.max_new,
                                                             "ignore_eos": True}}
            t = threading.Thread(target=self._post, args=(payload,), daemon=True)
            t.start()
            self.threads.append(t)
            self.sent += 1

    def _post(self, payload: dict) -> None:
        try:
            requests.post(self.server.url + "/generate", json=payload, timeout=3600)
        except requests.RequestException:
            pass

    def abort_all(self) -> None:
        requests.post(self.server.url + "/abort_request", json={"rid": "", "abort_all": True}, timeout=60)
        for t in self.threads:
            t.join(timeout=60)


def decode_lines(log: str, since: int) -> list[tuple[int, float, int]]:
    return [(int(r), float(tp), int(q)) for r, tp, q in DECODE_RE.findall(log[since:])]


def wait_admitted(server: Server, target: int, since: int, stall_s: float, timeout_s: float) -> tuple[int, int]:
    """Wait until ``target`` requests run, or admission stalls (no prefill for ``stall_s``).
    Returns (largest ``#running-req`` seen, log offset of the last prefill)."""
    t0 = last_change = time.monotonic()
    best, last_prefill = 0, since
    while time.monotonic() - t0 < timeout_s:
        log = server.log()
        running = max((r for r, _, _ in decode_lines(log, since)), default=0)
        prefill = log.rfind("Prefill batch")
        if running > best or prefill > last_prefill:
            best, last_prefill, last_change = max(best, running), max(last_prefill, prefill), time.monotonic()
        if best >= target or (best and time.monotonic() - last_change > stall_s):
            return best, last_prefill
        time.sleep(1.0)
    return best, last_prefill


def rate_at(log: str, since: int, running: int, lines: int = 2) -> float | None:
    """Average decode throughput of the first ``lines`` log lines after ``since`` at ``running``
    requests whose interval ran no prefill (a line right after a prefill batch is skipped: its
    interval spans it). A wave at capacity keeps requests queued, which get admitted between decode
    lines whenever a request of an earlier wave finishes, so lines between prefills count too."""
    seen: list[float] = []
    for segment in log[since:].split("Prefill batch"):
        seen += [tp for r, tp, _ in decode_lines(segment, 0)[1:] if r == running]
    return sum(seen[:lines]) / lines if len(seen) >= lines else None


def steady_throughput(server: Server, since: int, running: int, lines: int = 2, timeout_s: float = 60) -> float | None:
    """:func:`rate_at` on the server's log, waiting up to ``timeout_s`` for the lines; None when the
    batch never decodes that long undisturbed (e.g. retractions at capacity)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        rate = rate_at(server.log(), since, running, lines)
        if rate is not None:
            return rate
        time.sleep(0.5)
    return None


PARTIAL = SidesFile(RESULTS / "_partial_capacity_decode.json")


def run_side(side: str, args: argparse.Namespace, model: Path, profile_path: Path) -> dict:
    flags = side_flags(side, context_len=max(args.contexts), cpu_smoke=args.cpu_smoke,
                       mem_fraction_static=args.mem_fraction_static, profile=profile_path)
    flags += ["--decode-log-interval", "20"]
    flags += ["--max-total-tokens", "6000"] if args.cpu_smoke else ["--cuda-graph-max-bs", str(args.cuda_graph_max_bs)]
    if side == "redknot":
        flags += ["--redknot-window-pool-ratio", f"{auto_window_ratio(args.window, 1, min(args.contexts), eviction_interval(), private_windows(1)):.5f}"]
    # a run adds its contexts to those an earlier run of this side measured (one context per call)
    out: dict = {"contexts": dict(PARTIAL.side(side).get("contexts", {}))}
    server = Server(model, flags, log_path=Path(args.log_dir) / f"{side}.log", timeout_s=900)
    with server:
        startup_s = round(server.startup_s, 1)
        info = requests.get(server.url + "/get_server_info", timeout=30).json()
        max_total = info.get("max_total_num_tokens") or info["internal_states"][0].get("max_total_num_tokens")
        print(f"[{side}] up in {startup_s:.0f} s, max_total_num_tokens={max_total}", flush=True)
        vocab = json.loads((model / "config.json").read_text())["vocab_size"]
        for ctx in args.contexts:
            load = Load(server, ctx - args.max_new, args.max_new, vocab)
            waves = list(args.decode_batches) if ctx == min(args.contexts) else []
            res: dict = {"decode_tok_s": {}, "device": device_name(), "flags": flags, "startup_s": startup_s,
                         "max_total_num_tokens": max_total}
            since = len(server.log())
            for target in waves:
                load.send(target - load.sent)
                running, at = wait_admitted(server, target, since, stall_s=args.stall_s, timeout_s=args.wave_timeout_s)
                if running < target:  # this side cannot hold the batch: that is its capacity
                    res["max_concurrent"] = running
                    res["decode_tok_s"][str(running)] = steady_throughput(server, at, running)
                    break
                res["decode_tok_s"][str(target)] = steady_throughput(server, at, target)
                out["contexts"][str(ctx)] = res
                PARTIAL.save(side, out)  # a run stopped by its time limit keeps the waves it measured
                print(f"[{side}] ctx {ctx}: batch {target} -> {res['decode_tok_s'][str(target)]} tok/s", flush=True)
            if "max_concurrent" not in res:
                target = int(1.15 * max_total / ctx) + 2  # more than should fit
                wave_since = len(server.log())  # the largest batch decodes before admission is seen to stall
                while True:
                    load.send(max(target, load.sent + 1) - load.sent)
                    running, at = wait_admitted(server, 10**6, since, stall_s=args.stall_s, timeout_s=args.wave_timeout_s)
                    if running < load.sent:  # admission stalled with requests waiting: full
                        break
                    target = int(load.sent * 1.25) + 2  # everything fit: ask for more
                res["max_concurrent"] = running
                if side == "redknot":  # pools at capacity, private windows made / refused
                    res["pool_stats"] = server.redknot_stats()
                if ctx == min(args.contexts):
                    res["decode_tok_s"][str(running)] = steady_throughput(server, wave_since, running)
            res["sent"] = load.sent
            print(f"[{side}] ctx {ctx}: max_concurrent {res['max_concurrent']} (sent {load.sent})", flush=True)
            out["contexts"][str(ctx)] = res
            PARTIAL.save(side, out)
            load.abort_all()
            time.sleep(3)
            requests.post(server.url + "/flush_cache", timeout=60)
    return out


def _devices(*entries: dict) -> list[str]:
    """The devices that measured ``entries`` (an entry written by hand for a value that was not
    measured has none)."""
    return sorted({e["device"] for e in entries if e.get("device")})


def _write(path: Path, out: dict) -> None:
    """Write a result, keeping the note written into the file it replaces (provenance by hand)."""
    if path.exists() and "note" in (old := json.loads(path.read_text())):
        out["note"] = old["note"]
    path.write_text(json.dumps(out, indent=2) + "\n")


def write_results(sides: dict, args: argparse.Namespace) -> None:
    """capacity.json and decode.json from every context both sides measured; the device is the
    one that measured them (not the machine that merges). An entry may say how it was obtained
    (``measured``: e.g. an earlier session's call); its row shows it as ``<side>_measured``."""
    from redknot_sglang.heads.profile import HeadProfile

    profile = HeadProfile.load(args.profile_path)
    cap_rows, dec_rows = [], []
    measured = sorted(int(c) for c in sides["stock"]["contexts"]
                      if all("max_concurrent" in sides[x]["contexts"].get(c, {}) for x in ("stock", "redknot")))
    entries = [sides[x]["contexts"][str(c)] for c in measured for x in ("stock", "redknot")]
    device = " + ".join(_devices(*entries))
    for ctx in measured:
        s, r = sides["stock"]["contexts"][str(ctx)], sides["redknot"]["contexts"][str(ctx)]
        factor, ideal = r["max_concurrent"] / max(1, s["max_concurrent"]), profile.ideal_factor(ctx)
        cap_rows.append({
            "context_len": ctx,
            "stock_max_concurrent": s["max_concurrent"],
            "redknot_max_concurrent": r["max_concurrent"],
            "ideal_factor": round(ideal, 3),
            "stock_max_total_tokens": s["max_total_num_tokens"],
            "redknot_max_total_tokens": r["max_total_num_tokens"],
            "measured_factor": round(factor, 3),
            "fraction_of_ideal": round(factor / ideal, 3),
            "stock_decode_tok_s": s["decode_tok_s"],
            "redknot_decode_tok_s": r["decode_tok_s"],
            "redknot_pool_stats": r.get("pool_stats"),
            "devices": _devices(s, r),
            **{f"{x}_measured": e["measured"] for x, e in (("stock", s), ("redknot", r)) if "measured" in e},
        })
    ctx = min(c for c in measured if sides["stock"]["contexts"][str(c)]["decode_tok_s"])
    s_dec = sides["stock"]["contexts"][str(ctx)]["decode_tok_s"]
    r_dec = sides["redknot"]["contexts"][str(ctx)]["decode_tok_s"]
    for b in sorted({int(b) for b in (*s_dec, *r_dec)}):
        dec_rows.append({"batch": b, "stock_tok_s": s_dec.get(str(b)), "redknot_tok_s": r_dec.get(str(b))})
    common = {
        "device": device,
        "model": "SmolLM2-135M-Instruct (CPU smoke run)" if args.cpu_smoke else "Llama-3.1-8B shape, --load-format dummy",
        "mem_fraction_static": args.mem_fraction_static,
        "profile": {"global_fraction": round(profile.global_fraction, 4), "window": args.window, "sink": args.sink},
        "request": f"prompt = context - {args.max_new} random tokens, {args.max_new} new tokens, ignore_eos",
        "flags": {side: {c: res["flags"] for c, res in sides[side]["contexts"].items()} for side in sides},
        "startup_s": {side: {c: res["startup_s"] for c, res in sides[side]["contexts"].items()} for side in sides},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write(RESULTS / "capacity.json", {**common, "results": cap_rows})
    _write(RESULTS / "decode.json", {**common, "context_len": ctx, "results": dec_rows})
    print(f"\ncapacity ({device}, mem fraction {args.mem_fraction_static})")
    print(f"{'context':>8} {'stock':>6} {'redknot':>8} {'factor':>7} {'ideal':>6} {'stock tok':>10} {'redknot tok':>12}")
    for row in cap_rows:
        print(f"{row['context_len']:>8} {row['stock_max_concurrent']:>6} {row['redknot_max_concurrent']:>8} "
              f"{row['measured_factor']:>7.2f} {row['ideal_factor']:>6.2f} {row['stock_max_total_tokens']:>10} "
              f"{row['redknot_max_total_tokens']:>12}")
    print(f"\ndecode at {ctx} tokens (tok/s)\n{'batch':>6} {'stock':>10} {'redknot':>10}")
    for row in dec_rows:
        fmt = lambda x: f"{x:10.1f}" if x is not None else f"{'-':>10}"
        print(f"{row['batch']:>6} {fmt(row['stock_tok_s'])} {fmt(row['redknot_tok_s'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("both", "stock", "redknot"), default="both")
    ap.add_argument("--merge", action="store_true", help="combine partial results into the JSON files")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32768, 65536])
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--mem-fraction-static", type=float, default=0.6)
    ap.add_argument("--max-new", type=int, default=2048,
                    help="tokens each request decodes: enough that none finishes during the measurement")
    ap.add_argument("--cuda-graph-max-bs", type=int, default=64)
    ap.add_argument("--stall-s", type=float, default=15.0)
    ap.add_argument("--wave-timeout-s", type=float, default=240.0)
    ap.add_argument("--log-dir", default="/tmp")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--profile-path", default=None, help="default: a seeded 15%% synthetic profile")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the procedure on CPU with SmolLM2 and tiny sizes (writes to /tmp)")
    args = ap.parse_args()
    # a time limit's SIGTERM unwinds the `with Server` blocks, so no server outlives the run
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    if args.cpu_smoke:
        global RESULTS, PARTIAL
        RESULTS = Path("/tmp/redknot-bench-smoke")
        PARTIAL = SidesFile(RESULTS / "_partial_capacity_decode.json")
    model = smollm2_dir() if args.cpu_smoke else llama8b_dir()
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.profile_path = args.profile_path or str(bench_profile(model, args.window, args.sink, RESULTS))
    if not args.merge:
        for side in (("stock", "redknot") if args.side == "both" else (args.side,)):
            run_side(side, args, model, Path(args.profile_path))
    sides = PARTIAL.complete()
    if sides is not None:  # the partial file stays: the next call may add a context to either side
        write_results(sides, args)


if __name__ == "__main__":
    main()
