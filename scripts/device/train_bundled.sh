#!/usr/bin/env bash
# On a machine of 2 GPUs, in one call of under 10 minutes: synthesise about 50 hours of speech
# from the carried TTS engines (the RNN-T benchmark runs on GPU 0 meanwhile), train the
# streaming MCT on both GPUs until a deadline, export the half-precision bundle in pieces of
# 15 MB (join with cat), with the training curves and logs.
#   bash scripts/device/train_bundled.sh OUTDIR      (carry .tts and .whl)
#   INIT=mct-small-synth-en SEED=3 HOURS=40 bash scripts/device/train_bundled.sh OUTDIR
#     goes on training the bundled model on a fresh corpus (another seed: other utterances);
#     WEIGHTS="espeak-ng=0.7 flite=0.2 festival=0.1" gives flite and festival more utterances
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/logs
source scripts/device/common.sh
(CUDA_VISIBLE_DEVICES=0 python3 benchmarks/rnnt.py --device cuda > /tmp/logs/rnnt_cuda.txt 2>&1;
 cp benchmarks/results/rnnt_cuda.json /tmp/logs/ 2>/dev/null) &
bench=$!
python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/corpus --workers 30 \
  --train-hours "${HOURS:-50}" --dev-hours 0.3 --seed "${SEED:-1}" ${WEIGHTS:+--engine-weights $WEIGHTS} \
  2>&1 | tee /tmp/logs/synth.txt
cp /tmp/corpus/synth.json /tmp/logs/
wait $bench; tail -12 /tmp/logs/rnnt_cuda.txt
deadline=$((start + ${TRAIN_UNTIL:-535}))
# INIT=mct-small-synth-en (or a model file) goes on from that model, with LR/WARMUP (0.0015/50)
init=()
[ -n "${INIT:-}" ] && init=(--init "$INIT" --lr "${LR:-0.0015}" --warmup "${WARMUP:-50}")
python3 -m torch.distributed.run --standalone --nproc_per_node=2 scripts/device/train_bundled.py \
  /tmp/corpus /tmp/run --deadline "$deadline" "${init[@]}" > /tmp/logs/torchrun.txt 2>&1
tail -5 /tmp/logs/torchrun.txt
python3 scripts/device/train_bundled.py /tmp/run "$out/mct-small-synth-en.pt" --export
(cd "$out" && split -b 15000000 -d mct-small-synth-en.pt mct-small-synth-en.pt.part && rm mct-small-synth-en.pt)
cp /tmp/run/metrics.csv /tmp/run/train.log /tmp/logs/ 2>/dev/null
cp /tmp/run/curves.png "$out/" 2>/dev/null
tar -C /tmp/logs -czf "$out/logs.tgz" .
grep -E "valid loss|WER" /tmp/run/train.log | tail -5
echo "total $(( $(date +%s) - start )) s"
