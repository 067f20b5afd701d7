"""Tiny recipes for the tests, in one place: the overrides that shrink each kind of model.

``tiny_overrides(kind, *more)`` gives ``key=value`` strings, for ``load_recipe`` or the command
line's ``--set``; ``tiny_recipe(kind, *more)`` loads the kind's recipe from hparams/ (or
``path``) with them. ``kind`` is "ctc", "seq2seq" or "transducer"; ``more`` comes last, so it
wins. The overrides make:

- a model with one encoder layer: a ConMamba encoder of width 32 for CTC and seq2seq (one
  decoder layer), the causal Mamba encoder of width 16 with the 8x front end for the transducer;
  no dropout;
- the character tokenizer of the tone corpus (tests/helpers/tones.py): "AB ", 6 ids;
- training on that corpus in 4 batches an epoch, a checkpoint every 2 steps, 3 epochs.

``tiny_transducer_config`` builds a ``ModelConfig`` directly, for the transducer model tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from mamba_asr.config import ModelConfig, RecipeConfig, from_dict, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "ctc": ROOT / "hparams/CTC/conmamba_large.yaml",
    "seq2seq": ROOT / "hparams/S2S/conmamba_small.yaml",
    "transducer": ROOT / "hparams/Transducer/mct_small.yaml",
}
CONMAMBA = [
    "model.encoder_module=conmamba", "model.d_model=32", "model.nhead=2",
    "model.num_encoder_layers=1", "model.d_ffn=64", "model.kernel_size=5",
    "model.frontend.channels=[4, 4]", "model.dropout=0.0",
]  # fmt: skip
MODELS = {
    "ctc": [*CONMAMBA, "model.num_decoder_layers=0"],
    "seq2seq": [*CONMAMBA, "model.num_decoder_layers=1"],
    "transducer": [
        "model.d_model=16", "model.num_encoder_layers=1", "model.d_ffn=32", "model.dropout=0.0",
        "model.frontend.channels=[8, 8, 8]", "model.mamba.d_state=4",
        "model.transducer.predictor_dim=8", "model.transducer.joiner_dim=8",
    ],
}  # fmt: skip
TOKENS = [
    "model.vocab_size=6", "tokenizer.kind=char", "tokenizer.vocab_size=null",
    "tokenizer.alphabet='AB '",
]  # fmt: skip
TRAINING = [
    "data.speed_perturb=[0.9, 1.0, 1.1]", "data.cmvn_max_utterances=8",
    "data.specaugment.freq_width=8", "data.specaugment.time_masks=2",
    "train.lr=0.002", "train.warmup_steps=4", "train.grad_accum=1", "train.max_batch_seconds=3.0",
    "train.num_buckets=2", "train.num_workers=0", "train.log_every=1", "train.keep_best=2",
    "train.average=2", "train.epochs=3", "train.checkpoint_every_steps=2",
]  # fmt: skip


def tiny_overrides(kind: str, *more: str) -> list[str]:
    """The overrides of a tiny ``kind`` recipe (module docstring), then ``more``."""
    if kind not in MODELS:
        raise ValueError(f"kind must be one of {sorted(MODELS)}, got {kind!r}")
    return [*TOKENS, *MODELS[kind], *TRAINING, *more]


def tiny_recipe(kind: str, *more: str, path: str | os.PathLike[str] | None = None) -> RecipeConfig:
    """The ``kind`` recipe of hparams/ (or the one at ``path``) with ``tiny_overrides``."""
    return load_recipe(RECIPES[kind] if path is None else path, tiny_overrides(kind, *more))


def tiny_transducer_config(vocab: int = 7, n_mels: int = 20, **overrides: object) -> ModelConfig:
    """A 2-layer causal MCT with 16-wide layers; ``overrides`` replace top-level keys, or merge
    into a section when given as a dict (``frontend={"subsampling": 8}``)."""
    data: dict = {
        "vocab_size": vocab, "kind": "transducer", "encoder_module": "mamba",
        "d_model": 16, "num_encoder_layers": 2, "d_ffn": 32, "dropout": 0.0,
        "mamba": {"d_state": 4, "expand": 2, "d_conv": 3, "bidirectional": False},
        "frontend": {"kind": "causal", "n_mels": n_mels, "subsampling": 4, "channels": [8, 8],
                     "kernel_size": 3},
        "transducer": {"predictor_dim": 12, "joiner_dim": 10, "aux_ctc_weight": 0.2},
    }  # fmt: skip
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return from_dict(ModelConfig, data)


def tiny_asr(kind: str, *more: str, blank_bias: float | None = None, seed: int = 0):
    """A random tiny ``kind`` model (``tiny_recipe``) with the "AB " character tokenizer, in
    eval mode. ``blank_bias``: the output layer's bias for blank (CTC head or joiner), with
    bos and eos pushed far down, so that the random model emits characters: low values emit
    on every frame, higher ones now and then (the tests that need tokens or pauses set it)."""
    import torch

    from mamba_asr.asr import ASR
    from mamba_asr.text import CharTokenizer

    torch.manual_seed(seed)
    asr = ASR.from_recipe(tiny_recipe(kind, *more), CharTokenizer("AB "))
    if blank_bias is not None:
        head = asr.model.joiner.out if kind == "transducer" else asr.model.ctc_lin
        with torch.no_grad():
            head.bias[0] = blank_bias
            head.bias[1:3] = -10.0  # bos and eos: never emitted
    return asr.eval()
