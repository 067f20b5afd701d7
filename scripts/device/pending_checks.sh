#!/usr/bin/env bash
# On one GPU, in one call: what was built or changed without a GPU and is still unmeasured there.
# - pruned_transducer_loss as one autograd node (ops/pruned_rnnt.py), which the transducer and
#   benchmarks/rnnt.py's pruned row now use: its CUDA tests against the composite (fp32, bf16
#   autocast) and the model's loss on CUDA against the torch backend, with every RNN-T test
#   (scripts/device/rnnt_check.sh, which also runs benchmarks/rnnt.py beside torchaudio with
#   the composite as pruned-band, and the kernel profile);
# - the direct launches of ops/triton_launch.py (opt-in, MAMBA_ASR_TRITON_LAUNCH=direct): their
#   CUDA test, then scripts/device/rnnt_host.py, the step's host time as one node with direct and
#   with triton's launches, and as separate nodes; the same benchmark with direct launches;
# - the step replayed as a CUDA graph (scripts/device/rnnt_graph.py).
#   bash scripts/device/pending_checks.sh OUTDIR      (carry .whl; a few minutes)
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out"
source scripts/device/wheels.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests:$PWD/benchmarks:${PYTHONPATH:-}"
echo "# bash scripts/device/pending_checks.sh   ($(date -u +%FT%TZ))"
bash scripts/device/rnnt_check.sh "$out" 2>&1 | grep -v -i warn | tail -40
MAMBA_ASR_TRITON_LAUNCH=direct python3 benchmarks/rnnt.py --device cuda --impls torchaudio pruned \
  pruned-band --rnnt-backend triton --repeats 20 2>&1 | grep -v Warn | tee "$out/rnnt_direct.txt"
python3 scripts/device/rnnt_host.py 2>&1 | grep -v -i warn | tee "$out/rnnt_host.txt"
python3 scripts/device/rnnt_graph.py 2>&1 | grep -v -i warn | tee "$out/rnnt_graph.txt"
