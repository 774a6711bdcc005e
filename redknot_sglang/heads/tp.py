"""How a profile's global heads spread over tensor-parallel ranks.

Every rank sizes its full pool for the busiest rank (slot counts must agree across ranks), so global
heads piled on one rank waste full-pool memory on the others. ``python -m redknot_sglang.heads.tp``
reports it for a profile.
"""

from __future__ import annotations

from redknot_sglang.heads.layout import RankHeadLayout
from redknot_sglang.heads.profile import HeadProfile


def tp_spread(profile: HeadProfile, tp_size: int) -> dict:
    """How evenly a profile's global heads fall on ``tp_size`` ranks: per-rank counts, and the pool
    bytes lost because every rank sizes its full pool for the busiest rank."""
    counts = [RankHeadLayout(profile, r, tp_size).global_head_count() for r in range(tp_size)]
    mean = sum(counts) / tp_size
    return {"tp": tp_size, "global_heads_per_rank": counts,
            "full_pool_overhead": round(max(counts) / mean - 1, 4) if mean else 0.0}


def main(argv: list[str] | None = None) -> None:
    """``python -m redknot_sglang.heads.tp PROFILE [--tp 2 4 8]``: per-rank split of a profile."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("profile")
    ap.add_argument("--tp", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args(argv)
    profile = HeadProfile.load(args.profile)
    for tp in args.tp:
        if profile.model.num_kv_heads % tp and tp % profile.model.num_kv_heads:
            print(f"tp {tp}: does not divide {profile.model.num_kv_heads} KV heads")
            continue
        s = tp_spread(profile, tp)
        print(f"tp {tp}: global heads per rank {s['global_heads_per_rank']}, full-pool overhead "
              f"{s['full_pool_overhead']:.1%} (every rank sizes for the busiest)")


if __name__ == "__main__":
    main()
