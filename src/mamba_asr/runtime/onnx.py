"""Recognition with onnxruntime alone, from a folder written by ``mamba-asr export onnx``.

Shape key
    B: streams, t: feature frames of a chunk, C: mel bins, t': encoder frames, M: d_model,
    N: hypotheses, J: joiner_dim, V: vocabulary (blank included).

No PyTorch: NumPy features (``runtime.features``), the three graphs on onnxruntime
(``OnnxTransducer``), the searches in NumPy (``runtime.search``: greedy and modified beam
search with the exported LM), and the package's own torch-free parts: ``DecodingOptions``
(defaults and LM rules), the endpoint rule (``decode.endpoint``), the tokenizer, the n-gram LM
and ``Transcript``. The decoding follows ``mamba_asr.streaming.Stream`` step for step, so a
transcript equals PyTorch's token for token::

    asr = OnnxASR.load("model-onnx")                 # int8=True / int4=True: the quantized graphs
    transcript = asr.transcribe_file("audio.flac")   # or transcribe_waveform(samples, rate)
    stream = asr.create_stream(); stream.accept_waveform(rate, samples); stream.decode()

The encoder graph takes chunks of any length (its selective scan is one ONNX ``Scan``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mamba_asr.audio.io import as_waveform, audio_info, read_blocks
from mamba_asr.decode.endpoint import EndpointConfig
from mamba_asr.decode.options import DecodingOptions
from mamba_asr.runtime.features import Fbank, StreamingFbank
from mamba_asr.runtime.search import BeamSearch, GreedySearch
from mamba_asr.text.tokenizer import load_tokenizer
from mamba_asr.transcript import Segment, SegmentedResults, Transcript

__all__ = [
    "CHUNK_GRAPH",
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "GRAPHS",
    "OnnxASR",
    "OnnxStream",
    "OnnxTransducer",
    "QUANTIZED",
    "quant_name",
]

EXPORT_FORMAT = "mamba-asr-onnx"
EXPORT_VERSION = 1
CONFIG_FILE = "config.json"
FEATURES_FILE = "features.npz"
LM_FILE = "lm.npz"
TOKENIZER_DIR = "tokenizer"
GRAPHS = {"encoder": "encoder.onnx", "predictor": "predictor.onnx", "joiner": "joiner.onnx"}
CHUNK_GRAPH = "encoder_chunk.onnx"  # the encoder for chunks up to a length, without Scan
STREAM_CHUNK_MS = 320.0  # as mamba_asr.streaming
CHUNK_SECONDS = 30.0  # as mamba_asr.transcription: audio read per step offline
Partial = Callable[[str, float], None]
State = list[np.ndarray]


QUANTIZED = ("int8", "int4")  # the quantized graphs an export may hold beside the fp32 ones


def int8_name(name: str) -> str:
    """``encoder.onnx`` -> ``encoder.int8.onnx``."""
    return quant_name(name, "int8")


def quant_name(name: str, quant: str | None) -> str:
    """``encoder.onnx`` -> ``encoder.int4.onnx`` for ``quant="int4"``; ``name`` for None."""
    return name if quant is None else name.removesuffix(".onnx") + f".{quant}.onnx"


def _quant(int8: bool, int4: bool) -> str | None:
    if int8 and int4:
        raise ValueError("choose one of int8 and int4")
    return "int8" if int8 else "int4" if int4 else None


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "the ONNX runtime needs onnxruntime: pip install 'mamba-asr[onnx]'"
        ) from None
    return onnxruntime


class OnnxTransducer:
    """The exported encoder, predictor and joiner on onnxruntime, with their state layouts.

    folder: the export; int8 / int4: its int8 graphs or its graphs of int4 weights;
    threads: onnxruntime's intra-op threads (0: its default).
    """

    def __init__(
        self,
        folder: Path,
        config: dict[str, Any],
        int8: bool = False,
        threads: int = 0,
        int4: bool = False,
    ) -> None:
        quant = _quant(int8, int4)
        ort = _ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        chunk = config.get("encoder_chunk")  # None in exports without it
        graphs = {**GRAPHS, **({"chunk": chunk["file"]} if chunk else {})}
        sessions = {}
        for key, name in graphs.items():
            path = folder / quant_name(name, quant)
            if not path.is_file():
                what = f"the {quant} graphs (export with --{quant})" if quant else name
                raise ValueError(f"{folder}: no {path.name}; this export has not {what}")
            sessions[key] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        self.encoder, self.predictor, self.joiner = (sessions[k] for k in GRAPHS)
        # chunks of up to chunk_frames frames go to the graph made for them (scan unrolled)
        self.chunk_encoder = sessions.get("chunk")
        self.chunk_frames = int(chunk["frames"]) if chunk else None
        model = config["model"]
        self.blank, self.vocab_size = int(model["blank"]), int(model["vocab_size"])
        self.subsampling = int(model["subsampling"])
        self.enc_layout, self.pred_layout = config["encoder_state"], config["predictor_state"]
        self.enc_names = [s["name"] for s in self.enc_layout]
        self.pred_names = [s["name"] for s in self.pred_layout]

    @staticmethod
    def _state(layout: list[dict[str, Any]], batch: int) -> State:
        out = []
        for s in layout:
            shape = list(s["shape"])
            shape[s["batch_dim"]] = batch
            out.append(np.full(shape, s["fill"], dtype=np.dtype(s["dtype"])))
        return out

    def init_state(self, batch: int) -> State:
        """The encoder's start-of-stream state of ``batch`` streams."""
        return self._state(self.enc_layout, batch)

    def predictor_state(self, n: int) -> State:
        return self._state(self.pred_layout, n)

    def _encoder_run(self, feats: np.ndarray, state: State) -> list[np.ndarray]:
        """memory, projection and every new state tensor, from the chunk graph for chunks up
        to its length, else from the general one."""
        feeds = {"feats": np.ascontiguousarray(feats, dtype=np.float32)}
        feeds.update(zip(self.enc_names, state, strict=True))
        if self.chunk_encoder is not None and feats.shape[1] <= self.chunk_frames:
            return self.chunk_encoder.run(None, feeds)
        return self.encoder.run(None, feeds)

    def forward_chunk(self, feats: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """feats (B, t, C) -> encoder projection (B, t', J), the state after them."""
        outs = self._encoder_run(feats, state)
        return outs[1], outs[2:]

    def encode(self, feats: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, State]:
        """feats (B, t, C) -> memory (B, t', M), projection (B, t', J), the state after."""
        outs = self._encoder_run(feats, state)
        return outs[0], outs[1], outs[2:]

    def predict(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """tokens (N, 1) int64, state -> projection (N, J), the new state."""
        feeds = {"tokens": np.ascontiguousarray(tokens, dtype=np.int64)}
        feeds.update(zip(self.pred_names, state, strict=True))
        outs = self.predictor.run(None, feeds)
        return outs[0], outs[1:]

    def join(self, enc_proj: np.ndarray, pred_proj: np.ndarray) -> np.ndarray:
        """(N, J), (N, J) -> logits (N, V)."""
        feeds = {
            "encoder_proj": np.ascontiguousarray(enc_proj, dtype=np.float32),
            "predictor_proj": np.ascontiguousarray(pred_proj, dtype=np.float32),
        }
        return self.joiner.run(None, feeds)[0]

    def _layout(self, which: str) -> list[dict[str, Any]]:
        return self.pred_layout if which == "predictor" else self.enc_layout

    def take(self, state: State, idx: np.ndarray, which: str = "predictor") -> State:
        """The entries ``idx`` (K,) of a state, in that order."""
        return [
            np.take(x, idx, axis=s["batch_dim"])
            for x, s in zip(state, self._layout(which), strict=True)
        ]

    def put(self, state: State, idx: np.ndarray, sub: State, which: str = "predictor") -> State:
        """``state`` with entries ``idx`` replaced by ``sub``."""
        out = []
        for x, s, y in zip(state, self._layout(which), sub, strict=True):
            x = np.moveaxis(x.copy(), s["batch_dim"], 0)
            x[idx] = np.moveaxis(y, s["batch_dim"], 0)
            out.append(np.moveaxis(x, 0, s["batch_dim"]))
        return out


class OnnxASR:
    """An exported model: features, CMVN, the graphs, the tokenizer and its LM.

    ``OnnxASR.load(folder, int8=False, threads=0, int4=False)``; ``resolve_options``, ``create_stream``,
    ``transcribe_file`` and ``transcribe_waveform`` as their PyTorch counterparts
    (``mamba_asr.asr.ASR``, ``mamba_asr.transcription``).
    """

    def __init__(
        self, folder: Path, config: dict[str, Any], int8: bool, threads: int, int4: bool = False
    ) -> None:
        self.folder, self.config = folder, config
        feats = config["features"]
        self.sample_rate = int(feats["sample_rate"])
        with np.load(folder / FEATURES_FILE) as z:
            mel_fb, self.mean, self.std = z["mel_fb"], z["cmvn_mean"], z["cmvn_std"]
        self.fbank = Fbank(mel_fb, self.sample_rate, int(feats["win_length"]),
                           int(feats["hop_length"]), int(feats["n_fft"]),
                           float(feats["log_floor"]))  # fmt: skip
        self.model = OnnxTransducer(folder, config, int8, threads, int4)
        self.tokenizer = load_tokenizer(folder / TOKENIZER_DIR)
        self.shipped_lm = str(folder / config["lm"]) if config.get("lm") else None

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        int8: bool = False,
        threads: int = 0,
        int4: bool = False,
    ) -> OnnxASR:
        """Read an export (int8 / int4: its quantized graphs); a one-line ``ValueError`` for a
        folder that is not one."""
        _quant(int8, int4)
        folder = Path(folder)
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ValueError(f"{folder}: not an ONNX export of mamba-asr (no {CONFIG_FILE})")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable ({exc})") from None
        if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{folder}: not an ONNX export of mamba-asr")
        if config.get("version") != EXPORT_VERSION:
            raise ValueError(
                f"{folder}: export version {config.get('version')!r}, this mamba-asr reads "
                f"version {EXPORT_VERSION}"
            )
        return cls(folder, config, int8, threads, int4)

    def normalize(self, feats: np.ndarray) -> np.ndarray:
        """Global CMVN: (t, C) -> (t, C)."""
        return ((feats - self.mean) / self.std).astype(np.float32, copy=False)

    def resolve_options(self, options: DecodingOptions | None = None) -> DecodingOptions:
        """As ``ASR.resolve_options``: ``lm="auto"`` is the exported LM for beam search."""
        options = options or DecodingOptions()
        vocab = self.model.vocab_size
        return options.resolve("transducer", self.tokenizer, vocab, self.shipped_lm)

    def create_stream(
        self,
        options: DecodingOptions | None = None,
        chunk_ms: float | None = None,
        endpoint: EndpointConfig | None = None,
        name: str | None = None,
    ) -> OnnxStream:
        chunk = STREAM_CHUNK_MS if chunk_ms is None else chunk_ms
        return OnnxStream(self, self.resolve_options(options), chunk, endpoint, name)

    def transcribe_file(
        self,
        path: str | os.PathLike[str],
        options: DecodingOptions | None = None,
        *,
        chunk_ms: float | None = None,
        on_partial: Partial | None = None,
        endpoint: EndpointConfig | None = None,
    ) -> Transcript:
        """As ``mamba_asr.transcription.transcribe_file`` (streaming models)."""
        step = CHUNK_SECONDS if chunk_ms is None else chunk_ms / 1000
        audio_info(path)  # one line for a missing or bad file, before any work
        blocks = read_blocks(path, self.sample_rate, step)
        return self._transcribe(blocks, os.fspath(path), options, chunk_ms, on_partial, endpoint)

    def transcribe_waveform(
        self,
        samples: object,
        sample_rate: int | None = None,
        options: DecodingOptions | None = None,
        *,
        chunk_ms: float | None = None,
        endpoint: EndpointConfig | None = None,
    ) -> Transcript:
        """As ``mamba_asr.transcription.transcribe_waveform``."""
        import soxr

        rate = self.sample_rate if sample_rate is None else sample_rate
        wave = as_waveform(samples)
        if rate != self.sample_rate:
            wave = soxr.resample(wave, rate, self.sample_rate, quality="HQ").astype(np.float32)
        step = max(
            1, round(self.sample_rate * (CHUNK_SECONDS if chunk_ms is None else chunk_ms / 1000))
        )
        blocks = (wave[i : i + step] for i in range(0, wave.shape[0], step))
        return self._transcribe(blocks, None, options, chunk_ms, None, endpoint)

    def _transcribe(
        self,
        blocks: Iterable[np.ndarray],
        name: str | None,
        options: DecodingOptions | None,
        chunk_ms: float | None,
        on_partial: Partial | None,
        endpoint: EndpointConfig | None,
    ) -> Transcript:
        chunk = 1000 * CHUNK_SECONDS if chunk_ms is None else chunk_ms
        stream = OnnxStream(self, self.resolve_options(options), chunk, endpoint, name)
        for block in blocks:
            stream.accept_waveform(self.sample_rate, block)
            stream.decode()
            if on_partial is not None:
                on_partial(stream.result.text, stream.duration)
        return stream.finish()


class OnnxStream(SegmentedResults):
    """One audio stream (``mamba_asr.streaming.Stream`` on the exported model): audio in with
    ``accept_waveform``, ``decode()`` what is ready, ``result``, ``finish()``."""

    def __init__(
        self,
        asr: OnnxASR,
        options: DecodingOptions,
        chunk_ms: float = STREAM_CHUNK_MS,
        endpoint: EndpointConfig | None = None,
        name: str | None = None,
    ) -> None:
        model = asr.model
        hop_ms = 1000 * asr.fbank.hop_length / asr.sample_rate
        if not isinstance(chunk_ms, (int, float)) or not np.isfinite(chunk_ms):
            raise ValueError(f"chunk_ms must be a number of milliseconds, got {chunk_ms!r}")
        self.chunk_frames = int(chunk_ms / hop_ms + 1e-9) // model.subsampling * model.subsampling
        if self.chunk_frames < 1:
            raise ValueError(
                f"chunk_ms must be at least {model.subsampling * hop_ms:g} (one encoder frame "
                f"of this model), got {chunk_ms:g}"
            )
        if not options.resolved:
            raise ValueError("OnnxStream needs resolved options (OnnxASR.create_stream)")
        self.asr, self.model, self.options, self.name = asr, model, options, name
        self.endpoint = endpoint or EndpointConfig()
        self.frame_seconds = model.subsampling * asr.fbank.hop_length / asr.sample_rate
        self.fbank = StreamingFbank(asr.fbank)
        self.pending = np.zeros((0, asr.fbank.n_mels), np.float32)  # (t, C)
        self.resampler: Any = None
        self.input_rate: int | None = None
        self.samples = 0
        self.segments: list[Segment] = []
        self.finished = False
        self._restart(0)

    def accept_waveform(self, sample_rate: int, samples: Any) -> None:
        """Append mono ``samples`` (float in [-1, 1], or integer PCM) at ``sample_rate``."""
        if self.finished:
            raise RuntimeError("accept_waveform() after finish(): create a new stream")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if self.input_rate is not None and sample_rate != self.input_rate:
            raise ValueError(
                f"sample_rate changed within a stream ({self.input_rate} -> {sample_rate})"
            )
        self.input_rate = int(sample_rate)
        wave = as_waveform(samples, self.name or "waveform")
        if sample_rate != self.asr.sample_rate:
            import soxr

            if self.resampler is None:
                self.resampler = soxr.ResampleStream(
                    sample_rate, self.asr.sample_rate, 1, dtype="float32", quality="HQ"
                )
            wave = self.resampler.resample_chunk(wave, last=False)
        self._accept(wave)

    def _accept(self, wave: np.ndarray) -> None:
        if wave.shape[0] == 0:
            return
        self.samples += wave.shape[0]
        feats = self.fbank.accept(wave)
        if feats.shape[0]:
            self.pending = np.concatenate([self.pending, self.asr.normalize(feats)])

    @property
    def ready(self) -> bool:
        n = self.pending.shape[0]
        return n >= self.chunk_frames or (self.finished and n > 0)

    def decode(self) -> None:
        """Decode every chunk that is ready."""
        while self.ready:
            n = min(self.chunk_frames, self.pending.shape[0])
            chunk, self.pending = self.pending[:n], self.pending[n:]
            self._advance(chunk[None])

    def _restart(self, frame: int) -> None:
        self.state = self.model.init_state(1)
        opts = self.options
        if opts.strategy == "beam":
            self.search: GreedySearch | BeamSearch = BeamSearch(
                self.model, 1, opts.beam_size, **opts.fusion()
            )
        else:
            self.search = GreedySearch(self.model, 1)
        self.segment_start = frame

    def _advance(self, feats: np.ndarray) -> None:
        """As ``Stream.advance``: search the chunk frame by frame, end segments where the
        endpoint rule says and encode the rest of the chunk anew from a fresh state."""
        active = np.ones(1, dtype=bool)
        while True:
            proj, self.state = self.model.forward_chunk(feats, self.state)  # (1, t', J)
            end = None
            for t in range(proj.shape[1]):
                self.search.advance(proj[:, t], active)
                last = self.search.last_token_frame()
                if self.endpoint.reached(self.search.frame, last, self.frame_seconds):
                    end = t
                    break
            if end is None:
                return
            self._close_segment()
            self._restart(self.segment_start + self.search.frame)
            feats = feats[:, (end + 1) * self.model.subsampling :]
            if feats.shape[1] == 0:
                return

    def finish(self) -> Transcript:
        """End of input: decode what is left; the final transcript."""
        if not self.finished:
            if self.resampler is not None:
                self._accept(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            self.finished = True
            self.decode()
            self._close_segment()
        return self.result
