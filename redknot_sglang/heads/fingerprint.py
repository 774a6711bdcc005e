"""The fingerprint of a served model, read from its Hugging Face config."""

from __future__ import annotations

from typing import Any, Optional

from redknot_sglang.heads.profile import ModelFingerprint


def fingerprint_from_hf_config(cfg: Any) -> ModelFingerprint:
    """Fingerprint from a ``transformers`` config (v4 ``rope_theta``/``rope_scaling`` or v5
    ``rope_parameters``)."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = text.num_attention_heads
    rope = dict(getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(text, "rope_theta", None))
    return ModelFingerprint(
        architecture=(getattr(cfg, "architectures", None) or [type(cfg).__name__])[0],
        num_layers=text.num_hidden_layers,
        num_attention_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        rope_theta=float(theta if theta is not None else 10000.0),
        rope_type=rope.get("rope_type", rope.get("type", "default")) or "default",
        rope_factor=None if rope.get("factor") is None else float(rope["factor"]),
    )


def hf_config_of(model_path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def fingerprint_of_model_path(model_path: str, *, trust_remote_code: bool = False) -> ModelFingerprint:
    return fingerprint_from_hf_config(hf_config_of(model_path, trust_remote_code=trust_remote_code))


def max_context_of(cfg: Any) -> Optional[int]:
    """The model's own context length (what SGLang serves without ``--context-length``)."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "max_position_embeddings", None)
