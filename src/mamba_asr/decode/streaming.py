"""Streaming transducer decoding: feed feature chunks, get partial transcripts as they grow.

Shape key
    B: streams, t: feature frames of a chunk, C: feature channels (mels), t': encoder frames
    of a chunk, M: d_model, J: joiner hidden size.

``TransducerStreamer`` keeps the encoder state (``model.init_state``), the predictor state and
the hypotheses of B streams between chunks. Each chunk is encoded with ``model.encode_chunk``
and searched by the same frame-synchronous search objects as offline decoding, so if the
chained ``encode_chunk`` outputs equal ``encode``'s, the transcripts equal the offline ones
token for token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mamba_asr.decode.options import DecodingOptions
from mamba_asr.decode.transducer import BeamSearch, GreedySearch, TransducerHypothesis

__all__ = ["TransducerStreamer", "make_search"]


def make_search(
    model: nn.Module,
    batch: int,
    options: DecodingOptions,
    max_symbols_per_frame: int = 4,
    device: torch.device | None = None,
) -> GreedySearch | BeamSearch:
    """The frame-synchronous search of ``options.strategy`` for ``batch`` streams (beam search
    with the options' LM fusion). A model of another array library brings its own searches
    (the same attributes and methods): ``model.make_search(batch, options, max_symbols)``."""
    own = getattr(model, "make_search", None)
    if own is not None:
        return own(batch, options, max_symbols_per_frame)
    if options.strategy == "beam":
        return BeamSearch(
            model, batch, device, options.beam_size, max_symbols_per_frame, **options.fusion()
        )
    return GreedySearch(model, batch, device, max_symbols_per_frame)


class TransducerStreamer:
    """Chunk-by-chunk decoding of B streams that advance together.

    options: the search, ``strategy`` "greedy" or "beam" (modified beam search with
    ``beam_size``); default ``DecodingOptions()`` (beam search; ``lm="auto"`` means no LM
    here, where no model file says which LM ships with it). max_symbols_per_frame: the limit
    of tokens per encoder frame of either search. device, dtype: of the encoder state.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: int = 1,
        options: DecodingOptions | None = None,
        max_symbols_per_frame: int = 4,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.options = options or DecodingOptions()
        self.state = model.init_state(batch, device=device, dtype=dtype)
        self.search = make_search(model, batch, self.options, max_symbols_per_frame, device)
        self.finished = False

    @property
    def frames(self) -> int:
        """Encoder frames consumed so far."""
        return self.search.frame

    @torch.no_grad()
    def decode_chunk(self, feats_chunk: Tensor) -> list[TransducerHypothesis]:
        """Decode feats_chunk (B, t, C), the next t feature frames of every stream.

        Returns the partial result of each stream (the best hypothesis so far).
        """
        if self.finished:
            raise RuntimeError("decode_chunk() after finalize(): start a new TransducerStreamer")
        memory, self.state = self.model.forward_chunk(feats_chunk, self.state)  # (B, t', M)
        if memory.shape[1] > 0:
            self.search.advance_frames(self.model.joiner.project_encoder(memory))  # (B, t', J)
        return self.best()

    def best(self) -> list[TransducerHypothesis]:
        """The best hypothesis of each stream so far."""
        return [nbest[0] for nbest in self.search.nbest()]

    def nbest(self) -> list[list[TransducerHypothesis]]:
        """Every hypothesis of each stream, best first (greedy: one per stream)."""
        return self.search.nbest()

    def finalize(self) -> list[TransducerHypothesis]:
        """End the streams: the final best hypothesis of each; further ``feed`` is an error."""
        self.finished = True
        return self.best()
