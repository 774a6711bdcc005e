"""How fast the profiler's evaluator runs on this machine (GPU lane, before a search): per bucket,
seconds per question for dense's reference and for a chunk of candidate profiles (window 512,
different global heads), and where the time of one chunk goes (torch profiler, top ops by host and
by device time).

    python scripts/device/profile_speed.py MODEL_DIR [--per-bucket 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from redknot_sglang.fidelity.docqa import BUCKETS, DocQA
from redknot_sglang.fidelity.hf import dense_reference, evaluate
from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.profile.hf_model import ProfiledModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--per-bucket", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ProfiledModel(args.model, device=device)
    fp = fingerprint_of_model_path(args.model)
    cands = [synthetic_profile(fp, global_ratio=0.15, window=512, sink=4, seed=i) for i in range(args.batch)]
    for bucket in BUCKETS:
        qs = DocQA(model.tokenizer).questions("dev", args.per_bucket, buckets=(bucket,))
        t0 = time.monotonic()
        refs = dense_reference(model, qs)
        t1 = time.monotonic()
        got = evaluate(model, refs, cands, batch=args.batch)
        t2 = time.monotonic()
        agree = sum(a.agree for row in got for a in row) / max(1, sum(a.total for row in got for a in row))
        print(f"{bucket}: dense {(t1 - t0) / len(qs):.2f} s/question, {args.batch} candidates "
              f"{(t2 - t1) / len(qs):.2f} s/question (agreement {agree:.3f})", flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        evaluate(model, refs[:1], cands, batch=args.batch)
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=12))
    if device == "cuda":
        print(table.table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
