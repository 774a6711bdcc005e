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
# float32 cases of the Triton kernels: exact dots under the interpreter (CPU); on a GPU tl.dot runs
# TF32 (7.7e-4 to 1.0e-3 relative error measured on an H200)
F32_TOL = 2e-3 if CUDA else 1e-4


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


def _run_kernel(case, decode: bool, num_splits=None, tuning=None, tile_rows=None):
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
            case.scale, tile_rows=tile_rows,
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
    assert _rel_err(_run_kernel(case, decode), reference(case)) < F32_TOL
    if not decode:  # the long extends' 128-row tiles (queries spanning several key tiles' windows)
        assert _rel_err(_run_kernel(case, decode, tile_rows=128), reference(case)) < F32_TOL


def test_decode_splits_agree():
    """The split count only changes how the key range is cut, not the result."""
    case = make_case([67, 5], [1, 1], **HEADS, group=2, head_dim=32, seed=7, device="cuda" if CUDA else "cpu")
    ref = reference(case)
    for splits in (1, 2, 3):
        assert _rel_err(_run_kernel(case, True, splits), ref) < F32_TOL


def test_decode_rescales_across_key_tiles():
    """One split walking several key tiles (16 keys each) whose maxima differ: the running max and
    the rescale of what was accumulated before must be right, not only one tile's softmax."""
    case = make_case([150, 97], [1, 1], window=[100, 60], sink=[5, 3], group=2, head_dim=32, seed=11,
                     device="cuda" if CUDA else "cpu")
    case.q *= 4  # sharp attention: tiles' maxima far apart, a missing rescale shows
    assert _rel_err(_run_kernel(case, True, 1, {"block_n": 16}), reference(case)) < F32_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("decode", [True, False])
def test_triton_kernels_match_reference_real_sizes(decode):
    """Llama-3.1-8B-like local heads (GQA 4, head_dim 128, bf16), window 1024 + sink 64, long contexts."""
    seq = [32768, 9000, 1500, 700]
    q_lens = [1] * 4 if decode else [512, 300, 1500, 64]
    case = make_case(seq, q_lens, window=[1024] * 7, sink=[64] * 7, group=4, head_dim=128,
                     dtype=torch.bfloat16, device="cuda", seed=3)
    assert _rel_err(_run_kernel(case, decode), reference(case)) < 1e-2


def _layer_decode(case, n_global: int, **kw):
    """One decode launch over a layer whose first ``n_global`` heads are global (read from the
    full slots, unmapped) and the rest local (sink row + mapped window slots)."""
    from redknot_sglang.kernels import segpaged

    k_full, v_full = full_buffers(case, case.q.dtype)
    g = n_global
    out = torch.full_like(case.q, float("nan"))
    segpaged.segpaged_decode(case.q, out, case.k_win[:, g:], case.v_win[:, g:], case.k_sink[:, :, g:],
                             case.v_sink[:, :, g:], case.req_to_token, case.full_to_swa, case.rows, case.seq_lens,
                             case.window, case.sink, case.scale, case.max_keys_of(slice(g, None)),
                             global_kv=(k_full[:, :g], v_full[:, :g]), **kw)
    return out


def _layer_case(seq, n_global: int, local: dict, *, seed: int, **kw):
    from redknot_sglang.kernels import segpaged

    return make_case(seq, [1] * len(seq), window=[segpaged.FULL_WINDOW] * n_global + local["window"],
                     sink=[0] * n_global + local["sink"], seed=seed, device="cuda" if CUDA else "cpu", **kw)


@pytest.mark.parametrize("n_global,local,group", [
    (2, HEADS, 2), (2, dict(window=[], sink=[]), 2), (1, dict(window=[9], sink=[2]), 2),
    (3, dict(window=[9, 40], sink=[2, 0]), 3),
])
def test_layer_decode_global_and_local_heads_in_one_launch(n_global, local, group):
    """A layer's decode in one launch: global heads (all of a layer's in one program, 3 padded to
    a tile of 4) over every key of the full slots (the rest of that pool NaN), local heads over
    sink + window, each equal to the float64 reference; a layer of global heads only too; a GQA
    group that is no power of two."""
    case = _layer_case([67, 5, 130], n_global, local, seed=3, group=group, head_dim=32)
    assert _rel_err(_layer_decode(case, n_global), reference(case)) < F32_TOL


def test_layer_decode_splits_agree_and_rescale():
    """Global and local heads cut into different split counts, each split walking several key
    tiles of sharp attention: the result does not depend on the cut, the rescale across tiles and
    the reduce over each class's own split count are right."""
    case = _layer_case([150, 97], 2, dict(window=[100, 60], sink=[5, 3]), seed=11, group=2, head_dim=32)
    case.q *= 4
    ref = reference(case)
    for splits, global_splits in ((1, 1), (1, 3), (3, 2), (2, 5)):
        out = _layer_decode(case, 2, num_splits=splits, global_splits=global_splits, tuning={"block_n": 16, "global_block_cols": 16})
        assert _rel_err(out, ref) < F32_TOL, (splits, global_splits)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_layer_decode_real_sizes(batch):
    """Llama-3.1-8B shape (GQA 4, head_dim 128, bf16): 2 global heads over 32K-token requests and 6
    local heads (window 1024, sink 64) in one launch, with the server's split counts."""
    seq = [32768, 9000, 1500, 700, 20000, 64, 4000, 31000][:batch]
    case = _layer_case(seq, 2, dict(window=[1024] * 6, sink=[64] * 6), seed=5, group=4, head_dim=128,
                       dtype=torch.bfloat16)
    assert _rel_err(_layer_decode(case, 2), reference(case)) < 1e-2


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


def _extend_scattered(case, heads: str, seed: int, tile_rows=None):
    """(kernel output, reference rows) for a scattered recompute set of ``case``."""
    from redknot_sglang.kernels import segpaged

    q, q_lens, q_starts, q_pos, idx = _scattered(case, seed)
    out = torch.full_like(q, float("nan"))
    args = (case.rows, case.seq_lens, q_starts, q_lens, int(q_lens.max()), case.window, case.sink, case.scale)
    if heads == "local":
        segpaged.segpaged_extend(q, out, case.k_win, case.v_win, case.k_sink, case.v_sink, case.req_to_token,
                                 case.full_to_swa, *args, q_positions=q_pos, tile_rows=tile_rows)
    else:
        segpaged.full_extend(q, out, *full_buffers(case), case.req_to_token, *args, q_positions=q_pos,
                             tile_rows=tile_rows)
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
    assert _rel_err(*_extend_scattered(case, heads, seed)) < F32_TOL
    assert _rel_err(*_extend_scattered(case, heads, seed, tile_rows=128)) < F32_TOL  # long extends' tiles


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
