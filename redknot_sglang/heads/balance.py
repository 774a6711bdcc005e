"""Global heads balanced over tensor-parallel ranks by renumbering KV heads in the checkpoint.

With ``--tp N`` SGLang gives rank ``r`` the contiguous slice ``[r H/N, (r+1) H/N)`` of every layer's KV
heads, and every rank sizes its full pool for the busiest rank (:mod:`redknot_sglang.heads.tp`).
Renumbering a layer's KV heads, each with its GQA group of query heads and the matching input columns
of ``o_proj``, is an exact re-parametrisation of the model. :func:`balanced_order` picks, per layer, the
renumbering that deals the layer's global heads round-robin over the ranks, the rank with the fewest
global head-layers so far first, so every rank ends with the same total, +-1::

    layer l   checkpoint heads   0 1 2 3 4 5 6 7      G = global, tp 2
              profile            G G G . . . . .      identity: rank 0 holds 3, rank 1 holds 0
              order[l]           0 2 3 4 | 1 5 6 7    rank 0: G G . .  rank 1: G . . .

:func:`renumber_checkpoint` applies an order to a Hugging Face Llama-family state dict and
:func:`renumbered_profile` to the profile, so the balanced checkpoint is served as any other, with no
change to SGLang's sharding: ``python -m redknot_sglang.heads.balance PROFILE --tp N --model-path M --out D``.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.model.permute import head_rows

Order = tuple[tuple[int, ...], ...]  # order[l][j]: the checkpoint KV head placed at position j of layer l


def balanced_order(profile: HeadProfile, tp_size: int) -> Order:
    """Per-layer KV head order giving every rank of ``tp_size`` the same number of global
    head-layers, +-1 (ranks must hold distinct heads: ``tp_size`` divides the KV heads)."""
    heads = profile.model.num_kv_heads
    if tp_size > heads or heads % tp_size:
        raise ValueError(f"balancing needs tp_size ({tp_size}) to divide the {heads} KV heads")
    per_rank = heads // tp_size
    totals = [0] * tp_size
    order = []
    for row in profile.heads:
        glob = [h for h, spec in enumerate(row) if spec.is_global]
        local = iter(h for h, spec in enumerate(row) if not spec.is_global)
        taken: list[list[int]] = [[] for _ in range(tp_size)]
        by_need = sorted(range(tp_size), key=lambda r: (totals[r], r))
        for i, h in enumerate(glob):
            taken[by_need[i % tp_size]].append(h)
        for r in range(tp_size):
            totals[r] += len(taken[r])
            taken[r] += [next(local) for _ in range(per_rank - len(taken[r]))]
        order.append(tuple(h for rank in taken for h in rank))
    return tuple(order)


def renumbered_profile(profile: HeadProfile, order: Order) -> HeadProfile:
    """The profile of the renumbered checkpoint (head ``j`` of layer ``l`` is ``order[l][j]``)."""
    data = profile.model_dump(mode="json", exclude_none=True)
    data["heads"] = [[data["heads"][layer][h] for h in perm] for layer, perm in enumerate(order)]
    data["provenance"].setdefault("params", {})["kv_head_order"] = [list(perm) for perm in order]
    return HeadProfile.model_validate(data)


_ATTN = re.compile(r"^(.*\.layers\.(\d+)\.self_attn\.)(q_proj|k_proj|v_proj|o_proj)\.(weight|bias)$")


def renumber_checkpoint(state: dict[str, torch.Tensor], order: Order, *, num_heads: int, num_kv_heads: int,
                        head_dim: int) -> dict[str, torch.Tensor]:
    """A Llama-family state dict with every layer's KV heads in ``order`` (query heads follow their
    KV head, ``o_proj`` input columns follow the query heads); other tensors are shared, not copied."""
    group = num_heads // num_kv_heads
    out = dict(state)
    for name, tensor in state.items():
        m = _ATTN.match(name)
        if m is None:
            continue
        perm: Sequence[int] = order[int(m.group(2))]
        proj, kind = m.group(3), m.group(4)
        rows = head_rows(perm, 1 if proj in ("k_proj", "v_proj") else group, head_dim)
        if proj == "o_proj":
            if kind == "weight":
                out[name] = tensor[:, rows].contiguous()
        else:
            out[name] = tensor[rows].contiguous()
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m redknot_sglang.heads.balance PROFILE --tp N [--model-path M --out DIR]``: the per-rank
    spread before and after balancing; with ``--out``, the renumbered checkpoint and profile."""
    import argparse
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from redknot_sglang.heads.tp import tp_spread

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("profile")
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--model-path", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    profile = HeadProfile.load(args.profile)
    order = balanced_order(profile, args.tp)
    balanced = renumbered_profile(profile, order)
    for name, p in (("checkpoint order", profile), ("balanced", balanced)):
        s = tp_spread(p, args.tp)
        print(f"{name}: global head-layers per rank {s['global_heads_per_rank']}, "
              f"full-pool overhead {s['full_pool_overhead']:.1%}")
    if args.out is None:
        return
    if args.model_path is None:
        raise SystemExit("--out needs --model-path")
    m = profile.model
    args.out.mkdir(parents=True, exist_ok=True)
    for src in args.model_path.iterdir():
        if src.suffix == ".safetensors":
            state = renumber_checkpoint(load_file(src), order, num_heads=m.num_attention_heads,
                                        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim)
            save_file(state, args.out / src.name, metadata={"format": "pt"})
        elif src.is_file():
            shutil.copy2(src, args.out / src.name)
    balanced.save(args.out / "redknot.heads.json")
    print(json.dumps({"checkpoint": str(args.out), "profile": str(args.out / "redknot.heads.json")}))


if __name__ == "__main__":
    main()
