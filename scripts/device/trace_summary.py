"""Where the time of one traced request goes: a summary of a torch-profiler Chrome trace (what
SGLang's ``/start_profile`` writes, e.g. ``prefix_reuse.py --trace DIR``), printed as text.

    python scripts/device/trace_summary.py TRACE.json[.gz] [--top N]

Prints: the traced span and the GPU's busy time in it; the scheduler's steps (SGLang's
``scheduler.*`` annotations) in order, with the GPU's busy time inside each; kernels by total time;
CUDA runtime calls by total time; every call that waits for the GPU (synchronize, device-to-host
copies) over 50 us with the Python frames around it; Python functions by self time (traces taken
with stacks); the GPU's idle gaps over 1 ms with the innermost Python frame running on the CPU at their start.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
from collections import defaultdict
from pathlib import Path

WAITS = ("Synchronize", "cudaMemcpy", "cudaStreamWaitEvent")


def load(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return [e for e in data.get("traceEvents", data) if e.get("ph") == "X" and "dur" in e]


def busy(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def self_times(events: list[dict]) -> dict[str, list[float]]:
    """Per Python function name: [self us, calls], from the frames' nesting on each thread."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_tid: dict = defaultdict(list)
    for e in events:
        by_tid[(e["pid"], e["tid"])].append(e)
    for evs in by_tid.values():
        stack: list[dict] = []
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            if stack:
                out[stack[-1]["name"]][0] -= e["dur"]
            out[e["name"]][0] += e["dur"]
            out[e["name"]][1] += 1
            stack.append(e)
    return out


def frames_at(py: list[dict], starts: list[float], tid_key, ts: float, depth: int = 8) -> list[str]:
    """Names of the Python frames on thread ``tid_key`` that contain ``ts``, outermost first."""
    i = bisect.bisect_right(starts, ts)
    inside = [e for e in py[max(0, i - 4000):i] if (e["pid"], e["tid"]) == tid_key and e["ts"] + e["dur"] >= ts]
    inside.sort(key=lambda e: e["ts"])
    return [e["name"].split("(")[0][-60:] for e in inside][-depth:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    ev = load(args.trace)
    kernels = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    runtime = [e for e in ev if e.get("cat") == "cuda_runtime"]
    py = sorted((e for e in ev if e.get("cat") == "python_function"), key=lambda e: e["ts"])
    starts = [e["ts"] for e in py]
    t0, t1 = min(e["ts"] for e in ev), max(e["ts"] + e["dur"] for e in ev)
    gpu_busy = busy([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    print(f"trace {args.trace.name}: span {(t1 - t0) / 1e3:.2f} ms, GPU busy {gpu_busy / 1e3:.2f} ms, "
          f"{len(kernels)} GPU ops, {len(runtime)} runtime calls, {len(py)} Python frames")

    print("\nscheduler steps over 0.15 ms (start, length, GPU busy inside)")
    steps = (e for e in ev if e.get("cat") == "user_annotation" and e["name"].startswith("scheduler.") and e["dur"] > 150)
    for e in sorted(steps, key=lambda e: e["ts"]):
        a, b = e["ts"], e["ts"] + e["dur"]
        inside = busy([(max(a, k["ts"]), min(b, k["ts"] + k["dur"])) for k in kernels
                       if k["ts"] < b and k["ts"] + k["dur"] > a])
        print(f"  +{(a - t0) / 1e3:8.2f} ms {e['dur'] / 1e3:7.2f} ms  GPU {inside / 1e3:6.2f} ms  {e['name']}")

    def table(title: str, rows: dict[str, list[float]], unit: float = 1e3) -> None:
        print(f"\n{title}")
        for name, (t, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"  {t / unit:9.3f} ms {int(n):6d}x  {name[:110]}")

    by: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in kernels:
        by[e["name"]][0] += e["dur"]
        by[e["name"]][1] += 1
    table("GPU ops by total time", by)
    by = defaultdict(lambda: [0.0, 0])
    for e in runtime:
        by[e["name"]][0] += e["dur"]
        by[e["name"]][1] += 1
    table("CUDA runtime calls by total time", by)
    print("\ncalls that wait for the GPU (> 50 us), with their Python frames")
    for e in sorted(runtime, key=lambda e: e["ts"]):
        if e["dur"] > 50 and any(w in e["name"] for w in WAITS):
            frames = " > ".join(frames_at(py, starts, (e["pid"], e["tid"]), e["ts"]))
            print(f"  +{(e['ts'] - t0) / 1e3:8.2f} ms {e['dur'] / 1e3:7.3f} ms {e['name']}: {frames}")
    if py:
        table("Python functions by self time", self_times(py))
    print("\nGPU idle gaps > 1 ms (the CPU's innermost Python frames at their start)")
    end = t0
    for e in sorted(kernels, key=lambda e: e["ts"]):
        if e["ts"] - end > 1e3:
            at = sorted((f for f in py if f["ts"] <= end <= f["ts"] + f["dur"]), key=lambda f: f["ts"])
            frames = " > ".join(f["name"].split("(")[0][-50:] for f in at[-4:])
            print(f"  +{(end - t0) / 1e3:8.2f} ms gap {(e['ts'] - end) / 1e3:7.2f} ms: {frames}")
        end = max(end, e["ts"] + e["dur"])


if __name__ == "__main__":
    main()
