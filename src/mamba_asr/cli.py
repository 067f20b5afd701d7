"""The ``mamba-asr`` command: a thin front that parses arguments and calls the package.

Subcommands: ``info`` (versions, device, selective-scan backends), ``check`` (end-to-end self
check, see ``mamba_asr.selfcheck``), ``model-info`` (parameters and layers of a recipe),
``train`` (train a recipe, see ``mamba_asr.train``; also under ``torchrun``) and
``tokenizer train`` (a SentencePiece or character tokenizer from a manifest's transcripts) and
``synth`` (a LibriSpeech-layout corpus spoken by TTS engines, see ``mamba_asr.data.synth``) and
``export onnx`` (a streaming transducer as ONNX graphs, see ``mamba_asr.export.onnx``) and
``export coreml`` (a stateful Core ML package, see ``mamba_asr.export.coreml``) and
``prune`` (structured pruning of a Mamba-CNN transducer, see ``mamba_asr.compress.prune``) and
``transcribe`` (audio files to txt/json/srt/vtt, see ``mamba_asr.transcription``; ``transcribe``
and ``eval`` with ``--onnx DIR`` run on onnxruntime, see ``mamba_asr.runtime.onnx``; a bad file is
one error line, the others go on, exit code 1; ``--stream`` decodes as the file is read and,
when stderr is a terminal, shows the partial transcript there on one line rewritten in place,
while stdout only ever gets final results). ``transcribe`` and ``eval`` use the bundled model
(``mamba_asr.pretrained``) unless ``--model`` names another, in PyTorch or, with ``--backend
mlx``, in MLX (``mamba_asr.backends.mlx``); ``export mlx`` writes an MLX model folder.
Errors from bad input (ValueError, OSError, ImportError) are printed as one line
``mamba-asr: error: ...`` with exit code 2; ``--debug`` shows the traceback. A failed check exits with 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch

from mamba_asr import __version__
from mamba_asr.decode.options import LENGTH_BONUS, LM_WEIGHT, DecodingOptions
from mamba_asr.device import DEVICE_ENV, get_device
from mamba_asr.export import INT4_BLOCK, INT4_METHODS
from mamba_asr.pretrained import DEFAULT_MODEL
from mamba_asr.streaming import STREAM_CHUNK_MS
from mamba_asr.writers import FORMATS

if TYPE_CHECKING:
    from mamba_asr.asr import ASR
    from mamba_asr.runtime.onnx import OnnxASR
    from mamba_asr.selfcheck import CheckReport
    from mamba_asr.transcript import Transcript

__all__ = ["build_parser", "main"]

PROG = "mamba-asr"
USER_ERRORS = (ValueError, OSError, ImportError)
BACKENDS = ("torch", "mlx")


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """--debug and --verbose, accepted before or after the subcommand."""
    default = argparse.SUPPRESS if suppress else False
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks on errors"
    )
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log at INFO level"
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Speech recognition with Mamba models on CPU, CUDA and Apple Silicon.",
        parents=[_common_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options(suppress=True)]
    device_help = f"cpu, cuda, cuda:<i> or mps (default: ${DEVICE_ENV}, else MPS > CUDA > CPU)"

    info = sub.add_parser("info", parents=common, help="show versions, device and scan backends")
    info.add_argument("--device", default=None, help=device_help)
    info.set_defaults(func=cmd_info)

    check = sub.add_parser(
        "check",
        parents=common,
        help="end-to-end self check: Mamba stack forward/backward, streaming, selective scan",
        description="Builds a small stack of Mamba blocks on random features, runs forward + "
        "backward, then streams it chunk by chunk and compares with the full forward; also "
        "compares every selective-scan backend with the reference. Exit code 1 if a check fails.",
    )
    check.add_argument("--device", default=None, help=device_help)
    check.add_argument(
        "--length", type=int, default=1000, help="frames per utterance (1000: 10 s at 10 ms)"
    )
    check.add_argument("--batch", type=int, default=2, help="utterances per batch (2)")
    check.add_argument("--d-model", type=int, default=144, help="model width (144)")
    check.add_argument("--layers", type=int, default=4, help="Mamba blocks in the stack (4)")
    check.add_argument("--chunk", type=int, default=32, help="frames per streaming chunk (32)")
    check.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    check.add_argument("--seed", type=int, default=0, help="random seed (0)")
    check.set_defaults(func=cmd_check)

    model_info = sub.add_parser(
        "model-info", parents=common, help="parameter count and layer summary of a recipe"
    )
    model_info.add_argument("config", help="YAML recipe, e.g. hparams/CTC/conmamba_large.yaml")
    model_info.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set model.num_encoder_layers=6 (repeatable)",
    )  # fmt: skip
    model_info.set_defaults(func=cmd_model_info)

    _add_train_parser(sub, common, device_help)
    _add_tokenizer_parser(sub, common)
    _add_lm_parser(sub, common)
    _add_prepare_parser(sub, common)
    _add_eval_parser(sub, common, device_help)
    _add_synth_parser(sub, common)
    _add_transcribe_parser(sub, common, device_help)
    _add_export_parser(sub, common)
    _add_prune_parser(sub, common, device_help)
    _add_serve_parser(sub, common, device_help)
    return parser


def _add_prune_parser(sub: argparse._SubParsersAction, common: list, device_help: str) -> None:
    pr = sub.add_parser(
        "prune",
        parents=common,
        help="structured pruning of a Mamba-CNN transducer: a smaller dense model file",
        description="Removes the fraction --ratio of the channels of each group (the Mamba "
        "inner channels and the FFN units of every encoder layer, the front end's channels, "
        "the predictor's and joiner's units), those that contribute least to the next layer "
        "(by their weights' norms, or by their measured activations with --calib), and writes "
        "a model file of smaller tensors with the new widths in its config: transcribe, eval, "
        "streaming and export take it like any model. --steps K prunes in K rounds with "
        "fine-tuning after each (mamba-asr train RECIPE --init on "
        "the round's model, in --work/round-K; run the same command again to resume). "
        "See docs/compression.md.",
    )
    pr.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help=f"a bundled model's name or a model file (default: the bundled {DEFAULT_MODEL})",
    )  # fmt: skip
    pr.add_argument(
        "--ratio", type=float, required=True, metavar="R",
        help="fraction of each group's channels to remove, 0 < R < 1",
    )  # fmt: skip
    pr.add_argument("--out", required=True, metavar="FILE", help="the model file to write")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    pr.add_argument(
        "--groups", default=None, metavar="G,G",
        help="which channels: all, or some of mamba, ffn, frontend, predictor, joiner "
        "(default: all but the joiner, which costs the most accuracy)",
    )  # fmt: skip
    pr.add_argument(
        "--calib", default=None, metavar="DIR_OR_MANIFEST",
        help="audio whose activations rank the channels, with the removed channels' means "
        "folded into the next biases (better: docs/compression.md); default: weights alone",
    )  # fmt: skip
    pr.add_argument(
        "--calib-utts", type=int, default=32, metavar="N",
        help="calibration utterances used, the first N of --calib (32)",
    )  # fmt: skip
    pr.add_argument(
        "--steps", type=int, default=1, metavar="K",
        help="reach --ratio in K rounds, fine-tuning after each (needs --recipe, --train, "
        "--valid, --work; default 1: one shot, no fine-tuning)",
    )  # fmt: skip
    ft = pr.add_argument_group("fine-tuning between rounds (mamba-asr train --init)")
    ft.add_argument("--recipe", metavar="YAML", help="recipe whose data and train sections apply")
    ft.add_argument("--train", metavar="MANIFEST", help="training manifest")
    ft.add_argument("--valid", metavar="MANIFEST", help="validation manifest")
    ft.add_argument("--work", metavar="DIR", help="folder of the rounds (pruned.pt, finetune/)")
    ft.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value for every round, e.g. --set train.epochs=2 (the "
        "fine-tuning's length)",
    )  # fmt: skip
    ft.add_argument("--device", default=None, help=device_help)
    pr.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from mamba_asr.compress.prune import GROUPS, FineTune, prune_model_file

    if not 0.0 < args.ratio < 1.0:
        raise ValueError(f"--ratio must be in (0, 1): the fraction of channels removed, "
                         f"got {args.ratio}")  # fmt: skip
    groups = GROUPS if args.groups == "all" else None
    if args.groups not in (None, "all"):
        groups = [g.strip() for g in args.groups.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            raise ValueError(f"--groups: unknown group {', '.join(unknown) or '(none)'}; "
                             f"groups: all or some of {', '.join(GROUPS)}")  # fmt: skip
    needed = {"--recipe": args.recipe, "--train": args.train, "--valid": args.valid,
              "--work": args.work}  # fmt: skip
    given = [k for k, v in needed.items() if v is not None]
    finetune = None
    if args.steps > 1 or given or args.overrides:
        missing = [k for k, v in needed.items() if v is None]
        if args.steps < 2 or missing:
            lack = f"missing {', '.join(missing)}" if missing else "no --steps"
            raise ValueError(
                "fine-tuning between rounds needs --steps K (K >= 2) with --recipe, --train, "
                f"--valid and --work; {lack}"
            )
        finetune = FineTune(args.recipe, args.train, args.valid, args.work,
                            tuple(args.overrides), args.device)  # fmt: skip
    if finetune is not None:
        logging.getLogger("mamba_asr.train").setLevel(logging.INFO)  # epoch summaries
    report = prune_model_file(args.model, args.out, args.ratio, steps=args.steps, groups=groups,
                              finetune=finetune, overwrite=args.overwrite, calib=args.calib,
                              calib_utterances=args.calib_utts)  # fmt: skip
    before, after = report.params_before, report.params_after
    widths = ", ".join(
        f"{k} {report.widths_before[k]} -> {v}" for k, v in report.widths_after.items()
    )
    size = report.file_bytes / 1e6
    print(f"{report.out}: {after:,} parameters ({before:,} before, "
          f"-{100 * (1 - after / before):.1f}%), {size:.1f} MB; {widths}")  # fmt: skip
    return 0


def _add_backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="torch (default) or mlx: the network and the search in MLX (pip install "
        "'mamba-asr[mlx]'; Metal on Apple Silicon; --device is then not used); --model may "
        "also be a folder from 'export mlx'",
    )  # fmt: skip


def _mlx_backend():
    """``mamba_asr.backends.mlx``, or one ImportError line that says how to get MLX."""
    try:
        from mamba_asr.backends import mlx
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"the MLX backend needs MLX ({exc}): pip install 'mamba-asr[mlx]'"
        ) from None
    return mlx


def _load_asr(args: argparse.Namespace) -> ASR:
    """The model of --model for --backend (an ``MlxASR`` offers what the commands use), or
    the export of --onnx (transcribe)."""
    onnx, int8 = getattr(args, "onnx", None), getattr(args, "int8", False)
    int4 = getattr(args, "int4", False)
    dtype = getattr(args, "dtype", "fp32")
    if dtype != "fp32" and (onnx is not None or args.backend != "torch"):
        raise ValueError("--dtype applies to PyTorch models only (not to --onnx or --backend mlx)")
    if onnx is not None:
        if args.model is not None or args.device is not None or args.backend != "torch":
            raise ValueError(
                "--onnx DIR holds the model: give no --model, --device or --backend with it"
            )
        from mamba_asr.runtime.onnx import OnnxASR

        return OnnxASR.load(onnx, int8=int8, threads=args.threads or 0, int4=int4)  # type: ignore[return-value]
    if int8 or int4:
        raise ValueError(f"--{'int8' if int8 else 'int4'} applies to --onnx only")
    if args.backend == "mlx":
        return _mlx_backend().load(args.model)  # type: ignore[return-value]
    from mamba_asr import load_model

    return load_model(args.model, device=args.device, dtype=dtype)


def _add_dtype_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
        help="inference precision of the PyTorch model: fp16/bf16 autocast for GPUs (CUDA, "
        "MPS); on a CPU they run slower than fp32 (default fp32)",
    )  # fmt: skip


def _add_export_parser(sub: argparse._SubParsersAction, common: list) -> None:
    export = sub.add_parser("export", parents=common, help="convert a model for other runtimes")
    formats = export.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    mlx = formats.add_parser(
        "mlx",
        parents=common,
        help="an MLX model folder (safetensors + config.json + tokenizer + LM)",
        description="Writes DIR/model.safetensors (float32 weights), DIR/config.json (the "
        "model and feature configs), DIR/tokenizer/ and the shipped LM as DIR/lm.npz; "
        "'transcribe --backend mlx --model DIR' reads it. See docs/mlx.md.",
    )
    mlx.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help=f"a bundled model's name or a model file; default: the bundled {DEFAULT_MODEL}",
    )  # fmt: skip
    mlx.add_argument("--out", required=True, metavar="DIR", help="new or empty folder")
    mlx.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    mlx.set_defaults(func=cmd_export_mlx)
    onnx = formats.add_parser(
        "onnx",
        parents=common,
        help="a streaming transducer as ONNX graphs, for mamba-asr transcribe --onnx",
        description="Writes DIR: encoder.onnx (one streaming chunk, every state an input and "
        "an output), encoder_chunk.onnx (the same for chunks of --chunk-ms, faster), "
        "predictor.onnx, joiner.onnx, the tokenizer, the feature settings and "
        "CMVN statistics (config.json, features.npz) and the model's LM; --int8 adds "
        "*.int8.onnx (dynamic int8 quantization), --int4 *.int4.onnx (int4 weights in blocks, "
        "the smallest). Nothing is written unless all of it is.",
    )
    onnx.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help=f"a bundled model's name or a model file (default: the bundled {DEFAULT_MODEL})",
    )  # fmt: skip
    onnx.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    onnx.add_argument("--int8", action="store_true", help="also write int8 graphs")
    onnx.add_argument(
        "--int4", action="store_true",
        help="also write graphs of int4 weights (every matrix product's, in blocks of "
        "--int4-block input channels, symmetric, one scale a block)",
    )  # fmt: skip
    onnx.add_argument(
        "--int4-block", type=int, default=None, metavar="N",
        help=f"the block of --int4: 16, 32, 64, 128 or 256 (default: {INT4_BLOCK}, or the "
        "block a model of train --qat int4-weights was trained with)",
    )  # fmt: skip
    onnx.add_argument(
        "--int4-method", choices=INT4_METHODS, default="rtn",
        help="how --int4 rounds the weights: rtn, each to the nearest step of its block "
        "(symmetric; default), or hqq, onnxruntime's Half-Quadratic Quantization (a fitted "
        "scale and zero point a block, no data needed; about 5%% larger; not for a model of "
        "train --qat int4-weights, whose own integers are exported)",
    )  # fmt: skip
    onnx.add_argument(
        "--chunk-ms", type=float, default=STREAM_CHUNK_MS, metavar="MS",
        help="the chunk of encoder_chunk.onnx, rounded down to whole encoder frames "
        "(default: 320, the streaming step; 0: no such graph)",
    )  # fmt: skip
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    onnx.set_defaults(func=cmd_export_onnx)
    coreml = formats.add_parser(
        "coreml",
        parents=common,
        help="a streaming transducer as a stateful Core ML package (iOS 18 / macOS 15)",
        description="Writes X.mlpackage, an ML program in fp16 with three functions: encoder "
        "(one chunk of --chunk-ms; the Mamba conv and SSM states and the front-end caches "
        "are Core ML states), predictor and joiner. The feature settings, CMVN statistics and "
        "state layout are in its metadata (mamba_asr). Converts on Linux; a prediction needs "
        "macOS. Nothing is written unless all of it is. See docs/export.md.",
    )
    coreml.add_argument(
        "model", nargs="?", default=None, metavar="MODEL",
        help=f"a bundled model's name or a model file (default: the bundled {DEFAULT_MODEL})",
    )  # fmt: skip
    coreml.add_argument("--out", required=True, metavar="X.mlpackage", help="the package to write")
    coreml.add_argument(
        "--weights", choices=("int8", "int4"), default=None,
        help="compress the weights: int8 per channel or int4 in blocks of 32 (default: fp16)",
    )  # fmt: skip
    coreml.add_argument(
        "--chunk-ms", type=float, default=STREAM_CHUNK_MS, metavar="MS",
        help="the encoder's fixed chunk, rounded down to whole encoder frames (default: 320)",
    )  # fmt: skip
    coreml.add_argument("--overwrite", action="store_true", help="replace an existing package")
    coreml.set_defaults(func=cmd_export_coreml)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from mamba_asr import load_model
    from mamba_asr.export.onnx import export_onnx

    asr = load_model(args.model, device="cpu")
    lm = asr.shipped_lm
    chunk_ms = args.chunk_ms or None
    out = export_onnx(
        asr, args.out, int8=args.int8, lm=lm, overwrite=args.overwrite, chunk_ms=chunk_ms,
        int4=args.int4, int4_block=args.int4_block, int4_method=args.int4_method,
    )  # fmt: skip
    print(out)
    return 0


def cmd_export_coreml(args: argparse.Namespace) -> int:
    from mamba_asr import load_model
    from mamba_asr.export.coreml import check_package_path, export_coreml

    check_package_path(args.out, args.overwrite)  # before the model loads
    asr = load_model(args.model, device="cpu")
    out = export_coreml(
        asr, args.out, weights=args.weights, chunk_ms=args.chunk_ms, overwrite=args.overwrite
    )
    print(out)
    return 0


def cmd_export_mlx(args: argparse.Namespace) -> int:
    from mamba_asr.files import check_output

    check_output(args.out, "--out", [args.model], args.overwrite, folder=True)
    mlx = _mlx_backend()
    print(mlx.export(mlx.load(args.model), args.out, overwrite=args.overwrite))
    return 0


def _add_transcribe_parser(sub: argparse._SubParsersAction, common: list, device_help: str) -> None:
    tr = sub.add_parser(
        "transcribe",
        parents=common,
        help="transcribe audio files to text, json, srt or vtt",
        description="Transcribes each FILE (any sample rate, mono or stereo), read and decoded "
        "piece by piece as mamba_asr.transcribe does, with the same defaults (beam search with "
        "the model's own LM, if it ships one). A streaming model cuts the audio into segments "
        "at pauses (each decoded from a fresh state); txt prints one line per segment, json "
        "one line per file (file, text, duration, segments, tokens, words with start/end "
        "seconds), srt/vtt one cue per segment piece (up to 7 words / 3.5 s). Results go to "
        "stdout, or with --output-dir to one file per input (DIR/<name>.<format>). With "
        "--stream each file is decoded --chunk-ms at a time and, when stderr is a terminal, "
        "the partial transcript is shown there, rewritten in place. A bad file prints one "
        "error line and the others go on; exit code 1 if any file failed.",
    )
    tr.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    tr.add_argument(
        "--model", default=None, metavar="NAME_OR_FILE",
        help=f"a bundled model's name or a model file (model.pt of a training run); default: "
        f"the bundled {DEFAULT_MODEL}",
    )  # fmt: skip
    tr.add_argument("--format", choices=FORMATS, default="txt", help="(txt)")
    tr.add_argument(
        "--output-dir", default=None, metavar="DIR",
        help="write each file's transcript to DIR/<name>.<format> instead of stdout (needed "
        "for srt and vtt of several files)",
    )  # fmt: skip
    tr.add_argument(
        "--overwrite", action="store_true", help="replace existing files in --output-dir"
    )
    _add_decoding_args(tr)
    tr.add_argument(
        "--stream", action="store_true",
        help="decode as the file is read, with partial results on stderr when it is a terminal "
        "(streaming transducer models only)",
    )  # fmt: skip
    tr.add_argument(
        "--chunk-ms", type=float, default=None, metavar="MS",
        help=f"with --stream: audio per streaming step, rounded down to whole encoder frames "
        f"({STREAM_CHUNK_MS:g})",
    )  # fmt: skip
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--device", default=None, help=device_help)
    _add_dtype_arg(tr)
    _add_backend_arg(tr)
    tr.add_argument(
        "--onnx", default=None, metavar="DIR",
        help="decode with onnxruntime from DIR (mamba-asr export onnx) instead of PyTorch",
    )  # fmt: skip
    _add_onnx_graph_args(tr)
    tr.set_defaults(func=cmd_transcribe)


def _add_serve_parser(sub: argparse._SubParsersAction, common: list, device_help: str) -> None:
    sv = sub.add_parser(
        "serve",
        parents=common,
        help="a speech server: WebSocket streaming, OpenAI-compatible HTTP, a browser page",
        description="Serves a model over HTTP on HOST:PORT: the page at /, live streaming on "
        "the WebSocket /v1/stream, POST /v1/audio/transcriptions as OpenAI's audio API, "
        "GET /health and /v1/models. Open streams are decoded together, one batch per model "
        "step. Binds 127.0.0.1 unless told; another address needs --token (or "
        "--no-auth). Ctrl-C or SIGTERM ends it gracefully: open streams get their final "
        "results. See docs/serving.md.",
    )
    sv.add_argument(
        "--model", default=None, metavar="NAME_OR_FILE",
        help=f"a bundled model's name or a model file; default: the bundled {DEFAULT_MODEL}",
    )  # fmt: skip
    sv.add_argument(
        "--onnx", default=None, metavar="DIR",
        help="serve an ONNX export (mamba-asr export onnx) on onnxruntime instead",
    )  # fmt: skip
    _add_onnx_graph_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="(8000)")
    sv.add_argument(
        "--token", default=os.environ.get("MAMBA_ASR_TOKEN"), metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' (or ?token= on the WebSocket); default: "
        "$MAMBA_ASR_TOKEN",
    )  # fmt: skip
    sv.add_argument(
        "--no-auth", action="store_true", help="allow a non-loopback --host without a token"
    )
    sv.add_argument("--max-streams", type=int, default=32, help="open streams at most (32)")
    sv.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload in MB (25)")
    sv.add_argument(
        "--max-message-kb", type=int, default=1024,
        help="largest WebSocket message in KiB (1024)",
    )  # fmt: skip
    sv.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="allow cross-origin requests from ORIGIN (repeat for more; default: none)",
    )  # fmt: skip
    sv.add_argument(
        "--max-batch", type=int, default=None, metavar="N",
        help="streams per model step at most (default: all that are ready; 1: one at a time)",
    )  # fmt: skip
    sv.add_argument(
        "--worker", choices=["process", "thread"], default=None,
        help="where the model step runs: a process of its own, so that it and the network do "
        "not share one interpreter lock (default), or a thread of the server (--onnx: always)",
    )  # fmt: skip
    _add_decoding_args(sv)
    sv.add_argument(
        "--chunk-ms", type=float, default=STREAM_CHUNK_MS, metavar="MS",
        help=f"audio per streaming step ({STREAM_CHUNK_MS:g})",
    )  # fmt: skip
    sv.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sv.add_argument("--device", default=None, help=device_help)
    sv.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    # greedy, as sherpa-onnx's server: the fastest under load, and silent in long pauses
    # (beam search puts a stray token in seconds of silence with the bundled model)
    sv.set_defaults(func=cmd_serve, strategy="greedy")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from mamba_asr.serve.app import ServeConfig, run
        from mamba_asr.serve.engine import Engine
    except ImportError as exc:
        raise ImportError(
            f"serve needs the server packages ({exc.name} is missing): "
            'pip install "mamba-asr[serve]"'
        ) from None
    from mamba_asr.pretrained import MODELS

    config = ServeConfig(
        host=args.host, port=args.port, token=args.token, no_auth=args.no_auth,
        max_streams=args.max_streams, max_upload_mb=args.max_upload_mb,
        max_message_kb=args.max_message_kb, cors_origins=tuple(args.cors_origin),
        max_batch=args.max_batch,
        worker=args.worker or ("thread" if args.onnx is not None else "process"),
    )  # fmt: skip
    if args.max_batch is not None and args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    _set_threads(args.threads)
    asr = _load_asr(args)
    options = _decoding_options(args, asr)
    if args.onnx is not None:
        name = Path(args.onnx).name
    else:
        name = args.model if args.model is None or args.model in MODELS else Path(args.model).stem
        name = name or DEFAULT_MODEL
    engine = Engine(asr, name, options, args.chunk_ms)
    run(engine, config)
    return 0


def _add_prepare_parser(sub: argparse._SubParsersAction, common: list) -> None:
    prepare = sub.add_parser("prepare", parents=common, help="write manifests for a corpus")
    corpora = prepare.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    libri = corpora.add_parser(
        "librispeech",
        parents=common,
        help="LibriSpeech layout: SPEAKER/CHAPTER/*.flac with *.trans.txt",
        description="Writes one JSONL manifest (audio, text, duration) per split folder found "
        "under ROOT (e.g. train-clean-100.jsonl), or all.jsonl when ROOT is one split. "
        "Existing manifests are refused, before any audio is read, unless --overwrite. Every "
        "file is decoded in full, so a corrupt one (a flipped bit) never reaches a manifest.",
    )
    libri.add_argument("root", help="LibriSpeech folder (or one split of it)")
    libri.add_argument("--out", required=True, metavar="DIR", help="folder for the manifests")
    libri.add_argument("--overwrite", action="store_true", help="replace existing manifests")
    bad = libri.add_mutually_exclusive_group()
    bad.add_argument(
        "--strict", action="store_true",
        help="stop at the first missing or corrupt audio file (default: skip it, one warning "
        "line each, and count them)",
    )  # fmt: skip
    bad.add_argument("--skip-bad", action="store_true", help="the default; kept for old scripts")
    libri.set_defaults(func=cmd_prepare_librispeech)


def _add_synth_parser(sub: argparse._SubParsersAction, common: list) -> None:
    synth = sub.add_parser(
        "synth",
        parents=common,
        help="speak sentences of text files with TTS engines into a LibriSpeech-layout corpus",
        description="Writes DIR/SPEAKER/CHAPTER/*.flac (16 kHz) with *.trans.txt and "
        "DIR/manifest.jsonl; one speaker per TTS voice; deterministic for a seed.",
    )
    synth.add_argument("text_files", nargs="*", metavar="TEXT_FILE", help="text to speak")
    synth.add_argument("--out", metavar="DIR", help="new or empty output folder (required)")
    synth.add_argument("--hours", type=float, help="hours of audio to write (required)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (0), also the chapter id")
    synth.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    synth.add_argument(
        "--engines", default=None, metavar="LIST",
        help="comma-separated engines among espeak-ng,flite,festival,piper (default: those "
        "installed; piper: pip install 'mamba-asr[tts]')",
    )  # fmt: skip
    synth.add_argument(
        "--voices", nargs="+", default=None, metavar="PATTERN",
        help="only voices whose label matches a shell pattern (espeak-ng:en-gb+f4, flite:*)",
    )  # fmt: skip
    synth.add_argument(
        "--exclude-voices", nargs="+", default=[], metavar="PATTERN",
        help="leave out voices whose label matches a shell pattern (espeak-ng:*+m7)",
    )  # fmt: skip
    synth.add_argument(
        "--engine-weights", nargs="+", default=None, metavar="ENGINE=W",
        help="each engine's share of the utterances, e.g. espeak-ng=0.7 flite=0.2 festival=0.1 "
        "(default: its share of the voices)",
    )  # fmt: skip
    synth.add_argument(
        "--list-voices", action="store_true",
        help="print the label of every voice of the installed engines (or of --engines, "
        "filtered by --voices / --exclude-voices), one per line, and exit",
    )  # fmt: skip
    synth.add_argument("--noise", action="store_true", help="white/pink noise, 10-30 dB SNR, p=0.5")
    synth.add_argument("--reverb", action="store_true", help="reverberation, RT60 0.2-0.6 s, p=0.5")
    synth.set_defaults(func=cmd_synth)


def _add_eval_parser(sub: argparse._SubParsersAction, common: list, device_help: str) -> None:
    ev = sub.add_parser(
        "eval",
        parents=common,
        help="WER, CER and real-time factor of a model on a test set",
        description="Decodes every utterance of a JSONL manifest or a LibriSpeech-layout folder "
        "and prints WER, CER, utterances, audio seconds and real-time factor; each hypothesis "
        "is written beside its reference to --hyps, by default hyps-<folder>-<name>-<hash>.jsonl "
        "in MODEL's folder (the current folder for a bundled model): the set's folder and file "
        "name and 8 hex digits of its absolute path's SHA-1, so dev/all.jsonl and "
        "test/all.jsonl get different files. An existing file is not replaced without "
        "--overwrite; the destination is checked before decoding. Rates are over the "
        "utterances decoded; one whose reference normalises to nothing (only punctuation) is "
        "decoded but not scored, and counted as unscored. The real-time factor is over the "
        "audio actually read.",
    )
    ev.add_argument("data", metavar="DIR_OR_MANIFEST", help="test set")
    ev.add_argument(
        "--model", default=None, metavar="NAME_OR_FILE",
        help=f"a bundled model's name or a model file; default: the bundled {DEFAULT_MODEL}",
    )  # fmt: skip
    ev.add_argument("--hyps", default=None, metavar="FILE", help="where to write hypotheses")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --hyps file")
    _add_decoding_args(ev)
    ev.add_argument("--ctc-weight", type=float, default=0.4, help="seq2seq joint decoding (0.4)")
    ev.add_argument("--batch-seconds", type=float, default=60.0, help="audio per batch (60)")
    ev.add_argument(
        "--stream", action="store_true",
        help="decode each utterance as a stream, --chunk-ms at a time with the endpoint rule, "
        "as 'transcribe --stream' does (streaming transducer models only); the default decodes "
        "each utterance whole, as one segment",
    )  # fmt: skip
    ev.add_argument(
        "--chunk-ms", type=float, default=None, metavar="MS",
        help=f"with --stream: audio per streaming step ({STREAM_CHUNK_MS:g})",
    )  # fmt: skip
    ev.add_argument("--device", default=None, help=device_help)
    _add_dtype_arg(ev)
    _add_backend_arg(ev)
    ev.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (with --onnx: onnxruntime's intra-op threads)",
    )  # fmt: skip
    ev.add_argument(
        "--onnx", default=None, metavar="DIR",
        help="decode with onnxruntime from DIR (mamba-asr export onnx) instead of PyTorch",
    )  # fmt: skip
    _add_onnx_graph_args(ev)
    ev.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    ev.add_argument(
        "--strict", action="store_true",
        help="stop at the first bad audio file (default: skip it with one warning line, count "
        "it); the hypotheses decoded before are written either way",
    )  # fmt: skip
    ev.set_defaults(func=cmd_eval)


def _add_train_parser(sub: argparse._SubParsersAction, common: list, device_help: str) -> None:
    train = sub.add_parser(
        "train",
        parents=common,
        help="train a recipe (resumes the run in --out; works under torchrun)",
        description="Trains the recipe on the --train manifest, validating on --valid after each "
        "epoch; writes checkpoints, metrics.csv and finally model.pt (an average of the best "
        "checkpoints) into --out. Running the same command again resumes from the newest "
        "checkpoint. For several GPUs or nodes: torchrun --nproc_per_node=N -m mamba_asr train ...",
    )
    train.add_argument("config", help="YAML recipe, e.g. hparams/CTC/conmamba_large.yaml")
    train.add_argument("--train", required=True, metavar="MANIFEST", help="training manifest")
    train.add_argument("--valid", required=True, metavar="MANIFEST", help="validation manifest")
    train.add_argument(
        "--valid-heldout", default=None, metavar="MANIFEST",
        help="a second validation set, decoded beside --valid at every epoch end (wer_heldout "
        "in metrics.csv), e.g. voices or speakers left out of --train; --set "
        "train.select_on=heldout makes its WER choose the checkpoints kept and averaged",
    )  # fmt: skip
    train.add_argument("--out", required=True, metavar="DIR", help="run folder")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set train.lr=0.0005 (repeatable)",
    )  # fmt: skip
    train.add_argument(
        "--init", default=None, metavar="MODEL",
        help="start from MODEL's weights and architecture (a model file or bundled name, e.g. "
        "a pruned one): its model section replaces the recipe's, the rest of the recipe "
        "(data, tokenizer ignored, train) applies; train.init_from=MODEL without the "
        "architecture needs the recipe's model section to equal MODEL's",
    )  # fmt: skip
    train.add_argument("--device", default=None, help=device_help)
    train.add_argument(
        "--qat", default=None, metavar="SCHEME",
        help="quantization-aware training (recipe key train.qat): int8 (int8 weights and "
        "activations, for export onnx --int8), int8-weights (for export coreml --weights "
        "int8) or int4-weights (for export onnx --int4); usually with --init; see "
        "docs/compression.md",
    )  # fmt: skip
    train.add_argument(
        "--qat-block", type=int, default=None, metavar="N",
        help="with --qat int4-weights: the input channels that share a scale, 16, 32, 64, "
        "128 or 256 (recipe key train.qat_block; default 32)",
    )  # fmt: skip
    train.add_argument(
        "--max-steps", type=int, default=None, metavar="N",
        help="stop after N optimizer steps in total, with a checkpoint (run again to go on)",
    )  # fmt: skip
    train.add_argument(
        "--no-resume", dest="resume", action="store_false",
        help="refuse to continue a run that --out already holds",
    )  # fmt: skip
    train.add_argument(
        "--strict", action="store_true",
        help="stop at the first audio file that does not load (default: leave it out of its "
        "batch, the same on every run, with one warning line, and count it)",
    )  # fmt: skip
    kd = train.add_argument_group(
        "knowledge distillation",
        "learn from a teacher model too: loss = own loss + W * T^2 * KL(teacher || student) at "
        "temperature T (docs/compression.md). These set the recipe's train.kd keys.",
    )
    kd.add_argument(
        "--teacher", default=None, metavar="MODEL",
        help="the teacher: a model file written by mamba-asr (a run's model.pt) or a bundled "
        "model's name; same tokenizer and frame rate as the student (train.kd.teacher)",
    )  # fmt: skip
    kd.add_argument(
        "--kd-weight", type=float, default=None, metavar="W",
        help="weight W of the distillation term, >= 0 (train.kd.weight, default 0.5)",
    )  # fmt: skip
    kd.add_argument(
        "--kd-temperature", type=float, default=None, metavar="T",
        help="softmax temperature T, > 0 (train.kd.temperature, default 1)",
    )  # fmt: skip
    kd.add_argument(
        "--kd-target", choices=("ctc", "lattice"), default=None,
        help="what is compared: ctc, the CTC posteriors of each frame (a transducer student "
        "needs model.transducer.aux_ctc_weight > 0), or lattice, the joiner's distributions on "
        "the student's (pruned) RNN-T lattice (train.kd.target, default ctc)",
    )  # fmt: skip
    train.set_defaults(func=cmd_train)


def _add_onnx_graph_args(p: argparse.ArgumentParser) -> None:
    """--int8 / --int4: which graphs of an --onnx export to run."""
    p.add_argument("--int8", action="store_true", help="with --onnx: the int8 graphs")
    p.add_argument("--int4", action="store_true", help="with --onnx: the int4 graphs")


def _add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """The search and LM options; their defaults are ``DecodingOptions``'s."""
    d = DecodingOptions()
    parser.add_argument(
        "--strategy", choices=("greedy", "beam"), default=d.strategy,
        help=f"({d.strategy}; greedy is the fastest)",
    )  # fmt: skip
    parser.add_argument("--beam-size", type=int, default=d.beam_size, help=f"({d.beam_size})")
    parser.add_argument(
        "--lm", default=d.lm, metavar="FILE",
        help="n-gram LM (mamba-asr lm train) fused into transducer beam search; auto: the "
        "LM that ships with the model (a bundled model's), with beam search; none: no LM "
        f"({d.lm})",
    )  # fmt: skip
    parser.add_argument(
        "--lm-weight", type=float, default=None, metavar="W", help=f"with an LM ({LM_WEIGHT})"
    )
    parser.add_argument(
        "--length-bonus", type=float, default=None, metavar="B",
        help=f"added per token with an LM ({LENGTH_BONUS})",
    )  # fmt: skip


