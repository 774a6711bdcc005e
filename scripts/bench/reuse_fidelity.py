"""Fidelity of document reuse on a synthetic multi-document QA set (SmolLM2-135M-Instruct, CPU).

Each question's prompt is a system line, ``--docs`` documents drawn from a pool in random order,
and a question whose answer (a 4-digit code) is in one document ("one-doc") or needs two of them
("two-doc": a document says which tower's year is the vault's code, another gives the year). The
reference implementation (redknot_sglang.reuse.reference) answers it five ways:

  dense          full prefill, every head dense (stock SGLang's semantics; the baseline)
  redknot        full prefill under the head profile (no reuse)
  recovery       reuse: documents' offline KV relocated, global heads recovered (re-prefill)
  recovery+ffn   as recovery, with the sparse FFN in the deep half (keep 50% + the last 128 tokens)
  norecovery     reuse: documents' offline KV relocated for every head, no recovery

and reports accuracy (the code in the greedy answer) and greedy token agreement with dense.
Writes bench/results/reuse_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from redknot_sglang.heads.profile import HeadProfile
from redknot_sglang.profile.hf_model import ProfiledModel
from redknot_sglang.reuse.reference import ReuseReference, SparseFFN
from redknot_sglang.testing.models import smollm2_dir

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
PLACES = ["Orlin", "Tavel", "Mirra", "Quen", "Sabor", "Lutz", "Vendra", "Hollis", "Pardo", "Ixen", "Corvel", "Dunmar",
          "Elsby", "Farrow", "Gilda", "Harth"]
COLORS = ["red", "blue", "green", "black", "white", "silver", "golden", "grey"]
FILLER = ["The streets are narrow and the market opens at dawn.", "Fishermen sell their catch by the old bridge.",
          "In winter the river freezes and children skate on it.", "The library keeps maps older than the town itself.",
          "Travellers often stay at the inn near the square.", "A festival of lanterns is held every autumn.",
          "The hills around the town are covered with vineyards.", "Merchants from the coast bring salt and cloth."]
MODES = ("dense", "redknot", "recovery", "recovery+ffn", "norecovery")


def make_pool(rng: random.Random, n_docs: int) -> list[dict]:
    """Documents: a town, its vault code, and a tower year; some vault codes point at another
    town's tower year (two-doc questions)."""
    docs = []
    for i in range(n_docs):
        place, color = PLACES[i], rng.choice(COLORS)
        docs.append({"place": place, "color": color, "code": str(rng.randint(1000, 9999)),
                     "year": str(rng.randint(1100, 1899)), "points_to": None})
    for i in range(0, n_docs, 4):  # every fourth vault's code is another town's tower year
        j = (i + 1 + rng.randrange(n_docs - 1)) % n_docs
        docs[i]["points_to"], docs[i]["code"] = j, docs[j]["year"]
    for d in docs:
        fill = rng.sample(FILLER, 6)
        vault = (f"The code of the {d['color']} vault in {d['place']} is the year the tower of "
                 f"{docs[d['points_to']]['place']} was built." if d["points_to"] is not None
                 else f"The code of the {d['color']} vault in {d['place']} is {d['code']}.")
        d["text"] = (f"Document about {d['place']}. {' '.join(fill[:3])} {vault} {fill[3]} The tower of "
                     f"{d['place']} was built in the year {d['year']}. {' '.join(fill[4:])}")
    return docs


def make_question(rng: random.Random, pool: list[dict], k: int) -> dict:
    target = rng.randrange(len(pool))
    needed = [target] + ([pool[target]["points_to"]] if pool[target]["points_to"] is not None else [])
    others = [i for i in range(len(pool)) if i not in needed]
    chosen = needed + rng.sample(others, k - len(needed))
    rng.shuffle(chosen)
    d = pool[target]
    return {"docs": chosen, "answer": d["code"], "kind": "two-doc" if len(needed) == 2 else "one-doc",
            "question": f"What is the code of the {d['color']} vault in {d['place']}?"}


def build_prompt(model: ProfiledModel, pool: list[dict], q: dict) -> tuple[list[int], list[tuple[int, int]]]:
    enc = lambda t: model.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = enc("Answer the question from the documents below.\n")
    spans = []
    for i in q["docs"]:
        piece = enc(pool[i]["text"])
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece + enc("\n")
    ids += enc(f"Question: {q['question']}\nAnswer: The code is")
    return ids, spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--pool", type=int, default=12)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--profile", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = ProfiledModel(str(smollm2_dir()))
    profile = HeadProfile.load(args.profile)
    dense, ours = ReuseReference(model, None), ReuseReference(model, profile)
    pool = make_pool(rng, args.pool)
    questions = [make_question(rng, pool, args.docs) for _ in range(args.questions)]
    rows, t0 = [], time.time()
    for q in tqdm(questions, desc="questions"):
        ids, spans = build_prompt(model, pool, q)
        answers = {
            "dense": dense.greedy(ids, spans, "full", args.new_tokens),
            "redknot": ours.greedy(ids, spans, "full", args.new_tokens),
            "recovery": ours.greedy(ids, spans, "recovery", args.new_tokens),
            "recovery+ffn": ours.greedy(ids, spans, "recovery", args.new_tokens, SparseFFN(keep=0.5)),
            "norecovery": ours.greedy(ids, spans, "norecovery", args.new_tokens),
        }
        row = {"kind": q["kind"], "prompt_tokens": len(ids), "answer": q["answer"]}
        for mode, toks in answers.items():
            text = model.tokenizer.decode(toks)
            agree = sum(a == b for a, b in zip(toks, answers["dense"])) / max(1, len(answers["dense"]))
            row[mode] = {"text": text, "correct": q["answer"] in text, "agreement": agree}
        rows.append(row)

    def summary(kind: str | None) -> dict:
        sel = [r for r in rows if kind is None or r["kind"] == kind]
        return {"n": len(sel), **{m: {"accuracy": round(sum(r[m]["correct"] for r in sel) / max(1, len(sel)), 3),
                                      "agreement": round(sum(r[m]["agreement"] for r in sel) / max(1, len(sel)), 3)}
                                  for m in MODES}}

    table = {"all": summary(None), "one-doc": summary("one-doc"), "two-doc": summary("two-doc")}
    print(f"\nreuse fidelity: SmolLM2-135M-Instruct, profile {args.profile}, {args.docs} documents per prompt, "
          f"{sum(r['prompt_tokens'] for r in rows) / len(rows):.0f} tokens on average ({time.time() - t0:.0f} s)")
    print(f"{'set':>8} {'n':>4} " + " ".join(f"{m:>14}" for m in MODES) + "   (accuracy / agreement with dense)")
    for name, s in table.items():
        print(f"{name:>8} {s['n']:>4} " + " ".join(f"{s[m]['accuracy']:>7.3f}/{s[m]['agreement']:<6.3f}" for m in MODES))
    out = {
        "device": "CPU (2 cores), float32", "model": "SmolLM2-135M-Instruct",
        "implementation": "reference (Hugging Face model, redknot_sglang.reuse.reference), not the server",
        "profile": args.profile, "window": max(s.window or 0 for row in profile.heads for s in row), "global_fraction": round(profile.global_fraction, 3),
        "docs_per_prompt": args.docs, "pool": args.pool, "new_tokens": args.new_tokens, "seed": args.seed,
        "sparse_ffn": {"keep": 0.5, "dense_layers": "first half", "always_last": 128},
        "summary": table, "questions": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reuse_fidelity.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
