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

``--server`` asks real SGLang servers on this CPU instead (the serving path of document reuse):

  dense          a stock server (torch_native attention)
  redknot        a redknot server (the head profile), unmarked requests: full prefill
  recovery       the same server, documents marked (custom_params.redknot_documents)
  norecovery     marked, with redknot_recovery false
  recovery+ffn   recovery on a server with the sparse FFN (--redknot-sparse-ffn-keep 0.5)

Each reuse mode starts from an empty cache (``/flush_cache``) and first answers a warm-up set of
other questions over the same documents, so that documents are captured in other orders and
offsets than those they are reused at; then the measured set. Documents are marked with their
trailing newline so that they sit back to back. Writes bench/results/reuse_fidelity_server.json.
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


def build_prompt(tokenizer, pool: list[dict], q: dict, *, with_newline: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Prompt token ids and the documents' spans (each document's newline in its span or not)."""
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = enc("Answer the question from the documents below.\n")
    spans = []
    for i in q["docs"]:
        piece, nl = enc(pool[i]["text"]), enc("\n")
        spans.append((len(ids), len(ids) + len(piece) + (len(nl) if with_newline else 0)))
        ids += piece + nl
    ids += enc(f"Question: {q['question']}\nAnswer: The code is")
    return ids, spans


def score(rows: list[dict], modes: tuple[str, ...], tokenizer, answers: list[dict], questions: list[dict],
          prompt_lens: list[int]) -> None:
    """Fill ``rows`` with each question's text, correctness and agreement with dense per mode."""
    for q, got, n in zip(questions, answers, prompt_lens):
        row = {"kind": q["kind"], "prompt_tokens": n, "answer": q["answer"]}
        for mode in modes:
            toks = got[mode]
            text = tokenizer.decode(toks)
            agree = sum(a == b for a, b in zip(toks, got["dense"])) / max(1, len(got["dense"]))
            row[mode] = {"text": text, "correct": q["answer"] in text, "agreement": agree}
        rows.append(row)


def summarize(rows: list[dict], modes: tuple[str, ...]) -> dict:
    def one(kind: str | None) -> dict:
        sel = [r for r in rows if kind is None or r["kind"] == kind]
        return {"n": len(sel), **{m: {"accuracy": round(sum(r[m]["correct"] for r in sel) / max(1, len(sel)), 3),
                                      "agreement": round(sum(r[m]["agreement"] for r in sel) / max(1, len(sel)), 3)}
                                  for m in modes}}

    table = {"all": one(None), "one-doc": one("one-doc"), "two-doc": one("two-doc")}
    print(f"{'set':>8} {'n':>4} " + " ".join(f"{m:>14}" for m in modes) + "   (accuracy / agreement with dense)")
    for name, s in table.items():
        print(f"{name:>8} {s['n']:>4} " + " ".join(f"{s[m]['accuracy']:>7.3f}/{s[m]['agreement']:<6.3f}" for m in modes))
    return table


SERVER_MODES = ("dense", "redknot", "recovery", "recovery+ffn", "norecovery")
SERVER_RUNS = (((), (("redknot", None), ("recovery", True), ("norecovery", False))),
               (("--redknot-sparse-ffn-keep", "0.5"), (("recovery+ffn", True),)))  # (flags, ((mode, recovery)))