def _decoding_options(
    args: argparse.Namespace, asr: ASR | OnnxASR, **extra: object
) -> DecodingOptions:
    """The options of the command line, resolved for ``asr`` (a bad or unsuitable LM is one
    error line before any decoding)."""
    options = DecodingOptions(
        strategy=args.strategy, beam_size=args.beam_size, lm=args.lm,
        lm_weight=args.lm_weight, length_bonus=args.length_bonus, **extra,
    )  # fmt: skip
    return asr.resolve_options(options)


def _add_lm_parser(sub: argparse._SubParsersAction, common: list) -> None:
    lm = sub.add_parser("lm", parents=common, help="language-model tools")
    lm_sub = lm.add_subparsers(dest="lm_command", required=True, metavar="ACTION")
    lm_train = lm_sub.add_parser(
        "train",
        parents=common,
        help="train an n-gram LM over a model's tokens for beam-search fusion",
        description="Reads TEXT files (one sentence per line), normalises each line as "
        "transcripts are (upper case, no punctuation but apostrophes), splits it with the "
        "model's tokenizer and counts token n-grams (interpolated Kneser-Ney). Use the file "
        "with --lm in transcribe and eval (transducer models, --strategy beam). --out is "
        "checked first: never one of the inputs, an existing file only with --overwrite.",
    )
    lm_train.add_argument("texts", nargs="+", metavar="TEXT", help="text files")
    lm_train.add_argument("--out", required=True, metavar="FILE", help="LM file to write (.npz)")
    lm_train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    lm_train.add_argument(
        "--model", default=None, metavar="NAME_OR_FILE",
        help=f"whose tokenizer to use; default: the bundled {DEFAULT_MODEL}",
    )  # fmt: skip
    lm_train.add_argument("--order", type=int, default=5, help="n-gram order (5)")
    lm_train.add_argument(
        "--min-count", type=int, default=1, metavar="N",
        help="drop the n-grams of order >= 3 seen fewer than N times: a smaller file (1)",
    )  # fmt: skip
    lm_train.add_argument(
        "--dev", default=None, metavar="TEXT", help="held-out text: print its perplexity"
    )
    lm_train.set_defaults(func=cmd_lm_train)


