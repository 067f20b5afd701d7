#!/usr/bin/env bash
# The compression chain side by side on one GPU (scripts/device/kd_compare.py): synthesise a
# corpus like the bundled model's (same engines and shares, its held-out voices only in
# dev_heldout), train the small MCT student without a teacher and with the bundled
# mct-small-synth-en as teacher on each KD target, and fine-tune the bundled model pruned 25% and
# 50% and with QAT int8, all at once to their epochs or the deadline; with FINAL=1 evaluate and
# pack the models (float16, in parts of 15 MiB) into OUTDIR.
#   EPOCHS=8 FINAL=1 bash scripts/device/kd_compare.sh OUTDIR        (carry .tts and .whl)
#   A call on a machine still warm from the last one finds /tmp/kdcorpus and /tmp/kdruns there:
#   the runs resume from their checkpoints (exact resume).
# TRAIN_UNTIL: seconds from this call's start at which training stops (default 520; with
# FINAL=1 leave 150 s after it); HOURS (8), SEED (11): the training corpus; ONLY: some runs
# (default all but kd_ctc_t2); FT_EPOCHS (3): the fine-tuning runs' epochs; PACK: the runs
# whose models come back, PACK_ONE_OF and PACK_BY: also the one of those runs with the lowest
# WER on set PACK_BY; EXTRA_DEV: more sets to measure (NAME=MANIFEST, from .mix); SYNTH_ONLY=1:
# make the corpus and stop (a later call on the warm machine carries .mix instead of .tts).
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/kdlogs
source scripts/device/common.sh
# torchao (QAT) without its compiled extensions, which the fake quantizers do not use
tar -C /tmp/site -xJf .whl/torchao-0.18.0-noext.tar.xz || exit 1
if [ -f /tmp/kdcorpus/synth.json ]; then
  echo "reusing the corpus in /tmp/kdcorpus; the runs in /tmp/kdruns resume"
else
  python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/kdcorpus --workers "$(nproc)" \
    --train-hours "${HOURS:-8}" --dev-hours 0.2 --seed "${SEED:-11}" --held-out-dev \
    --engine-weights espeak-ng=0.8 flite=0.12 festival=0.08 2>&1 | tee /tmp/kdlogs/synth.txt
fi
cp /tmp/kdcorpus/synth.json /tmp/kdlogs/
if [ -n "${SYNTH_ONLY:-}" ]; then echo "total $(( $(date +%s) - start )) s (corpus only)"; exit 0; fi
# extra speech sets packed here by scripts/device/pack_mix.py (carry .mix): for the runs with a
# 'mix' and for EXTRA_DEV="NAME=/tmp/mix/NAME/manifest.jsonl ..." (measured only)
for t in .mix/*.tar; do
  [ -f "$t" ] || continue
  n=$(basename "$t" .tar)
  [ -f "/tmp/mix/$n/manifest.jsonl" ] || { mkdir -p /tmp/mix && tar -C /tmp/mix -xf "$t"; }
done
python3 scripts/device/kd_compare.py train /tmp/kdcorpus /tmp/kdruns --epochs "${EPOCHS:-8}" \
  --ft-epochs "${FT_EPOCHS:-3}" --deadline $((start + ${TRAIN_UNTIL:-520})) \
  --only ${ONLY:-no_kd kd_ctc kd_lattice prune25 prune50 qat_int8} 2>&1 | tee -a /tmp/kdlogs/train.txt
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
if [ -n "${FINAL:-}" ]; then
  python3 scripts/device/kd_compare.py evaluate /tmp/kdcorpus /tmp/kdruns /tmp/kdlogs/kd.json \
    --extra-dev ${EXTRA_DEV:-} 2>&1 | tee /tmp/kdlogs/evaluate.txt
  python3 scripts/device/kd_compare.py report /tmp/kdlogs/kd.json | tee /tmp/kdlogs/report.md
  python3 scripts/device/kd_compare.py pack /tmp/kdruns "$out" \
    ${PACK-no_kd kd_ctc kd_lattice prune25 qat_int8} ${PACK_ONE_OF:+--one-of $PACK_ONE_OF \
    --by "${PACK_BY:-dev}" --report /tmp/kdlogs/kd.json} 2>&1 | tee -a /tmp/kdlogs/evaluate.txt
fi
(cd /tmp/kdruns && for d in */; do mkdir -p "/tmp/kdlogs/runs/$d"
   cp "$d"metrics.csv "$d"train.log "$d"wall.json "$d"recipe.yaml "/tmp/kdlogs/runs/$d" 2>/dev/null
   cp "${d%/}.stdout.txt" "/tmp/kdlogs/runs/$d" 2>/dev/null; done)
tar -C /tmp/kdlogs -czf "$out/kd.tgz" .
echo "total $(( $(date +%s) - start )) s"
