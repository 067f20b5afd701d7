#!/usr/bin/env bash
# On one GPU, in one short call (no peer build): every op test on CUDA (tests/ops without the
# peer's test, and the Mamba modules), the selective scan's default kernels beside the previous
# layout and a grid-order variant, and the RNN-T losses beside torchaudio with direct launches.
#   bash scripts/device/ops_check.sh OUTDIR      (carry .whl; about 3 minutes)
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out"
source scripts/device/wheels.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests:$PWD/benchmarks"
echo "# bash scripts/device/ops_check.sh   ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -n 12 tests/ops tests/modules/test_mamba.py \
  --ignore=tests/ops/test_selective_scan_peer.py 2>&1 | grep -v -i warn | tail -8 | tee "$out/pytest_ops.txt"
python3 benchmarks/scan_cuda.py --impls triton --iters 30 --json "$out/scan_cuda.json" \
  --variant 'state={"kernel":"state"}' 'channels_fast={"time_batch_fast":false}' 2>&1 \
  | grep -v -i warn | grep -v "^# triton CONFIG" | tee "$out/scan_cuda.txt"
MAMBA_ASR_TRITON_LAUNCH=direct python3 benchmarks/rnnt.py --device cuda --impls ours torchaudio \
  pruned pruned-band --rnnt-backend triton --repeats 20 2>&1 | grep -v Warn | tee "$out/rnnt_direct.txt"
