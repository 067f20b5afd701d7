#!/usr/bin/env bash
# Where the selective scan's time goes, in one call on one GPU, beside the peer. PARTS (default:
# all, in this order) picks among:
#   ncu      Nsight Compute (--set full: occupancy, issue rate, stall reasons, per-instruction
#            samples) on our time-parallel kernels (scripts/device/scan_ncu.py, B8 D1024 L2048,
#            fp32 and bf16);
#   tests    our CUDA tests of the scan and of the direct launches (TESTS_DIRECT=0: not the
#            scan's again with direct launches), and state-spaces/mamba's test against our kernel
#            (TESTS_PEER=0: not);
#   host     host time against GPU time per call (scripts/device/scan_host.py, with --cprofile),
#            with triton's launches and with the direct ones (MAMBA_ASR_TRITON_LAUNCH=direct);
#   bench    benchmarks/scan_cuda.py beside the peer, with VARIANTS ('NAME=JSON ...', CONFIG
#            overrides) and BENCH_ARGS (e.g. "--rounds 3 --gpu"), and with the direct launches
#            (BENCH_DIRECT=0: not); with OLD_SRC (a tarball of another
#            checkout's src/: `git archive HEAD src ':(exclude)src/mamba_asr/pretrained' | gzip >
#            .peer/old_src.tgz`) that code is timed too, in the same call;
#   peer_ncu Nsight Compute on the peer's CUDA kernels, as for ours;
#   encoders the large encoders' training step by kernel group (scripts/device/encoder_profile.py)
#            and benchmarks/encoder_scaling.py (10, 30, 60 s);
#   conv     the depthwise conv's Triton kernels: their CUDA tests, benchmarks/depthwise_conv.py
#            beside PyTorch's (and OLD_SRC's, when given), and the encoders with each way of
#            CONV_WAYS (MAMBA_ASR_DEPTHWISE_CONV values, default "torch auto"; only "auto"
#            when the encoders part is in PARTS too, whose run is "torch"'s);
#   launch   the Triton kernels launched directly (ops.triton_launch, MAMBA_ASR_TRITON_LAUNCH=
#            direct) against triton's own launches: the scan, launch and depthwise conv tests
#            with direct launches, benchmarks/encoder_scaling.py (LAUNCH_SECONDS, default 10 20
#            30 60) each way of LAUNCH_WAYS (default "jit direct jit direct", alternating), and
#            unless LAUNCH_PROFILE=0 the encoders' step profile with direct launches (10, 30 s);
#   sources  the encoders' step profile (SOURCES_SECONDS, default 30) with each kernel's GPU time
#            put down to where it was launched from (our function, or the backward node, and the
#            operator): which copies and casts come from where;
#   pad      BiMamba's frames padded to a multiple of 16 (MAMBA_ASR_PAD_FRAMES): the scan at the
#            encoders' lengths and padded (750/752, 1500/1504 frames, two groups, bf16) beside the
#            peer, then the encoders (LAUNCH_SECONDS) without and with it, alternating, twice;
#   nreg     the encoders (LAUNCH_SECONDS) with the scan's backward capped at NREG registers
#            (default 80; CONFIG time_bwd_maxnreg) and without, alternating, twice each: whether
#            an earlier call's shorter 30 s step with the cap comes again;
#   rnnt     benchmarks/rnnt.py (torchaudio, pruned, pruned-band on the Triton backend), twice;
#   hostgap  the encoders' step profile (HOSTGAP_SECONDS, default 10 30) with the host's Python
#            by source file and function (encoder_profile.py --python): where ConMamba's extra
#            host time goes;
#   encoders_ab  benchmarks/encoder_scaling.py (LAUNCH_SECONDS) with this checkout's code and
#            with OLD_SRC's, alternating, twice each;
#   seq      the kernels of ops/selective_scan/gluon_seq.py (CONFIG kernel=seq; time_fwd=seq: its
#            forward alone): our CUDA scan tests with them and the BiMamba ones, benchmarks/
#            scan_cuda.py beside the peer with both as variants and settings of theirs (SEQ_VARIANTS
#            replaces them; --rounds 2 --gpu), then
#            state-spaces/mamba's test against kernel=seq;
#   lanes    the kernels of ops/selective_scan/triton_lanes.py (CONFIG kernel=lanes, the default;
#            lanes_k 4 and 8): our CUDA scan tests and the BiMamba ones with them,
#            benchmarks/scan_cuda.py beside the peer with the time kernels and other settings of
#            theirs as variants (the backward's ping-pong and two states a step, K 8;
#            LANES_VARIANTS replaces them;
#            --rounds 2 --gpu), then state-spaces/mamba's test against each K (LANES_CONFIG: CONFIG
#            entries for the CUDA tests; LANES_MAMBA=0 skips the BiMamba ones; LANES_ROUNDS;
#            LANES_PEER_K, the K the peer's test runs with, "" none; LANES_PEER_CONFIG, its
#            whole CONFIG instead; LANES_TESTS=0 skips our CUDA tests, LANES_SELECT picks among
#            them, a pytest -k expression, default "cuda and lanes"; LANES_ACCUMULATE=1: the
#            benchmark again, ours and the peer's, with --accumulate);
#   lanes_ncu  Nsight Compute on triton_lanes' kernels (LANES_K, default 4);
#   ncu_cfg  Nsight Compute on the kernels matching NCU_KERNEL (default _fwd_lanes) under each
#            CONFIG of NCU_CONFIGS ('NAME=JSON ...', default one with none), NCU_DTYPES
#            (float32) at L NCU_LENGTH (8192), B8 D1024;
#   encoders_cfg  benchmarks/encoder_scaling.py (ENC_SECONDS, default 30 60) under each CONFIG of
#            ENC_CONFIGS ('NAME=JSON ...'), in turn, ENC_ROUNDS times (2);
#   trace    the ablate part's traces alone;
#   seq_ncu  Nsight Compute on gluon_seq's kernels (kernel=seq), as the ncu part on ours;
#   ablate   scripts/device/scan_ablate.py: the backward's GPU time with one part taken out at a
#            time, then traces of ours and the peer's host path (chrome traces, .json.xz);
#   bidir    BiMamba's reshuffles written once against the composites (tests/ops/test_directions.py
#            on CUDA, benchmarks/bidirectional.py); with BIDIR_OLD_SRC (a tarball as OLD_SRC's, of
#            the code before them: adf12cf^), ConMamba's step by kernel under that code too (the
#            encoders part gives this code's).
#   bash scripts/device/scan_profile.sh OUTDIR   (carry .whl, .peer: scripts/device/pack_wheels.sh)
# Everything comes back as OUTDIR/scan_profile.tgz (text; packed again after every part) and
# OUTDIR/ncu_reports.tgz (the .ncu-rep files, for ncu-ui), a fresh peer build as OUTDIR/peer_so.xz
# (keep it as .peer/build/selective_scan_cuda.so.xz: the next call skips the 160 s build).
set -uo pipefail
dest="${1:-/tmp/out}"
out=/tmp/scan_profile
PARTS="${PARTS:-ncu tests host bench peer_ncu encoders conv bidir}"
mkdir -p "$dest" "$out"
source scripts/device/wheels.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests:$PWD/benchmarks:$PWD/scripts/device"
source scripts/device/peer.sh
echo "# PARTS='$PARTS' VARIANTS='${VARIANTS:-}' bash scripts/device/scan_profile.sh   ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
peer_start "$out"
ncu_report() {  # name: text pages of $out/name.ncu-rep
  ncu -i "$out/$1.ncu-rep" --page details > "$out/$1_details.txt" 2>&1
  ncu -i "$out/$1.ncu-rep" --page raw --csv > "$out/$1_raw.csv" 2>&1
  ncu -i "$out/$1.ncu-rep" --page source --csv --print-source sass > "$out/$1_source.csv" 2>&1
  grep -E "^  [_a-zA-Z].*\(|Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|Warp Cycles Per Issued" \
    "$out/$1_details.txt" | head -60
  python3 scripts/device/ncu_summary.py "$out" "$1" > "$out/$1_ncu_summary.txt"
}
pack() {  # what has finished so far, so that a run cut off by its time limit still returns it
  tar -C "$out" -czf "$dest/scan_profile.tgz" --exclude='*.ncu-rep' .
}
unpack() {  # tarball dir: the tarball unpacked into dir; fails when no tarball is given
  [ -n "$1" ] && [ -f "$1" ] && mkdir -p "$2" && tar -xzf "$1" -C "$2"
}
scaling() {  # name, seconds, then env assignments: the large encoders' step, appended to
  local name=${1:+_$1} seconds=$2  # $out/encoder_scaling_NAME.txt (no name: encoder_scaling.txt)
  shift 2
  env "$@" python3 benchmarks/encoder_scaling.py --device cuda --size large --batch 16 \
    --seconds $seconds --out "$out/encoders$name" 2>&1 | grep -v -i warn \
    | tee -a "$out/encoder_scaling$name.txt"
  pack
}
bench() {  # name, then env assignments for the run
  local name=$1
  shift
  env "$@" python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --iters 30 \
    --json "$out/scan_cuda_$name.json" ${BENCH_ARGS:-} --variant ${VARIANTS:-} 2>&1 \
    | grep -v -i warn | tee "$out/scan_cuda_$name.txt"
}
for part in $PARTS; do
  echo "## $part"
  case $part in
  ncu)
    ncu --clock-control none --set full -k regex:"_time_kernel|_lanes_kernel" -f -o "$out/ours" \
      python3 scripts/device/scan_ncu.py float32 bfloat16 > "$out/ncu_ours.log" 2>&1
    tail -3 "$out/ncu_ours.log"
    ncu_report ours ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider -n 12 tests/ops/test_selective_scan_triton.py \
      tests/ops/test_selective_scan.py tests/ops/test_triton_launch.py > "$out/pytest_scan.log" 2>&1
    grep -E "^(E |FAILED|ERROR)" "$out/pytest_scan.log" | head -40
    tail -3 "$out/pytest_scan.log" | tee "$out/pytest_scan.txt"
    [ "${TESTS_DIRECT:-1}" = 1 ] && MAMBA_ASR_TRITON_LAUNCH=direct python3 -m pytest -q \
      -p no:cacheprovider -n 12 tests/ops/test_selective_scan_triton.py 2>&1 | tail -1 \
      | sed 's/^/direct launches: /' | tee -a "$out/pytest_scan.txt"
    [ "${TESTS_PEER:-1}" = 1 ] && python3 -m pytest -q -p no:cacheprovider -n 12 "$PEER_TEST" \
      2>&1 | tail -2 | tee "$out/pytest_peer_test_ours.txt" ;;
  host)
    peer_ready "$dest"
    python3 scripts/device/scan_host.py --cprofile --json "$out/scan_host.json" 2>&1 \
      | grep -v -i warn | tee "$out/scan_host.txt"
    MAMBA_ASR_TRITON_LAUNCH=direct python3 scripts/device/scan_host.py --impls triton --cprofile \
      --json "$out/scan_host_direct.json" 2>&1 | grep -v -i warn | tee "$out/scan_host_direct.txt" ;;
  bench)
    peer_ready "$dest"
    bench jit MAMBA_ASR_TRITON_LAUNCH=jit
    [ "${BENCH_DIRECT:-1}" = 1 ] && bench direct MAMBA_ASR_TRITON_LAUNCH=direct
    if unpack "${OLD_SRC:-}" /tmp/old; then
      PYTHONPATH="/tmp/site:/tmp/old/src:$PWD/benchmarks:$PWD/scripts/device" python3 \
        benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --iters 30 \
        --json "$out/scan_cuda_old.json" ${BENCH_ARGS:-} 2>&1 | grep -v -i warn \
        | tee "$out/scan_cuda_old.txt"
    fi ;;
  seq)
    peer_ready "$dest"
    python3 -m pytest -q -p no:cacheprovider -n 8 tests/ops/test_selective_scan_triton.py \
      -k "cuda and seq" > "$out/pytest_seq.log" 2>&1
    grep -E "^(E |FAILED|ERROR)" "$out/pytest_seq.log" | head -40
    tail -3 "$out/pytest_seq.log" | tee "$out/pytest_seq.txt"
    MAMBA_ASR_TRITON_SCAN_CONFIG='{"kernel": "seq"}' python3 -m pytest -q -p no:cacheprovider \
      -n 8 tests/modules/test_mamba.py -k "cuda or fused" 2>&1 | tail -2 | sed 's/^/mamba: /' \
      | tee -a "$out/pytest_seq.txt"
    python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --iters 30 \
      --rounds 2 --gpu --variant ${SEQ_VARIANTS:-seq_fwd='{"time_fwd": "seq"}' \
      seq='{"kernel": "seq"}' seq_p0='{"kernel": "seq", "seq_prefetch": 0}' \
      seq_p2='{"kernel": "seq", "seq_prefetch": 2}' seq_w1='{"kernel": "seq", "seq_fwd_warps": 1}' \
      seq_t8='{"kernel": "seq", "seq_chunk": 8}' seq_t32='{"kernel": "seq", "seq_chunk": 32}'} \
      --json "$out/scan_cuda_seq.json" 2>&1 | grep -v -i warn | tee "$out/scan_cuda_seq.txt"
    MAMBA_ASR_TRITON_SCAN_CONFIG='{"kernel": "seq"}' python3 -m pytest -q -p no:cacheprovider \
      -n 12 "$PEER_TEST" 2>&1 | tail -2 | tee "$out/pytest_peer_test_seq.txt" ;;
  lanes)
    lanes_cfg="${LANES_CONFIG:-}"
    [ -n "$lanes_cfg" ] || lanes_cfg='{}'
    if [ "${LANES_TESTS:-1}" = 1 ]; then
      MAMBA_ASR_TRITON_SCAN_CONFIG="$lanes_cfg" python3 -m pytest -q -p no:cacheprovider -n 8 \
        tests/ops/test_selective_scan_triton.py -k "${LANES_SELECT:-cuda and lanes}" \
        > "$out/pytest_lanes.log" 2>&1
      grep -E "^(E |FAILED|ERROR)" "$out/pytest_lanes.log" | head -40
      tail -3 "$out/pytest_lanes.log" | tee "$out/pytest_lanes.txt"
    fi
    [ "${LANES_MAMBA:-1}" = 1 ] && MAMBA_ASR_TRITON_SCAN_CONFIG="$lanes_cfg" python3 -m pytest \
      -q -p no:cacheprovider -n 8 tests/modules/test_mamba.py -k "cuda or fused" 2>&1 \
      | tail -2 | sed 's/^/mamba: /' | tee -a "$out/pytest_lanes.txt"
    peer_ready "$dest"  # the tests above ran while it was built
    python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --iters 30 \
      --rounds ${LANES_ROUNDS:-2} --gpu --variant ${LANES_VARIANTS:-time='{"kernel": "time"}' \
      pingpong='{"lanes_bwd_pingpong": true}' bwd_u2='{"lanes_unroll": [4, 2]}' \
      lanes8='{"lanes_k": 8}'} \
      --json "$out/scan_cuda_lanes.json" 2>&1 | grep -v -i warn | tee "$out/scan_cuda_lanes.txt"
    pack
    [ "${LANES_ACCUMULATE:-0}" = 1 ] && python3 benchmarks/scan_cuda.py --impls triton peer \
      --peer .peer/mamba_ssm --iters 30 --rounds ${LANES_ROUNDS:-2} --gpu --accumulate \
      --json "$out/scan_cuda_lanes_accumulate.json" 2>&1 | grep -v -i warn \
      | tee "$out/scan_cuda_lanes_accumulate.txt" && pack
    for k in ${LANES_PEER_K-4 8}; do
      peer_cfg="{\"kernel\": \"lanes\", \"lanes_k\": $k}"
      [ -n "${LANES_PEER_CONFIG:-}" ] && peer_cfg="$LANES_PEER_CONFIG"
      MAMBA_ASR_TRITON_SCAN_CONFIG="$peer_cfg" python3 -m pytest -q \
        -p no:cacheprovider -n 12 "$PEER_TEST" 2>&1 | tail -2 \
        | sed "s/^/lanes_k $k: /" | tee -a "$out/pytest_peer_test_lanes.txt"
    done ;;
  ncu_cfg)
    for spec in ${NCU_CONFIGS:-default=\{\}}; do
      name=${spec%%=*}
      MAMBA_ASR_TRITON_SCAN_CONFIG="${spec#*=}" ncu --clock-control none --set full \
        -k regex:"${NCU_KERNEL:-_fwd_lanes}" -c 2 -f -o "$out/$name" python3 \
        scripts/device/scan_ncu.py ${NCU_DTYPES:-float32} --length ${NCU_LENGTH:-8192} \
        > "$out/ncu_$name.log" 2>&1
      tail -2 "$out/ncu_$name.log"
      ncu_report "$name"
      head -30 "$out/${name}_ncu_summary.txt"
      pack
    done ;;
  encoders_cfg)
    for round in $(seq ${ENC_ROUNDS:-2}); do
      for spec in ${ENC_CONFIGS:-default=\{\}}; do
        scaling "${spec%%=*}" "${ENC_SECONDS:-30 60}" MAMBA_ASR_TRITON_SCAN_CONFIG="${spec#*=}"
      done
    done ;;
  lanes_ncu)
    MAMBA_ASR_TRITON_SCAN_CONFIG="{\"kernel\": \"lanes\", \"lanes_k\": ${LANES_K:-4}}" ncu \
      --clock-control none --set full -k regex:lanes_kernel -f -o "$out/lanes" \
      python3 scripts/device/scan_ncu.py float32 bfloat16 > "$out/ncu_lanes.log" 2>&1
    tail -3 "$out/ncu_lanes.log"
    ncu_report lanes
    cat "$out/lanes_ncu_summary.txt" | head -80 ;;
  seq_ncu)
    MAMBA_ASR_TRITON_SCAN_CONFIG='{"kernel": "seq"}' ncu --clock-control none --set full \
      -k regex:seq_kernel -f -o "$out/seq" python3 scripts/device/scan_ncu.py float32 bfloat16 \
      > "$out/ncu_seq.log" 2>&1
    tail -3 "$out/ncu_seq.log"
    ncu_report seq
    cat "$out/seq_ncu_summary.txt" | head -80 ;;
  ablate)
    peer_ready "$dest"
    python3 scripts/device/scan_ablate.py --out "$out/ablate" --ablate --trace 2>&1 \
      | grep -v -i warn | tee "$out/scan_ablate.txt" ;;
  trace)
    peer_ready "$dest"
    python3 scripts/device/scan_ablate.py --out "$out/ablate" --trace 2>&1 \
      | grep -v -i warn | tee "$out/scan_trace.txt" | grep -E "^## |Self CPU time total" ;;
  peer_ncu)
    peer_ready "$dest"
    ncu --clock-control none --set full -k regex:selective_scan -f -o "$out/peer" \
      python3 scripts/device/scan_ncu.py --impl peer float32 bfloat16 > "$out/ncu_peer.log" 2>&1
    tail -3 "$out/ncu_peer.log"
    ncu_report peer ;;
  encoders)
    python3 scripts/device/encoder_profile.py --seconds 10 60 --json "$out/encoder_profile.json" 2>&1 \
      | grep -v -i warn | tee "$out/encoder_profile.txt"
    scaling "" "10 30 60" ;;
  conv)
    python3 -m pytest -q -p no:cacheprovider tests/ops/test_depthwise_conv.py 2>&1 | tail -2 \
      | tee "$out/pytest_depthwise_conv.txt"
    python3 benchmarks/depthwise_conv.py --device cuda --json "$out/depthwise_conv.json" 2>&1 \
      | grep -v -i warn | tee "$out/depthwise_conv.txt"
    if unpack "${OLD_SRC:-}" /tmp/old; then
      PYTHONPATH="/tmp/site:/tmp/old/src:$PWD/benchmarks:$PWD/scripts/device" python3 \
        benchmarks/depthwise_conv.py --device cuda --json "$out/depthwise_conv_old.json" 2>&1 \
        | grep -v -i warn | tee "$out/depthwise_conv_old.txt"
    fi
    conv_ways="${CONV_WAYS:-torch auto}"  # with the encoders part in the same call, its
    case " $PARTS " in *" encoders "*) conv_ways=auto ;; esac  # scaling run is torch's
    for v in $conv_ways; do
      scaling "conv_$v" "10 30 60" MAMBA_ASR_DEPTHWISE_CONV=$v
    done ;;
  launch)
    MAMBA_ASR_TRITON_LAUNCH=direct python3 -m pytest -q -p no:cacheprovider -n 12 \
      tests/ops/test_selective_scan_triton.py tests/ops/test_triton_launch.py \
      tests/ops/test_depthwise_conv.py 2>&1 | tail -2 | tee "$out/pytest_direct.txt"
    for how in ${LAUNCH_WAYS:-jit direct jit direct}; do
      scaling "$how" "${LAUNCH_SECONDS:-10 20 30 60}" MAMBA_ASR_TRITON_LAUNCH="$how"
    done
    if [ "${LAUNCH_PROFILE:-1}" = 1 ]; then
      MAMBA_ASR_TRITON_LAUNCH=direct python3 scripts/device/encoder_profile.py --seconds 10 30 \
        --json "$out/encoder_profile_direct.json" 2>&1 | grep -v -i warn \
        | tee "$out/encoder_profile_direct.txt"
    fi ;;
  sources)
    python3 scripts/device/encoder_profile.py --seconds ${SOURCES_SECONDS:-30} --sources \
      --json "$out/encoder_profile_sources.json" 2>&1 | grep -v -i warn \
      | tee "$out/encoder_profile_sources.txt" ;;
  rnnt)
    for i in 1 2; do
      python3 benchmarks/rnnt.py --device cuda --impls torchaudio pruned pruned-band \
        --rnnt-backend triton --repeats 20 2>&1 | grep -v -i warn | tee "$out/rnnt_$i.txt"
    done ;;
  pad)
    peer_ready "$dest"
    python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --iters 20 \
      --rounds 3 --gpu --shapes 16,2048,750,2 16,2048,752,2 16,2048,1500,2 16,2048,1504,2 \
      --dtypes bfloat16 --json "$out/scan_cuda_pad.json" 2>&1 | grep -v -i warn \
      | tee "$out/scan_cuda_pad.txt"
    for pad in 1 16 1 16; do
      scaling "pad$pad" "${LAUNCH_SECONDS:-20 30 60}" MAMBA_ASR_PAD_FRAMES=$pad
    done ;;
  nreg)
    for cap in none ${NREG:-80} none ${NREG:-80}; do
      cfg='{}'; [ "$cap" != none ] && cfg="{\"time_bwd_maxnreg\": $cap}"
      scaling "nreg_$cap" "${LAUNCH_SECONDS:-20 30 60}" MAMBA_ASR_TRITON_SCAN_CONFIG="$cfg"
    done ;;
  hostgap)
    python3 scripts/device/encoder_profile.py --seconds ${HOSTGAP_SECONDS:-10 30} --python \
      --json "$out/encoder_profile_python.json" 2>&1 | grep -v -i warn \
      | tee "$out/encoder_profile_python.txt" ;;
  encoders_ab)
    if ! unpack "${OLD_SRC:-}" /tmp/old; then
      echo "encoders_ab: OLD_SRC names no tarball"
    else
      for how in new old new old; do
        src="$PWD/src"; [ "$how" = old ] && src=/tmp/old/src
        scaling "$how" "${LAUNCH_SECONDS:-10 20 30 60}" \
          PYTHONPATH="/tmp/site:$src:$PWD/benchmarks:$PWD/scripts/device"
      done
    fi ;;
  bidir)
    python3 -m pytest -q -p no:cacheprovider tests/ops/test_directions.py \
      tests/modules/test_mamba.py 2>&1 | tail -2 | tee "$out/pytest_directions.txt"
    python3 benchmarks/bidirectional.py --device cuda --json "$out/bidirectional.json" 2>&1 \
      | grep -v -i warn | tee "$out/bidirectional.txt"
    if unpack "${BIDIR_OLD_SRC:-}" /tmp/old_bidir; then
      PYTHONPATH="/tmp/site:/tmp/old_bidir/src:$PWD/benchmarks:$PWD/scripts/device" python3 \
        scripts/device/encoder_profile.py --encoders conmamba --seconds 10 60 \
        --json "$out/encoder_profile_old.json" 2>&1 | grep -v -i warn \
        | tee "$out/encoder_profile_old.txt"
    fi ;;
  esac
  pack
done
peer_ready "$dest"
pack
ls "$out"/*.ncu-rep > /dev/null 2>&1 && tar -C "$out" -czf "$dest/ncu_reports.tgz" $(cd "$out" && ls *.ncu-rep)
ls -la "$dest"
