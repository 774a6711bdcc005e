"""Synthetic head profiles: a chosen fraction of global heads, placed at random (seeded) or in the
deepest layers, every other head local with one window and sink. For benchmarks on models with
dummy weights and for tests; real models get a measured profile from the profiler.

usage: python -m redknot_sglang.heads.synthetic --model-path M --global-ratio 0.15 --window 1024 \\
           --sink 64 [--placement random|deep] [--seed 0] --out M.heads.json
"""

from __future__ import annotations

import argparse
import random

from redknot_sglang.heads.profile import HeadProfile, ModelFingerprint


def synthetic_profile(
    model: ModelFingerprint, *, global_ratio: float, window: int, sink: int,
    placement: str = "random", seed: int = 0,
) -> HeadProfile:
    heads = [(layer, h) for layer in range(model.num_layers) for h in range(model.num_kv_heads)]
    n_global = round(global_ratio * len(heads))
    if placement == "deep":
        chosen = set(heads[len(heads) - n_global :])
    elif placement == "random":
        chosen = set(random.Random(seed).sample(heads, n_global))
    else:
        raise ValueError(f"placement must be random or deep, got {placement!r}")
    is_global = [[(layer, h) in chosen for h in range(model.num_kv_heads)] for layer in range(model.num_layers)]
    params = dict(global_ratio=global_ratio, window=window, sink=sink, placement=placement, seed=seed)
    return HeadProfile.from_classes(model, is_global, window=window, sink=sink, method="synthetic", params=params)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--global-ratio", type=float, required=True)
    ap.add_argument("--window", type=int, required=True)
    ap.add_argument("--sink", type=int, default=0)
    ap.add_argument("--placement", default="random", choices=("random", "deep"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from redknot_sglang.heads.fingerprint import fingerprint_of_model_path

    profile = synthetic_profile(
        fingerprint_of_model_path(args.model_path), global_ratio=args.global_ratio, window=args.window,
        sink=args.sink, placement=args.placement, seed=args.seed,
    )
    profile.save(args.out)
    print(f"{args.out}: {profile.global_fraction:.1%} global heads")


if __name__ == "__main__":
    main()
