#!/usr/bin/env bash
# On one GPU, in one call: what was built without a GPU and is still unmeasured there.
# - CUDA tests of the Triton RNN-T recursions and of the Triton selective scan;
# - RNN-T loss timings, torch vs Triton recursions, beside torchaudio (B=16 T=500 U=120 V=1024);
# - BiMamba fused vs two-pass (one layer and the ConMamba encoder);
# - Conformer vs ConMamba encoders (large, bf16, batch 16) at 30, 60 and 90 s.
#   bash scripts/device/pending_checks.sh OUTDIR      (carry .whl)
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/ops/test_rnnt_triton.py -m cuda 2>&1 | tail -15 | tee "$out/pytest.txt"
python3 -m pytest -q -p no:cacheprovider tests/ops/test_selective_scan_triton.py -k cuda 2>&1 | tail -5 | tee -a "$out/pytest.txt"
python3 benchmarks/rnnt.py --device cuda --shapes 16,250,60,256 16,500,120,1024 \
  --rnnt-backend torch triton 2>&1 | tee "$out/rnnt.txt"
python3 benchmarks/bimamba.py --device cuda --batch 8 --lengths 250 500 1000 --encoder \
  --size large --seconds 30 60 2>&1 | tee "$out/bimamba.txt"
python3 benchmarks/encoder_scaling.py --device cuda --size large --batch 16 --seconds 30 60 90 \
  --out "$out" 2>&1 | grep -v Warning | tee "$out/encoder_scaling.txt"
