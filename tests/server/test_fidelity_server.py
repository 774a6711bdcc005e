"""The fidelity benchmark's CPU slice through real servers: two 2K-token questions of the test split
asked of a stock server and of a redknot server whose local heads' window covers every prompt. The
head split is then exact: the same answers, and teacher-forced agreement with stock's answers equal
to stock's own."""

from __future__ import annotations

import pytest

from redknot_sglang.fidelity.docqa import DocQA
from redknot_sglang.fidelity.server import Asker, server_flags
from redknot_sglang.fidelity.summary import bucket_scores
from redknot_sglang.heads.synthetic import synthetic_profile
from redknot_sglang.testing.server import Server


@pytest.fixture(scope="module")
def slice_(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    return tokenizer, DocQA(tokenizer).questions("test", 2, buckets=("2k",))


def test_covering_windows_answer_as_dense(smollm2, smollm2_fingerprint, slice_, tmp_path):
    tokenizer, questions = slice_
    stock_flags, ours_flags = server_flags(cpu=True)
    with Server(smollm2, stock_flags) as s:
        dense, tokens, top = Asker(s, tokenizer).ask(questions)
    path = tmp_path / "covering.json"
    synthetic_profile(smollm2_fingerprint, global_ratio=0.15, window=4096, sink=4, seed=1).save(path)
    with Server(smollm2, [*ours_flags, "--redknot-head-profile", str(path)]) as s:
        ours, our_tokens, _ = Asker(s, tokenizer).ask(questions, tokens, top)
        assert "impl=HeadSplitRadixCache" in s.log()
    assert our_tokens == tokens
    mine, stock = bucket_scores(ours, dense)["2k"], bucket_scores(dense, dense)["2k"]
    assert mine.accuracy == stock.accuracy
    assert mine.top1_agreement == stock.top1_agreement
    assert mine.cosine > 0.999
