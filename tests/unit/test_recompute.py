"""The recompute set of a selective request: which positions are fixed, which the question's
attention picks, and the attention mass that ranks them."""

from __future__ import annotations

import torch

from redknot_sglang.reuse.recompute import attention_mass, pick, recompute_set

#  0..9 exact prefix | A 10..30 placed | 30..34 text | B 34..60 placed | C 60..70 computed | question 70..80
SPANS = [(10, 30), (34, 60), (60, 70)]
PLACED = [(10, 30), (34, 60)]


def test_fixed_positions_are_the_text_after_the_first_placed_token_each_boundary_and_the_last():
    rs = recompute_set(SPANS, PLACED, 80, ratio=0.0, boundary=4)
    want = [*range(10, 14), *range(30, 34), *range(34, 38), *range(70, 80)]
    assert rs.fixed.tolist() == want and rs.picks == 0
    assert rs.candidates.nonzero().flatten().tolist() == [*range(14, 30), *range(38, 60)]
    assert pick(torch.zeros(80), rs).tolist() == want


def test_a_placement_that_starts_inside_a_document_has_no_boundary():
    rs = recompute_set(SPANS, [(15, 30), (34, 60)], 80, ratio=0.0, boundary=4)
    assert 15 not in rs.fixed.tolist() and 34 in rs.fixed.tolist()


def test_every_document_of_one_placed_run_has_its_boundary():
    rs = recompute_set([(10, 30), (30, 60)], [(10, 60)], 70, ratio=0.0, boundary=4)
    assert rs.fixed.tolist() == [10, 11, 12, 13, 30, 31, 32, 33, *range(60, 70)]


def test_picks_are_the_candidates_the_question_attended_most_and_the_ratio_counts_placed_tokens():
    rs = recompute_set(SPANS, PLACED, 80, ratio=0.1, boundary=4)
    assert rs.picks == round(0.1 * 46) == 5 and rs.size == len(rs.fixed) + 5
    mass = torch.zeros(80)
    mass[[3, 11, 31, 75]] = 100.0  # exact prefix, fixed boundary, text, question: never picked
    mass[[50, 20, 41, 25, 58]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    mass[[16]] = 0.5  # the sixth: left out
    got = pick(mass, rs).tolist()
    assert got == sorted(rs.fixed.tolist() + [20, 25, 41, 50, 58])


def test_the_ratio_is_capped_by_the_candidates():
    rs = recompute_set(SPANS, PLACED, 80, ratio=1.0, boundary=4)
    assert rs.picks == 38 and sorted(pick(torch.rand(80), rs).tolist()) == [*range(10, 60), *range(70, 80)]


def test_attention_mass_is_causal_by_position_and_sums_every_query_and_head():
    torch.manual_seed(0)
    q, k = torch.randn(3, 4, 8), torch.randn(12, 2, 8)
    pos = torch.tensor([5, 9, 11])
    mass = attention_mass(q, k, pos, 0.3)
    want = torch.zeros(12, dtype=torch.float64)
    for i, p in enumerate(pos.tolist()):
        for h in range(4):
            s = (q[i, h].double() @ k[: p + 1, h // 2].double().T) * 0.3
            want[: p + 1] += torch.softmax(s, 0)
    torch.testing.assert_close(mass.double(), want, atol=1e-5, rtol=1e-5)
    assert abs(float(mass.sum()) - 12) < 1e-4  # 3 queries x 4 heads, each a distribution
