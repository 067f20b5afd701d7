#!/usr/bin/env bash
# Fill .whl/ and .peer/ for the GPU machine's calls, from a fresh checkout (both are git-ignored;
# that machine reaches no package index):
#   bash scripts/device/pack_wheels.sh
# .whl/: Python 3.12 x86_64 wheels of what the GPU image lacks for the kernel scripts
# (scan_profile.sh, kernels_check.sh: the package's own imports and pytest with xdist), at the
# versions pyproject.toml pins where it pins them; about 10 MiB. .peer/mamba_ssm: a copy of
# ../shared/peers/mamba_ssm (state-spaces/mamba's scan, built there on first use; keep the
# returned peer_so.xz as .peer/build/selective_scan_cuda.so.xz to skip the build next time).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py="${PYTHON:-python3}"
wheels=(
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 sentencepiece==0.2.3
  num2words==0.5.14 jiwer==4.0.0 rapidfuzz==3.14.6 click==8.5.1 pyyaml==6.0.4 tqdm==4.70.1
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0
  pytest-xdist==3.8.0 execnet==2.1.2
)
rm -rf "$root/.whl" && mkdir -p "$root/.whl"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$root/.whl" "${wheels[@]}"
peer="$root/../shared/peers/mamba_ssm"
if [ -d "$peer" ]; then
  mkdir -p "$root/.peer" && rm -rf "$root/.peer/mamba_ssm" && cp -r "$peer" "$root/.peer/"
else
  echo "pack_wheels.sh: no $peer; .peer/mamba_ssm left as it is" >&2
fi
du -sh "$root/.whl" "$root/.peer" 2>/dev/null
