"""``python -m redknot_sglang.profile``: find the global heads of a model and write its profile.

    python -m redknot_sglang.profile --model-path M --out M.heads.json \\
        [--global-ratio 0.15 | --min-agreement 0.97] [--window 256 --sink 4] [--seed 0] [--force]

Scores every (layer, kv_head) on generated calibration data, picks the global heads (the top
``--global-ratio`` by score, or the fewest that reach ``--min-agreement`` in the gate), checks the
profile against dense attention on held-out prompts, and writes the JSON (with the gate's numbers)
and a heatmap PNG next to it. A profile that fails the gate is not written unless ``--force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from redknot_sglang.heads.fingerprint import fingerprint_of_model_path
from redknot_sglang.heads.profile import HeadProfile, ModelFingerprint
from redknot_sglang.profile.gate import GateResult, HeldOut, Thresholds, evaluate, prepare_held_out
from redknot_sglang.profile.heatmap import save_heatmap
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.profile.scores import calibration_scores, combine


def top_heads(score: torch.Tensor, n_global: int) -> list[list[bool]]:
    """The ``n_global`` highest-scoring heads are global (ties broken by position: stable)."""
    order = torch.argsort(score.flatten(), descending=True, stable=True)[:n_global]
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(score).tolist()


def build(fp: ModelFingerprint, score: torch.Tensor, n_global: int, args: argparse.Namespace,
          scores: dict[str, torch.Tensor], fidelity: Optional[dict] = None) -> HeadProfile:
    params = {
        "window": args.window, "sink": args.sink, "seed": args.seed,
        "selection": "min_agreement" if args.min_agreement else "global_ratio",
        "global_ratio": args.global_ratio, "min_agreement": args.min_agreement,
        "calibration": {"texts": args.n_calibration, "tokens": args.calib_length},
        "scores": {name: [[round(float(x), 5) for x in row] for row in s.tolist()] for name, s in scores.items()},
    }
    return HeadProfile.from_classes(fp, top_heads(score, n_global), window=args.window, sink=args.sink,
                                    method="profiler", params=params, scores=score.tolist(), fidelity=fidelity)


def select(model: ProfiledModel, held: HeldOut, fp: ModelFingerprint, score: torch.Tensor,
           args: argparse.Namespace, scores: dict) -> tuple[int, GateResult]:
    """Number of global heads, and the gate's result for it."""
    total = score.numel()
    if not args.min_agreement:
        n = round(args.global_ratio * total)
        return n, evaluate(model, held, build(fp, score, n, args, scores))
    lo, hi, best = 0, total, None  # smallest n with agreement >= target (agreement grows with n)
    while lo < hi:
        mid = (lo + hi) // 2
        res = evaluate(model, held, build(fp, score, mid, args, scores))
        print(f"  {mid:4d} global heads ({mid / total:.1%}): agreement {res.agreement:.4f}", flush=True)
        if res.agreement >= args.min_agreement:
            hi, best = mid, res
        else:
            lo = mid + 1
    return lo, best or evaluate(model, held, build(fp, score, lo, args, scores))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--out", required=True)
    pick = ap.add_mutually_exclusive_group()
    pick.add_argument("--global-ratio", type=float, default=0.15)
    pick.add_argument("--min-agreement", type=float, default=None,
                      help="promote the highest-scoring heads until the gate's agreement reaches this")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n-calibration", type=int, default=4)
    ap.add_argument("--calib-length", type=int, default=768)
    ap.add_argument("--held-out", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--needles", type=int, default=6)
    ap.add_argument("--gate-agreement", type=float, default=Thresholds.min_agreement)
    ap.add_argument("--gate-cosine", type=float, default=Thresholds.min_cosine)
    ap.add_argument("--force", action="store_true", help="write the profile even if it fails the gate")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    torch.manual_seed(args.seed)
    fp = fingerprint_of_model_path(args.model_path)
    model = ProfiledModel(args.model_path, device=args.device)
    scores = calibration_scores(model, window=args.window, sink=args.sink, seed=args.seed,
                                n_texts=args.n_calibration, length=args.calib_length)
    score = combine(scores)
    held = prepare_held_out(model, seed=args.seed, window=args.window, sink=args.sink,
                            n_prompts=args.held_out, n_tokens=args.tokens, n_needles=args.needles)
    thresholds = Thresholds(min_agreement=args.min_agreement or args.gate_agreement, min_cosine=args.gate_cosine)
    n_global, result = select(model, held, fp, score, args, scores)
    passed = result.passes(thresholds)
    fidelity = {**dataclasses.asdict(result), "passed": passed, "thresholds": dataclasses.asdict(thresholds),
                "seconds": round(time.monotonic() - t0, 1), "device": args.device}
    profile = build(fp, score, n_global, args, scores, fidelity)
    per_layer = [sum(row) for row in profile.is_global_matrix()]
    print(f"profiled {args.model_path} in {fidelity['seconds']} s on {args.device}: "
          f"{n_global} global heads ({profile.global_fraction:.1%}), per layer {per_layer}")
    print(f"gate: cosine {result.cosine:.4f}, agreement {result.agreement:.4f} over {result.n_tokens} tokens x "
          f"{result.n_prompts} prompts, needle {result.needle_accuracy:.2f} (dense {result.dense_needle_accuracy:.2f})"
          f" -> {'PASS' if passed else 'FAIL'} ({thresholds})")
    if not passed and not args.force:
        print("profile fails the fidelity gate: not written (use --force to write it anyway)", file=sys.stderr)
        return 2
    out = Path(args.out)
    profile.save(out)
    png = save_heatmap(profile, out.with_suffix(".png"))
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
