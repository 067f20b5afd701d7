#!/usr/bin/env bash
# Main set-up command: install mamba-asr into .venv, run its end-to-end self check and transcribe
# the example recording with the bundled model.
#   bash scripts/setup.sh [mamba-asr check options, e.g. --device cpu --length 512]
set -euo pipefail
# shellcheck source=scripts/_venv.sh
source "$(dirname "$0")/_venv.sh"

ensure_venv ""
"$VENV/bin/mamba-asr" info
"$VENV/bin/mamba-asr" check ${1+"$@"}
root="$(cd "$(dirname "$0")/.." && pwd)"
say "transcribing examples/hello.flac (it says: $(cat "$root/examples/hello.txt"))"
"$VENV/bin/mamba-asr" transcribe "$root/examples/hello.flac"
say "ready: source $VENV/bin/activate, then run mamba-asr --help"
