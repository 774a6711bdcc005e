"""HostPages: tensors spilled into pages of host memory taken at start come back bit for bit,
whatever pages they got (across chunks, out of order after frees); pages are reused, never
allocated again; on CUDA the copies run on their own stream and stay ordered with the compute
stream's work (GPU test)."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.reuse.host_pages import HostPages

CPU = torch.device("cpu")


def test_tensors_come_back_exactly_from_scattered_pages_across_chunks():
    pages = HostPages(40 * 16, CPU, page_bytes=16, chunk_bytes=64)  # 40 pages, 4 a chunk
    chunks = [c.data_ptr() for c in pages._chunks]
    assert len(chunks) == 10 and pages.capacity == 640
    a = pages.put(torch.arange(30, dtype=torch.float32))  # 120 bytes: 8 pages, the last one partly
    b = pages.put(torch.randn(3, 5, dtype=torch.float64))  # 120 bytes
    assert a.nbytes == 8 * 16 and len(set(a.pages) & set(b.pages)) == 0
    pages.free(a)
    c_src = torch.randn(7, 9, dtype=torch.bfloat16)  # 126 bytes: a's freed pages, then fresh ones
    c = pages.put(c_src)
    d_src = (torch.rand(50) * 100).to(torch.int16)
    d = pages.put(d_src)
    assert torch.equal(pages.get(c, CPU), c_src) and pages.get(c, CPU).dtype == torch.bfloat16
    assert torch.equal(pages.get(d, CPU), d_src)
    assert pages.get(b, CPU).shape == (3, 5)
    for h in (b, c, d):
        pages.free(h)
    assert pages.free_bytes == 640
    assert [ch.data_ptr() for ch in pages._chunks] == chunks  # the same memory all along


def test_a_put_beyond_the_free_pages_fails_and_takes_nothing():
    pages = HostPages(4 * 16, CPU, page_bytes=16)
    with pytest.raises(RuntimeError, match="4 free pages, 5 needed"):
        pages.put(torch.zeros(80, dtype=torch.uint8))
    assert pages.free_bytes == 64
    empty = pages.put(torch.zeros(0, 3))
    assert empty.pages == () and pages.get(empty, CPU).shape == (0, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_copies_on_their_stream_keep_order_with_the_compute_stream():
    dev = torch.device("cuda")
    pages = HostPages(256 << 20, dev, page_bytes=2 << 20, chunk_bytes=64 << 20)
    assert all(c.is_pinned() for c in pages._chunks)
    inputs, held = [], []
    for i in range(6):
        a, b = torch.randn(4096, 4096, device=dev), torch.randn(4096, 4096, device=dev)
        x = (a @ b)[:, : 1024 + 512 * i].contiguous()  # long work just before the put, no host wait
        inputs.append((a, b, x.shape[1]))
        held.append(pages.put(x))
        del x
        torch.full((4096, 4096), float(i), device=dev)  # may reuse x's memory: must wait for the copy
        if i % 2:  # frees make later puts take pages out of order
            pages.free(held.pop(0))
            inputs.pop(0)
    y = [pages.get(h, dev) * 1 for h in held]  # the compute stream uses the loads at once
    for (a, b, cols), g in zip(inputs, y):
        assert torch.equal(g.cpu(), (a @ b)[:, :cols].cpu())
