#!/usr/bin/env bash
# On a machine of 2 GPUs, in one call of under 10 minutes: synthesise about 50 hours of speech
# from the carried TTS engines (the RNN-T benchmark runs on GPU 0 meanwhile), train the
# streaming MCT on both GPUs until a deadline, export the half-precision bundle in pieces of
# 15 MB (join with cat), with the training curves and logs.
#   bash scripts/device/train_bundled.sh OUTDIR      (carry .tts and .whl)
#   INIT=mct-small-synth-en SEED=3 HOURS=40 bash scripts/device/train_bundled.sh OUTDIR
#     goes on training the bundled model on a fresh corpus (another seed: other utterances);
#     WEIGHTS="espeak-ng=0.7 flite=0.2 festival=0.1" gives flite and festival more utterances;
#     SET="train.max_batch_seconds=600 ..." adds recipe overrides.
#   HELDOUT_DEV=1: the dev set holds the training voices only and dev_heldout the held-out
#     voices (espeak-ng variants m7, f4), validated beside it every epoch (wer_heldout in
#     metrics.csv); SET="train.select_on=heldout" then lets that set choose the checkpoints
#     averaged. (Off by default: the bundled model's phases were made without it.)
#   CHECKS=1: scripts/device/pending_checks.sh on GPU 0 and CPUs 0-7 during the synthesis
#     (on CPUs 8-31) instead of the RNN-T benchmark; its files go into logs.tgz (checks/).
#   A call on a machine still warm from the last one finds /tmp/corpus and /tmp/run there: it
#     skips the synthesis and the training resumes from the newest checkpoint (same schedule).
#   DDP="conmamba_ctc" DDP_BATCH=400 DDP_STEPS=60: the 1-vs-2-GPU comparison
#     (scripts/device/ddp_scaling.py) on the new corpus before training; files in logs.tgz (ddp/).
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/logs
source scripts/device/common.sh
synth_cpus=0-$(($(nproc) - 1))
if [ -n "${CHECKS:-}" ]; then
  synth_cpus=8-$(($(nproc) - 1))
  (CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 bash scripts/device/pending_checks.sh /tmp/logs/checks \
    > /tmp/logs/checks.txt 2>&1) &
else
  (CUDA_VISIBLE_DEVICES=0 python3 benchmarks/rnnt.py --device cuda > /tmp/logs/rnnt_cuda.txt 2>&1;
   cp benchmarks/results/rnnt_cuda.json /tmp/logs/ 2>/dev/null) &
fi
bench=$!
workers=$(taskset -c "$synth_cpus" nproc)
if [ -f /tmp/corpus/synth.json ]; then  # a machine still warm from an earlier call
  echo "reusing the corpus in /tmp/corpus; training resumes from /tmp/run's newest checkpoint"
else
  taskset -c "$synth_cpus" python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/corpus \
    --workers "$workers" --train-hours "${HOURS:-50}" --dev-hours 0.3 --seed "${SEED:-1}" \
    ${HELDOUT_DEV:+--held-out-dev} \
    ${WEIGHTS:+--engine-weights $WEIGHTS} 2>&1 | tee /tmp/logs/synth.txt
fi
cp /tmp/corpus/synth.json /tmp/logs/
wait $bench
tail -40 /tmp/logs/checks.txt /tmp/logs/rnnt_cuda.txt 2>/dev/null
if [ -n "${DDP:-}" ]; then
  python3 scripts/device/ddp_scaling.py /tmp/corpus /tmp/ddp --recipes $DDP \
    --steps "${DDP_STEPS:-60}" --batch-seconds "${DDP_BATCH:-400}" 2>&1 | tee /tmp/logs/ddp.txt
  mkdir -p /tmp/logs/ddp
  (cd /tmp/ddp && cp --parents ddp_scaling.json ddp_loss.png *.log */metrics.csv */train.log /tmp/logs/ddp/ 2>/dev/null)
fi
deadline=$((start + ${TRAIN_UNTIL:-535}))
# INIT=mct-small-synth-en (or a model file) goes on from that model, with LR/WARMUP (0.0015/50)
init=()
[ -n "${INIT:-}" ] && init=(--init "$INIT" --lr "${LR:-0.0015}" --warmup "${WARMUP:-50}")
[ -n "${SET:-}" ] && init+=(--set $SET)
if [ $((deadline - $(date +%s))) -gt 45 ]; then
  python3 -m torch.distributed.run --standalone --nproc_per_node=2 scripts/device/train_bundled.py \
    /tmp/corpus /tmp/run --deadline "$deadline" "${init[@]}" > /tmp/logs/torchrun.txt 2>&1
  tail -5 /tmp/logs/torchrun.txt
  python3 scripts/device/train_bundled.py /tmp/run "$out/mct-small-synth-en.pt" --export
  (cd "$out" && split -b 15000000 -d mct-small-synth-en.pt mct-small-synth-en.pt.part && rm mct-small-synth-en.pt)
  cp /tmp/run/metrics.csv /tmp/run/train.log /tmp/logs/ 2>/dev/null
  cp /tmp/run/curves.png "$out/" 2>/dev/null
  grep -E "valid loss|WER" /tmp/run/train.log | tail -5
fi
cp benchmarks/results/*.json /tmp/logs/ 2>/dev/null
tar -C /tmp/logs -czf "$out/logs.tgz" .
echo "total $(( $(date +%s) - start )) s"
