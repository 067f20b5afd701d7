#!/usr/bin/env bash
# On one GPU, in one call: the RNN-T losses' tests on CUDA (the Triton kernels against the PyTorch
# recursions and torchaudio), benchmarks/rnnt.py (full and pruned losses on the Triton backend
# beside torchaudio; pruned-band: the same step as separate ops and autograd nodes), then where the
# pruned loss's time goes (scripts/device/rnnt_profile.py).
#   bash scripts/device/rnnt_check.sh OUTDIR [RNNT BENCH ARGS...]
set -uo pipefail
out="${1:-/tmp/out}"
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests:$PWD/benchmarks:${PYTHONPATH:-}"
echo "# bash scripts/device/rnnt_check.sh $*   ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -n 8 tests/ops/test_rnnt_triton.py tests/ops/test_rnnt_loss.py \
  tests/ops/test_pruned_transducer.py tests/ops/test_triton_launch.py tests/models/test_transducer_pruned.py \
  tests/ops/test_pruned_rnnt.py 2>&1 | tail -15 | tee "$out/pytest_rnnt.txt"
python3 benchmarks/rnnt.py --device cuda --impls ours torchaudio pruned pruned-band torchaudio-joiner --rnnt-backend triton \
  --repeats 20 "$@" 2>&1 | grep -v Warn | tee "$out/rnnt.txt"
cp benchmarks/results/rnnt_cuda.json "$out/rnnt_cuda.json"
python3 scripts/device/rnnt_profile.py 2>&1 | grep -v -i warn | tee "$out/rnnt_profile.txt"
