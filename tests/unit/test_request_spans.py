"""The HTTP server's check of a request's document marks and mode keys (the hook on
``TokenizerManager._validate_one_request``): a ``SpanError`` is SGLang's HTTP 400. The tokenizer
manager and its server args are plain attribute bags here; the configuration is the real one."""

from __future__ import annotations

import re
import types

import pytest

from redknot_sglang.config import ATTR, BACKEND_NAME, RedknotConfig
from redknot_sglang.heads.profile import HeadProfile, ModelFingerprint
from redknot_sglang.integration.hooks.request_spans import validate_documents
from redknot_sglang.reuse.spans import SpanError

MODEL = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=2, num_attention_heads=3, num_kv_heads=3,
                         head_dim=16, rope_theta=1e4)
PROMPT = list(range(100, 140))


def validate(params: dict, *, server_ratio: float) -> dict:
    """``params`` (a request's custom_params) checked by a server started with
    ``--redknot-recompute-ratio server_ratio``; returns them as the scheduler receives them."""
    cfg = RedknotConfig(profile_source="all-global", profile=HeadProfile.all_global(MODEL),
                        recompute_ratio=server_ratio)
    server_args = types.SimpleNamespace(**{ATTR: cfg, "radix_cache_backend": BACKEND_NAME})
    manager = types.SimpleNamespace(server_args=server_args, tokenizer=None)
    validate_documents(None, manager, types.SimpleNamespace(sampling_params={"custom_params": params}), PROMPT)
    return params


def marks(**mode: object) -> dict:
    """A request's custom_params marking two documents, plus the ``mode`` keys."""
    return {"redknot_documents": [[4, 20], [20, 30]], **mode}


@pytest.mark.parametrize("mode", [{}, {"redknot_recovery": True}, {"redknot_recovery": False},
                                  {"redknot_recompute_ratio": 0.3}, {"redknot_recompute_ratio": 0}])
def test_every_mode_is_served_by_a_selective_server(mode):
    assert validate(marks(**mode), server_ratio=0.1)["redknot_documents"] == [4, 20, 20, 30]  # flat ranges


@pytest.mark.parametrize("mode", [{}, {"redknot_recovery": False}, {"redknot_recompute_ratio": 0}])
def test_a_place_only_server_serves_place_only_requests(mode):
    assert validate(marks(**mode), server_ratio=0.0)["redknot_documents"] == [4, 20, 20, 30]


@pytest.mark.parametrize("mode, message", [
    ({"redknot_recovery": True}, "redknot_recovery: true (selective recompute) needs a server started with "
                                 "--redknot-recompute-ratio > 0"),
    ({"redknot_recompute_ratio": 0.3}, "redknot_recompute_ratio > 0 (selective recompute) needs a server started "
                                       "with --redknot-recompute-ratio > 0"),
])
def test_selective_recompute_asked_of_a_place_only_server_is_refused(mode, message):
    with pytest.raises(SpanError, match=re.escape(message)):
        validate(marks(**mode), server_ratio=0.0)


@pytest.mark.parametrize("recovery", [True, False])
def test_a_ratio_and_the_recovery_key_together_are_refused(recovery):
    with pytest.raises(SpanError, match="give redknot_recompute_ratio or redknot_recovery, not both"):
        validate(marks(redknot_recompute_ratio=0.2, redknot_recovery=recovery), server_ratio=0.1)
