#!/usr/bin/env bash
# The research recipes side by side on one GPU (scripts/device/research_compare.py): synthesise a
# corpus whose held-out voice families never reach training, train Conformer, ConMamba and
# ConMambaMamba (S2S small) and the Conformer/ConMamba CTC large pair at once until a deadline,
# and with FINAL=1 time and evaluate them. Everything comes back in OUTDIR/research.tgz.
#   STEPS=900 FINAL=1 bash scripts/device/research_compare.sh OUTDIR   (carry .tts and .whl)
#     one call: corpus (about 60 s), training to STEPS or TRAIN_UNTIL, timing (about 40 s),
#     evaluation (about 100 s), within the 10 minutes of one call.
#   A call on a machine still warm from the last one finds /tmp/rcorpus and /tmp/runs there:
#     the runs resume from their newest checkpoints up to the first call's STEPS.
# TRAIN_UNTIL: seconds from this call's start at which training stops (default 560; with
# FINAL=1 leave 150 s after it); STEPS (1000); HOURS (16), SEED (7): the training corpus;
# ONLY="conformer_ctc_large conmamba_ctc_large": these runs alone (fewer runs share the GPU and
# the CPUs: more steps in the same time); RETARGET=1: this call's STEPS replaces the first call's
# (all runs then stop at the new count); SET="train.warmup_steps=1500 ...": recipe overrides
# for every run (the same on every call of a run).
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/rlogs
source scripts/device/common.sh
if [ -f /tmp/rcorpus/synth.json ]; then
  echo "reusing the corpus in /tmp/rcorpus; the runs in /tmp/runs resume"
else
  python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/rcorpus --workers "$(nproc)" \
    --train-hours "${HOURS:-16}" --dev-hours 0.4 --seed "${SEED:-7}" --held-out-dev \
    --held-out 'flite:*' 'espeak-ng:en-gb-scotland+*' 'espeak-ng:*+m7' 'espeak-ng:*+f4' \
    2>&1 | tee /tmp/rlogs/synth.txt
fi
cp /tmp/rcorpus/synth.json /tmp/rlogs/
sel=()
[ -n "${ONLY:-}" ] && sel+=(--only $ONLY)
[ -n "${SET:-}" ] && sel+=(--set $SET)
retarget=()
[ -n "${RETARGET:-}" ] && retarget=(--retarget)
python3 scripts/device/research_compare.py train /tmp/rcorpus /tmp/runs \
  --deadline $((start + ${TRAIN_UNTIL:-560})) --steps "${STEPS:-1000}" "${retarget[@]}" "${sel[@]}" \
  2>&1 | tee -a /tmp/rlogs/train.txt
if [ -n "${FINAL:-}" ]; then
  python3 scripts/device/research_compare.py timing /tmp/rcorpus /tmp/runs /tmp/rlogs/research.json \
    "${sel[@]}" 2>&1 | tee /tmp/rlogs/timing.txt
  python3 scripts/device/research_compare.py evaluate /tmp/rcorpus /tmp/runs /tmp/rlogs/research.json \
    ${ONLY:+--only $ONLY} 2>&1 | tee /tmp/rlogs/evaluate.txt
  python3 scripts/device/research_compare.py report /tmp/rlogs/research.json
fi
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
(cd /tmp/runs && for d in */; do mkdir -p "/tmp/rlogs/runs/$d"
   cp "$d"metrics.csv "$d"train.log "$d"stdout.txt "$d"*.json "/tmp/rlogs/runs/$d" 2>/dev/null; done
 cp plan.json /tmp/rlogs/ 2>/dev/null)
tar -C /tmp/rlogs -czf "$out/research.tgz" .
echo "total $(( $(date +%s) - start )) s"
