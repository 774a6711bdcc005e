"""One layer's decode attention: stock FlashInfer on 8 KV heads vs the head split's, before and now.

Llama-3.1-8B shape (8 KV heads, GQA 4, head_dim 128, bf16), every request 32K tokens, a layer with
G global heads (1, 2 or 3, as a 15% profile gives) and 8 - G local heads (window 1024, sink 64; the
pool holds their sink and last window + 128, window slots scattered). Full slots are a random
permutation, as in a long-running pool. Per batch (1, 8, 32):

* ``flashinfer (stock)``: FlashInfer's paged decode over all 8 heads, what a stock server runs;
* ``split, two launches``: the head split before one launch per layer: SGLang's Triton decode on
  the G global heads (64 KV splits) and our SegPaged decode on the local heads, each written into
  its slice of the layer's output;
* ``split, one launch``: :func:`redknot_sglang.kernels.segpaged.segpaged_decode` over all heads
  (global heads over the full slots, all G in each program, local heads over sink + window) and
  one reduce.

Times are GPU times of the step replayed from a CUDA graph (a server's decode), median. ``--sweep``
first times tuning candidates of the one launch's global programs (2 and 3 global heads, batch 1,
8, 32). Writes bench/results/layer_decode.json. GPU only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from redknot_sglang.kernels.segpaged import DECODE_TUNING, full_window, segpaged_decode
from redknot_sglang.testing.segpaged_case import make_bench_case
from redknot_sglang.testing.timing import graph_ms

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
CONTEXT, HEAD_DIM, GROUP, KV_HEADS, WINDOW, SINK = 32768, 128, 4, 8, 1024, 64
SGLANG_SPLITS = 64  # the global group's cap on SGLang's Triton kernel before


def layer(batch: int, n_global: int) -> dict:
    """Buffers of one layer: the local heads' case with full slots permuted, and the global heads'
    full K/V indexed by those slots."""
    case = make_bench_case(batch, CONTEXT, WINDOW, SINK, heads=KV_HEADS - n_global, group=GROUP,
                           head_dim=HEAD_DIM, seed=batch)
    slots = case.full_to_swa.shape[0]
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(slots - 1) + 1]).cuda()
    req_to_token = perm[case.req_to_token.long()].int()
    full_to_swa = torch.empty_like(case.full_to_swa)
    full_to_swa[perm] = case.full_to_swa
    k_full = torch.randn(slots, n_global, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    q = torch.randn(batch, KV_HEADS * GROUP, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    g_window, g_sink = full_window(n_global, "cuda")
    window, sink = torch.cat([g_window, case.window]), torch.cat([g_sink, case.sink])
    return dict(case=case, req_to_token=req_to_token, full_to_swa=full_to_swa, k_full=k_full,
                v_full=torch.randn_like(k_full), q=q, window=window, sink=sink)


def one_launch(batch: int, n_global: int, tuning: dict | None = None) -> float:
    x = layer(batch, n_global)
    c, o = x["case"], torch.empty_like(x["q"])
    max_keys = WINDOW + SINK
    return 1e3 * graph_ms(lambda: segpaged_decode(
        x["q"], o, c.k_win, c.v_win, c.k_sink, c.v_sink, x["req_to_token"], x["full_to_swa"], c.rows, c.seq_lens,
        x["window"], x["sink"], c.scale, max_keys, tuning=tuning, global_kv=(x["k_full"], x["v_full"])))


def sweep() -> list[dict]:
    """Tuning candidates of the global programs (tile, programs per SM, pipeline stages) on layers
    with 2 and 3 global heads at batch 1, 8 and 32; the local heads' block_n and warps as chosen."""
    rows = []
    for n_global in (2, 3):
        for cols in (32, 64, 128):
            for num_stages in (2, 4):
                for gpps in (2, 4, 8, 16):
                    t = dict(global_block_cols=cols, num_stages=num_stages, global_programs_per_sm=gpps)
                    try:
                        us = {f"us_b{b}": round(one_launch(b, n_global, t), 1) for b in (1, 8, 32)}
                    except Exception as e:  # a config the compiler rejects
                        print("skip", t, type(e).__name__, str(e)[:200])
                        continue
                    rows.append({"global_heads": n_global, **t, **us})
                    print(rows[-1], flush=True)
    return rows


