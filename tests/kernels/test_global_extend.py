"""The global heads' extend on FlashInfer: its page table (CPU) and its attention against the
float64 reference at serving sizes (GPU): short extends over long cached prefixes (a repeated
prompt's last token, a new turn) and a chunk of a long prompt."""

from __future__ import annotations

import pytest
import torch

from redknot_sglang.attention.global_extend import indptr, paged_kv_indices
from redknot_sglang.kernels.segpaged import FULL_WINDOW
from redknot_sglang.testing.segpaged_case import full_buffers, make_case, reference


def test_page_table_is_each_requests_row_prefix_in_batch_order():
    g = torch.Generator().manual_seed(0)
    req_to_token = torch.randint(0, 1 << 20, (9, 50), generator=g, dtype=torch.int32)
    rows, seq_lens = torch.tensor([7, 2, 5]), [13, 1, 50]
    kv = indptr(seq_lens)
    assert kv.tolist() == [0, 13, 14, 64]
    got = paged_kv_indices(req_to_token, rows, torch.tensor(seq_lens), kv, int(kv[-1]))
    want = torch.cat([req_to_token[r, :n] for r, n in zip(rows.tolist(), seq_lens)])
    assert got.dtype == torch.int32 and torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("seq,q_lens,kv_heads", [([32768, 5000], [1, 1], 1),
                                                  ([32768, 9000, 700], [200, 1, 700], 2),
                                                  ([8192], [2048], 3)])
def test_flashinfer_extend_matches_reference(seq, q_lens, kv_heads):
    from redknot_sglang.attention.global_extend import FlashInferGlobalExtend

    case = make_case(seq, q_lens, window=[FULL_WINDOW] * kv_heads, sink=[0] * kv_heads, group=4, head_dim=128,
                     dtype=torch.bfloat16, device="cuda", seed=len(seq))
    k_buf, v_buf = full_buffers(case, torch.bfloat16)
    ext = FlashInferGlobalExtend(torch.device("cuda"), torch.bfloat16)
    ext.begin(case.req_to_token, case.rows, case.seq_lens, seq, q_lens)
    out = ext.run(case.q, k_buf, v_buf, case.scale)
    ref = reference(case)
    assert not torch.isnan(out).any()
    assert float((out.double().cpu() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.gpu
def test_a_plan_waits_for_the_previous_extends_copy_of_its_schedule():
    """SGLang's overlap scheduler plans the next extend while the device still runs the previous
    one. Here the device is held up (a sleep kernel) so the first extend's schedule is still in the
    wrapper's pinned buffer when the second, different batch is planned over the same wrapper: the
    first extend must still attend with its own schedule. The first round's allocations synchronise
    the device (the race shows from the second round on); without the wait these steps ended in a
    CUDA error (invalid address space) on an H200."""
    from redknot_sglang.attention.global_extend import FlashInferGlobalExtend

    batches = [([32768, 9000, 700], [200, 1, 700]), ([8192], [2048])]
    cases = [make_case(seq, q, window=[FULL_WINDOW] * 2, sink=[0] * 2, group=4, head_dim=128,
                       dtype=torch.bfloat16, device="cuda", seed=i) for i, (seq, q) in enumerate(batches)]
    bufs = [full_buffers(c, torch.bfloat16) for c in cases]
    refs = [reference(c) for c in cases]
    ext = FlashInferGlobalExtend(torch.device("cuda"), torch.bfloat16)
    for _ in range(2):
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)  # ~0.5 s of device time ahead of the first plan's copy
        outs = []
        for case, (k_buf, v_buf), (seq, q_lens) in zip(cases, bufs, batches):
            ext.begin(case.req_to_token, case.rows, case.seq_lens, seq, q_lens)
            outs.append(ext.run(case.q, k_buf, v_buf, case.scale))
        torch.cuda.synchronize()
        for ref, out in zip(refs, outs):
            assert float((out.double().cpu() - ref).norm() / ref.norm()) < 1e-2
