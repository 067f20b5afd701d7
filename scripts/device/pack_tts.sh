#!/usr/bin/env bash
# Pack Debian 12's TTS engines (espeak-ng, flite, festival + kal_diphone), their libraries and the
# corpus sentences into .tts/ for a machine that cannot install packages (the GPU machine):
#   bash scripts/device/pack_tts.sh        # here, with apt-get download (needs the Debian mirror)
# writes .tts/tts.tar.xz (the engines unpacked with dpkg -x, docs removed, about 20 MiB) and
# .tts/text.tar.xz (train.txt/dev.txt from scripts/synth/prepare_text.py over fortunes,
# dict-gcide, dict-jargon). scripts/device/tts_env.sh unpacks and wraps them there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
