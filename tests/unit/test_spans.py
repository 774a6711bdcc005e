"""Document marks: token ranges and text pieces resolved and checked (redknot_sglang.reuse.spans)."""

from __future__ import annotations

import pytest

from redknot_sglang.reuse.spans import SpanError, resolve_spans


def encode(text: str) -> list[int]:  # one token per word, ids from a fixed vocabulary
    return [sum(map(ord, w)) for w in text.split()]


PROMPT = encode("system says hi . doc one is here . doc two is there . question ?")


def resolve(marks, max_tokens=100):
    return resolve_spans(marks, PROMPT, encode, max_document_tokens=max_tokens)


def test_token_ranges_and_text_pieces_resolve_in_prompt_order():
    assert resolve([[4, 8], [9, 13]]) == [(4, 8), (9, 13)]
    assert resolve([{"text": "doc one is here"}, {"text": "doc two is there"}]) == [(4, 8), (9, 13)]
    assert resolve([[0, 3], {"text": "doc two is there"}]) == [(0, 3), (9, 13)]
    assert resolve([[4, 8], [8, 9]]) == [(4, 8), (8, 9)]  # adjacent is not overlapping


@pytest.mark.parametrize("marks, message", [
    ([[4, 8], [6, 10]], "overlaps"),
    ([[4, 8], [7, 10]], "overlaps"),  # one shared token is an overlap too
    ([[9, 13], [4, 8]], "overlaps or precedes"),
    ([[4, 4]], "empty span"),
    ([[10, 99]], "outside the prompt's 16 tokens"),
    ([[-1, 3]], "outside"),
    ([{"text": "  "}], "empty document text"),
    ([{"text": "doc three"}], "not in the prompt"),
    ([{"text": "doc two is there"}, {"text": "doc one is here"}], "not in the prompt after token 13"),
    ([[1, 2, 3]], "expected [start, end]"),
    ([[True, 3]], "expected [start, end]"),
    ([{"txt": "doc"}], "a text piece is"),
    ([], "non-empty list"),
    ("[[1, 2]]", "non-empty list"),
])
def test_bad_marks_name_the_document_and_the_problem(marks, message):
    with pytest.raises(SpanError, match=r"redknot_documents") as e:
        resolve(marks)
    assert message in str(e.value)


def test_too_long_document():
    with pytest.raises(SpanError, match="document of 4 tokens is longer than the 3 tokens"):
        resolve([[4, 8]], max_tokens=3)
