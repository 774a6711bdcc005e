"""HeadSplitAttnBackend on SGLang's real pool classes (CPU): one extend and three decode steps of two
requests, checked per head against the float64 masked-attention reference. Global heads run on
SGLang's torch_native backend; local heads on the torch path and on the Triton kernels (interpreter
on CPU). Window slots that slid out are freed through SGLang's allocator (``free_swa``) and slot 0
holds NaN, so a read of a freed slot shows. On the GPU (bf16): local heads on the Triton kernels and
the global heads' extend on FlashInfer (a plan per layer's global head count: 1 and 2 here). A
recompute set (queries at scattered positions) takes the by-position path: the torch path on CPU,
the position-causal Triton kernels for both head classes (interpreter on CPU, and on the GPU)."""

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


def _extend_batch(on, rows: list[int], seq_lens: list[int], positions: list[list[int]], out_cache_loc) -> ForwardBatch:
    """An extend of request ``rows[b]`` (``seq_lens[b]`` tokens) with queries at ``positions[b]``:
    its last positions, or a recompute set scattered among KV already stored."""
    q_lens = [len(p) for p in positions]
    prefix = [s - q for s, q in zip(seq_lens, q_lens)]
    return ForwardBatch(
        forward_mode=ForwardMode.EXTEND, batch_size=len(rows), input_ids=on(torch.zeros(sum(q_lens), dtype=torch.long)),
        req_pool_indices=on(torch.tensor(rows)), seq_lens=on(torch.tensor(seq_lens)), out_cache_loc=out_cache_loc,
        seq_lens_sum=sum(seq_lens), positions=on(torch.tensor([p for ps in positions for p in ps])),
        extend_seq_lens=on(torch.tensor(q_lens)), extend_prefix_lens=on(torch.tensor(prefix)),
        extend_start_loc=on(torch.tensor([sum(q_lens[:b]) for b in range(len(rows))])),
        extend_seq_lens_cpu=q_lens, extend_prefix_lens_cpu=prefix, seq_lens_cpu=torch.tensor(seq_lens),
    )


def _impl_case(impl: str):
    """The backend and its pools, a tolerance, and helpers: random values the pool's dtype holds
    exactly (kept in float32 for the reference) and a move to the case's device."""
    _, dev, dtype, _ = IMPLS[impl]
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)

    def rnd(*shape):
        return torch.randn(*shape).to(dtype).float()

    def on(x, cast=False):
        return x.to(dev, dtype) if cast else x.to(dev)
    return (*_setup(impl), tol, rnd, on)


def _prefill(backend, layers, layout, alloc, req_pool, rnd, on, lens: dict[int, int], tol):
    """Requests (row -> length) prefilled in one extend, each layer's output checked against the
    reference; returns their true K/V per row and layer."""
    rows = list(lens)
    slots = alloc.alloc(sum(lens.values()))
    start = 0
    for r in rows:
        req_pool.req_to_token[r, : lens[r]] = slots[start : start + lens[r]].int()
        start += lens[r]
    k_true = {r: [rnd(lens[r], HKV, D) for _ in layers] for r in rows}
    v_true = {r: [rnd(lens[r], HKV, D) for _ in layers] for r in rows}
    fb = _extend_batch(on, rows, [lens[r] for r in rows], [list(range(lens[r])) for r in rows], slots)
    backend.init_forward_metadata(fb)
    for i, layer in enumerate(layers):
        q = rnd(start, HKV * GROUP, D)
        k = on(torch.cat([k_true[r][i] for r in rows]), cast=True)
        v = on(torch.cat([v_true[r][i] for r in rows]), cast=True)
        o = backend.forward_extend(on(q, cast=True).view(start, -1), k, v, layer, fb).view(start, -1, D).cpu()
        ref, at = [], 0
        for r in rows:
            ref.append(_reference(layout, i, q[at : at + lens[r]], k_true[r][i], v_true[r][i], range(lens[r])))
            at += lens[r]
        assert not torch.isnan(o).any()
        torch.testing.assert_close(o.double(), torch.cat(ref), **tol)
    return k_true, v_true