def server_answers(args: argparse.Namespace, pool: list[dict], questions: list[dict], warmup: list[dict],
                   tokenizer) -> tuple[list[dict], list[int], dict]:
    """Greedy answers of every question in every server mode, the prompts' lengths, and the
    redknot server's reuse counters after each mode."""
    from redknot_sglang.reuse.spans import DOCUMENTS_KEY, RECOVERY_KEY
    from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS, Server

    prompts = [build_prompt(tokenizer, pool, q, with_newline=True) for q in questions]
    warm = [build_prompt(tokenizer, pool, q, with_newline=True) for q in warmup]

    def ask(server, prompt, recovery):
        ids, spans = prompt
        params = {"temperature": 0, "max_new_tokens": args.new_tokens}
        if recovery is not None:
            params["custom_params"] = {DOCUMENTS_KEY: [list(x) for x in spans], RECOVERY_KEY: recovery}
        return server.generate({"input_ids": ids, "sampling_params": params})["output_ids"]

    answers: list[dict] = [{} for _ in questions]
    base = (*CPU_ARGS, "--random-seed", "0")
    with Server(smollm2_dir(), (*base, "--attention-backend", "torch_native")) as stock:
        for a, p in zip(answers, tqdm(prompts, desc="dense")):
            a["dense"] = ask(stock, p, None)
    def documents(server) -> dict:
        return server.redknot_stats()["documents"]

    counters = {}
    for flags, modes in SERVER_RUNS:
        with Server(smollm2_dir(), (*base, *REDKNOT_ARGS, "--redknot-head-profile", args.profile, *flags)) as ours:
            for mode, recovery in modes:
                ours.post("/flush_cache", {}).raise_for_status()
                for p in warm if recovery is not None else []:
                    ask(ours, p, recovery)
                before = documents(ours)
                for a, p in zip(answers, tqdm(prompts, desc=mode)):
                    a[mode] = ask(ours, p, recovery)
                after = documents(ours)
                counters[mode] = {k: after[k] - before[k] for k in
                                  ("placed_requests", "placed_tokens", "captured_documents", "ffn_skipped_token_layers")}
    return answers, [len(p[0]) for p in prompts], counters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=20, help="--server: questions answered before the measured set")
    ap.add_argument("--pool", type=int, default=12)
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--profile", default="smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server", action="store_true", help="ask SGLang servers (the serving path), not the reference")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    profile = HeadProfile.load(args.profile)
    pool = make_pool(rng, args.pool)
    questions = [make_question(rng, pool, args.docs) for _ in range(args.questions)]
    rows, t0 = [], time.time()
    common = {"model": "SmolLM2-135M-Instruct", "profile": args.profile,
              "window": max(s.window or 0 for row in profile.heads for s in row),
              "global_fraction": round(profile.global_fraction, 3), "docs_per_prompt": args.docs, "pool": args.pool,
              "new_tokens": args.new_tokens, "seed": args.seed}
    if args.server:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
        warmup = [make_question(rng, pool, args.docs) for _ in range(args.warmup)]
        answers, lens, counters = server_answers(args, pool, questions, warmup, tokenizer)
        score(rows, SERVER_MODES, tokenizer, answers, questions, lens)
        print(f"\nreuse fidelity (servers): SmolLM2-135M-Instruct, profile {args.profile}, {args.docs} documents per "
              f"prompt, {sum(lens) / len(lens):.0f} tokens on average ({time.time() - t0:.0f} s)")
        out = {"device": "CPU (2 cores)", **common,
               "implementation": "SGLang servers: stock (torch_native) and redknot (head split, document reuse)",
               "warmup_questions": args.warmup, "measured_set_reuse": counters,
               "summary": summarize(rows, SERVER_MODES), "questions": rows}
        name = "reuse_fidelity_server.json"
    else:
        model = ProfiledModel(str(smollm2_dir()))
        dense, ours = ReuseReference(model, None), ReuseReference(model, profile)
        answers, lens = [], []
        for q in tqdm(questions, desc="questions"):
            ids, spans = build_prompt(model.tokenizer, pool, q)
            answers.append({
                "dense": dense.greedy(ids, spans, "full", args.new_tokens),
                "redknot": ours.greedy(ids, spans, "full", args.new_tokens),
                "recovery": ours.greedy(ids, spans, "recovery", args.new_tokens),
                "recovery+ffn": ours.greedy(ids, spans, "recovery", args.new_tokens, SparseFFN(keep=0.5)),
                "norecovery": ours.greedy(ids, spans, "norecovery", args.new_tokens),
            })
            lens.append(len(ids))
        score(rows, MODES, model.tokenizer, answers, questions, lens)
        print(f"\nreuse fidelity: SmolLM2-135M-Instruct, profile {args.profile}, {args.docs} documents per prompt, "
              f"{sum(lens) / len(lens):.0f} tokens on average ({time.time() - t0:.0f} s)")
        out = {"device": "CPU (2 cores), float32", **common,
               "implementation": "reference (Hugging Face model, redknot_sglang.reuse.reference), not the server",
               "sparse_ffn": {"keep": 0.5, "dense_layers": "first half", "always_last": 128},
               "summary": summarize(rows, MODES), "questions": rows}
        name = "reuse_fidelity.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
