#!/usr/bin/env bash
# On the GPU machine: CUDA tests of the selective scan, a Triton launch-setting sweep, and the
# side-by-side benchmark against the peer kernel (carried in .peer/, built here, about 160 s).
#   bash scripts/device/scan_cuda.sh OUTDIR
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/site
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .peer/mamba_ssm/whl/einops-*.whl
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
(cd .peer/mamba_ssm && python3 -c "import peer; peer.load()" > "$out/peer_build.log" 2>&1) &
build=$!
python3 -m pytest -q -x tests/ops 2>&1 | tail -5 | tee "$out/pytest.txt"
wait $build || { echo "peer build failed"; tail -20 "$out/peer_build.log"; }
python3 benchmarks/scan_cuda.py --sweep --peer .peer/mamba_ssm --json "$out/scan_cuda.json" 2>&1 | tee "$out/scan_cuda.txt"
