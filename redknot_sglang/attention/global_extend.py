"""The global heads' extend on FlashInfer's paged prefill kernel (CUDA).

A layer's global heads are a few KV heads (``G_l``, different per layer) over the full slots. SGLang's
Triton extend kernel gives each (request, query head, block of 64-128 queries) one program that walks
every key: a short extend over a long cached prefix (a repeated prompt's last token, a new turn)
runs a handful of programs over tens of thousands of keys (measured on an H200, 8B shape, a 32K
prompt sent again: 50 ms of the head-split server's 84 ms to the first token, against stock
FlashInfer's 42 ms in all). FlashInfer's paged prefill splits long key ranges across programs (its
plan sizes the split for the batch and head count), as stock SGLang runs it.

Per forward, one page table (page size 1: a page is a full slot) serves every layer; a plan is made
per distinct ``(G, query heads per KV head)`` the first time a layer needs it::

    kv_indptr:   [0, seq_0, seq_0 + seq_1, ...]              (host)
    kv_indices:  req_to_token[row_0, 0:seq_0] ++ req_to_token[row_1, 0:seq_1] ++ ...   (device)
    qo_indptr:   [0, ext_0, ext_0 + ext_1, ...]              (host; queries are each request's last
                                                              ext_b positions, causal)

The new tokens' K/V are stored before attention runs, so one causal pass over the paged keys covers
prefix and extend. FlashInfer is imported when the first object is built (GPU servers only).

A plan writes its schedule into the wrapper's pinned host buffer and queues a copy from it to the
device. The indptrs are host tensors here, so no plan synchronises with the device (stock's
device indptrs make FlashInfer read them back, a full synchronisation per plan). With SGLang's
overlap scheduler the next extend is planned while the device may still run the previous one, and
a plan that rewrote the pinned buffer before the previous plan's copy ran handed that extend the new
schedule: a CUDA error on an H200 (an illegal memory access in a 32K capacity fill, once admission
cut chunks to sizes that differ from one extend to the next; an invalid address space in
``test_a_plan_waits_for_the_previous_extends_copy_of_its_schedule``'s steps). So each wrapper's
plan first waits for its previous plan's copy (an event recorded after that plan), not for the
whole previous forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

WORKSPACE_BYTES = 256 << 20  # FlashInfer's split-KV scratch (it recommends 128 MiB)
# head dims FlashInfer's paged prefill dispatches (head_dim 16 fails its dispatch on an H200:
# "Invalid configuration"); other models keep the base backend's extend
HEAD_DIMS = (64, 128, 256)


def paged_kv_indices(req_to_token: torch.Tensor, rows: torch.Tensor, seq_lens: torch.Tensor,
                     kv_indptr: torch.Tensor, total: int) -> torch.Tensor:
    """``req_to_token[rows[b], 0:seq_lens[b]]`` for every request ``b``, concatenated (int32, on
    ``req_to_token``'s device); ``kv_indptr`` (on that device) the requests' offsets, ``total`` its
    last entry. No host synchronisation."""
    seq_lens = seq_lens.to(torch.int64)
    row_of = torch.repeat_interleave(rows.to(torch.int64), seq_lens, output_size=total)
    start_of = torch.repeat_interleave(kv_indptr[:-1].to(torch.int64), seq_lens, output_size=total)
    pos = torch.arange(total, device=req_to_token.device) - start_of
    return req_to_token[row_of, pos].to(torch.int32)


def indptr(lengths: list[int]) -> torch.Tensor:
    """``[0, l_0, l_0 + l_1, ...]`` as an int32 host tensor."""
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0)
    return out


class FlashInferGlobalExtend:
    """Who owns what: the caller owns the KV buffers and ``req_to_token``; this object owns
    FlashInfer's workspace, one wrapper per head configuration (with its pinned plan buffer, free
    again once the event after its last plan has passed), and the page table of the current
    forward (valid from :meth:`begin` to the next :meth:`begin`)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        import flashinfer

        self._flashinfer = flashinfer
        self.device = device
        self.dtype = dtype
        self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self._wrappers: dict[tuple[int, int, float], Any] = {}
        self._planned: set[tuple[int, int, float]] = set()
        self._plan_copied: dict[tuple[int, int, float], torch.cuda.Event] = {}  # recorded after each plan
        self._page: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def begin(self, req_to_token: torch.Tensor, rows: torch.Tensor, seq_lens: torch.Tensor,
              seq_lens_cpu: list[int], extend_lens_cpu: list[int]) -> None:
        """The page table of this forward's extend batch (plans follow lazily, per head configuration)."""
        qo, kv = indptr(extend_lens_cpu), indptr(seq_lens_cpu)
        total = int(kv[-1])
        kv_dev = kv.to(self.device, non_blocking=True)
        indices = paged_kv_indices(req_to_token, rows, seq_lens, kv_dev, total)
        # on the host, as both indptrs: FlashInfer's plan reads them there (from a device tensor,
        # with a stream synchronisation per plan)
        last_page_len = torch.ones(len(seq_lens_cpu), dtype=torch.int32)
        self._page = (qo, kv, indices, last_page_len)
        self._planned.clear()

    def _wrapper(self, num_kv_heads: int, group: int, head_dim: int, scale: float) -> Any:
        key = (num_kv_heads, group, scale)
        w = self._wrappers.get(key)
        if w is None:
            w = self._flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD", backend="fa2")
            self._wrappers[key] = w
        if key not in self._planned:
            copied = self._plan_copied.setdefault(key, torch.cuda.Event())
            copied.synchronize()  # the previous plan's copy out of the pinned buffer has run (module docstring)
            qo, kv, indices, last_page_len = self._page
            w.plan(qo, kv, indices, last_page_len, num_kv_heads * group, num_kv_heads, head_dim, 1,
                   causal=True, sm_scale=scale, q_data_type=self.dtype, kv_data_type=self.dtype)
            copied.record()
            self._planned.add(key)
        return w

    def run(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, scale: float) -> torch.Tensor:
        """Causal attention of the batch's queries ``q`` (``[tokens, G * group, D]``) over the
        paged keys of ``k_buf``/``v_buf`` (``[slots, G, D]``); ``[tokens, G * group, D]``."""
        g = k_buf.shape[1]
        w = self._wrapper(g, q.shape[1] // g, q.shape[2], scale)
        return w.run(q.contiguous(), (k_buf, v_buf))
