#!/usr/bin/env bash
# The GPU lane, one step per argument, each step's results copied to $OUT:
#   setup        install carried wheels + this project, unpack carried models (scripts/device/setup.sh)
#   tests        pytest -m gpu, kernel tests only (no servers); the whole output to $OUT/tests.txt
#   e2e [EXPR]   GPU end-to-end equality tests (servers), pytest -k EXPR
#   bench NAME   scripts/bench/NAME.py ARGS (decode_kernel, layer_decode, fidelity, reuse_frontier
#                --side S), stopped after $LANE_SERVING_S (540) seconds; its JSON, plot, partial file and
#                server logs to $OUT
#   profile ARGS python -m redknot_sglang.profile on SmolLM2 into /tmp/prof (work folder kept: a second
#                call resumes; a carried .gpu/prof-work, an earlier machine's $OUT/work, seeds it),
#                stopped after $LANE_SERVING_S seconds; the profile, pictures and work folder to $OUT
#   serving ARGS scripts/bench/capacity_decode.py ARGS, stopped after $LANE_SERVING_S (540) seconds so
#                that its partial results still come back within the device's 600 s per call
# usage: bash scripts/device/lane.sh setup tests "bench decode_kernel" "e2e llama8b"
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# an earlier call's servers (a benchmark stopped by its limit leaves its server, which runs in a
# session of its own) would hold the GPU's memory on a warm machine: the launcher and its renamed
# children (their command lines start with "sglang::")
pkill -9 -f '^[^ ]*python[0-9.]* -m sglang[.]launch_server' 2>/dev/null
pkill -9 -f '^sglang::' 2>/dev/null
t_start=$(date +%s)
stamp() { echo "[lane +$(( $(date +%s) - t_start ))s] $*"; }
rc=0
for step in "$@"; do
  set -- $step
  name=$1; shift
  stamp "$name $*"
  case $name in
    setup) bash scripts/device/setup.sh || rc=1
           nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader ;;
    tests) python3 -m pytest -q -p no:cacheprovider -m "gpu and not server" tests 2>&1 | tee "$OUT/tests.txt" | tail -15 || rc=1 ;;
    e2e) python3 -m pytest -q -s -p no:cacheprovider -m "gpu and server" ${1:+-k "$1"} --basetemp=/tmp/e2e tests 2>&1 \
           | grep -vE "^\s*$" | tee "$OUT/e2e.txt" | tail -40 || rc=1
         tar czf "$OUT/e2e_logs.tgz" -C /tmp e2e 2>/dev/null ;;
    bench) bench=$1; shift
           touch /tmp/bench-start
           timeout -s TERM "${LANE_SERVING_S:-540}" python3 "scripts/bench/$bench.py" "$@" || rc=1
           # what the run wrote (a one-side run leaves its partial file for the next call instead of
           # the JSON); never the checkout's older copies, which would overwrite an --out under $OUT
           for f in "bench/results/$bench.json" "bench/results/$bench.png" "bench/results/_partial_$bench.json"; do
             [ "$f" -nt /tmp/bench-start ] && cp "$f" "$OUT/"; done
           for f in /tmp/frontier_*.log /tmp/fidelity-*.log /tmp/prefix_*.log; do
             [ -f "$f" ] && tail -c 2000000 "$f" | gzip > "$OUT/$(basename "$f").gz"; done ;;
    profile) mkdir -p /tmp/prof/work
             [ -d .gpu/prof-work ] && cp -n .gpu/prof-work/* /tmp/prof/work/
             TQDM_MININTERVAL=30 timeout -s TERM "${LANE_SERVING_S:-540}" python3 -m redknot_sglang.profile \
               --model-path "$(python3 scripts/convert_smollm2.py)" --out /tmp/prof/smollm2-135m-instruct.heads.json \
               --work-dir /tmp/prof/work "$@" || rc=1
             cp /tmp/prof/*.json /tmp/prof/*.png "$OUT/" 2>/dev/null
             mkdir -p "$OUT/work" && cp /tmp/prof/work/* "$OUT/work/" ;;
    serving) timeout -s TERM "${LANE_SERVING_S:-540}" python3 scripts/bench/capacity_decode.py --log-dir /tmp "$@" || rc=1
             cp bench/results/capacity.json bench/results/decode.json bench/results/_partial_capacity_decode.json "$OUT/" 2>/dev/null
             for f in /tmp/stock.log /tmp/redknot.log; do [ -f $f ] && tail -c 2000000 $f | gzip > "$OUT/$(basename $f).gz"; done ;;
    *) echo "unknown step $name"; rc=1 ;;
  esac
done
stamp "done rc=$rc"
exit $rc