def _add_tokenizer_parser(sub: argparse._SubParsersAction, common: list) -> None:
    tokenizer = sub.add_parser("tokenizer", parents=common, help="tokenizer tools")
    tok_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    tok_train = tok_sub.add_parser(
        "train",
        parents=common,
        help="train a tokenizer on a manifest's transcripts",
        description="Writes a tokenizer folder (tokenizer.json, and spm.model for SentencePiece) "
        "that a recipe can use with tokenizer.path. --kind char takes the characters of the "
        "transcripts as the alphabet. A --out folder that is not empty is refused unless "
        "--overwrite.",
    )
    tok_train.add_argument("--manifest", required=True, help="manifest whose texts to learn from")
    tok_train.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder")
    tok_train.add_argument(
        "--overwrite", action="store_true", help="write into a --out folder that is not empty"
    )
    tok_train.add_argument(
        "--kind", choices=("unigram", "bpe", "char"), default="unigram", help="(unigram)"
    )
    tok_train.add_argument(
        "--vocab-size", type=int, default=None, metavar="N",
        help="pieces, blank/bos/eos/unk included (required for unigram and bpe)",
    )  # fmt: skip
    tok_train.set_defaults(func=cmd_tokenizer_train)


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _backends_line(device: torch.device) -> str:
    from mamba_asr.ops.selective_scan import available_backends, resolve_backend

    return f"{', '.join(available_backends(device))} (auto -> {resolve_backend(device)})"


