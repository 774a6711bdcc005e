"""HeadSplitAttnBackend on SGLang's real pool classes (CPU): one extend and three decode steps of two
requests, checked per head against the float64 masked-attention reference. Global heads run on
SGLang's torch_native backend; local heads on the torch path and on the Triton kernels (interpreter
on CPU). Window slots that slid out are freed through SGLang's allocator (``free_swa``) and slot 0
holds NaN, so a read of a freed slot shows. On the GPU (bf16): local heads on the Triton kernels and
the global heads' extend on FlashInfer (a plan per layer's global head count: 1 and 2 here)."""

from __future__ import annotations

import types

import pytest
import torch
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

from redknot_sglang.integration.head_split_backend import HeadSplitAttnBackend
from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool

D, HKV, GROUP, WINDOW, SINK = 64, 3, 2, 5, 2  # FlashInfer (GPU case) takes head_dim 64, 128 or 256
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=HKV * GROUP,
                      num_kv_heads=HKV, head_dim=D, rope_theta=1e4)


@pytest.fixture(scope="module", autouse=True)
def plugins():
    from sglang.srt.plugins import load_plugins

    load_plugins()  # registers torch_native & co. in ATTENTION_BACKENDS


# (local heads' implementation, device, dtype, global heads' extend on FlashInfer)
IMPLS = {"torch": ("torch", "cpu", torch.float32, False), "triton": ("triton", "cpu", torch.float32, False),
         "gpu-flashinfer": ("triton", "cuda", torch.bfloat16, True)}


def _setup(impl: str):
    local_impl, dev, dtype, flashinfer = IMPLS[impl]
    # layer 0: kv head 0 global; layer 1: kv heads 0 and 2 global
    profile = HeadProfile.from_classes(FP, [[True, False, False], [True, False, True]], window=WINDOW,
                                       sink=SINK, method="test")
    layout = RankHeadLayout(profile)
    pool = HeadSplitKVPool(layout=layout, size=200, size_swa=120, rows=4, sink_blocks=2, page_size=1,
                           dtype=dtype, head_dim=D, device=dev)
    alloc = SWATokenToKVPoolAllocator(200, 120, page_size=1, dtype=dtype, device=dev, kvcache=pool,
                                      need_sort=False)
    req_pool = ReqToTokenPool(size=4, max_context_len=64, device=dev, enable_memory_saver=False)
    for buf in pool.swa_kv_pool.k + pool.swa_kv_pool.v:
        buf[0] = float("nan")  # the padding slot: what a freed window slot maps to
    runner = types.SimpleNamespace(token_to_kv_pool=pool, req_to_token_pool=req_pool, device=dev,
                                   sliding_window_size=WINDOW)
    global_extend = None
    if flashinfer:
        from redknot_sglang.attention.global_extend import FlashInferGlobalExtend

        global_extend = FlashInferGlobalExtend(torch.device(dev), dtype)
    backend = HeadSplitAttnBackend(runner, layout, "torch_native", global_extend)
    backend.local_impl = local_impl
    layers = [RadixAttention(HKV * GROUP, D, D ** -0.5, HKV, layer_id=i) for i in range(2)]
    return layout, pool, alloc, req_pool, backend, layers


def _reference(layout, layer, q, k_all, v_all, q_pos):
    """float64 per-head masked attention; q [T, Hq, D], k_all/v_all [S, Hkv, D] (placed order)."""
    heads = layout.layers[layer]
    out = torch.empty(q.shape, dtype=torch.float64)
    kp = torch.arange(k_all.shape[0])[None, :]
    qp = torch.as_tensor(q_pos)[:, None]
    for qh in range(q.shape[1]):
        h = qh // GROUP
        mask = kp <= qp
        if h >= heads.num_global:
            w, s = heads.window[h - heads.num_global], heads.sink[h - heads.num_global]
            mask = mask & ((kp < s) | (kp >= qp - w + 1))
        scores = (q[:, qh].double() @ k_all[:, h].double().T) * D ** -0.5
        out[:, qh] = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v_all[:, h].double()
    return out