def two_launches(batch: int, n_global: int) -> float:
    from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

    x = layer(batch, n_global)
    c, o = x["case"], torch.empty_like(x["q"])
    ng = n_global * GROUP
    kv_indptr = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * CONTEXT
    kv_indices = x["req_to_token"][1:].reshape(-1)
    logits = torch.empty(batch, ng, SGLANG_SPLITS, HEAD_DIM, dtype=torch.float32, device="cuda")
    lse = torch.empty(batch, ng, SGLANG_SPLITS, dtype=torch.float32, device="cuda")
    num_splits = torch.full((batch,), SGLANG_SPLITS, dtype=torch.int32, device="cuda")
    o_global = torch.empty(batch, ng, HEAD_DIM, dtype=torch.bfloat16, device="cuda")

    def step() -> None:
        decode_attention_fwd(x["q"][:, :ng].contiguous(), x["k_full"], x["v_full"], o_global, kv_indptr,
                             kv_indices, logits, lse, num_splits, SGLANG_SPLITS, c.scale, 1.0, 1.0)
        o[:, :ng] = o_global
        segpaged_decode(x["q"][:, ng:], o[:, ng:], c.k_win, c.v_win, c.k_sink, c.v_sink, x["req_to_token"],
                        x["full_to_swa"], c.rows, c.seq_lens, x["window"][n_global:], x["sink"][n_global:], c.scale,
                        WINDOW + SINK)

    return 1e3 * graph_ms(step)


def flashinfer_decode(batch: int, kv_heads: int = KV_HEADS) -> float:
    """FlashInfer's paged decode over ``kv_heads`` heads of every full slot (8: what a stock
    server runs; G: the global heads alone, the other design of their decode)."""
    import flashinfer

    tokens = batch * CONTEXT
    k = torch.randn(tokens + 1, 1, kv_heads, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    q = torch.randn(batch, kv_heads * GROUP, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), "NHD", use_tensor_cores=True)
    wrapper.plan(torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * CONTEXT,
                 torch.randperm(tokens, device="cuda").to(torch.int32) + 1,
                 torch.ones(batch, dtype=torch.int32, device="cuda"), kv_heads * GROUP, kv_heads, HEAD_DIM, 1,
                 q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    return 1e3 * graph_ms(lambda: wrapper.run(q, (k, v)))


def main() -> None:
    import sys

    tuning_rows = sweep() if "--sweep" in sys.argv else None
    rows = []
    for batch in (1, 8, 32):
        stock = flashinfer_decode(batch)
        for n_global in (1, 2, 3):
            row = {"batch": batch, "global_heads": n_global, "stock_us": round(stock, 1),
                   "split_two_launches_us": round(two_launches(batch, n_global), 1),
                   "split_one_launch_us": round(one_launch(batch, n_global), 1),
                   "flashinfer_global_heads_only_us": round(flashinfer_decode(batch, n_global), 1)}
            rows.append(row)
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    print(f"\none layer's decode attention, {CONTEXT} tokens/request, 8 KV heads, GQA {GROUP}, "
          f"head_dim {HEAD_DIM}, local window {WINDOW} + sink {SINK} ({device}); us, CUDA-graph replay")
    print(f"{'batch':>5} {'global':>6} {'stock (FI, 8 heads)':>20} {'split, 2 launches':>18} {'split, 1 launch':>16}"
          f" {'(FI, global heads alone)':>25}")
    for r in rows:
        print(f"{r['batch']:>5} {r['global_heads']:>6} {r['stock_us']:>20} {r['split_two_launches_us']:>18} "
              f"{r['split_one_launch_us']:>16} {r['flashinfer_global_heads_only_us']:>25}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": device, "context": CONTEXT, "baseline": "stock_us: FlashInfer paged decode on all 8 KV heads "
           "(tensor cores, as SGLang picks for GQA 4)", "tuning": DECODE_TUNING, "results": rows}
    if tuning_rows:
        out["sweep"] = tuning_rows
    (RESULTS / "layer_decode.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
