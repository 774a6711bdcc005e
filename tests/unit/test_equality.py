"""The equality harness itself: what counts as stock's answer up to a bf16 near-tie."""

from __future__ import annotations

import pytest

from redknot_sglang.testing.equality import assert_same_up_to_bf16_ties

TOP = [{198: -1.04, 2: -1.29, 3726: -2.4}, {504: -0.1}, {314: -0.2}]


def test_identical_sequences_pass():
    assert_same_up_to_bf16_ties([198, 504, 314], [198, 504, 314], TOP)


def test_a_near_tie_may_end_the_sequence():
    """GPU SmolLM2: end-of-sequence (2) 0.25 nats below stock's newline at the first step."""
    assert_same_up_to_bf16_ties([2], [198, 504, 314], TOP)


def test_a_divergence_that_is_no_tie_fails():
    with pytest.raises(AssertionError, match="step 0"):
        assert_same_up_to_bf16_ties([3726, 504], [198, 504, 314], TOP)


def test_a_shorter_answer_without_a_divergence_fails():
    with pytest.raises(AssertionError, match="2 of them"):
        assert_same_up_to_bf16_ties([198, 504], [198, 504, 314], TOP)
