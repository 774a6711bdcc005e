"""``python -m redknot_sglang.profile``: choose the global heads and the window of a model by measured
fidelity at the length it will serve, and write its profile.

    python -m redknot_sglang.profile --model-path M --out M.heads.json \\
        [--target-length 7168] [--min-agreement 0.95] [--max-accuracy-drop 0.02] [--max-global-ratio 0.15] \\
        [--windows 128,256,512,1024,2048] [--sinks 4] [--global-ratios 0.05,0.1,0.15,0.2,0.3,0.4] \\
        [--dev-questions 50] [--work-dir DIR] [--force] [--candidate RANKING/wW/sS/gN]

Dense answers the benchmark's dev split (document QA, 2K/4K/7K-token prompts,
:mod:`redknot_sglang.fidelity.docqa`); heads are scored by the attention they would lose at each
(window, sink) on those prompts; :class:`~redknot_sglang.profile.search.ProfileSearch` measures
candidates and picks the least KV memory at ``--target-length`` that passes in every bucket up to
it. The profile records the length it was gated at, its KV bytes ratio there and the numbers per
bucket; a profile that fails is not written unless ``--force``; ``--candidate`` writes a candidate
read off the picture instead of the search's choice. Next to it: a heatmap
(``.png``), the fidelity-vs-memory picture (``.fidelity.png``) and every measurement
(``.search.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from redknot_sglang.fidelity.docqa import BUCKET_LENGTH, BUCKETS, DocQA
from redknot_sglang.fidelity.hf import dense_reference
from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
from redknot_sglang.profile.plots import save_heatmap, save_tradeoff
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.profile.scores import RANKINGS, window_scores
from redknot_sglang.profile.search import Candidate, Criteria, ProfileSearch, kv_ratio


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-length", type=int, default=max(BUCKET_LENGTH.values()),
                    help="served prompt length the profile must pass at (buckets up to it are gated)")
    ap.add_argument("--min-agreement", type=float, default=0.95, help="teacher-forced top-1 agreement with dense")
    ap.add_argument("--max-accuracy-drop", type=float, default=0.02, help="accuracy below dense's allowed")
    ap.add_argument("--max-global-ratio", type=float, default=0.15, help="largest fraction of global heads")
    ap.add_argument("--windows", type=_ints, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--sinks", type=_ints, default=[4])
    ap.add_argument("--global-ratios", type=_floats, default=[0.05, 0.1, 0.15, 0.2, 0.3, 0.4])
    ap.add_argument("--rankings", type=lambda s: s.split(","), default=list(RANKINGS))
    ap.add_argument("--buckets", type=lambda s: s.split(","), default=list(BUCKETS))
    ap.add_argument("--dev-questions", type=int, default=50, help="per bucket")
    ap.add_argument("--calibration", type=int, default=8, help="dev questions per bucket that score the heads")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--batch", type=int, default=6, help="candidate profiles per forward")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep measurements here and resume from them")
    ap.add_argument("--force", action="store_true", help="write the profile even if it fails")
    ap.add_argument("--candidate", type=Candidate.from_key, default=None,
                    help="write this candidate (RANKING/wW/sS/gN, e.g. read off the picture) instead of the "
                         "search's choice; measured like the others, gated the same way")
    return ap.parse_args(argv)


def _cached(work_dir: Optional[Path], name: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept in ``work_dir`` (a resumed run with the same arguments loads it)."""
    if work_dir is None:
        return compute()
    path = work_dir / f"{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    work_dir.mkdir(parents=True, exist_ok=True)
    value = compute()
    torch.save(value, path)
    return value


SELECTION = {True: "least KV memory passing at the target length",
             False: "none passed: best top-1 agreement at the target length"}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    torch.manual_seed(args.seed)
    fp = fingerprint_of_model_path(args.model_path)
    model = ProfiledModel(args.model_path, device=args.device)
    questions = DocQA(model.tokenizer, seed=args.seed).questions("dev", args.dev_questions, buckets=args.buckets)
    refs = _cached(args.work_dir, "references", lambda: dense_reference(model, questions, args.new_tokens))
    calib = [r for b in args.buckets for r in [r for r in refs if r.question.bucket == b][: args.calibration]]
    shapes = [(w, s) for w in args.windows for s in args.sinks]
    scores = _cached(args.work_dir, "scores", lambda: window_scores(model, calib, shapes))
    search = ProfileSearch(model, fp, refs, scores, batch=args.batch, work_dir=args.work_dir)
    criteria = Criteria(args.target_length, args.min_agreement, args.max_accuracy_drop, args.max_global_ratio)
    chosen, measured, cands = search.run(args.windows, args.sinks, args.global_ratios, criteria, args.rankings)
    if args.candidate is not None:
        chosen = args.candidate
        measured.update(search.measure([chosen]))
        cands = list(dict.fromkeys([*cands, chosen]))
    mine = measured[chosen.key]
    passed = criteria.passes(mine)
    fidelity = {
        "benchmark": "redknot_sglang.fidelity.docqa dev split (HF model, greedy, dense as reference)",
        "gated_length": args.target_length, "kv_ratio": round(kv_ratio(search.profile(chosen), args.target_length), 4),
        "passed": passed, "criteria": dataclasses.asdict(criteria),
        "buckets": {b: dataclasses.asdict(s) for b, s in mine.items()},
        "dev_questions_per_bucket": args.dev_questions, "seconds": round(time.monotonic() - t0, 1), "device": args.device,
    }
    params = {"global_ratio": round(chosen.n_global / search.num_heads, 4), "seed": args.seed,
              "selection": "by hand (--candidate)" if args.candidate else SELECTION[passed],
              "candidates_measured": len(measured)}
    profile = search.profile(chosen, params=params, fidelity=fidelity)
    tb = criteria.target_bucket(mine)
    print(f"profiled {args.model_path} in {fidelity['seconds']} s on {args.device}: {chosen.key} "
          f"({profile.global_fraction:.1%} global), KV ratio {fidelity['kv_ratio']} at {args.target_length} tokens")
    for b, s in mine.items():
        print(f"  {b:>4}: accuracy {s.accuracy:.3f} (dense {s.dense_accuracy:.3f}), top-1 agreement "
              f"{s.top1_agreement:.4f}, cosine {s.cosine}, n {s.n}")
    print(f"gate at {args.target_length} tokens: {'PASS' if passed else 'FAIL'} ({criteria})")
    out = Path(args.out)
    rows = [{"key": c.key, "ranking": c.ranking, "window": c.window, "sink": c.sink, "global_ratio": round(c.n_global / search.num_heads, 4),
             "kv_ratio": round(kv_ratio(search.profile(c), args.target_length), 4),
             "buckets": {b: dataclasses.asdict(s) for b, s in measured[c.key].items()}}
            for c in cands]
    search_json = out.with_suffix(".search.json")
    search_json.write_text(json.dumps({"target_length": args.target_length, "target_bucket": tb,
                                       "chosen": chosen.key, "ranking": chosen.ranking, "measured": rows}, indent=1) + "\n")
    save_tradeoff(rows, chosen.key, tb, criteria, out.with_suffix(".fidelity.png"))
    if not passed and not args.force:
        print("profile fails the fidelity gate: not written (use --force to write it anyway)", file=sys.stderr)
        return 2
    profile.save(out)
    print(f"wrote {out}, {save_heatmap(profile, out.with_suffix('.png'))}, {out.with_suffix('.fidelity.png')} "
          f"and {search_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
