"""SegPaged local-head attention against the float64 reference of per-head masked attention, on
random cases whose unread slots hold NaN and whose outputs are poisoned before each run: the torch
path (CPU serving) and the Triton kernels (interpreter on CPU at small sizes, GPU at real sizes)."""

from __future__ import annotations

import random

import pytest
import torch

from redknot_sglang.attention.local_torch import local_attention_torch
from redknot_sglang.testing.segpaged_case import full_buffers, make_case, reference

CUDA = torch.cuda.is_available()


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in output: a freed slot or an unwritten output was read"
    return float((out.double().cpu() - ref).norm() / ref.norm())


def _random_shape(rng: random.Random, decode: bool):
    batch = rng.randint(1, 4)
    seq = [rng.randint(1, 70) for _ in range(batch)]
    q_lens = [1 if decode else rng.randint(1, s) for s in seq]
    return seq, q_lens


HEADS = dict(window=[4, 9, 32], sink=[0, 2, 5])  # head 0: no sink; head 2: window beyond short seqs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decode", [True, False])
def test_torch_path_matches_reference(seed, decode):
    seq, q_lens = _random_shape(random.Random(seed), decode)
    case = make_case(seq, q_lens, **HEADS, group=2, head_dim=16, seed=seed)
    out = torch.full_like(case.q, float("nan"))
    local_attention_torch(
        case.q, out, case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token, case.full_to_swa,
        case.rows.tolist(), case.seq_lens.tolist(), case.q_lens.tolist(), HEADS["window"], HEADS["sink"], case.scale,
    )
    assert _rel_err(out, reference(case)) < 1e-6


def _run_kernel(case, decode: bool, num_splits=None, tuning=None):
    from redknot_sglang.kernels import segpaged

    out = torch.full_like(case.q, float("nan"))
    if decode:
        segpaged.segpaged_decode(
            case.q, out, case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token, case.full_to_swa,
            case.rows, case.seq_lens, case.window, case.sink, case.scale, case.max_keys, num_splits, tuning,
        )
    else:
        segpaged.segpaged_extend(
            case.q, out, case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token, case.full_to_swa,
            case.rows, case.seq_lens, case.q_starts, case.q_lens, int(case.q_lens.max()), case.window, case.sink,
            case.scale,
        )
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("group", [2, 3])
def test_triton_kernels_match_reference_small(seed, decode, group):
    """Runs under TRITON_INTERPRET=1 on CPU (conftest), natively on a GPU. Group 3 (SmolLM2's GQA)
    is not a power of two: the tiles pad it."""
    seq, q_lens = _random_shape(random.Random(100 + seed), decode)
    case = make_case(seq, q_lens, **HEADS, group=group, head_dim=32, seed=seed, device="cuda" if CUDA else "cpu")
    assert _rel_err(_run_kernel(case, decode), reference(case)) < 1e-4


def test_decode_splits_agree():
    """The split count only changes how the key range is cut, not the result."""
    case = make_case([67, 5], [1, 1], **HEADS, group=2, head_dim=32, seed=7, device="cuda" if CUDA else "cpu")
    ref = reference(case)
    for splits in (1, 2, 3):
        assert _rel_err(_run_kernel(case, True, splits), ref) < 1e-4


def test_decode_rescales_across_key_tiles():
    """One split walking several key tiles (16 keys each) whose maxima differ: the running max and
    the rescale of what was accumulated before must be right, not only one tile's softmax."""
    case = make_case([150, 97], [1, 1], window=[100, 60], sink=[5, 3], group=2, head_dim=32, seed=11,
                     device="cuda" if CUDA else "cpu")
    case.q *= 4  # sharp attention: tiles' maxima far apart, a missing rescale shows
    assert _rel_err(_run_kernel(case, True, 1, {"block_n": 16}), reference(case)) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("decode", [True, False])
def test_triton_kernels_match_reference_real_sizes(decode):
    """Llama-3.1-8B-like local heads (GQA 4, head_dim 128, bf16), window 1024 + sink 64, long contexts."""
    seq = [32768, 9000, 1500, 700]
    q_lens = [1] * 4 if decode else [512, 300, 1500, 64]
    case = make_case(seq, q_lens, window=[1024] * 7, sink=[64] * 7, group=4, head_dim=128,
                     dtype=torch.bfloat16, device="cuda", seed=3)
    assert _rel_err(_run_kernel(case, decode), reference(case)) < 1e-2


