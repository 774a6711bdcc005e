"""Decode attention of the global group: SGLang's Triton decode kernel over a few KV heads.

The head-split backend runs SGLang's Triton decode kernel on each layer's global heads only (1-3 of
the Llama-8B shape's 8 KV heads under a 15% profile). The kernel's grid is batch x head groups x
KV splits, and SGLang caps the splits at ``--triton-attention-num-kv-splits`` (8): sized for all
heads, that leaves most SMs idle at small batches once the heads are few. This measures, at 32K
tokens per request, the kernel on 1 and 2 global KV heads with the default cap and with larger
ones, next to the same kernel on all 8 heads (the dense layer, default cap) as the baseline.

Slots are scattered (a random permutation, as in a long-running pool); times are per call with its
launch (triton.testing.do_bench). Writes bench/results/global_decode_splits.json. GPU only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd
from triton.testing import do_bench

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
CONTEXT, HEAD_DIM, GROUP, DENSE_KV_HEADS = 32768, 128, 4, 8


def run(batch: int, kv_heads: int, splits: int) -> dict:
    dev = "cuda"
    tokens = batch * CONTEXT
    k = torch.randn(tokens + 1, kv_heads, HEAD_DIM, dtype=torch.bfloat16, device=dev)
    v = torch.randn_like(k)
    q = torch.randn(batch, kv_heads * GROUP, HEAD_DIM, dtype=torch.bfloat16, device=dev)
    o = torch.empty_like(q)
    indptr = torch.arange(0, batch + 1, dtype=torch.int32, device=dev) * CONTEXT
    indices = torch.randperm(tokens, device=dev).to(torch.int32) + 1  # scattered slots, as in a pool
    logits = torch.empty(batch, q.shape[1], splits, HEAD_DIM, dtype=torch.float32, device=dev)
    lse = torch.empty(batch, q.shape[1], splits, dtype=torch.float32, device=dev)
    num_splits = torch.full((batch,), splits, dtype=torch.int32, device=dev)

    def step() -> None:
        decode_attention_fwd(q, k, v, o, indptr, indices, logits, lse, num_splits, splits,
                             HEAD_DIM**-0.5, 1.0, 1.0)

    step()
    torch.cuda.synchronize()
    ms = do_bench(step, rep=200)
    read = 2 * tokens * kv_heads * HEAD_DIM * 2 + tokens * 4  # K, V and the slot indices
    return {"batch": batch, "kv_heads": kv_heads, "splits": splits, "us": round(ms * 1e3, 1),
            "gbps": round(read / ms / 1e6, 1)}


def main() -> None:
    rows = []
    for batch in (1, 8, 32):
        rows.append(run(batch, DENSE_KV_HEADS, 8))
        for kv_heads in (1, 2):
            for splits in (8, 32, 64, 128):
                rows.append(run(batch, kv_heads, splits))
        torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    print(f"\nSGLang Triton decode, {CONTEXT} tokens/request, GQA {GROUP}, head_dim {HEAD_DIM} ({device})")
    print(f"{'batch':>5} {'kv heads':>8} {'splits':>6} {'us':>8} {'GB/s':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['kv_heads']:>8} {r['splits']:>6} {r['us']:>8} {r['gbps']:>8}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"device": device, "context": CONTEXT, "baseline": "kv_heads 8, splits 8 (SGLang's default cap)",
           "results": rows}
    (RESULTS / "global_decode_splits.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
