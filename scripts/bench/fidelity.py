"""Fidelity of the head split at the lengths served, through real servers: the document-QA test
split (:mod:`redknot_sglang.fidelity.docqa`: 6-9 prose documents, single- and two-hop questions over
confusable facts, 2K / 4K / 7K-token prompts) asked of a stock SGLang server (dense: the baseline
and the reference) and of a redknot server per head profile, greedy, 24 new tokens.

Per prompt-length bucket and profile: answer accuracy next to dense's on the same questions,
teacher-forced top-1 agreement over dense's answer tokens, first-token similarity, the profile's
local fraction, window and KV bytes ratio at that length. The stock server's agreement with its own
greedy answers (teacher forcing runs as one prefill, greedy as decode steps) is the noise floor.

``--reuse``: document reuse on the same redknot server, per mode (``--reuse-modes``: ``placed``,
``redknot_recovery`` false, every cached document placed; ``selective-R``, every cached document
placed and the question, each document's first tokens and a fraction ``R`` of the placed tokens
recomputed; ``canonical-`` before either: the documents captured canonically, see below).
Each mode starts from an empty cache, answers the "warmup" stream of other questions over the same
documents with its marks (documents captured in context, in other orders and offsets; a
``canonical-`` mode instead stores the measured questions' documents through
``POST /redknot/documents``, each computed alone after the canonical prefix), then the measured
questions with their marks: accuracy next to dense's and the head split's full prefill, agreement
against the same server's full prefill, the fraction of prompt tokens placed (``reuse`` rows).

    python scripts/bench/fidelity.py [--profiles smollm2-135m-instruct,...] [--per-bucket 100] [--reuse]
    python scripts/bench/fidelity.py --cpu --per-bucket 2 --buckets 2k    # the CPU smoke slice

Writes bench/results/fidelity.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redknot_sglang.fidelity.docqa import BUCKET_LENGTH, BUCKETS, DocQA
from redknot_sglang.fidelity.server import Asker, server_flags
from redknot_sglang.fidelity.summary import bucket_scores
from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.integration.hooks.preload import ROUTE
from redknot_sglang.profile.search import kv_ratio
from redknot_sglang.reuse.spans import DOCUMENTS_KEY, RATIO_KEY, RECOVERY_KEY
from redknot_sglang.testing.bench_sides import device_name
from redknot_sglang.testing.models import smollm2_dir
from redknot_sglang.testing.server import Server

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def rows_for(name: str, profile: HeadProfile, answers, dense, questions) -> list[dict]:
    rows = []
    for bucket, s in bucket_scores(answers, dense).items():
        if bucket == "all":
            continue
        local = [spec for _, _, spec in profile.local_heads()]
        lens = [len(q.ids) for q in questions if q.bucket == bucket]
        rows.append({
            "prompt_len": BUCKET_LENGTH[bucket], "mean_prompt_tokens": round(statistics.mean(lens)),
            "profile": name, "local_fraction": round(1 - profile.global_fraction, 4),
            "window": sorted({x.window for x in local}) if local else None,
            "sink": sorted({x.sink for x in local}) if local else None,
            "kv_ratio": round(kv_ratio(profile, BUCKET_LENGTH[bucket]), 4),
            "dense_accuracy": s.dense_accuracy, "redknot_accuracy": s.accuracy, "top1_agreement": s.top1_agreement,
            "first_token_cosine": s.cosine, "n_questions": s.n,
        })
    return rows


def reuse_mode(name: str) -> tuple[dict, bool]:
    """(``custom_params``, whether documents are preloaded) of a reuse mode: ``placed`` or
    ``selective-R``, either after ``canonical-`` (preloaded: canonical capture)."""
    base = name.removeprefix("canonical-")
    if base == "placed":
        return {RECOVERY_KEY: False}, base != name
    if base.startswith("selective-"):
        return {RATIO_KEY: float(base.removeprefix("selective-"))}, base != name
    raise ValueError(f"unknown reuse mode {name!r}")


def preload(server, questions, concurrency: int) -> None:
    """Store the documents of ``questions`` (their token ids, each once) through
    ``POST /redknot/documents``: canonical capture."""
    docs = list(dict.fromkeys(tuple(q.ids[a:b]) for q in questions for a, b in q.doc_spans))

    def one(doc: tuple[int, ...]) -> None:
        r = server.post(ROUTE, {"documents": [{"input_ids": list(doc)}]})
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, docs))


def marks(extra: dict):
    """``params_of`` for :class:`Asker`: the question's documents marked, plus ``extra``."""
    return lambda q: {"custom_params": {DOCUMENTS_KEY: [list(span) for span in q.doc_spans], **extra}}


