"""RoPE relocation: K computed at position p and re-rotated by d equals K computed at p + d, using
SGLang's own rotary modules (standard and Llama-3 scaled; neox and interleaved; partial rotary),
to bf16 tolerance, for the torch path and the Triton kernel (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.reuse.rope import RopeSpec, relocate_torch

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}


@pytest.fixture(scope="module", autouse=True)
def sglang_context():
    from sglang.srt.plugins import load_plugins
    from sglang.srt.runtime_context import get_context

    load_plugins()  # the CPU RoPE hook lets SGLang build rotary modules on this host
    with get_context().override_server_args():  # rotary modules read the published config
        yield


def _rope(head_dim: int, rotary_dim: int, neox: bool, scaling, base: float):
    from sglang.srt.layers.rotary_embedding import get_rope

    return get_rope(head_dim, rotary_dim, 140000, base, is_neox_style=neox, rope_scaling=scaling,
                    dtype=torch.float32).to(DEVICE)


def _k_at(rope, k_raw: torch.Tensor, start: int) -> torch.Tensor:
    """K of ``k_raw`` (``[n, heads, head_dim]``) rotated at positions start.."""
    n, heads, d = k_raw.shape
    pos = torch.arange(start, start + n, device=DEVICE)
    q = torch.zeros(n, d, device=DEVICE)
    _, k = rope.forward_native(pos, q, k_raw.reshape(n, heads * d).clone())
    return k.reshape(n, heads, d)


CASES = [
    # head_dim, rotary_dim, neox, scaling, base, p, delta
    (128, 128, True, None, 10000.0, 0, 5000),
    (128, 128, True, LLAMA3, 500000.0, 300, 32000),
    (64, 64, True, None, 100000.0, 4000, -3000),
    (64, 32, False, None, 10000.0, 17, 90000),  # interleaved, partial rotary
]


@pytest.mark.parametrize("head_dim, rotary_dim, neox, scaling, base, p, delta", CASES)
def test_relocated_k_equals_k_computed_at_the_new_offset(head_dim, rotary_dim, neox, scaling, base, p, delta):
    torch.manual_seed(0)
    rope = _rope(head_dim, rotary_dim, neox, scaling, base)
    spec = RopeSpec.of(rope)
    k_raw = torch.randn(40, 4, head_dim, device=DEVICE)
    target = _k_at(rope, k_raw, p + delta).bfloat16()
    moved = relocate_torch(_k_at(rope, k_raw, p).bfloat16(), spec, delta)
    torch.testing.assert_close(moved.float(), target.float(), rtol=2e-2, atol=2e-2)

    from redknot_sglang.kernels.rope_relocate import rope_relocate

    buf = torch.full((64, 4, head_dim), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    slots = torch.randperm(63, device=DEVICE)[:40] + 1
    buf[slots] = _k_at(rope, k_raw, p).bfloat16()
    rope_relocate(buf, slots, spec.inv_freq, delta, rotary_dim=spec.rotary_dim, neox=spec.neox)
    torch.testing.assert_close(buf[slots].float(), target.float(), rtol=2e-2, atol=2e-2)
    untouched = torch.ones(64, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert torch.isnan(buf[untouched].float()).all()  # only the given slots were written


def test_relocation_is_exact_in_float64_composition():
    """A turn by d then by -d is the identity (float32 kernel math on float64 angles)."""
    rope = _rope(128, 128, True, LLAMA3, 500000.0)
    spec = RopeSpec.of(rope)
    k = torch.randn(8, 2, 128, device=DEVICE)
    back = relocate_torch(relocate_torch(k, spec, 123457), spec, -123457)
    torch.testing.assert_close(back, k, rtol=1e-5, atol=1e-5)
