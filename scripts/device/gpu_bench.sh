#!/usr/bin/env bash
# On the GPU machine, in one call: CUDA tests of the Triton selective scan, a launch-setting sweep,
# the side-by-side benchmark against the peer kernel (carried in .peer/, built here in the
# background, about 160 s) and the encoder scaling benchmark (large recipes, bf16).
#   bash scripts/device/gpu_bench.sh OUTDIR
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/site
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .peer/mamba_ssm/whl/einops-*.whl
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.txt"
(cd .peer/mamba_ssm && python3 -c "import peer; peer.load()" > "$out/peer_build.log" 2>&1) &
build=$!
python3 -m pytest -q -p no:cacheprovider tests/ops/test_selective_scan_triton.py -k cuda 2>&1 | tail -40 | tee "$out/pytest.txt"
python3 benchmarks/encoder_scaling.py --device cuda --size large --batch 4 --seconds 10 20 30 60 90 120 \
  --out "$out" 2>&1 | grep -v Warning | tee "$out/encoder_scaling.txt"
wait $build || { echo "peer build failed"; tail -20 "$out/peer_build.log"; }
python3 benchmarks/scan_cuda.py --sweep --impls triton triton-f32in peer --peer .peer/mamba_ssm \
  --json "$out/scan_cuda.json" 2>&1 | tee "$out/scan_cuda.txt"
