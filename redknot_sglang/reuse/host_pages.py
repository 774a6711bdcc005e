"""``HostPages``: the segment store's host tier, host memory taken once (pinned on CUDA) and cut
into pages that spilled document KV is copied into.

Pinning is slow (``cudaHostAlloc`` on the H200 host: ~100 ms for a 256 MB buffer; 23 s for a
32 GB tier at start), and PyTorch's caching host allocator pinned fresh buffers for the spills of a
serving run whose tier was filling: 3.2 s of a 7.4 s window of the 8B cold RAG benchmark went to
it. So the tier allocates all of its bytes when the store is built, in chunks, and hands out
pages::

    chunks:   [ chunk 0: pages 0 .. P-1 ][ chunk 1: pages P .. 2P-1 ] ...     (one allocation each)
    a spilled tensor: its bytes over a list of pages, in order (``HostTensor``); a run of
    consecutive pages of one chunk is one copy

Copies (CUDA) run on one copy stream, in the order they are issued, so a page freed and taken
again is never written before the copies that read it: a spill (:meth:`put`) waits for the work
that produced its tensor and keeps the tensor's memory from reuse until the copy is done, without
stopping the host or the compute stream; a load (:meth:`get`) makes the current stream wait for
it. On CPU the copies are plain copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator

import torch

PAGE_BYTES = 2 << 20
CHUNK_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class HostTensor:
    """A tensor's bytes in host pages (owned by the :class:`HostPages` that made it until freed)."""

    pages: tuple[int, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    page_bytes: int

    @property
    def nbytes(self) -> int:
        """Host bytes it holds (whole pages)."""
        return len(self.pages) * self.page_bytes

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class HostPages:
    def __init__(self, capacity_bytes: int, device: torch.device, *, page_bytes: int = PAGE_BYTES,
                 chunk_bytes: int = CHUNK_BYTES):
        self.page_bytes = page_bytes
        self.pages_per_chunk = max(1, chunk_bytes // page_bytes)
        num_pages = capacity_bytes // page_bytes
        cuda = device.type == "cuda"
        self._chunks = [torch.empty(min(self.pages_per_chunk, num_pages - first) * page_bytes, dtype=torch.uint8,
                                    pin_memory=cuda)
                        for first in range(0, num_pages, self.pages_per_chunk)]
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: the lowest pages go first
        self._copies = torch.cuda.Stream(device) if cuda else None

    @property
    def capacity(self) -> int:
        return sum(c.numel() for c in self._chunks)

    @property
    def free_bytes(self) -> int:
        return len(self._free) * self.page_bytes

    def pages_for(self, nbytes: int) -> int:
        return -(-nbytes // self.page_bytes)

    def put(self, t: torch.Tensor) -> HostTensor:
        """``t``'s bytes into free pages (the caller checked there are enough)."""
        src = t.contiguous()
        flat = src.reshape(-1).view(torch.uint8)
        n = self.pages_for(flat.numel())
        if n > len(self._free):
            raise RuntimeError(f"redknot: host tier has {len(self._free)} free pages, {n} needed")
        h = HostTensor(tuple(self._free.pop() for _ in range(n)), tuple(t.shape), t.dtype, self.page_bytes)
        with self._stream():
            for dst, a, b in self._runs(h):
                dst.copy_(flat[a:b], non_blocking=self._copies is not None)
            if self._copies is not None:
                src.record_stream(self._copies)
        return h

    def get(self, h: HostTensor, device: torch.device) -> torch.Tensor:
        """A new tensor on ``device`` holding ``h``'s bytes (``h`` stays allocated)."""
        out = torch.empty(h.data_bytes, dtype=torch.uint8, device=device)
        with self._stream():
            for src, a, b in self._runs(h):
                out[a:b].copy_(src, non_blocking=self._copies is not None)
            if self._copies is not None:
                out.record_stream(self._copies)
        if self._copies is not None:
            torch.cuda.current_stream(device).wait_stream(self._copies)
        return out.view(h.dtype).view(h.shape)

    def free(self, h: HostTensor) -> None:
        self._free.extend(reversed(h.pages))

    def _runs(self, h: HostTensor) -> Iterator[tuple[torch.Tensor, int, int]]:
        """(host bytes, start, end): the tensor's bytes ``[start, end)`` live in that slice of a
        chunk; consecutive pages of one chunk form one run."""
        size, pages, i = h.data_bytes, h.pages, 0
        while i < len(pages) and i * self.page_bytes < size:
            j = i + 1
            while (j < len(pages) and pages[j] == pages[j - 1] + 1
                   and pages[j] // self.pages_per_chunk == pages[i] // self.pages_per_chunk):
                j += 1
            a, b = i * self.page_bytes, min(size, j * self.page_bytes)
            chunk, first = divmod(pages[i], self.pages_per_chunk)
            off = first * self.page_bytes
            yield self._chunks[chunk][off : off + b - a], a, b
            i = j

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        """The copy stream, after the work queued so far on the current one (CPU: nothing)."""
        if self._copies is None:
            yield
            return
        self._copies.wait_stream(torch.cuda.current_stream(self._copies.device))
        with torch.cuda.stream(self._copies):
            yield
