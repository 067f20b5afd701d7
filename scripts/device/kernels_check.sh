#!/usr/bin/env bash
# Every GPU-kernel check in one call, tests first, then the benchmarks beside the peers:
#   1. the selective scan (scripts/device/scan_check.sh: our tests, state-spaces/mamba's test
#      against our kernel and against its own, benchmarks/scan_cuda.py beside the peer kernel);
#   2. the RNN-T losses (scripts/device/rnnt_check.sh: tests, benchmarks/rnnt.py beside
#      torchaudio, the profile) and the pruned step replayed as a CUDA graph
#      (scripts/device/rnnt_graph.py) and where the eager step's host time goes
#      (scripts/device/rnnt_host.py);
#   3. the encoders (benchmarks/encoder_scaling.py: a bf16 training step of the large Conformer
#      and ConMamba encoders, batch 16, 10-120 s).
#   bash scripts/device/kernels_check.sh OUTDIR      (carry .peer and .whl; about 8 minutes with
#   the peer built from source, less with .peer/build/selective_scan_cuda.so.xz from a past run)
# Each part writes into /tmp/kernels_check/<part>/ (scan, rnnt, encoders), all of it comes back
# as OUTDIR/kernels.tgz (a call returns at most 8 files; packed again after every part, so a call cut
# off by its time limit brings back what was done), the peer build as OUTDIR/peer_so.xz; a part that
# fails does not stop the next one. SCAN_BENCH_ARGS: more arguments of benchmarks/scan_cuda.py
# (e.g. "--rounds 2 --gpu"); ENC_SECONDS: the encoders' lengths (default "10 30 60 120").
set -uo pipefail
dest="${1:-/tmp/out}"
out=/tmp/kernels_check
mkdir -p "$dest" "$out/scan" "$out/rnnt" "$out/encoders"
source scripts/device/wheels.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
echo "# bash scripts/device/kernels_check.sh   ($(date -u +%FT%TZ))"
pack() { tar -C "$out" -czf "$dest/kernels.tgz" scan rnnt encoders; }  # after every part
bash scripts/device/scan_check.sh "$out/scan" ${SCAN_BENCH_ARGS:-} 2>&1 | tail -40
mv "$out/scan/peer_so.xz" "$dest/" 2>/dev/null
pack
bash scripts/device/rnnt_check.sh "$out/rnnt" 2>&1 | grep -v -i warn | tail -30
PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests:$PWD/benchmarks" python3 scripts/device/rnnt_graph.py \
  2>&1 | grep -v -i warn | tee "$out/rnnt/rnnt_graph.txt"
PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks" python3 scripts/device/rnnt_host.py \
  2>&1 | grep -v -i warn | tee "$out/rnnt/rnnt_host.txt"
pack
PYTHONPATH="/tmp/site:$PWD/src" python3 benchmarks/encoder_scaling.py --device cuda --size large \
  --batch 16 --seconds ${ENC_SECONDS:-10 30 60 120} --out "$out/encoders" 2>&1 | grep -v Warning \
  | tee "$out/encoders/encoder_scaling.txt"
pack && ls -la "$dest"