IMPL_PARAMS = ["torch", "triton", pytest.param("gpu-flashinfer", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_extend_then_decode_matches_reference(impl):
    torch.manual_seed(0)
    layout, pool, alloc, req_pool, backend, layers, tol, rnd, on = _impl_case(impl)
    k_true, v_true = _prefill(backend, layers, layout, alloc, req_pool, rnd, on, {1: 20, 2: 9}, tol)
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


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_one_token_extends_over_cached_prefixes_match_reference(impl, monkeypatch):
    """Two prompts sent again (each one new token after its cached prefix) in one extend: on CUDA
    (and Triton on CPU) the decode launch serves it."""
    from redknot_sglang.kernels import segpaged

    launches = []
    decode = segpaged.segpaged_decode
    monkeypatch.setattr(segpaged, "segpaged_decode", lambda *a, **kw: launches.append(1) or decode(*a, **kw))
    torch.manual_seed(0)
    layout, pool, alloc, req_pool, backend, layers, tol, rnd, on = _impl_case(impl)
    lens = {1: 20, 2: 9}
    k_true, v_true = _prefill(backend, layers, layout, alloc, req_pool, rnd, on, lens, tol)
    rows = list(lens)
    slots = alloc.alloc(len(rows))
    for r, slot in zip(rows, slots):
        req_pool.req_to_token[r, lens[r]] = slot.int()
    fb = _extend_batch(on, rows, [lens[r] + 1 for r in rows], [[lens[r]] for r in rows], slots)
    backend.init_forward_metadata(fb)
    for i, layer in enumerate(layers):
        k_new, v_new, q = rnd(len(rows), HKV, D), rnd(len(rows), HKV, D), rnd(len(rows), HKV * GROUP, D)
        o = backend.forward_extend(on(q, cast=True).view(len(rows), -1), on(k_new, cast=True), on(v_new, cast=True),
                                   layer, fb).view(len(rows), -1, D).cpu()
        for b, r in enumerate(rows):
            k_all, v_all = torch.cat([k_true[r][i], k_new[b : b + 1]]), torch.cat([v_true[r][i], v_new[b : b + 1]])
            ref = _reference(layout, i, q[b : b + 1], k_all, v_all, [lens[r]])
            assert not torch.isnan(o[b]).any()
            torch.testing.assert_close(o[b : b + 1].double(), ref, **tol)
    assert len(launches) == (0 if impl == "torch" else len(layers))


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_recompute_set_attends_by_position(impl):
    """An extend holding a recompute set (the backend's by-position path): queries at scattered
    positions of a request whose K/V is all stored, their fresh K/V overwriting the stored entries
    (a sink position among them), each query attending causally by position to stored and
    recomputed keys: equal to the float64 reference over the updated K/V, both head classes, the
    sink row updated."""
    torch.manual_seed(1)
    layout, pool, alloc, req_pool, backend, layers, tol, rnd, on = _impl_case(impl)
    k_true, v_true = _prefill(backend, layers, layout, alloc, req_pool, rnd, on, {1: 20}, tol)
    positions = [1, 5, 6, 11, 19]
    fb = _extend_batch(on, [1], [20], [positions], req_pool.req_to_token[1, positions].long())
    backend.init_forward_metadata(fb)
    backend._scattered = True  # what DocumentReuse.begin_forward sets for a forward with a recompute set
    for i, layer in enumerate(layers):
        k_new, v_new, q = rnd(5, HKV, D), rnd(5, HKV, D), rnd(5, HKV * GROUP, D)
        k_true[1][i][positions], v_true[1][i][positions] = k_new, v_new
        o = backend.forward_extend(on(q, cast=True).view(5, -1), on(k_new, cast=True), on(v_new, cast=True),
                                   layer, fb).view(5, -1, D).cpu()
        assert not torch.isnan(o).any()
        torch.testing.assert_close(o.double(), _reference(layout, i, q, k_true[1][i], v_true[1][i], positions), **tol)
        g = layout.layers[i].num_global
        torch.testing.assert_close(pool.k_sink[i][1, :SINK].float().cpu(), k_true[1][i][:SINK, g:])
