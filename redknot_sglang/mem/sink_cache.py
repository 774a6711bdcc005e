"""``SinkCache``: which sink block holds the local heads' sink K/V of which token prefix.

A local head reads its sink (the first ``sink`` tokens) at every position, but SGLang's window
machinery keeps only the trailing window of a cached prefix. So the sink K/V of a sequence lives
in its request's sink row while it runs, and a copy is *published* into a sink block when its
prefix enters the radix tree. A later request that reuses that prefix copies the block into its own
row instead of recomputing. Blocks are keyed by content: ``(extra_key, first sink token ids)``
(the sink of a causal model depends on nothing else), so different tenants (``extra_key`` /
``cache_salt``) never share one. Blocks are plain LRU: losing one costs a recompute, never
correctness, because a prefix whose sink block is gone is not reused (see
:class:`~redknot_sglang.integration.head_split_cache.HeadSplitRadixCache`).

This class is bookkeeping only (CPU); the data lives in
:class:`~redknot_sglang.integration.head_split_pool.HeadSplitKVPool`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Optional, Sequence

SinkKey = tuple[Optional[str], tuple[int, ...]]


class SinkCache:
    def __init__(self, num_blocks: int, sink: int):
        self.num_blocks = num_blocks
        self.sink = sink
        self._blocks: OrderedDict[Hashable, int] = OrderedDict()  # key -> block, LRU first
        self._free = list(range(num_blocks - 1, -1, -1))

    def key(self, token_ids: Sequence[int], extra_key: Optional[str]) -> Optional[SinkKey]:
        """The key of a sequence, or None if it is shorter than the sink."""
        if len(token_ids) < self.sink:
            return None
        return extra_key, tuple(token_ids[: self.sink])

    def lookup(self, key: SinkKey) -> Optional[int]:
        """The block holding ``key``'s sink, refreshed as most recently used."""
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
        return block

    def publish(self, key: SinkKey) -> Optional[int]:
        """A block to copy ``key``'s sink into, or None if it is cached already (or there are no
        blocks). Evicts the least recently used block when none is free."""
        if key in self._blocks or self.num_blocks == 0:
            return None
        if self._free:
            block = self._free.pop()
        else:
            _, block = self._blocks.popitem(last=False)
        self._blocks[key] = block
        return block

    def __len__(self) -> int:
        return len(self._blocks)
