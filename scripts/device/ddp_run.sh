#!/usr/bin/env bash
# On a machine of 2 GPUs, in one call (about 7 minutes): synthesise a 20-hour corpus from the
# carried TTS engines, then the 1-vs-2-GPU training comparison of scripts/device/ddp_scaling.py.
#   bash scripts/device/ddp_run.sh OUTDIR     (carry .tts and .whl)
set -uo pipefail
out="${1:-/tmp/out}"
mkdir -p "$out"
source scripts/device/common.sh
python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/corpus --train-hours 20 \
  --dev-hours 0.05 2>&1 | tee "$out/synth.txt"
cp /tmp/corpus/synth.json "$out/"
python3 scripts/device/ddp_scaling.py /tmp/corpus /tmp/ddp --steps "${STEPS:-200}" \
  --batch-seconds "${BATCH_SECONDS:-120}" 2>&1 | tee "$out/ddp.txt"
cp /tmp/ddp/ddp_scaling.json /tmp/ddp/ddp_loss.png "$out/" 2>/dev/null
tar -C /tmp/ddp -czf "$out/ddp_logs.tgz" $(cd /tmp/ddp && ls *.log */metrics.csv */train.log */profile/*.txt 2>/dev/null)
