"""Fidelity of the head split on a real model: SmolLM2-135M-Instruct served by stock SGLang and by
RedKnot with the profile shipped for it (10 of 90 KV heads global; local heads window 256, sink 4),
greedy decoding of a fixed set of long prompts (prose continuation, and copies whose continuation
sits ~1K tokens back, far outside the window). Runs on CPU.

Reports per prompt kind: tokens equal to stock position by position, exact continuations, first
divergence, and for copies how many of the sequence's words each server reproduces; the same for a
random profile with as many global heads (seeded), to show what the profiler's choice is worth.
Writes bench/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
from pathlib import Path

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.profile.calibration import copy, prose
from redknot_sglang.testing.models import smollm2_dir
from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def prompts(n: int, seed: int = 2026) -> list[dict]:
    rng = random.Random(seed)
    out = [{"kind": "prose", "text": prose(rng, 5000)} for _ in range(n)]
    for _ in range(n):
        item = copy(rng, n_words=40, filler_chars=4000)
        out.append({"kind": "copy", "text": item.text, "answer": item.answer})
    return out


def generate(server: Server, items: list[dict], n_tokens: int) -> list[dict]:
    out = []
    for item in items:
        r = server.generate({"text": item["text"], "sampling_params": {"temperature": 0, "max_new_tokens": n_tokens}})
        out.append({"ids": r["output_ids"], "text": r["text"], "prompt_tokens": r["meta_info"]["prompt_tokens"]})
    return out


def words_copied(text: str, answer: str) -> float:
    want, got = answer.split(), text.split()
    return sum(a == b for a, b in zip(want, got)) / len(want)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=6, help="per kind")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--profile", default="smollm2-135m-instruct")
    args = ap.parse_args()
    model = smollm2_dir()
    items = prompts(args.prompts)
    profile = HeadProfile.load(args.profile)
    random_path = RESULTS / "_random_profile.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    synthetic_profile(profile.model, global_ratio=profile.global_fraction, window=256, sink=4, seed=0).save(random_path)
    common = (*CPU_ARGS, "--max-total-tokens", "16384", "--random-seed", "0")
    with Server(model, common) as s:
        stock = generate(s, items, args.tokens)
    rows = []
    for name, path in ((args.profile, args.profile), ("random, same size", str(random_path))):
        with Server(model, (*common, *REDKNOT_ARGS, "--redknot-head-profile", path,
                            "--redknot-window-pool-ratio", "0.5")) as s:
            ours = generate(s, items, args.tokens)
        rows += compare(name, items, stock, ours, args.tokens)
    random_path.unlink()
    result = {
        "device": f"cpu ({platform.machine()}), torch_native base backend",
        "model": "SmolLM2-135M-Instruct (bf16)",
        "profile": {"name": args.profile, "global_fraction": round(profile.global_fraction, 4),
                    "window": 256, "sink": 4, "gate": profile.provenance.fidelity},
        "new_tokens": args.tokens,
        "results": rows,
    }
    (RESULTS / "fidelity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"greedy agreement with stock SGLang, {args.tokens} new tokens, profile {args.profile} "
          f"({profile.global_fraction:.1%} global heads)")
    print(f"{'profile':>22} {'kind':>6} {'prompts':>7} {'tokens':>7} {'agree':>7} {'exact':>6} {'1st diff':>8} "
          f"{'copied (stock/ours)':>20}")
    for r in rows:
        copied = f"{r['stock_words_copied']:.2f} / {r['redknot_words_copied']:.2f}" if r["kind"] == "copy" else "-"
        print(f"{r['profile']:>22} {r['kind']:>6} {r['prompts']:>7} {r['prompt_tokens']:>7} {r['token_agreement']:>7.3f} "
              f"{r['exact_continuations']:>6} {r['mean_first_divergence']:>8.1f} {copied:>20}")


def compare(name: str, items: list[dict], stock: list[dict], ours: list[dict], n_tokens: int) -> list[dict]:
    rows = []
    for kind in ("prose", "copy"):
        idx = [i for i, it in enumerate(items) if it["kind"] == kind]
        equal = [sum(a == b for a, b in zip(ours[i]["ids"], stock[i]["ids"])) / len(stock[i]["ids"]) for i in idx]
        first = [next((k for k, (a, b) in enumerate(zip(ours[i]["ids"], stock[i]["ids"])) if a != b), n_tokens)
                 for i in idx]
        row = {
            "profile": name, "kind": kind, "prompts": len(idx),
            "prompt_tokens": round(sum(stock[i]["prompt_tokens"] for i in idx) / len(idx)),
            "token_agreement": round(sum(equal) / len(idx), 4),
            "exact_continuations": sum(e == 1.0 for e in equal),
            "mean_first_divergence": round(sum(first) / len(idx), 1),
        }
        if kind == "copy":
            row["stock_words_copied"] = round(sum(words_copied(stock[i]["text"], items[i]["answer"]) for i in idx) / len(idx), 3)
            row["redknot_words_copied"] = round(sum(words_copied(ours[i]["text"], items[i]["answer"]) for i in idx) / len(idx), 3)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
