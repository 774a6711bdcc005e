"""The fidelity benchmark through a real SGLang server (stock or redknot), over HTTP only.

Per question, two requests:

* ``/generate`` greedy, ``n_new`` tokens, with the first answer token's top-``k`` log-probabilities;
* teacher forcing: ``prompt + reference[:-1]`` with ``logprob_start_len = len(prompt) - 1`` and
  ``top_logprobs_num = 1`` (SGLang's ``input_top_logprobs[i]`` is the distribution that predicts
  input token ``start + i``, entry 0 is empty), one new token: the server's top-1 for every
  reference token (the last one from the output's top log-probability).

Servers return top-``k`` log-probabilities, not logits: the first-token similarity is the cosine of
the two probability vectors over the union of both top-``k`` sets (a token outside a server's top-k
counts as probability 0 there).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

from redknot_sglang.fidelity.docqa import Question, answer_correct
from redknot_sglang.fidelity.summary import Answer

TOP_K = 20


def server_flags(cpu: bool, concurrency: int = 1) -> tuple[list[str], list[str]]:
    """(stock's flags, redknot's flags without the profile) for SmolLM2: the same kernels family on
    both sides (SGLang's Triton kernels on the GPU, torch_native on CPU, where the model runs in
    float32: bf16 prefill is five times slower there)."""
    from redknot_sglang.testing.server import CPU_ARGS, REDKNOT_ARGS

    common = ["--context-length", "8192", "--random-seed", "0"]
    if cpu:
        common += [*CPU_ARGS, "--max-total-tokens", "16384"]
        kernels = "torch_native"
    else:
        common += ["--mem-fraction-static", "0.25", "--cuda-graph-max-bs", str(max(4, concurrency)),
                   "--cuda-graph-backend-prefill", "disabled"]
        kernels = "triton"
    return [*common, "--attention-backend", kernels], [*common, *REDKNOT_ARGS, "--redknot-base-backend", kernels]


def _top(step: Sequence[Sequence[Any]]) -> dict[int, float]:
    return {int(tok): float(lp) for lp, tok, *_ in step}


def prob_cosine(a: dict[int, float], b: dict[int, float]) -> float:
    keys = set(a) | set(b)
    pa = [math.exp(a[t]) if t in a else 0.0 for t in keys]
    pb = [math.exp(b[t]) if t in b else 0.0 for t in keys]
    dot = sum(x * y for x, y in zip(pa, pb))
    return dot / (math.sqrt(sum(x * x for x in pa)) * math.sqrt(sum(y * y for y in pb)))


class Asker:
    """Questions to one server, ``concurrency`` at a time. ``params_of(question)`` adds to a
    request's ``sampling_params`` (e.g. document marks for reuse modes)."""

    def __init__(self, server, tokenizer, n_new: int = 24, concurrency: int = 1):
        self.server, self.tokenizer, self.n_new, self.concurrency = server, tokenizer, n_new, concurrency

    def _greedy(self, q: Question, params: dict) -> tuple[list[int], dict[int, float]]:
        r = self.server.generate({"input_ids": list(q.ids), "return_logprob": True, "top_logprobs_num": TOP_K,
                                  "sampling_params": {"temperature": 0, "max_new_tokens": self.n_new, **params}})
        return r["output_ids"], _top(r["meta_info"]["output_top_logprobs"][0])

    def _teacher_forced(self, q: Question, ref: Sequence[int], params: dict) -> list[int]:
        r = self.server.generate({"input_ids": list(q.ids) + list(ref[:-1]), "return_logprob": True,
                                  "top_logprobs_num": 1, "logprob_start_len": len(q.ids) - 1,
                                  "sampling_params": {"temperature": 0, "max_new_tokens": 1, **params}})
        meta = r["meta_info"]
        steps = meta["input_top_logprobs"][1:] + [meta["output_top_logprobs"][0]]
        return [int(s[0][1]) for s in steps]

    def ask(self, questions: Sequence[Question], reference: Optional[Sequence[Sequence[int]]] = None,
            reference_top: Optional[Sequence[dict[int, float]]] = None, params_of=None) -> tuple[list[Answer], list[list[int]], list[dict[int, float]]]:
        """Answers (scored against ``reference``, the dense server's answer tokens; without one the
        server's own greedy answers are the reference), answer tokens, first-token top-k."""

        def one(i: int):
            q = questions[i]
            params = params_of(q) if params_of else {}
            tokens, top = self._greedy(q, params)
            ref = list(reference[i]) if reference is not None else tokens
            tf = self._teacher_forced(q, ref, params)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cos = prob_cosine(top, reference_top[i]) if reference_top is not None else 1.0
            agree = sum(int(a == b) for a, b in zip(tf, ref))
            return Answer(q.qid, q.bucket, q.kind, text, answer_correct(text, q.answer), agree, len(ref),
                          round(cos, 5)), tokens, top

        with ThreadPoolExecutor(self.concurrency) as pool:
            got = list(pool.map(one, range(len(questions))))
        return [g[0] for g in got], [g[1] for g in got], [g[2] for g in got]
