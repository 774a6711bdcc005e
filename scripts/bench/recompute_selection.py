"""Which tokens should a request recompute over placed documents? The selection methods of
:mod:`redknot_sglang.reuse.selective` (CacheBlend's KV deviation, query-aware attention, boundary
only) at several recompute ratios, measured on the fidelity benchmark's document QA (dev split: this
chooses) against the full prefill of the same model and profile (the baseline, run in the same
process): answer accuracy, teacher-forced top-1 agreement over the full prefill's greedy answer,
and the fraction of prompt tokens recomputed. Documents are captured canonically (after the chat
head all prompts start with) and reused at other offsets and orders; ``--capture in-context`` cuts
each document's KV from the first question of another stream over the same documents that holds
it (as today's serving path captures), for comparison. ``--heads all,global`` also measures
recompute that overwrites only the global heads' placed K/V (local heads keep theirs).

    python scripts/bench/recompute_selection.py [--buckets 2k] [--per-bucket 16] [--profile PATH] \
        [--capture canonical|in-context] [--selections deviation,query] [--heads all,global] [--device cuda]

Writes bench/results/recompute_selection.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from redknot_sglang.fidelity.docqa import DocQA, answer_correct
from redknot_sglang.fidelity.hf import eos_ids, greedy_decode
from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.reuse.selective import Recompute, SelectiveReuse
from redknot_sglang.testing.bench_sides import device_name
from redknot_sglang.testing.models import smollm2_dir

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def modes(ratios: list[float], boundary: int, selections: list[str], heads: list[str]) -> dict[str, Recompute | None]:
    out: dict[str, Recompute | None] = {"full prefill": None, "place only": Recompute("none", 0.0, 0),
                                         f"boundary {boundary}": Recompute("none", 0.0, boundary)}
    for sel in selections:
        for r in ratios:
            for h in heads:
                out[f"{sel} {r:g}" + ("" if h == "all" else f" {h}")] = Recompute(sel, r, boundary, h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--buckets", type=lambda s: s.split(","), default=["2k"])
    ap.add_argument("--per-bucket", type=int, default=16)
    ap.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.1, 0.2])
    ap.add_argument("--boundary", type=int, default=8)
    ap.add_argument("--profile", default=None, help="head profile (default: dense)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--capture", choices=("canonical", "in-context"), default="canonical")
    ap.add_argument("--selections", type=lambda s: s.split(","), default=["deviation", "query"])
    ap.add_argument("--heads", type=lambda s: s.split(","), default=["all"],
                    help="all, global: whose placed K/V recomputed document tokens overwrite (global needs --profile)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "recompute_selection.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pm = ProfiledModel(str(smollm2_dir()), device=args.device)
    profile = HeadProfile.load(args.profile) if args.profile else None
    questions = DocQA(pm.tokenizer).questions("dev", args.per_bucket, buckets=args.buckets)
    head = questions[0].ids[: questions[0].doc_spans[0][0]]
    assert all(q.ids[: len(head)] == head for q in questions), "prompts share the chat head"
    donors = {}
    if args.capture == "in-context":
        for d in DocQA(pm.tokenizer).questions("dev", args.per_bucket, buckets=args.buckets, stream="warmup"):
            for a, b in d.doc_spans:
                donors.setdefault(tuple(d.ids[a:b]), (d.ids, (a, b)))
    reuse = SelectiveReuse(pm, profile, head, donors)
    eos = eos_ids(pm)
    sets = modes(args.ratios, args.boundary, args.selections, args.heads)
    table = {name: {"correct": 0, "agree": 0, "total": 0, "recomputed": 0, "prompt": 0, "seconds": 0.0}
             for name in sets}
    for q in tqdm(questions, desc="questions"):
        ref: list[int] = []
        for name, how in sets.items():
            t0 = time.monotonic()
            cache, logits, n = reuse.prefill(q.ids, q.doc_spans, how, len(q.ids) + args.new_tokens)
            seconds = time.monotonic() - t0
            forced = cache.clone()
            with pm.profile(profile):
                tokens = greedy_decode(pm, cache, [int(logits.argmax())], 0, [[]], args.new_tokens, eos)[0]
                ref = ref or tokens  # the full prefill's answer is the reference
                top1 = [int(logits.argmax())]
                if len(ref) > 1:
                    top1 += pm.step(torch.tensor([ref[:-1]], device=pm.device), forced, len(ref) - 1)[0].argmax(-1).tolist()
            row = table[name]
            row["correct"] += answer_correct(pm.tokenizer.decode(tokens, skip_special_tokens=True), q.answer)
            row["agree"] += sum(int(a == b) for a, b in zip(top1, ref))
            row["total"] += len(ref)
            row["recomputed"] += n
            row["prompt"] += len(q.ids)
            row["seconds"] += seconds
    results = []
    full_acc = table["full prefill"]["correct"] / len(questions)
    for name, row in table.items():
        results.append({"mode": name, "accuracy": round(row["correct"] / len(questions), 4), "full_accuracy": round(full_acc, 4),
                        "top1_agreement": round(row["agree"] / row["total"], 4),
                        "recomputed_fraction": round(row["recomputed"] / row["prompt"], 4),
                        "prefill_seconds": round(row["seconds"] / len(questions), 3), "n_questions": len(questions)})
    out = {"device": device_name() if args.device.startswith("cuda") else "cpu", "model": "SmolLM2-135M-Instruct (HF weights, lean forward)",
           "benchmark": f"docqa dev split, buckets {','.join(args.buckets)}, greedy, {args.new_tokens} new tokens",
           "profile": args.profile or "dense", "boundary": args.boundary, "capture": args.capture,
           "documents_without_donor": sum(1 for k in reuse.documents if k not in donors) if donors else None,
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'mode':>16} {'acc':>6} {'full':>6} {'top1':>7} {'recomp':>7} {'s':>6}")
    for r in results:
        print(f"{r['mode']:>16} {r['accuracy']:>6.3f} {r['full_accuracy']:>6.3f} {r['top1_agreement']:>7.4f} "
              f"{r['recomputed_fraction']:>7.3f} {r['prefill_seconds']:>6.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
