"""Re-rotate cached K to a new position: the RoPE delta of position-independent reuse.

RoPE turns each pair of a head's rotary dimensions by ``position * inv_freq[i]``; rotations compose,
so K computed at position ``p`` becomes K at ``p + delta`` by one more turn of
``delta * inv_freq[i]``. The turn is a pure rotation: a rope variant's magnitude factor (YaRN's
``mscale``, Llama-3's ``attention_factor``) is already in the cached K and must not be applied
again. Values are position-free and are not touched. Models with q/k norm apply RoPE after the
norm, so their cached K relocates the same way.

``cos``/``sin`` of the turn are computed on the host in float64 (``delta * inv_freq`` reaches 1e5
radians, beyond float32's precision) and passed as ``[rot_dim / 2]`` float32 vectors; the kernel
rotates ``k_buf[slots]`` in place, one program per (token block, head).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _relocate(K, Slots, Cos, Sin, n_tokens, s_kn, s_kh,
              HALF: tl.constexpr, NEOX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = t < n_tokens
    r = tl.arange(0, BLOCK_R)
    mask_r = r < HALF
    slot = tl.load(Slots + t, mask=mask_t, other=0)
    c = tl.load(Cos + r, mask=mask_r, other=1.0)[None, :]
    s = tl.load(Sin + r, mask=mask_r, other=0.0)[None, :]
    base = K + slot[:, None] * s_kn + h * s_kh
    if NEOX:  # pairs (i, i + rot/2)
        off1 = r[None, :]
        off2 = r[None, :] + HALF
    else:  # pairs (2i, 2i + 1)
        off1 = 2 * r[None, :]
        off2 = 2 * r[None, :] + 1
    m = mask_t[:, None] & mask_r[None, :]
    x1 = tl.load(base + off1, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(base + off2, mask=m, other=0.0).to(tl.float32)
    tl.store(base + off1, (x1 * c - x2 * s).to(K.dtype.element_ty), mask=m)
    tl.store(base + off2, (x2 * c + x1 * s).to(K.dtype.element_ty), mask=m)


def relocation_cos_sin(inv_freq: torch.Tensor, delta: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the turn by ``delta`` positions, computed in float64."""
    angle = inv_freq.double().cpu() * float(delta)
    return angle.cos().float().to(device), angle.sin().float().to(device)


def rope_relocate(k_buf: torch.Tensor, slots: torch.Tensor, inv_freq: torch.Tensor, delta: int, *,
                  rotary_dim: int, neox: bool) -> None:
    """Rotate ``k_buf[slots]`` (``[slots, heads, head_dim]``) by ``delta`` positions, in place."""
    if delta == 0 or slots.numel() == 0:
        return
    cos, sin = relocation_cos_sin(inv_freq, delta, k_buf.device)
    half = rotary_dim // 2
    block_t = 32
    grid = (triton.cdiv(slots.numel(), block_t), k_buf.shape[1])
    _relocate[grid](k_buf, slots, cos, sin, slots.numel(), k_buf.stride(0), k_buf.stride(1),
                    HALF=half, NEOX=neox, BLOCK_T=block_t, BLOCK_R=triton.next_power_of_2(half))
