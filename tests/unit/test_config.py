"""The ``--redknot-*`` flags: their defaults are the configuration's, and bad values are refused."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from redknot_sglang.config import ConfigError, RedknotConfig, add_cli_args, config_from_args
from redknot_sglang.heads.profile import ModelFingerprint

MODEL = ModelFingerprint(architecture="LlamaForCausalLM", num_layers=30, num_attention_heads=9, num_kv_heads=3,
                         head_dim=64, rope_theta=100000.0)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    return parser.parse_args(list(argv))


def test_flag_defaults_are_the_config_defaults():
    cfg = config_from_args(_args(), MODEL, context_len=8192)
    for field in dataclasses.fields(RedknotConfig):
        if field.name not in ("profile_source", "profile"):
            assert getattr(cfg, field.name) == field.default, field.name
    assert cfg.profile.all_heads_global and cfg.profile_source == "all-global"


@pytest.mark.parametrize("argv, message", [
    (("--redknot-window-pool-ratio", "1.5"), "window-pool-ratio must be in (0, 1]"),
    (("--redknot-sink-cache-blocks", "-1"), "sink-cache-blocks must be >= 0"),
    (("--redknot-max-document-tokens", "0"), "max-document-tokens must be > 0"),
    (("--redknot-recompute-ratio", "1.5"), "recompute-ratio must be in [0, 1]"),
    (("--redknot-segment-store-gb", "-2"), "must be >= 0"),
])
def test_bad_values_are_refused(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_args(_args(*argv), MODEL, 8192)