def reuse_rows(server, asker: Asker, name: str, modes: list[str], questions, warmup, dense, full, full_tokens,
               full_top) -> Iterator[list[dict]]:
    """Per reuse mode (one list each, as it is measured) and bucket, the measured questions after
    the warm-up captured their documents."""
    full_acc = {b: s.accuracy for b, s in bucket_scores(full, dense).items()}
    for mode in modes:
        rows = []
        extra, canonical = reuse_mode(mode)
        assert server.post("/flush_cache", {}).status_code == 200
        if canonical:
            preload(server, questions, asker.concurrency)
        else:
            asker.ask(warmup, params_of=marks(extra))
        before = server.redknot_stats()["documents"]
        got, _, _ = asker.ask(questions, full_tokens, full_top, params_of=marks(extra))
        after = server.redknot_stats()["documents"]
        prompt_tokens = 2 * sum(len(q.ids) for q in questions)  # greedy and teacher-forced requests both reuse
        for bucket, s in bucket_scores(got, dense).items():
            if bucket != "all":
                rows.append({"prompt_len": BUCKET_LENGTH[bucket], "profile": name, "mode": mode,
                             "dense_accuracy": s.dense_accuracy, "headsplit_accuracy": full_acc[bucket],
                             "accuracy": s.accuracy, "top1_agreement_vs_full_prefill": s.top1_agreement,
                             "first_token_cosine_vs_full_prefill": s.cosine, "n_questions": s.n})
        rows.append({"mode": mode, "profile": name,
                     "placed_fraction": round((after["placed_tokens"] - before["placed_tokens"]) / prompt_tokens, 4),
                     "recomputed_fraction": round((after["recomputed_tokens"] - before["recomputed_tokens"])
                                                  / prompt_tokens, 4)})
        yield rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="smollm2-135m-instruct", help="comma-separated paths or shipped names")
    ap.add_argument("--split", default="test")
    ap.add_argument("--per-bucket", type=int, default=100)
    ap.add_argument("--buckets", type=lambda s: s.split(","), default=list(BUCKETS))
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--cpu", action="store_true", help="CPU servers (torch_native), one request at a time")
    ap.add_argument("--reuse", action="store_true", help="also document reuse modes on each redknot server")
    ap.add_argument("--reuse-modes", type=lambda s: s.split(","),
                    default=["placed", "selective-0.05", "selective-0.1", "selective-0.2", "selective-0.4",
                             "canonical-selective-0.1"])
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--out", type=Path, default=RESULTS / "fidelity.json")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    model = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model)
    questions = DocQA(tokenizer).questions(args.split, args.per_bucket, buckets=args.buckets)
    concurrency = 1 if args.cpu else args.concurrency
    stock_flags, ours_flags = server_flags(args.cpu, concurrency)
    t0 = time.monotonic()
    with Server(model, stock_flags, log_path=args.log_dir / "fidelity-stock.log") as s:
        dense, ref_tokens, ref_top = Asker(s, tokenizer, args.new_tokens, concurrency).ask(questions)
    print(f"stock: {time.monotonic() - t0:.0f} s")
    warmup = DocQA(tokenizer).questions(args.split, args.per_bucket, buckets=args.buckets, stream="warmup")
    results, noise, reuse = [], [], []
    for b, s in bucket_scores(dense, dense).items():
        if b != "all":
            noise.append({"prompt_len": BUCKET_LENGTH[b], "dense_accuracy": s.accuracy,
                          "dense_self_top1_agreement": s.top1_agreement, "n_questions": s.n})
    out = {"device": device_name() if not args.cpu else "cpu", "model": "SmolLM2-135M-Instruct (bf16)",
           "benchmark": f"docqa {args.split} split, greedy, {args.new_tokens} new tokens",
           "servers": {"stock": stock_flags, "redknot": ours_flags}, "dense_noise_floor": noise, "results": results}

    def save() -> None:  # after every step: a run stopped by the device's time limit keeps what it measured
        if reuse:
            out["reuse"] = reuse
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    for name in args.profiles.split(","):
        profile = HeadProfile.load(name)
        t1 = time.monotonic()
        label = Path(name).name.removesuffix(".json").removesuffix(".heads")
        with Server(model, [*ours_flags, "--redknot-head-profile", name],
                    log_path=args.log_dir / f"fidelity-{Path(name).stem}.log") as s:
            asker = Asker(s, tokenizer, args.new_tokens, concurrency)
            ours, _, _ = asker.ask(questions, ref_tokens, ref_top)
            results += rows_for(label, profile, ours, dense, questions)
            save()
            if args.reuse:
                _, full_tokens, full_top = asker.ask(questions)  # the same server's full prefill as reference
                for rows in reuse_rows(s, asker, label, args.reuse_modes, questions, warmup, dense, ours,
                                       full_tokens, full_top):
                    reuse += rows
                    save()
                    print(f"{label} {rows[-1]['mode']}: {time.monotonic() - t1:.0f} s", flush=True)
        print(f"{name}: {time.monotonic() - t1:.0f} s")
    print(f"{'profile':>28} {'len':>5} {'kv':>6} {'dense':>6} {'ours':>6} {'top1':>7} {'cos':>7} {'n':>4}")
    for r in results:
        print(f"{r['profile'][-28:]:>28} {r['prompt_len']:>5} {r['kv_ratio']:>6.3f} {r['dense_accuracy']:>6.3f} "
              f"{r['redknot_accuracy']:>6.3f} {r['top1_agreement']:>7.4f} {r['first_token_cosine']:>7.4f} {r['n_questions']:>4}")
    for r in reuse:
        if "accuracy" in r:
            print(f"{r['profile'][-18:] + ' ' + r['mode']:>28} {r['prompt_len']:>5} {'':>6} {r['dense_accuracy']:>6.3f} "
                  f"{r['accuracy']:>6.3f} {r['top1_agreement_vs_full_prefill']:>7.4f} (vs its full prefill, "
                  f"accuracy {r['headsplit_accuracy']:.3f})")
        else:
            print(f"{r['profile'][-18:] + ' ' + r['mode']:>28} prompt tokens placed: {r['placed_fraction']:.1%}, "
                  f"recomputed: {r['recomputed_fraction']:.1%}")
    for r in noise:
        print(f"{'stock vs its own greedy':>28} {r['prompt_len']:>5} {'1.000':>6} {r['dense_accuracy']:>6.3f} "
              f"{'':>6} {r['dense_self_top1_agreement']:>7.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
