# Source from the repository root: the peer's CUDA kernel (scripts/device/peer_scan.py) made
# ready without waiting. `peer_start LOGDIR` installs the peer's einops wheel, unpacks
# .peer/build/selective_scan_cuda.so.xz when an earlier call left one, else starts the build
# (about 160 s) in the background; `peer_ready DEST` waits for a build started here and leaves it
# compressed as DEST/peer_so.xz for the next call (keep it as .peer/build/selective_scan_cuda.so.xz).
export PEER_DIR="$PWD/.peer/mamba_ssm" PEER_BUILD="$PWD/.peer/build"
# the peer's test on CUDA (the file's CPU cases run in CI, on every machine)
PEER_TEST=tests/ops/test_selective_scan_peer.py::test_peer_selective_scan_cases
peer_built=0
peer_start() {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .peer/mamba_ssm/whl/einops-*.whl
  if [ ! -f "$PEER_BUILD/selective_scan_cuda.so" ] && [ -f "$PEER_BUILD/selective_scan_cuda.so.xz" ]; then
    python3 -c "import lzma,sys; open(sys.argv[1][:-3],'wb').write(lzma.decompress(open(sys.argv[1],'rb').read()))" \
      "$PEER_BUILD/selective_scan_cuda.so.xz"
  fi
  if [ ! -f "$PEER_BUILD/selective_scan_cuda.so" ]; then
    peer_built=1
    (python3 -c "import peer_scan; peer_scan.load()" > "$1/peer_build.log" 2>&1) &
    peer_pid=$!
    peer_log="$1/peer_build.log"
  fi
}
peer_ready() {
  if [ "$peer_built" = 1 ]; then
    wait $peer_pid || { echo "peer build failed"; tail -20 "$peer_log"; }
    python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.compress(open(sys.argv[1],'rb').read(), preset=6))" \
      "$PEER_BUILD/selective_scan_cuda.so" "$1/peer_so.xz" && ls -la "$1/peer_so.xz"
    peer_built=2
  fi
}
