#!/usr/bin/env bash
# Test command (README and CI): install mamba-asr[dev] into .venv, lint, then run the test suite.
#   bash scripts/test.sh [pytest options, e.g. -k device -x]
set -euo pipefail
# shellcheck source=scripts/_venv.sh
source "$(dirname "$0")/_venv.sh"

ensure_venv "[dev]"
ensure_tts  # the end-to-end and synth tests speak with espeak-ng, flite and festival
ensure_browser  # the server's page test drives headless Chromium
cd "$ROOT"
say "ruff check"
"$VENV/bin/ruff" check .
say "ruff format --check"
"$VENV/bin/ruff" format --check .
say "pytest"
status=0
# one worker per core, each test file on one worker (its module fixtures built once);
# MAMBA_ASR_TEST_WORKERS=0 runs in one process; the 25 slowest tests are listed at the end, to keep
# the suite's time in view
"$VPY" -m pytest -ra --durations=25 -n "${MAMBA_ASR_TEST_WORKERS:-auto}" --dist loadfile \
    ${1+"$@"} || status=$?
if [ "$status" -eq 5 ]; then
    die "pytest collected no tests"
fi
exit "$status"
