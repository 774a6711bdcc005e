"""One layer's attention for a short extend over a long cached prefix: dense FlashInfer on 8 KV
heads vs the head split's global heads on FlashInfer plus its local heads on SegPaged.

What a repeated prompt (1 new token) or a new turn (200 new tokens) runs per layer once its prefix
is a radix-cache hit; the prefix_reuse benchmark times the whole request on servers, this the
attention kernels alone, to tell GPU time from host time. Llama-3.1-8B shape (8 KV heads, GQA 4,
head_dim 128, bf16), one request of 8K / 32K / 64K tokens, full slots a random permutation; the
head split's layer has G global heads (1, 2, 3) and 8 - G local heads (window 1024, sink 64):

* ``flashinfer (dense)``: FlashInfer's paged prefill over all 8 heads, causal, the new tokens'
  K/V already stored: a dense reference, not a stock server's time (SGLang's FlashInfer backend
  runs the cached prefix and the new tokens as two calls and merges them);
* ``split``: :class:`redknot_sglang.attention.global_extend.FlashInferGlobalExtend` on the G
  global heads (its page table built per forward, a plan per head count) and
  :func:`redknot_sglang.kernels.segpaged.segpaged_extend` on the local heads, as the head-split
  backend runs them.

Times: median of the layer's calls replayed from a CUDA graph (plans made once, outside), in us
(eager, launches included, where a call cannot be captured: the JSON says which).
Writes bench/results/layer_extend.json. GPU only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from redknot_sglang.attention.global_extend import FlashInferGlobalExtend, WORKSPACE_BYTES, indptr
from redknot_sglang.kernels.segpaged import segpaged_extend
from redknot_sglang.testing.segpaged_case import make_bench_case
from redknot_sglang.testing.timing import graph_ms

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
HEAD_DIM, GROUP, KV_HEADS, WINDOW, SINK = 128, 4, 8, 1024, 64
CONTEXTS, NEW_TOKENS, GLOBAL_HEADS = (8192, 32768, 65536), (1, 200), (1, 2, 3)


MODES: set[str] = set()  # how the times were taken


def timed_us(fn) -> float:
    """CUDA-graph replay; an eager median (launches included) if FlashInfer's call cannot be captured."""
    from triton.testing import do_bench

    try:
        us = 1e3 * graph_ms(fn)
        MODES.add("cuda graph")
    except RuntimeError as e:
        print("eager timing:", str(e)[:200])
        torch.cuda.synchronize()
        us = 1e3 * do_bench(fn, warmup=50, rep=300, return_mode="median")
        MODES.add("eager")
    return us


def dense_us(context: int, new: int) -> float:
    import flashinfer

    k = torch.randn(context + 1, 1, KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    q = torch.randn(new, KV_HEADS * GROUP, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device="cuda"), "NHD")
    wrapper.plan(indptr([new]), indptr([context]),
                 torch.randperm(context, device="cuda").to(torch.int32) + 1,
                 torch.ones(1, dtype=torch.int32, device="cuda"), KV_HEADS * GROUP, KV_HEADS, HEAD_DIM, 1,
                 causal=True, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    return timed_us(lambda: wrapper.run(q, (k, v)))


def split_us(context: int, new: int, n_global: int) -> float:
    case = make_bench_case(1, context, WINDOW, SINK, heads=KV_HEADS - n_global, group=GROUP, head_dim=HEAD_DIM)
    slots = case.full_to_swa.shape[0]
    k_full = torch.randn(slots, n_global, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    v_full = torch.randn_like(k_full)
    q = torch.randn(new, KV_HEADS * GROUP, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    o = torch.empty_like(q)
    ng = n_global * GROUP
    seq_lens = torch.full((1,), context, dtype=torch.int64, device="cuda")
    q_lens = torch.full((1,), new, dtype=torch.int32, device="cuda")
    extend = FlashInferGlobalExtend(torch.device("cuda"), torch.bfloat16)
    extend.begin(case.req_to_token, case.rows, seq_lens, [context], [new])
    extend.run(q[:, :ng], k_full, v_full, case.scale)  # plans outside the graph

    def layer() -> None:
        o[:, :ng] = extend.run(q[:, :ng], k_full, v_full, case.scale)
        segpaged_extend(q[:, ng:], o[:, ng:], case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token,
                        case.full_to_swa, case.rows, seq_lens, case.q_starts, q_lens, new, case.window, case.sink,
                        case.scale)

    return timed_us(layer)


def main() -> None:
    rows = []
    for context in CONTEXTS:
        for new in NEW_TOKENS:
            dense = round(dense_us(context, new), 1)
            for n_global in GLOBAL_HEADS:
                rows.append({"context": context, "new_tokens": new, "global_heads": n_global, "dense_us": dense,
                             "split_us": round(split_us(context, new, n_global), 1)})
                torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    print(f"\none layer's extend attention over a cached prefix, 8 KV heads, GQA {GROUP}, head_dim {HEAD_DIM}, "
          f"local window {WINDOW} + sink {SINK} ({device}); us, CUDA-graph replay")
    print(f"{'context':>8} {'new':>4} {'global':>6} {'dense (FI, 8 heads)':>20} {'split (FI global + SegPaged)':>29}")
    for r in rows:
        print(f"{r['context']:>8} {r['new_tokens']:>4} {r['global_heads']:>6} {r['dense_us']:>20} {r['split_us']:>29}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": device, "baseline": "dense_us: FlashInfer paged prefill on all 8 KV heads, causal (one call; a stock server "
           "runs a ragged and a paged call and merges them)",
           "timing": sorted(MODES), "results": rows}
    (RESULTS / "layer_extend.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
