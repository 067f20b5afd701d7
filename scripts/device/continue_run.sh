#!/usr/bin/env bash
# On a machine of 2 GPUs, in one call of under 10 minutes: a fresh 20-hour corpus (another
# seed), the 1-vs-2-GPU comparison (scripts/device/ddp_scaling.py), then more training of the
# bundled model (.init/model.pt, carried) on that corpus until a deadline; exports as
# train_bundled.sh does.   bash scripts/device/continue_run.sh OUTDIR  (carry .tts .whl .init)
set -uo pipefail
start=$(date +%s)
out="${1:-/tmp/out}"
mkdir -p "$out" /tmp/logs
source scripts/device/common.sh
python3 scripts/device/synth_corpus.py "$TTS_ROOT/text" /tmp/corpus --workers 32 --seed 2 \
  --train-hours "${HOURS:-20}" --dev-hours 0.3 2>&1 | tee /tmp/logs/synth.txt
python3 scripts/device/ddp_scaling.py /tmp/corpus /tmp/ddp --steps 150 --batch-seconds 200 \
  --recipe-steps conmamba_ctc=100 2>&1 | tee /tmp/logs/ddp.txt
cp /tmp/ddp/ddp_scaling.json /tmp/ddp/ddp_loss.png "$out/" 2>/dev/null
tar -C /tmp/ddp -czf /tmp/logs/ddp_logs.tgz $(cd /tmp/ddp && ls *.log */metrics.csv */train.log */profile/*.txt 2>/dev/null)
deadline=$((start + ${TRAIN_UNTIL:-540}))
if [ $((deadline - $(date +%s))) -gt 60 ]; then
  python3 -m torch.distributed.run --standalone --nproc_per_node=2 scripts/device/train_bundled.py \
    /tmp/corpus /tmp/run --deadline "$deadline" --init .init/model.pt --lr 0.0015 --warmup 50 \
    > /tmp/logs/torchrun.txt 2>&1
  tail -3 /tmp/logs/torchrun.txt
  python3 scripts/device/train_bundled.py /tmp/run "$out/mct-small-synth-en.pt" --export
  (cd "$out" && split -b 15000000 -d mct-small-synth-en.pt mct-small-synth-en.pt.part && rm mct-small-synth-en.pt)
  cp /tmp/run/metrics.csv /tmp/run/train.log /tmp/logs/ 2>/dev/null
fi
tar -C /tmp/logs -czf "$out/logs.tgz" .
echo "total $(( $(date +%s) - start )) s"
