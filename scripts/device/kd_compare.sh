#!/usr/bin/env bash
# Knowledge distillation side by side on one GPU (scripts/device/kd_compare.py): synthesise a
# corpus, train the small MCT student without a teacher and with the bundled mct-small-synth-en
# as teacher on each KD target, all at once to EPOCHS or the deadline; with FINAL=1 evaluate.
#   EPOCHS=8 bash scripts/device/kd_compare.sh OUTDIR          (carry .tts and .whl)
#   A call on a machine still warm from the last one finds /tmp/kdcorpus and /tmp/kdruns there:
#   the runs resume from their checkpoints (exact resume).
# TRAIN_UNTIL: seconds from this call's start at which training stops (default 520; with
# FINAL=1 leave 120 s after it); HOURS (8), SEED (11): the training corpus; ONLY: some runs.
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/kdlogs
source scripts/device/common.sh
if [ -f /tmp/kdcorpus/synth.json ]; then
  echo "reusing the corpus in /tmp/kdcorpus; the runs in /tmp/kdruns resume"
else
  python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/kdcorpus --workers "$(nproc)" \
    --train-hours "${HOURS:-8}" --dev-hours 0.3 --seed "${SEED:-11}" 2>&1 | tee /tmp/kdlogs/synth.txt
fi
cp /tmp/kdcorpus/synth.json /tmp/kdlogs/
python3 scripts/device/kd_compare.py train /tmp/kdcorpus /tmp/kdruns --epochs "${EPOCHS:-8}" \
  --deadline $((start + ${TRAIN_UNTIL:-520})) ${ONLY:+--only $ONLY} 2>&1 | tee -a /tmp/kdlogs/train.txt
if [ -n "${FINAL:-}" ]; then
  python3 scripts/device/kd_compare.py evaluate /tmp/kdcorpus /tmp/kdruns /tmp/kdlogs/kd.json \
    2>&1 | tee /tmp/kdlogs/evaluate.txt
  python3 scripts/device/kd_compare.py report /tmp/kdlogs/kd.json | tee /tmp/kdlogs/report.md
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
(cd /tmp/kdruns && for d in */; do mkdir -p "/tmp/kdlogs/runs/$d"
   cp "$d"metrics.csv "$d"train.log "$d"wall.json "$d"recipe.yaml "/tmp/kdlogs/runs/$d" 2>/dev/null
   cp "${d%/}.stdout.txt" "/tmp/kdlogs/runs/$d" 2>/dev/null; done)
tar -C /tmp/kdlogs -czf "$out/kd.tgz" .
echo "total $(( $(date +%s) - start )) s"
