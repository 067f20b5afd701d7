# Source on the GPU machine: unpacks .tts/tts.tar.xz (scripts/device/pack_tts.sh) into $TTS_ROOT
# (default /opt/tts) and puts wrappers for espeak-ng, flite and festival first on PATH; each
# wrapper points its engine at the unpacked libraries and data. Also unpacks the sentences into
# $TTS_ROOT/text. Usage: source scripts/device/tts_env.sh
TTS_ROOT="${TTS_ROOT:-/opt/tts}"
mkdir -p "$TTS_ROOT/bin" "$TTS_ROOT/text"
tar -C "$TTS_ROOT" -xJf .tts/tts.tar.xz
tar -C "$TTS_ROOT/text" -xJf .tts/text.tar.xz
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
