"""Head profiles: the per-(layer, kv_head) global/local classification and its per-rank layout."""

from redknot_sglang.heads.layout import LayerHeads, RankHeadLayout, kv_heads_of_rank
from redknot_sglang.heads.profile import (
    BUILTIN_ALL_GLOBAL,
    HeadClass,
    HeadProfile,
    HeadSpec,
    ModelFingerprint,
    ProfileError,
)

__all__ = [
    "BUILTIN_ALL_GLOBAL",
    "HeadClass",
    "HeadProfile",
    "HeadSpec",
    "LayerHeads",
    "ModelFingerprint",
    "ProfileError",
    "RankHeadLayout",
    "kv_heads_of_rank",
]
