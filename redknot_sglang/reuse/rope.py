"""What relocation needs to know about a model's RoPE, read from SGLang's own rotary module, and a
torch implementation (CPU path and reference for ``redknot_sglang.kernels.rope_relocate``)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class RopeSpec:
    inv_freq: torch.Tensor  # [rotary_dim / 2] float32, with the variant's frequency scaling
    rotary_dim: int
    neox: bool

    @classmethod
    def of(cls, rope: torch.nn.Module) -> RopeSpec:
        """From an SGLang ``RotaryEmbedding`` (any variant that overrides ``_compute_inv_freq``)."""
        return cls(inv_freq=rope._compute_inv_freq(rope.base).float().cpu(),
                   rotary_dim=rope.rotary_dim, neox=rope.is_neox_style)


def relocate_torch(k: torch.Tensor, spec: RopeSpec, delta: int) -> torch.Tensor:
    """``k`` ``[tokens, heads, head_dim]`` rotated by ``delta`` positions (a new tensor)."""
    from redknot_sglang.kernels.rope_relocate import relocation_cos_sin

    cos, sin = relocation_cos_sin(spec.inv_freq, delta, k.device)
    half = spec.rotary_dim // 2
    out = k.clone()
    x = k[..., : spec.rotary_dim].float()
    if spec.neox:
        x1, x2 = x[..., :half], x[..., half:]
        rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        rot = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    out[..., : spec.rotary_dim] = rot.to(k.dtype)
    return out