@pytest.mark.parametrize("impl", ["torch", "triton", pytest.param("gpu-flashinfer", marks=pytest.mark.gpu)])
def test_extend_then_decode_matches_reference(impl):
    torch.manual_seed(0)
    _, dev, dtype, _ = IMPLS[impl]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    layout, pool, alloc, req_pool, backend, layers = _setup(impl)

    def rnd(*shape):  # values the pool's dtype holds exactly, kept in float32 for the reference
        return torch.randn(*shape).to(dtype).float()

    def on(x, cast=False):
        return x.to(dev, dtype) if cast else x.to(dev)
    lens = [20, 9]
    rows = [1, 2]
    slots = alloc.alloc(sum(lens))
    req_pool.req_to_token[1, :20] = slots[:20].int()
    req_pool.req_to_token[2, :9] = slots[20:].int()
    k_true = {r: [rnd(n, HKV, D) for _ in layers] for r, n in zip(rows, lens)}
    v_true = {r: [rnd(n, HKV, D) for _ in layers] for r, n in zip(rows, lens)}
    fb = ForwardBatch(
        forward_mode=ForwardMode.EXTEND, batch_size=2, input_ids=on(torch.zeros(29, dtype=torch.long)),
        req_pool_indices=on(torch.tensor(rows)), seq_lens=on(torch.tensor(lens)), out_cache_loc=slots, seq_lens_sum=29,
        positions=on(torch.cat([torch.arange(20), torch.arange(9)])), extend_seq_lens=on(torch.tensor(lens)),
        extend_prefix_lens=on(torch.tensor([0, 0])), extend_start_loc=on(torch.tensor([0, 20])),
        extend_seq_lens_cpu=lens, extend_prefix_lens_cpu=[0, 0], seq_lens_cpu=torch.tensor(lens),
    )
    backend.init_forward_metadata(fb)
    for i, layer in enumerate(layers):
        q = rnd(29, HKV * GROUP, D)
        k = on(torch.cat([k_true[1][i], k_true[2][i]]), cast=True)
        v = on(torch.cat([v_true[1][i], v_true[2][i]]), cast=True)
        o = backend.forward_extend(on(q, cast=True).view(29, -1), k, v, layer, fb).view(29, -1, D).cpu()
        ref = torch.cat([_reference(layout, i, q[:20], k_true[1][i], v_true[1][i], range(20)),
                         _reference(layout, i, q[20:], k_true[2][i], v_true[2][i], range(9))])
        assert not torch.isnan(o).any()
        torch.testing.assert_close(o.double(), ref, **tol)
    # the sink rows hold each request's first tokens' local-head K
    for i in range(2):
        g = layout.layers[i].num_global
        torch.testing.assert_close(pool.k_sink[i][1, :SINK].float().cpu(), k_true[1][i][:SINK, g:])

    freed = SINK  # request 1 decodes; its out-of-window slots are freed once each, as SGLang does
    for step in range(3):
        pos = 20 + step
        alloc.free_swa(req_pool.req_to_token[1, freed : pos - WINDOW].long())
        freed = pos - WINDOW
        slot = alloc.alloc(1)
        req_pool.req_to_token[1, pos] = slot.int()
        fb = ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=1, input_ids=on(torch.zeros(1, dtype=torch.long)),
            req_pool_indices=on(torch.tensor([1])), seq_lens=on(torch.tensor([pos + 1])), out_cache_loc=slot,
            seq_lens_sum=pos + 1, positions=on(torch.tensor([pos])), seq_lens_cpu=torch.tensor([pos + 1]),
        )
        backend.init_forward_metadata(fb)
        for i, layer in enumerate(layers):
            k_new, v_new, q = rnd(1, HKV, D), rnd(1, HKV, D), rnd(1, HKV * GROUP, D)
            k_true[1][i] = torch.cat([k_true[1][i], k_new])
            v_true[1][i] = torch.cat([v_true[1][i], v_new])
            o = backend.forward_decode(on(q, cast=True).view(1, -1), on(k_new, cast=True), on(v_new, cast=True),
                                       layer, fb).view(1, -1, D).cpu()
            ref = _reference(layout, i, q, k_true[1][i], v_true[1][i], [pos])
            assert not torch.isnan(o).any()
            torch.testing.assert_close(o.double(), ref, **tol)