def test_full_decode_reads_every_key_from_the_full_slots():
    """Global heads' decode: the same kernel, unmapped, window 'every key', sink 0, over buffers
    indexed by full slots (unused slots NaN); splits sized by the context length."""
    from redknot_sglang.kernels import segpaged

    dev = "cuda" if CUDA else "cpu"
    heads = 2
    case = make_case([67, 5, 130], [1, 1, 1], window=[segpaged.FULL_WINDOW] * heads, sink=[0] * heads, group=2,
                     head_dim=32, seed=3, device=dev)
    k_full, v_full = full_buffers(case)
    window, sink = segpaged.full_window(heads, dev)
    out = torch.full_like(case.q, float("nan"))
    segpaged.full_decode(case.q, out, k_full, v_full, case.req_to_token, case.rows, case.seq_lens, window, sink,
                         case.scale, max_keys=case.req_to_token.shape[1])
    assert _rel_err(out, reference(case)) < 1e-4


def _scattered(case, seed: int):
    """A recompute set: a random increasing subset of each request's positions (the case is a
    full prefill, so every position is a query and every key is stored), with the queries'
    offsets, counts and positions, and the rows of ``reference(case)`` they must equal."""
    rng = random.Random(seed)
    picked, positions, lens = [], [], []
    for start, n in zip(case.q_starts.tolist(), case.q_lens.tolist()):
        pos = sorted(rng.sample(range(n), max(1, n // 3)))
        picked += [start + p for p in pos]
        positions += pos
        lens.append(len(pos))
    dev = case.q.device
    lens_t = torch.tensor(lens, dtype=torch.int32, device=dev)
    idx = torch.tensor(picked)
    return (case.q[idx.to(dev)], lens_t, (torch.cumsum(lens_t, 0) - lens_t).int(),
            torch.tensor(positions, dtype=torch.int32, device=dev), idx)


def _extend_scattered(case, heads: str, seed: int):
    """(kernel output, reference rows) for a scattered recompute set of ``case``."""
    from redknot_sglang.kernels import segpaged

    q, q_lens, q_starts, q_pos, idx = _scattered(case, seed)
    out = torch.full_like(q, float("nan"))
    args = (case.rows, case.seq_lens, q_starts, q_lens, int(q_lens.max()), case.window, case.sink, case.scale)
    if heads == "local":
        segpaged.segpaged_extend(q, out, case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token,
                                 case.full_to_swa, *args, q_positions=q_pos)
    else:
        segpaged.full_extend(q, out, *full_buffers(case), case.req_to_token, *args, q_positions=q_pos)
    return out, reference(case)[idx]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("heads", ["local", "global"])
def test_extend_at_scattered_positions_is_causal_by_position(seed, heads):
    """Selective recompute: queries at scattered positions among stored KV attend to every key up
    to their own position (local heads: within sink + window; global heads over the full slots),
    equal to the float64 reference's rows for those positions."""
    from redknot_sglang.kernels import segpaged

    dev = "cuda" if CUDA else "cpu"
    seq = [90, 37, 140][: seed + 1]
    shape = HEADS if heads == "local" else dict(window=[segpaged.FULL_WINDOW] * 3, sink=[0] * 3)
    case = make_case(seq, seq, **shape, group=2, head_dim=32, seed=seed, device=dev)
    assert _rel_err(*_extend_scattered(case, heads, seed)) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("heads", ["local", "global"])
def test_extend_at_scattered_positions_real_sizes(heads):
    """The recompute set's extend at serving sizes (bf16, GQA 4, head_dim 128): a third of the
    positions of 4K-6K-token requests, local heads with window 1024 + sink 64, or global heads."""
    from redknot_sglang.kernels import segpaged

    seq = [6000, 4100]
    shape = (dict(window=[1024] * 4, sink=[64] * 4) if heads == "local"
             else dict(window=[segpaged.FULL_WINDOW] * 4, sink=[0] * 4))
    case = make_case(seq, seq, **shape, group=4, head_dim=128, dtype=torch.bfloat16, device="cuda", seed=5)
    assert _rel_err(*_extend_scattered(case, heads, 5)) < 1e-2
