#!/usr/bin/env bash
# The one GPU run: the CUDA tests (failing, not skipping, when torch sees no GPU), then
# bench/gpu.py within its time budget. Logs and results go to $OUT (default bench/results).
# Made for the device tool's GPU machine (python3 with CUDA torch and transformers, nothing
# fetched); see docs/gpu.md for what to prepare beside it (.whl wheels, .devdata corpora).
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then  # packages the machine lacks (constriction)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .devdata ]; then export UNTOK_SHARED_DATA="$PWD/.devdata"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
UNTOK_REQUIRE_CUDA=1 timeout "${TEST_SECONDS:-150}" python3 -m pytest -m cuda tests/test_cuda.py \
  -q -p no:cacheprovider -rfE 2>&1 | tee "$OUT/cuda_tests.log"
tests=${PIPESTATUS[0]}
# BENCH_ARGS=--smoke: a dry run of this script on a CPU
UNTOK_BENCH_RESULTS="$OUT" timeout "${BENCH_SECONDS:-390}" python3 bench/gpu.py \
  ${BENCH_ARGS:---minutes 6} 2>&1 | tee "$OUT/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "device check: cuda tests exit $tests, bench exit $bench"
exit $(( tests != 0 || bench != 0 ))
