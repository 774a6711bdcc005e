"""Which cached documents a request takes instead of computing them (index math, no server)."""

from __future__ import annotations

from redknot_sglang.reuse.placement import RequestDocuments, gap_ranges, plan_pieces, window_rows

#            sys        A          B          text   C          query
SPANS = [(10, 40), (40, 60), (65, 90)]
PROMPT = 100


def cached(*docs):
    return lambda s, e: (s, e) if (s, e) in docs else None


def summary(pieces):
    return [(p.span, p.doc_from, p.length, p.delta) for p in pieces]


def test_documents_after_the_exact_prefix_are_placed_up_to_a_gap():
    pieces = plan_pieces(SPANS, 10, PROMPT, cached(*SPANS))
    assert summary(pieces) == [((10, 40), 0, 30, 10), ((40, 60), 0, 20, 40)]  # stops at the text gap
    assert summary(plan_pieces(SPANS, 65, PROMPT, cached(*SPANS))) == [((65, 90), 0, 25, 65)]  # the next chunk's run


def test_a_match_into_a_document_places_its_rest_and_an_uncached_document_stops_the_run():
    pieces = plan_pieces(SPANS, 25, PROMPT, cached((10, 40)))
    assert summary(pieces) == [((10, 40), 15, 15, 10)]
    assert plan_pieces(SPANS, 10, PROMPT, cached((40, 60))) == []  # first one missing
    assert plan_pieces(SPANS, 5, PROMPT, cached(*SPANS)) == []  # uncached text first
    assert plan_pieces(SPANS, 60, PROMPT, cached(*SPANS)) == []  # the tree has them


def test_a_document_that_ends_the_prompt_is_computed():
    assert plan_pieces([(10, 40), (40, 100)], 10, 100, cached((10, 40), (40, 100)))[-1].span == (10, 40)


def test_window_rows_come_from_the_documents_tails():
    pieces = plan_pieces(SPANS, 25, PROMPT, cached(*SPANS))  # A[15:30] + B[0:20] at prompt 25..60
    assert window_rows(pieces, 25, 16, tail=16) == [(1, 19, 0, 16)]  # B's tail is its last 16 rows
    assert window_rows(pieces, 25, 16, tail=32) == [(1, 19, 4, 16)]  # 20-row tail, the last 16
    assert window_rows(pieces, 25, 32, tail=32) == [(0, 3, 18, 12), (1, 15, 0, 20)]  # A's 30-row tail, last 12
    assert window_rows(pieces, 25, 35, tail=64) == [(0, 0, 15, 15), (1, 15, 0, 20)]  # every placed row


def test_a_selective_request_places_past_gaps_within_its_budget():
    # A cached, B not, the text gap, C cached: A and C placed, B and the text are one gap
    everything_but_b = cached((10, 40), (65, 90))
    pieces = plan_pieces(SPANS, 10, PROMPT, everything_but_b, gap_budget=25)
    assert summary(pieces) == [((10, 40), 0, 30, 10), ((65, 90), 0, 25, 65)]
    assert gap_ranges(pieces, 10) == [(40, 65)]
    assert summary(plan_pieces(SPANS, 10, PROMPT, everything_but_b, gap_budget=24)) == [((10, 40), 0, 30, 10)]
    # an uncached first document: a gap from the exact prefix on
    pieces = plan_pieces(SPANS, 10, PROMPT, cached((40, 60)), gap_budget=100)
    assert summary(pieces) == [((40, 60), 0, 20, 40)] and gap_ranges(pieces, 10) == [(10, 40)]
    # every placed row of scattered pieces has its window row when the store keeps documents whole
    assert window_rows(pieces, 10, 50, tail=64) == [(0, 30, 0, 20)]
    assert plan_pieces(SPANS, 10, PROMPT, cached(), gap_budget=100) == []


def test_request_documents_read_the_scheduler_s_flat_spans_and_the_mode():
    assert RequestDocuments.of(None, 0.2) is None and RequestDocuments.of({"x": 1}, 0.2) is None
    docs = RequestDocuments.of({"redknot_documents": [1, 5, 7, 9], "redknot_recovery": False}, 0.2)
    assert docs.spans == ((1, 5), (7, 9)) and docs.ratio == 0 and not docs.selective  # place only
    default = RequestDocuments.of({"redknot_documents": [1, 5]}, 0.2)
    assert default.ratio == 0.2 and default.selective  # the server's ratio
    assert RequestDocuments.of({"redknot_documents": [1, 5], "redknot_recovery": True}, 0.2) == default
    assert RequestDocuments.of({"redknot_documents": [1, 5], "redknot_recompute_ratio": 0.5}, 0.2).ratio == 0.5
    assert not RequestDocuments.of({"redknot_documents": [1, 5]}, 0.0).selective  # a place-only server