def cmd_info(args: argparse.Namespace) -> int:
    device = get_device(args.device)
    rows = [
        (PROG, __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("device", str(device)),
        ("cpu threads", str(torch.get_num_threads())),
        ("selective scan", _backends_line(device)),
        ("bundled models", _bundled_line()),
    ]
    for key, value in rows:
        print(f"{key:<16}{value}")
    return 0


def _bundled_line() -> str:
    from mamba_asr.pretrained import DEFAULT_MODEL, MODELS, bundled_path

    parts = []
    for name in MODELS:
        path = bundled_path(name)
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "file missing"
        parts.append(f"{name} ({size}{', default' if name == DEFAULT_MODEL else ''})")
    return ", ".join(parts)


def _format_report(report: CheckReport) -> str:
    header = f"{'check':<44} {'result':<6} {'max err':>10} {'tol':>8} {'time':>9}  note"
    lines = [header, "-" * len(header)]
    for r in report.results:
        err = "-" if r.error is None else f"{r.error:.2e}"
        tol = "-" if r.tol is None else f"{r.tol:.0e}"
        result = "ok" if r.passed else "FAIL"
        lines.append(
            f"{r.name:<44} {result:<6} {err:>10} {tol:>8} {r.seconds:>7.3f} s  {r.detail}".rstrip()
        )
    failed = sum(not r.passed for r in report.results)
    total = len(report.results)
    lines.append(
        f"{total - failed} of {total} checks passed" if failed else f"all {total} checks passed"
    )
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from mamba_asr.selfcheck import run_checks

    _set_threads(args.threads)
    device = get_device(args.device)
    print(
        f"{PROG} check: device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, B={args.batch} L={args.length} "
        f"d_model={args.d_model} layers={args.layers}",
        flush=True,
    )
    report = run_checks(
        device,
        length=args.length,
        batch=args.batch,
        d_model=args.d_model,
        n_layers=args.layers,
        chunk=args.chunk,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    print(_format_report(report))
    print("err = max |x - ref| / max(1, max |ref|), the worst tensor; pass if err <= tol; fp32")
    return 0 if report.passed else 1


def cmd_model_info(args: argparse.Namespace) -> int:
    from mamba_asr.config import load_recipe
    from mamba_asr.models.factory import build_model, count_parameters, layer_summary

    cfg = load_recipe(args.config, args.overrides).model
    model = build_model(cfg, device="meta")  # shapes only: no memory, no initialization cost
    total = count_parameters(model)
    print(f"{args.config}: {cfg.kind} model, {cfg.encoder_module} encoder"
          + (f", {cfg.decoder_module} decoder" if cfg.kind == "seq2seq" else "")
          + f", vocabulary {cfg.vocab_size}")  # fmt: skip
    print(f"parameters: {total:,} ({total / 1e6:.1f} M)")
    print(f"{'module':<28} {'kind':<34} {'parameters':>12}")
    for row in layer_summary(model):
        indent = "  " * row.name.count(".")
        print(f"{indent + row.name:<28} {row.kind:<34} {row.parameters:>12,}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mamba_asr.config import ConfigError, load_recipe, replace_kd
    from mamba_asr.train import train
    from mamba_asr.train.trainer import init_model_section

    if args.init is not None:  # the model's own architecture (e.g. pruned widths), its weights
        model = init_model_section(args.init)
        recipe = load_recipe(args.config, args.overrides, model=model, init_from=args.init)
    else:
        recipe = load_recipe(args.config, args.overrides)
    if args.qat is not None or args.qat_block is not None:
        import dataclasses

        from mamba_asr.qat import check_scheme

        qat = recipe.train.qat if args.qat is None else check_scheme(args.qat, "--qat")
        block = recipe.train.qat_block if args.qat_block is None else args.qat_block
        if block != INT4_BLOCK and qat != "int4-weights":
            raise ConfigError("--qat-block is for --qat int4-weights")
        recipe = dataclasses.replace(
            recipe, train=dataclasses.replace(recipe.train, qat=qat, qat_block=block)
        )
    recipe = replace_kd(recipe, teacher=args.teacher, weight=args.kd_weight,
                        temperature=args.kd_temperature, target=args.kd_target)  # fmt: skip
    kd_flags = (args.kd_weight, args.kd_temperature, args.kd_target)
    if recipe.train.kd.teacher is None and any(v is not None for v in kd_flags):
        raise ConfigError("--kd-weight, --kd-temperature and --kd-target need a teacher "
                          "(--teacher MODEL or train.kd.teacher)")  # fmt: skip
    if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks stay quiet
        logging.getLogger("mamba_asr.train").setLevel(logging.INFO)  # epoch summaries
    result = train(
        recipe, args.train, args.valid, args.out, device=args.device, resume=args.resume,
        max_steps=args.max_steps, strict=args.strict, heldout_manifest=args.valid_heldout,
    )  # fmt: skip
    if result.rank == 0:
        skipped = result.skipped_audio
        note = f"; skipped {skipped} bad audio file(s), listed in train.log" if skipped else ""
        if result.finished:
            print(f"{PROG} train: done after {result.step} steps; model: {result.model_path}"
                  + note)  # fmt: skip
        else:
            print(f"{PROG} train: stopped at step {result.step}; run again to continue" + note)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from mamba_asr.data.manifest import read_manifest
    from mamba_asr.files import check_output
    from mamba_asr.text.tokenizer import CharTokenizer, train_sentencepiece

    check_output(args.out, "--out", [args.manifest], args.overwrite, folder=True)
    texts = [u.text for u in read_manifest(args.manifest)]
    if args.kind == "char":
        if args.vocab_size is not None:
            raise ValueError("--vocab-size does not apply to --kind char (the texts decide it)")
        tokenizer = CharTokenizer.from_texts(texts)
        tokenizer.save(args.out)
        print(f"{args.out}: character tokenizer, {tokenizer.vocab_size} ids, "
              f"alphabet {tokenizer.alphabet!r}")  # fmt: skip
        return 0
    if args.vocab_size is None:
        raise ValueError(f"--vocab-size is required for --kind {args.kind}")
    tokenizer = train_sentencepiece(texts, args.out, args.vocab_size, model_type=args.kind)
    print(f"{args.out}: {args.kind} SentencePiece tokenizer, {tokenizer.vocab_size} ids, "
          f"from {len(texts)} transcripts")  # fmt: skip
    return 0


def _read_sentences(paths: Sequence[str], tokenizer: object) -> list[list[int]]:
    from tqdm import tqdm

    from mamba_asr.files import read_text
    from mamba_asr.text import normalize_transcript

    lines: list[str] = []
    for path in paths:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such text file")
        lines += read_text(path).splitlines()
    encode = tokenizer.encode  # type: ignore[attr-defined]
    texts = (normalize_transcript(line) for line in lines)
    bar = tqdm(texts, total=len(lines), desc="tokenizing", unit=" lines",
               disable=not sys.stderr.isatty())  # fmt: skip
    return [encode(t) for t in bar if t]


def cmd_lm_train(args: argparse.Namespace) -> int:
    from mamba_asr import load_model
    from mamba_asr.files import check_output
    from mamba_asr.lm import NgramLM, tokenizer_fingerprint

    if args.min_count < 1:
        raise ValueError(f"--min-count must be >= 1, got {args.min_count}")
    out = check_output(args.out, "--out", [*args.texts, args.dev, args.model], args.overwrite)
    asr = load_model(args.model, device="cpu")
    vocab = asr.config.model.vocab_size
    sentences = _read_sentences(args.texts, asr.tokenizer)
    if not sentences:
        raise ValueError("no sentences in " + ", ".join(args.texts))
    dev = None if args.dev is None else _read_sentences([args.dev], asr.tokenizer)
    fingerprint = tokenizer_fingerprint(asr.tokenizer, vocab)
    lm = NgramLM.train(sentences, vocab, args.order, fingerprint=fingerprint)
    if args.min_count > 1:
        lm = lm.prune(args.min_count)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    lm.save(tmp)
    tmp.replace(out)
    tokens = sum(map(len, sentences))
    ngrams = sum(len(k) for k in lm.keys)
    print(f"{out}: order-{lm.order} LM over {vocab} ids, {len(sentences)} sentences, "
          f"{tokens} tokens, {ngrams} n-grams, {out.stat().st_size / 1e6:.1f} MB")  # fmt: skip
    if dev is not None:
        print(f"{args.dev}: perplexity {lm.perplexity(dev):.2f} per token ({len(dev)} sentences)")
    return 0


def cmd_prepare_librispeech(args: argparse.Namespace) -> int:
    from mamba_asr.data import prepare_librispeech

    paths = prepare_librispeech(
        args.root, args.out, skip_bad=not args.strict, progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )  # fmt: skip
    for path in paths:
        print(path)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from mamba_asr.data.synth import available_engines, select_voices, synthesize_corpus

    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    if args.list_voices:
        for voice in select_voices(available_engines(engines), args.voices, args.exclude_voices):
            print(voice.label)
        return 0
    if not args.text_files or args.out is None or args.hours is None:
        print(f"{PROG} synth: error: TEXT_FILE, --out and --hours are required "
              "(unless --list-voices)", file=sys.stderr)  # fmt: skip
        return 2
    weights = None
    if args.engine_weights:
        pairs = [item.partition("=") for item in args.engine_weights]
        try:
            weights = {name: float(value) for name, sep, value in pairs if sep}
        except ValueError:
            weights = None
        if weights is None or len(weights) != len(pairs):
            print(f"{PROG} synth: error: --engine-weights takes ENGINE=NUMBER items, got "
                  f"{' '.join(args.engine_weights)}", file=sys.stderr)  # fmt: skip
            return 2
    result = synthesize_corpus(
        args.text_files, args.out, hours=args.hours, seed=args.seed, workers=args.workers,
        engines=engines, noise=args.noise, reverb=args.reverb, progress=sys.stderr.isatty(),
        voices=args.voices, exclude_voices=args.exclude_voices, engine_weights=weights,
    )  # fmt: skip
    print(f"{result.manifest}: {result.utterances} utterances, {result.speakers} voices, "
          f"{result.audio_seconds / 3600:.3f} h of audio, {result.speed:.0f}x real time")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mamba_asr.evaluate import evaluate, hypotheses_name, read_test_set, result_json
    from mamba_asr.files import check_output
    from mamba_asr.pretrained import MODELS

    _set_threads(args.threads)
    if args.chunk_ms is not None and not args.stream:
        raise ValueError("--chunk-ms applies to --stream only")
    chunk_ms = (args.chunk_ms or STREAM_CHUNK_MS) if args.stream else None
    tags = [
        t for t, on in (("stream", args.stream), ("int8", args.int8), ("int4", args.int4)) if on
    ]
    name = hypotheses_name(args.data, *tags)
    bundled = args.model is None or args.model in MODELS  # not beside the installed package
    if args.onnx is not None:  # in the export's folder
        hyps = args.hyps or Path(args.onnx) / name
    else:
        hyps = args.hyps or (Path(name) if bundled else Path(args.model).with_name(name))
    lm = None if args.lm in ("auto", "none") else args.lm
    inputs = [args.data, lm, None if bundled else args.model]
    check_output(hyps, "--hyps", inputs, args.overwrite)
    test_set = read_test_set(args.data, skip_bad=not args.strict)
    asr = _load_asr(args)
    options = _decoding_options(args, asr, ctc_weight=args.ctc_weight)
    result = evaluate(asr, test_set.utterances, hyps, options, args.batch_seconds,
                      sys.stderr.isatty(), args.strict, chunk_ms)  # fmt: skip
    result = dataclasses.replace(result, skipped=result.skipped + test_set.skipped)
    print(f"WER {100 * result.wer:.2f}%  CER {100 * result.cer:.2f}%  "
          f"utterances {result.utterances}  audio {result.audio_seconds:.1f} s  "
          f"RTF {result.rtf:.4f}"
          + (f"  skipped {result.skipped} (bad audio)" if result.skipped else "")
          + (f"  unscored {result.unscored} (empty reference)" if result.unscored else ""))  # fmt: skip
    print(f"hypotheses: {hyps}")
    if args.json:
        print(result_json(result))
    return 0


class _LiveLine:
    """The partial transcript of a stream on one terminal line of ``out``, rewritten in place:
    the seconds consumed, then as much of the end of the text as the width allows."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out, self.label, self.shown = out, label, False

    def show(self, text: str, seconds: float) -> None:
        head = f"{seconds:7.1f} s  {self.label}"
        room = max(10, shutil.get_terminal_size().columns - 1 - len(head))
        tail = text if len(text) <= room else "\u2026" + text[len(text) - room + 1 :]
        self.out.write(f"\r\x1b[K{head}{tail}")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.shown = False


def _transcribe_one(
    asr: ASR | OnnxASR, path: str, options: DecodingOptions, chunk_ms: float | None, label: str
) -> Transcript:
    """One file, with a progress bar (offline) or the live partial transcript (``--stream``)
    on stderr when it is a terminal."""
    from mamba_asr.transcription import transcribe_file

    terminal = sys.stderr.isatty()
    if type(asr).__name__ == "OnnxASR":  # an export on onnxruntime (--onnx)
        transcribe_file = _onnx_transcribe_file
    if chunk_ms is None:
        return transcribe_file(asr, path, options, progress=terminal)
    live = _LiveLine(sys.stderr, label) if terminal else None
    try:
        return transcribe_file(
            asr, path, options, chunk_ms=chunk_ms, on_partial=live.show if live else None
        )
    finally:
        if live is not None:
            live.clear()


def _onnx_transcribe_file(asr: OnnxASR, path: str, options: DecodingOptions, *,
                          progress: bool = False, **stream: object) -> Transcript:  # fmt: skip
    """``transcribe_file``'s call on an ``OnnxASR`` (no progress bar)."""
    return asr.transcribe_file(path, options, **stream)  # type: ignore[arg-type]


def _destinations(args: argparse.Namespace) -> dict[str, Path] | None:
    """Each file's output file with --output-dir (None: stdout), checked before decoding:
    no two inputs on one output, nothing overwritten unless --overwrite, srt/vtt of several
    files only into files."""
    from mamba_asr.writers import output_path

    if args.output_dir is None:
        if args.format in ("srt", "vtt") and len(args.files) > 1:
            raise ValueError(
                f"{args.format} of several files needs --output-dir (one subtitle file each)"
            )
        return None
    folder = Path(args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: --output-dir is not a folder")
    out: dict[str, Path] = {}
    for path in args.files:
        dest = output_path(path, args.format, folder)
        other = next((p for p, d in out.items() if d == dest and p != path), None)
        if other is not None:
            raise ValueError(f"{path} and {other} would both be written to {dest}")
        if dest.exists() and not args.overwrite:
            raise ValueError(f"{dest}: exists (--overwrite to replace it)")
        if dest.resolve() == Path(path).resolve():
            raise ValueError(f"{dest}: is the input file {path}")
        out[path] = dest
    folder.mkdir(parents=True, exist_ok=True)
    return out


def _print(transcript: Transcript, fmt: str, several: bool) -> None:
    """A transcript on stdout: txt lines prefixed "FILE: " when there are several files."""
    from mamba_asr.writers import format_transcript

    text = format_transcript(transcript, fmt)
    if fmt == "txt" and several:
        text = "".join(f"{transcript.file}: {line}\n" for line in text.splitlines())
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_transcribe(args: argparse.Namespace) -> int:
    from mamba_asr.streaming import stream_chunk_frames
    from mamba_asr.writers import write_transcript

    _set_threads(args.threads)
    if args.chunk_ms is not None and not args.stream:
        raise ValueError("--chunk-ms applies to --stream only")
    destinations = _destinations(args)
    asr = _load_asr(args)
    options = _decoding_options(args, asr)
    chunk_ms = None
    if args.stream:  # a model that does not stream, a chunk too short: one error line
        chunk_ms = STREAM_CHUNK_MS if args.chunk_ms is None else args.chunk_ms
        if isinstance(asr, torch.nn.Module):
            stream_chunk_frames(asr, chunk_ms)
        else:
            asr.create_stream(options, chunk_ms)
    several, failed = len(args.files) > 1, 0
    for path in args.files:
        try:
            transcript = _transcribe_one(asr, path, options, chunk_ms, f"{path}: " * several)
        except (*USER_ERRORS, RuntimeError) as exc:  # one bad file must not stop the others
            if args.debug:
                traceback.print_exc()
            message = " ".join(str(exc).split()) or type(exc).__name__
            if not message.startswith(str(path)):
                message = f"{path}: {message}"
            print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if destinations is None:
            _print(transcript, args.format, several)
        else:
            write_transcript(transcript, args.format, destinations[path], args.overwrite)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mamba-asr`` and ``python -m mamba_asr``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141
    except USER_ERRORS as exc:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
