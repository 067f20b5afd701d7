"""Endpointing: where a stream's segment ends, so that long audio is decoded one segment at a
time, each from a fresh state.

The rules (as sherpa-onnx's online recognizer, our defaults in brackets; trailing silence is
counted in encoder frames since the segment's last token, or since its start without one):

1. no token yet and trailing silence >= ``silence_without_speech`` [2.4 s]: the segment ends
   with no text (nothing is emitted; the state is reset);
2. some tokens and trailing silence >= ``silence_after_speech`` [0.8 s];
3. the segment is ``max_segment`` [20 s] long.

The rule is checked after every encoder frame, so where a segment ends does not depend on
the size of the chunks the audio arrives in: streaming and offline decoding cut at the same
frames and give the same text. The server's live streams use the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EndpointConfig"]


@dataclass(frozen=True)
class EndpointConfig:
    """The three endpoint rules in seconds (see the module docstring); ``enabled=False``
    decodes a stream as one segment whatever its length."""

    enabled: bool = True
    silence_without_speech: float = 2.4
    silence_after_speech: float = 0.8
    max_segment: float = 20.0

    def __post_init__(self) -> None:
        for name in ("silence_without_speech", "silence_after_speech", "max_segment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"endpoint {name} must be a number of seconds, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"endpoint {name} must be > 0 seconds, got {value!r}")

    def reached(self, frames: int, last_token: int | None, frame_seconds: float) -> bool:
        """Whether a segment of ``frames`` encoder frames ends here; ``last_token``: the frame
        (0-based, in the segment) of its last token, ``None`` without one."""
        if not self.enabled:
            return False
        length = frames * frame_seconds
        if last_token is None:
            return length >= self.silence_without_speech - 1e-9
        trailing = (frames - 1 - last_token) * frame_seconds
        return trailing >= self.silence_after_speech - 1e-9 or length >= self.max_segment - 1e-9
