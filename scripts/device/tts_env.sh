# Source on the GPU machine: unpacks .tts/tts.tar.xz (scripts/device/pack_tts.sh) into $TTS_ROOT
# (default /opt/tts) and puts wrappers for espeak-ng, flite and festival first on PATH; each
# wrapper points its engine at the unpacked libraries and data. Also unpacks the sentences into
# $TTS_ROOT/text. Usage: source scripts/device/tts_env.sh
# The Piper engine (pack_tts.sh piper: .piper/piper.tar.xz.part-*, carried in calls of their
# own) is unpacked into $TTS_ROOT/piper once every part is there, and put first on PYTHONPATH
# (then mamba-asr synth has the engine piper); it stays there while the machine is held.
TTS_ROOT="${TTS_ROOT:-/opt/tts}"
mkdir -p "$TTS_ROOT/bin" "$TTS_ROOT/text"
tar -C "$TTS_ROOT" -xJf .tts/tts.tar.xz
tar -C "$TTS_ROOT/text" -xJf .tts/text.tar.xz
if [ ! -d "$TTS_ROOT/piper/piper" ] && [ -f .piper/SHA256SUMS ]; then
  if [ "$(cat .piper/piper.tar.xz.part-* 2>/dev/null | sha256sum | cut -d' ' -f1)" = \
    "$(cut -d' ' -f1 .piper/SHA256SUMS)" ]; then
    mkdir -p "$TTS_ROOT/piper" && cat .piper/piper.tar.xz.part-* | tar -C "$TTS_ROOT/piper" -xJ
  else
    echo "tts_env.sh: piper not unpacked: .piper/piper.tar.xz.part-* incomplete" >&2
  fi
fi
if [ -d "$TTS_ROOT/piper/piper" ] && [[ ":${PYTHONPATH:-}:" != *":$TTS_ROOT/piper:"* ]]; then
  export PYTHONPATH="$TTS_ROOT/piper${PYTHONPATH:+:$PYTHONPATH}"
fi
_lib="$TTS_ROOT/usr/lib/x86_64-linux-gnu:$TTS_ROOT/usr/lib/x86_64-linux-gnu/pulseaudio:$TTS_ROOT/lib/x86_64-linux-gnu"
cat > "$TTS_ROOT/bin/espeak-ng" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$_lib" ESPEAK_DATA_PATH="$TTS_ROOT/usr/lib/x86_64-linux-gnu" exec "$TTS_ROOT/usr/bin/espeak-ng" "\$@"
WRAP
cat > "$TTS_ROOT/bin/flite" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$_lib" exec "$TTS_ROOT/usr/bin/flite" "\$@"
WRAP
cat > "$TTS_ROOT/bin/festival" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$_lib" exec "$TTS_ROOT/usr/bin/festival" --libdir "$TTS_ROOT/usr/share/festival" --datadir "$TTS_ROOT/usr/share/festival" "\$@"
WRAP
chmod +x "$TTS_ROOT"/bin/*
export PATH="$TTS_ROOT/bin:$PATH"
unset _lib
