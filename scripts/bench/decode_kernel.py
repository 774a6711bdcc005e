"""Bandwidth of the SegPaged decode kernel on the bytes it must read, against the device's copy
bandwidth measured in the same run.

Local heads of a Llama-3.1-8B-like layer (7 local KV heads, GQA 4, head_dim 128, bf16), window
1024 + sink 64, every request 32K tokens long (only the sink and the last window + 128 are held,
window slots scattered). Bytes that must be read = K and V of each visible key once per KV head.
Writes bench/results/decode_kernel.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from triton.testing import do_bench

from redknot_sglang.kernels.segpaged import segpaged_decode
from redknot_sglang.testing.segpaged_case import make_bench_case
from redknot_sglang.testing.timing import graph_ms

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def copy_gbps(nbytes: int = 2 << 30) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * nbytes / ms / 1e6  # read + write


def kernel_gbps(batch: int, seq_len: int = 32768, tuning: dict | None = None) -> dict:
    case = make_bench_case(batch, seq_len, 1024, 64, heads=7, group=4, head_dim=128)
    out = torch.empty_like(case.q)
    max_keys = case.max_keys  # a host int, as the server passes it (no sync inside the graph)
    run = lambda: segpaged_decode(case.q, out, case.k_win, case.v_win, case.k_sink, case.v_sink,
                                  case.req_to_token, case.full_to_swa, case.rows, case.seq_lens,
                                  case.window, case.sink, case.scale, max_keys, tuning=tuning)
    ms = graph_ms(run)
    nbytes = case.bytes_read()
    return {"batch": batch, "seq_len": seq_len, "bytes": nbytes, "ms": round(ms, 4), "gbps": round(nbytes / ms / 1e6, 1)}


def sweep(batches=(64, 256)) -> list[dict]:
    """Tuning candidates, timed at a mid and a large batch."""
    rows = []
    for block_n in (32, 64, 128):
        for num_warps in (4, 8):
            for num_stages in (2, 3, 4):
                for pps in (4, 16):
                    t = dict(block_n=block_n, num_warps=num_warps, num_stages=num_stages, programs_per_sm=pps)
                    try:
                        res = [kernel_gbps(b, tuning=t)["gbps"] for b in batches]
                    except Exception as e:  # a config the compiler rejects (e.g. shared memory)
                        print("skip", t, type(e).__name__, str(e)[:200])
                        continue
                    rows.append({**t, **{f"gbps_b{b}": g for b, g in zip(batches, res)}})
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    device = torch.cuda.get_device_name()
    import sys

    copy = copy_gbps()
    tuning = None
    if "--sweep" in sys.argv:
        cands = sweep()
        best_t = max(cands, key=lambda r: r["gbps_b64"] + r["gbps_b256"])
        tuning = {k: best_t[k] for k in ("block_n", "num_warps", "num_stages", "programs_per_sm")}
        print("best tuning", best_t)
    rows = [kernel_gbps(b, tuning=tuning) for b in (1, 8, 32, 64, 128, 256)]
    best = max(rows, key=lambda r: r["gbps"])
    result = {
        "device": device,
        "achieved_gbps": best["gbps"],
        "copy_gbps": round(copy, 1),
        "fraction": round(best["gbps"] / copy, 3),
        "config": "7 local KV heads x GQA 4, head_dim 128, bf16, window 1024, sink 64, 32K-token requests",
        "timing": "median of CUDA-graph replays (triton.testing.do_bench)",
        "tuning": tuning or "DECODE_TUNING defaults",
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "decode_kernel.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"SegPaged decode kernel on {device}; copy bandwidth {copy:.0f} GB/s (read + write)")
    print(f"{'batch':>6} {'MB read':>9} {'ms':>8} {'GB/s':>8} {'fraction':>9}")
    for r in rows:
        print(f"{r['batch']:>6} {r['bytes'] / 1e6:>9.1f} {r['ms']:>8.4f} {r['gbps']:>8.1f} {r['gbps'] / copy:>9.3f}")


if __name__ == "__main__":
    main()
