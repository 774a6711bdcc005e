"""What one tensor-parallel rank holds of a head profile, and in which order.

With ``--tp N`` SGLang gives each rank a contiguous slice of the KV heads (or, when there are fewer
KV heads than ranks, one replicated head: rank ``r`` holds head ``r // (N / num_kv_heads)``).
Within the rank we reorder each layer's KV heads so the global ones come first::

    rank-local kv heads of layer l, after the permutation
    +---------------------------+-------------------------------------------+
    | global heads  [0, G_l)    | local heads  [G_l, H)                     |
    | full-length KV            | sink + window KV, each head its own W, S  |
    +---------------------------+-------------------------------------------+

``perm[l][j]`` is the rank-local (checkpoint-order) index of the head placed at position ``j``.
Query heads follow their KV head (GQA groups move together). Global heads may be unevenly spread
over ranks and layers; :meth:`RankHeadLayout.summary` reports it.
"""

from __future__ import annotations

import dataclasses
from redknot_sglang.heads.profile import HeadProfile


@dataclasses.dataclass(frozen=True)
class LayerHeads:
    """One layer's rank-local heads. ``window``/``sink`` are per local head, in placed order."""

    perm: tuple[int, ...]
    num_global: int
    window: tuple[int, ...]
    sink: tuple[int, ...]

    @property
    def num_local(self) -> int:
        return len(self.perm) - self.num_global

    @property
    def max_keys(self) -> int:
        """Most keys a local head of this layer reads for one query (sink + window)."""
        return max((w + s for w, s in zip(self.window, self.sink)), default=0)


def kv_heads_of_rank(num_kv_heads: int, tp_rank: int, tp_size: int) -> tuple[int, ...]:
    """Checkpoint indices of the KV heads that ``tp_rank`` holds (SGLang's QKVParallelLinear rule)."""
    if tp_size >= num_kv_heads:
        if tp_size % num_kv_heads:
            raise ValueError(f"tp_size {tp_size} is not a multiple of num_kv_heads {num_kv_heads}")
        return (tp_rank // (tp_size // num_kv_heads),)
    if num_kv_heads % tp_size:
        raise ValueError(f"num_kv_heads {num_kv_heads} is not divisible by tp_size {tp_size}")
    per_rank = num_kv_heads // tp_size
    return tuple(range(tp_rank * per_rank, (tp_rank + 1) * per_rank))


class RankHeadLayout:
    """The per-layer head split of one rank."""

    def __init__(self, profile: HeadProfile, tp_rank: int = 0, tp_size: int = 1):
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.kv_heads = kv_heads_of_rank(profile.model.num_kv_heads, tp_rank, tp_size)
        self.layers: list[LayerHeads] = []
        for row in profile.heads:
            specs = [row[h] for h in self.kv_heads]
            glob = [j for j, s in enumerate(specs) if s.is_global]
            loc = [j for j, s in enumerate(specs) if not s.is_global]
            self.layers.append(
                LayerHeads(
                    perm=tuple(glob + loc),
                    num_global=len(glob),
                    window=tuple(specs[j].window for j in loc),
                    sink=tuple(specs[j].sink for j in loc),
                )
            )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_heads)

    @property
    def all_global(self) -> bool:
        return all(layer.num_local == 0 for layer in self.layers)

    @property
    def is_identity_order(self) -> bool:
        return all(layer.perm == tuple(range(len(layer.perm))) for layer in self.layers)

    def max_window(self) -> int:
        return max((w for layer in self.layers for w in layer.window), default=0)

    def max_sink(self) -> int:
        return max((s for layer in self.layers for s in layer.sink), default=0)

    def global_head_count(self) -> int:
        return sum(layer.num_global for layer in self.layers)

    def local_head_count(self) -> int:
        return sum(layer.num_local for layer in self.layers)

    def summary(self) -> str:
        per_layer = ",".join(str(layer.num_global) for layer in self.layers)
        return (
            f"tp rank {self.tp_rank}/{self.tp_size}: kv heads {list(self.kv_heads)}, "
            f"{self.global_head_count()} global / {self.local_head_count()} local head-layers, "
            f"global per layer [{per_layer}], max window {self.max_window()}, "
            f"max sink {self.max_sink()}"
        )
