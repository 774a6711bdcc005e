#!/usr/bin/env bash
# On the GPU machine (Python 3.12, torch 2.11, triton 3.6, no network): install SGLang 0.5.17 from
# the wheels carried in .whl/ (built by ../shared/device/build_wheelhouse.sh) and this project into
# /tmp/site, and unpack the models carried in .gpu/ (scripts/device/pack.sh) into /tmp/models.
# Everything stays while the machine is warm, so later calls only re-install the project.
set -euo pipefail
t0=$(date +%s)
pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site)
# .whl: SGLang and everything it needs; .gpu/whl-small: only what the profiler needs (3 MiB)
for d in .whl .gpu/whl-small; do
  if compgen -G "$d/*.whl" >/dev/null; then "${pip[@]}" "$d"/*.whl; fi
done
"${pip[@]}" --no-build-isolation .
mkdir -p /tmp/models/gguf
if [ -f .gpu/llama8b.tgz ]; then tar xzf .gpu/llama8b.tgz -C /tmp/models; fi
for part in .gpu/smollm2.gguf.part-*; do
  [ -e "$part" ] && cp "$part" /tmp/models/gguf/
done
if compgen -G "/tmp/models/gguf/smollm2.gguf.part-*" >/dev/null && [ ! -f /tmp/models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  n=$(ls /tmp/models/gguf/smollm2.gguf.part-* | wc -l)
  if [ "$n" -ge 2 ]; then cat /tmp/models/gguf/smollm2.gguf.part-* > /tmp/models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf; fi
fi
echo "setup: $(( $(date +%s) - t0 )) s; models: $(ls /tmp/models | tr '\n' ' ')"
