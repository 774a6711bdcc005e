"""The SGLang 0.5.17 / 0.5.23 shims of ``patches/compat.py`` on the installed SGLang's own ``Req``,
``ReqToTokenPool`` and SWA allocator (CPU): each reads or writes what that version keeps, so a shim
that read the other version's name, or freed a window slot twice, fails here on one of the two CI
lanes."""

from __future__ import annotations

import types

import pytest
import torch
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.sampling.sampling_params import SamplingParams

from redknot_sglang.heads import HeadProfile, RankHeadLayout
from redknot_sglang.heads.profile import ModelFingerprint
from redknot_sglang.integration.head_split_pool import HeadSplitKVPool
from redknot_sglang.patches import compat

D = 8
FP = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=1, num_attention_heads=2, num_kv_heads=2,
                      head_dim=D, rope_theta=1e4)


@pytest.fixture
def sgl():
    profile = HeadProfile.from_classes(FP, [[True, False]], window=4, sink=2, method="test")
    pool = HeadSplitKVPool(layout=RankHeadLayout(profile), size=64, size_swa=32, rows=4, sink_blocks=1, page_size=1,
                           dtype=torch.float32, head_dim=D, device="cpu")
    alloc = SWATokenToKVPoolAllocator(64, 32, page_size=1, dtype=torch.float32, device="cpu", kvcache=pool,
                                      need_sort=False)
    rows = ReqToTokenPool(4, 64, "cpu", False)
    req = Req("r", "", list(range(1, 25)), SamplingParams(max_new_tokens=1))
    req.full_untruncated_fill_ids = req.origin_input_ids
    return types.SimpleNamespace(alloc=alloc, rows=rows, req=req)


def _hold_row(s, prefix: torch.Tensor) -> int:
    """The request holds a row whose first positions are ``prefix`` (a later chunk's state)."""
    (row,) = s.rows.alloc([s.req])
    s.rows.req_to_token[row, : len(prefix)] = prefix.to(torch.int32)
    if compat.SGLANG_0523:
        s.req.prefix_len = len(prefix)
        s.req.kv.kv_allocated_len = len(prefix)
    else:
        s.req.prefix_indices = prefix
    return row


def _prefix_slots(s) -> list[int]:
    if compat.SGLANG_0523:
        return s.rows.req_to_token[compat.req_row(s.req), : s.req.prefix_len].tolist()
    return s.req.prefix_indices.tolist()


def test_a_row_holding_request_grows_and_shrinks_its_prefix(sgl):
    s = sgl
    exact, placed = s.alloc.alloc(4), s.alloc.alloc(6)
    row = _hold_row(s, exact)
    assert compat.req_row(s.req) == row
    compat.grow_prefix(s.req, placed, s.rows.req_to_token)
    assert compat.prefix_len(s.req) == 10 and _prefix_slots(s) == exact.tolist() + placed.tolist()
    compat.shrink_prefix(s.req, 6)
    assert compat.prefix_len(s.req) == 4 and _prefix_slots(s) == exact.tolist()


def test_a_new_request_grows_its_prefix_without_a_row(sgl):
    s = sgl
    if compat.SGLANG_0523:
        s.req.prefix_len = 4  # a match: the slots stay on the tree's path until the row is written
    else:
        s.req.prefix_indices = s.alloc.alloc(4)
    compat.grow_prefix(s.req, s.alloc.alloc(3), s.rows.req_to_token)
    assert compat.prefix_len(s.req) == 7
    assert (s.rows.req_to_token == 0).all()  # no row written


def test_the_extend_range_is_read_and_cut(sgl):
    s = sgl
    compat.set_extend_range(s.req, 4, 20)
    assert compat.extend_range(s.req) == (4, 20)
    assert len(s.req.get_fill_ids()) == 20  # SGLang's own view of the round's end


def test_placed_slots_free_both_sides_exactly_once(sgl):
    s = sgl
    full0, swa0 = s.alloc.full_available_size(), s.alloc.swa_available_size()
    slots = s.alloc.alloc(6)
    s.alloc.free_swa(slots[:4])  # placed past the window
    compat.free_placed(s.alloc, slots, 4)
    assert (s.alloc.full_available_size(), s.alloc.swa_available_size()) == (full0, swa0)
    assert len(set(s.alloc.swa_attn_allocator.free_pages.tolist())) == swa0  # no slot freed twice


def test_skipping_the_window_over_placed_positions_frees_every_slot_once_at_release(sgl):
    """A row: [0, 4) the tree's, [4, 8) computed text (window slots), [8, 14) placed without
    window slots, [14, 16) placed with them. After ``skip_window`` SGLang's own release frees
    the request's part exactly once on 0.5.23 (0.5.17 frees full slots and skips unmapped)."""
    s = sgl
    full0, swa0 = s.alloc.full_available_size(), s.alloc.swa_available_size()
    tree_part, text, placed = s.alloc.alloc(4), s.alloc.alloc(4), s.alloc.alloc(8)
    s.alloc.free_swa(placed[:6])
    _hold_row(s, torch.cat([tree_part, text]))
    compat.grow_prefix(s.req, placed, s.rows.req_to_token)
    if compat.SGLANG_0523:
        s.req.kv.cache_protected_len = 4
    compat.skip_window(s.req, s.rows.req_to_token, s.alloc, 8, 14)
    own = torch.tensor(_prefix_slots(s))[4:16]
    if compat.SGLANG_0523:
        from sglang.srt.mem_cache.common import free_kv_row_segments
        from sglang.srt.mem_cache.unified_cache.components import ComponentType

        assert s.req.kv.get_evicted_seqlen(ComponentType.SWA) == 14
        assert s.alloc.swa_available_size() == swa0 - 4 - 2  # the text's window slots went back
        free_kv_row_segments(s.alloc, [(own, 4)], swa_evicted_seqlen=14,
                             swa_dead_lo=s.req.kv.swa_dead_lo(1))
    else:
        s.alloc.free(own)
    s.alloc.free(tree_part)
    assert (s.alloc.full_available_size(), s.alloc.swa_available_size()) == (full0, swa0)
    assert len(set(s.alloc.swa_attn_allocator.free_pages.tolist())) == swa0


def test_the_release_window_variable_exists():
    from sglang.srt import environ

    assert hasattr(environ.envs, compat.RELEASE_PREFIX_WINDOW_ENV)
