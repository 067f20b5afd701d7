#!/usr/bin/env bash
# On one GPU, in one call: the time-parallel selective scan (CONFIG kernel=time,
# ops/selective_scan/triton_time.py) checked and timed beside the default kernel and the peer:
#   1. its CUDA tests and state-spaces/mamba's test against it (scripts/device/scan_check.sh with
#      SCAN_TESTS=configs);
#   2. benchmarks/scan_cuda.py: the default kernel, the time kernel (its defaults, 1 or 4 states a
#      loop step, without prefetching, with the backward's), the peer's CUDA kernel;
#   3. benchmarks/encoder_scaling.py (large Conformer vs ConMamba, bf16, batch 16) with the default
#      kernel and with the time kernel (MAMBA_ASR_TRITON_SCAN_CONFIG).
#   bash scripts/device/time_scan_check.sh OUTDIR      (carry .whl and .peer)
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/tsc
source scripts/device/wheels.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
K='"kernel":"time"'
SCAN_TESTS=configs PEER_TEST_CONFIGS="time={$K}" bash scripts/device/scan_check.sh /tmp/tsc/scan \
  --iters 30 --variant "time={$K}" "u1={$K,\"time_unroll\":1}" "u4={$K,\"time_unroll\":4}" \
  "nopf={$K,\"time_prefetch\":false}" "bwdpf={$K,\"time_bwd_prefetch\":true}" \
  "u1bwdpf={$K,\"time_unroll\":1,\"time_bwd_prefetch\":true}" 2>&1 | grep -v -i warn \
  | grep -v "^# triton CONFIG" | tail -50
for k in state time; do
  MAMBA_ASR_TRITON_SCAN_CONFIG="{\"kernel\":\"$k\"}" PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks" \
    python3 benchmarks/encoder_scaling.py --device cuda --size large --batch 16 --seconds 10 30 60 \
    --out "/tmp/tsc/enc_$k" 2>&1 | grep -v -i warn | tee "/tmp/tsc/encoder_scaling_$k.txt" | grep "^|\|from"
done
tar -C /tmp/tsc -czf "$out/time_scan_check.tgz" --exclude='*.so' .  # scan/peer_so.xz inside: saved as .peer/build/selective_scan_cuda.so.xz, the next call skips the build
