"""Decode attention of the global group: SGLang's Triton decode kernel vs ours over a few KV heads.

The head-split backend's global heads are 1-3 of the Llama-8B shape's 8 KV heads per layer under
a 15% profile. SGLang's Triton decode kernel (the global heads' path before ``full_decode``) has a
grid of batch x head groups x KV splits, capped at ``--triton-attention-num-kv-splits`` (8): sized
for all heads, it leaves most SMs idle once the heads are few. This measures, at 32K tokens per
request: that kernel on 1 and 2 KV heads with the default cap and larger ones; our split-K kernel
(``redknot_sglang.kernels.segpaged.full_decode``, splits sized by batch and context) on 1, 2 and
8 heads; and, as stock's baseline, FlashInfer's paged decode on all 8 heads (what a stock server
runs per layer).

Slots are scattered (a random permutation, as in a long-running pool); times are GPU times of a
call replayed from a CUDA graph (triton.testing.do_bench_cudagraph), as decode runs in a server.
Writes bench/results/global_decode_splits.json. GPU only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd
from triton.testing import do_bench, do_bench_cudagraph

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
CONTEXT, HEAD_DIM, GROUP, DENSE_KV_HEADS = 32768, 128, 4, 8


def _inputs(batch: int, kv_heads: int) -> tuple[torch.Tensor, ...]:
    """K, V (``[slots, kv_heads, D]``), q, o and each request's ``CONTEXT`` scattered slots (a
    random permutation, as in a long-running pool; slot 0 unused)."""
    dev = "cuda"
    tokens = batch * CONTEXT
    k = torch.randn(tokens + 1, kv_heads, HEAD_DIM, dtype=torch.bfloat16, device=dev)
    v = torch.randn_like(k)
    q = torch.randn(batch, kv_heads * GROUP, HEAD_DIM, dtype=torch.bfloat16, device=dev)
    slots = torch.randperm(tokens, device=dev).to(torch.int32) + 1
    return k, v, q, torch.empty_like(q), slots


def _indptr(batch: int) -> torch.Tensor:
    return torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * CONTEXT


def run(batch: int, kv_heads: int, splits: int) -> dict:
    k, v, q, o, slots = _inputs(batch, kv_heads)
    indptr = _indptr(batch)
    logits = torch.empty(batch, q.shape[1], splits, HEAD_DIM, dtype=torch.float32, device="cuda")
    lse = torch.empty(batch, q.shape[1], splits, dtype=torch.float32, device="cuda")
    num_splits = torch.full((batch,), splits, dtype=torch.int32, device="cuda")

    def step() -> None:
        decode_attention_fwd(q, k, v, o, indptr, slots, logits, lse, num_splits, splits,
                             HEAD_DIM**-0.5, 1.0, 1.0)

    return _time("sglang triton", step, batch, kv_heads, splits)


def run_ours(batch: int, kv_heads: int) -> dict:
    from redknot_sglang.kernels.segpaged import full_decode, full_window

    k, v, q, o, slots = _inputs(batch, kv_heads)
    req_to_token = slots.view(batch, CONTEXT)
    rows = torch.arange(batch, device="cuda")
    seq_lens = torch.full((batch,), CONTEXT, dtype=torch.int32, device="cuda")
    window, sink = full_window(kv_heads, "cuda")

    def step() -> None:
        full_decode(q, o, k, v, req_to_token, rows, seq_lens, window, sink, HEAD_DIM**-0.5, CONTEXT)

    return _time("redknot full_decode", step, batch, kv_heads, None)


def run_flashinfer(batch: int) -> dict:
    import flashinfer

    k, v, q, _, slots = _inputs(batch, DENSE_KV_HEADS)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), "NHD")
    wrapper.plan(_indptr(batch), slots, torch.ones(batch, dtype=torch.int32, device="cuda"),
                 DENSE_KV_HEADS * GROUP, DENSE_KV_HEADS, HEAD_DIM, 1,
                 q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
    paged = (k.unsqueeze(1), v.unsqueeze(1))  # pages of one token: [pages, 1, kv_heads, D]
    return _time("flashinfer (stock)", lambda: wrapper.run(q, paged), batch, DENSE_KV_HEADS, None)


def _time(kernel: str, step, batch: int, kv_heads: int, splits) -> dict:
    """GPU time of one call replayed from a CUDA graph, as a server's decode runs it (an eager call
    of a small kernel mostly measures Python's launch); eager only if the kernel cannot be captured."""
    step()
    torch.cuda.synchronize()
    try:
        ms, timing = do_bench_cudagraph(step, rep=100), "cuda graph"
    except Exception:
        ms, timing = do_bench(step, rep=200), "eager"
    tokens = batch * CONTEXT
    read = 2 * tokens * kv_heads * HEAD_DIM * 2 + tokens * 4
    return {"kernel": kernel, "batch": batch, "kv_heads": kv_heads, "splits": splits, "us": round(ms * 1e3, 1),
            "gbps": round(read / ms / 1e6, 1), "timing": timing}


def main() -> None:
    rows = []
    for batch in (1, 8, 32):
        try:
            rows.append(run_flashinfer(batch))
        except Exception as e:  # the baseline's API is FlashInfer's to change: say so, keep the rest
            rows.append({"kernel": "flashinfer (stock)", "batch": batch, "error": repr(e)[:300]})
        rows.append(run(batch, DENSE_KV_HEADS, 8))
        for kv_heads in (1, 2):
            for splits in (8, 64):
                rows.append(run(batch, kv_heads, splits))
        for kv_heads in (1, 2, DENSE_KV_HEADS):
            rows.append(run_ours(batch, kv_heads))
        torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    print(f"\ndecode attention of one layer, {CONTEXT} tokens/request, GQA {GROUP}, head_dim {HEAD_DIM} ({device})")
    print(f"{'kernel':>20} {'batch':>5} {'kv heads':>8} {'splits':>6} {'us':>8} {'GB/s':>8} {'timing':>10}")
    for r in rows:
        print(f"{r['kernel']:>20} {r['batch']:>5} {r.get('kv_heads', '-'):>8} {str(r.get('splits') or '-'):>6} "
              f"{r.get('us', '-'):>8} {r.get('gbps', r.get('error', '-')):>8} {r.get('timing', '-'):>10}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": device, "context": CONTEXT,
           "baseline": "flashinfer (stock) on 8 KV heads: a stock server's decode attention of one layer",
           "results": rows}
    (RESULTS / "global_decode_splits.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
