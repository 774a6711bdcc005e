"""Sparse FFN row selection (plain torch, no server)."""

from __future__ import annotations

import torch

from redknot_sglang.reuse.sparse_ffn import SparseFFN, candidate_range, ffn_rows, sparse_mlp


def test_candidates_are_the_recomputed_tokens_before_the_last_ones():
    assert candidate_range(1000, 300, 128) == (300, 872)
    assert candidate_range(400, 300, 128) == (300, 300)  # all recomputed tokens are in the tail


def test_every_non_candidate_runs_and_the_most_important_candidates_run():
    cand = torch.tensor([False, True, True, True, True, False])
    importance = torch.tensor([0.0, 5.0, 1.0, 9.0, 2.0, 0.0])
    assert ffn_rows(cand, importance, SparseFFN(keep=0.5, from_layer=0).kept(4)).tolist() == [0, 1, 3, 5]
    assert ffn_rows(cand, importance, 0).tolist() == [0, 5]
    assert ffn_rows(cand.clone(), importance, 4).tolist() == list(range(6))


def test_skipped_rows_take_the_residual_identity_and_kept_rows_are_exact():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 8))
    x = torch.randn(6, 8)
    rows = torch.tensor([0, 2, 5])
    out = sparse_mlp(mlp, x, rows)
    torch.testing.assert_close(out[rows], mlp(x[rows]))
    assert out[[1, 3, 4]].abs().sum() == 0
    torch.testing.assert_close(sparse_mlp(mlp, x, None), mlp(x))
