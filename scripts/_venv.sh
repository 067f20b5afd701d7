# shellcheck shell=bash
# Shared by scripts/setup.sh and scripts/test.sh (sourced, not run): make .venv and install into it.
# Works with bash 3.2 (macOS) and later.
#
#   MAMBA_ASR_PYTHON  interpreter that creates the venv (default: python3; must be >= 3.10)
#   MAMBA_ASR_VENV    where the venv lives (default: .venv at the repository root)
#   MAMBA_ASR_TORCH   the torch requirement installed first (default: torch==2.13.0)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAMBA_ASR_VENV:-$ROOT/.venv}"
TORCH_SPEC="${MAMBA_ASR_TORCH:-torch==2.13.0}"
VPY="$VENV/bin/python"

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

python_ok() {  # python_ok PYTHON: true if it runs and is >= 3.10
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

make_venv() {
    local py="${MAMBA_ASR_PYTHON:-python3}"
    command -v "$py" >/dev/null 2>&1 || die "$py not found: install Python 3.10 or newer"
    python_ok "$py" || die "Python 3.10 or newer is needed, but $py is $("$py" -V 2>&1)"
    say "creating $VENV with $("$py" -V 2>&1)"
    "$py" -m venv "$VENV" ||
        die "'$py -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
}

torch_ok() {  # a torch >= 2.4 is importable in the venv
    "$VPY" -c 'import sys, torch
v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(v < (2, 4))' 2>/dev/null
}

# ensure_venv EXTRAS: .venv exists, torch first (pinned: an unpinned torch on Linux pulls GBs of
# CUDA packages), then this package in editable mode with EXTRAS (e.g. "[dev]" or "").
ensure_venv() {
    local extras="$1"
    if [ ! -x "$VPY" ]; then
        make_venv
    fi
    python_ok "$VPY" || die "$VENV has $("$VPY" -V 2>&1); delete it and run again with Python >= 3.10"
    if ! torch_ok; then
        say "installing $TORCH_SPEC"
        "$VPY" -m pip install -q "$TORCH_SPEC"
    fi
    # Re-install only when pyproject.toml changed since the last install with these extras.
    local stamp="$VENV/.mamba-asr-installed${extras}"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "installing mamba-asr${extras} (editable) into $VENV"
        "$VPY" -m pip install -q -e "$ROOT$extras"
        touch "$stamp"
    fi
}

# ensure_tts: install the TTS engines the tests speak with (espeak-ng, flite, festival) with
# apt-get when missing and we may (root on Debian or Ubuntu); elsewhere say how, and the tests
# that need them skip with that reason.
ensure_tts() {
    local missing=""
    for engine in espeak-ng flite festival; do
        command -v "$engine" >/dev/null 2>&1 || missing="$missing $engine"
    done
    [ -z "$missing" ] && return 0
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing$missing (apt-get)"
        # shellcheck disable=SC2086
        { apt-get update -qq && apt-get install -y -qq $missing; } >/dev/null ||
            die "apt-get install$missing failed"
    else
        say "not found:$missing; tests that need them will skip (apt-get/brew install$missing)"
    fi
}

# ensure_browser: Chromium and its driver for the page test (tests/serve/test_page.py), with
# apt-get when missing and we may; elsewhere that test skips with the reason.
ensure_browser() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        say "installing chromium chromium-driver (apt-get)"
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null ||
            say "apt-get install chromium chromium-driver failed; the page test will skip"
    else
        say "chromium/chromedriver not found; the page test will skip"
    fi
}
