#!/usr/bin/env bash
# On the GPU machine, in one call: the selective-scan tests (ours and BiMamba's CUDA ones, then state-spaces/mamba's test
# adapted in tests/ops/test_selective_scan_peer.py, against our kernel and against the peer's), then
# the benchmark of our Triton kernels beside the peer's CUDA kernel (benchmarks/scan_cuda.py).
# SCAN_TESTS=none: the benchmark alone; SCAN_TESTS=configs: only the PEER_TEST_CONFIGS settings' tests.
#   bash scripts/device/scan_check.sh OUTDIR [BENCH ARGS...]     (carry .peer)
# .peer/mamba_ssm: a copy of ../shared/peers/mamba_ssm; .peer/build/selective_scan_cuda.so[.xz], if
# there, is the peer built by an earlier run on the same image (else it is built here, about 160 s,
# in the background, and copied to OUTDIR/peer_so.xz for the next run). SCAN_TESTS=all also runs the rest of tests/ops;
# PEER_TEST_CONFIGS='name=JSON ...' repeats the peer test with other Triton CONFIG settings.
set -uo pipefail
out="${1:-/tmp/out}"
shift || true
mkdir -p "$out" /tmp/site
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD/src:$PWD/tests:$PWD/scripts/device"
source scripts/device/peer.sh
echo "# bash scripts/device/scan_check.sh $*   ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
peer_start "$out"
summary() {  # per-dtype pass counts of a junit file
  python3 - "$1" "$2" <<'PY'
import sys, xml.etree.ElementTree as ET, collections
tot, ok = collections.Counter(), collections.Counter()
fails = []
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    name = tc.get("name")
    if "[" not in name:
        continue
    dt = name.split("[")[1].split("-")[0]
    tot[dt] += 1
    bad = tc.find("failure") is not None or tc.find("error") is not None
    ok[dt] += not bad
    if bad:
        fails.append(name.split("[")[1].rstrip("]"))
print(f"{sys.argv[2]}: {sum(ok.values())}/{sum(tot.values())} passed; "
      + ", ".join(f"{d} {ok[d]}/{tot[d]}" for d in ("float32", "float16", "bfloat16") if tot[d]))
if fails:
    print("  failed:", " ".join(fails[:40]), "..." if len(fails) > 40 else "")
PY
}
pt() { python3 -m pytest -q -p no:cacheprovider -n 12 "$@"; }
if [ "${SCAN_TESTS:-scan}" = none ]; then  # the benchmark alone
  peer_ready "$out"
  python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --json "$out/scan_cuda.json" "$@" \
    2>&1 | grep -v Warning | tee "$out/scan_cuda.txt"
  exit
fi
if [ "${SCAN_TESTS:-scan}" = all ]; then
  pt tests/ops --ignore=tests/ops/test_selective_scan_peer.py 2>&1 | tail -15 | tee "$out/pytest_ops.txt"
elif [ "${SCAN_TESTS:-scan}" = configs ]; then  # only the PEER_TEST_CONFIGS settings are tested
  :
else
  pt tests/ops/test_selective_scan_triton.py tests/ops/test_selective_scan.py 2>&1 | tail -8 | tee "$out/pytest_ops.txt"
  pt tests/modules/test_mamba.py -k "cuda or fused" 2>&1 | tail -2 | sed 's/^/mamba: /' | tee -a "$out/pytest_ops.txt"
fi
if [ "${SCAN_TESTS:-scan}" != configs ]; then
  pt "$PEER_TEST" --junitxml="$out/peer_test_ours.xml" > "$out/peer_test_ours.txt" 2>&1
  summary "$out/peer_test_ours.xml" "peer test, our triton kernel" | tee -a "$out/summary.txt"
fi
for v in ${PEER_TEST_CONFIGS:-}; do
  MAMBA_ASR_TRITON_SCAN_CONFIG="${v#*=}" pt tests/ops/test_selective_scan_triton.py 2>&1 | tail -1 \
    | sed "s|^|ours with ${v#*=}: |" | tee -a "$out/summary.txt"
  MAMBA_ASR_TRITON_SCAN_CONFIG="${v#*=}" pt "$PEER_TEST" \
    --junitxml="$out/peer_test_${v%%=*}.xml" > /dev/null 2>&1
  summary "$out/peer_test_${v%%=*}.xml" "peer test, our triton kernel with ${v#*=}" | tee -a "$out/summary.txt"
done
peer_ready "$out"
if [ "${SCAN_TESTS:-scan}" != configs ]; then
  MAMBA_ASR_SCAN_FN=peer_scan:selective_scan_fn pt "$PEER_TEST" \
    --junitxml="$out/peer_test_peer.xml" > "$out/peer_test_peer.txt" 2>&1
  summary "$out/peer_test_peer.xml" "peer test, the peer's own kernel" | tee -a "$out/summary.txt"
fi
python3 benchmarks/scan_cuda.py --impls triton peer --peer .peer/mamba_ssm --json "$out/scan_cuda.json" "$@" \
  2>&1 | grep -v Warning | tee "$out/scan_cuda.txt"
echo "# summary"; cat "$out/summary.txt"
