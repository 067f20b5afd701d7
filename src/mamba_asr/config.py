"""Configs: frozen, annotated dataclasses read from YAML recipes, with errors that name the key.

A recipe is a YAML mapping whose sections match ``RecipeConfig``'s fields: ``model`` (required),
``data``, ``tokenizer`` and ``train`` (each optional, with defaults).
Every key is checked against the dataclass it fills: an unknown key, a wrong type or a value outside
the allowed set raises ``ConfigError`` naming the file, the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from mamba_asr.files import read_text

T = TypeVar("T")
QatScheme = Literal["int8", "int8-weights", "int4-weights"]  # mamba_asr.qat.QAT_SCHEMES
# int4 weights (train.qat int4-weights, export onnx --int4): one scale per block of this many
# input channels of a matrix product; the blocks onnxruntime's MatMulNBits takes
INT4_BLOCK = 32
INT4_BLOCKS = (16, 32, 64, 128, 256)


class ConfigError(ValueError):
    """A recipe or override that does not fit the config schema; the message names the key."""


@dataclass(frozen=True)
class MambaConfig:
    """Selective state-space block options (mamba's defaults).

    d_inner: the block's inner width (channels of the conv and the scan); None (the default):
    ``expand * d_model``. Set, it replaces that product, e.g. in a model whose channels were
    pruned (``mamba-asr prune``); ``expand`` is then not used.
    """

    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    bidirectional: bool = True
    d_inner: int | None = None

    def __post_init__(self) -> None:
        if self.d_inner is not None:
            _at_least(self, "model.mamba", 1, "d_inner")


@dataclass(frozen=True)
class FrontendConfig:
    """The front end that subsamples the features in time.

    kind ``conv2d``: stride-``stride`` Conv2d stages over (time, mel), one per ``channels``
    entry (the recipes: 2 stages, 4x). kind ``causal``: the streaming ``CausalConvFrontEnd``,
    depthwise-separable 1-D convolutions over time that only look back (kernel
    ``kernel_size`` >= 2, stride 2 per stage), ``subsampling`` 4 or 8, one ``channels`` entry
    per stage (2 for 4x, 3 for 8x); ``stride`` is not used.
    """

    kind: Literal["conv2d", "causal"] = "conv2d"
    n_mels: int = 80
    channels: tuple[int, ...] = (64, 32)
    kernel_size: int = 3
    stride: int = 2
    subsampling: Literal[4, 8] = 4

    def __post_init__(self) -> None:
        _at_least(self, "model.frontend", 1, "n_mels", "kernel_size", "stride")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(
                f"model.frontend.channels must be a non-empty list of sizes >= 1, "
                f"got {list(self.channels)}"
            )
        if self.kind == "causal":
            stages = {4: 2, 8: 3}[self.subsampling]
            if len(self.channels) != stages:
                raise ConfigError(
                    f"model.frontend.channels must have {stages} entries for "
                    f"model.frontend.subsampling {self.subsampling} (kind 'causal'), "
                    f"got {list(self.channels)}"
                )
            _at_least(self, "model.frontend", 2, "kernel_size")


@dataclass(frozen=True)
class TransducerConfig:
    """Transducer parts (``decoder_module: transducer``).

    predictor: ``stateless`` (embedding + causal conv over the last ``context_size`` tokens)
    or ``lstm`` (one LSTM layer). predictor_dim: its output width; joiner_dim: the joiner's
    hidden width. aux_ctc_weight: weight of an auxiliary CTC loss on the encoder,
    loss = (1 - w) * RNN-T + w * CTC (0: no CTC head).

    loss: ``full`` (the joiner on every (frame, token) pair, memory T * U * V) or ``pruned``
    (k2's pruned RNN-T: a "simple" joint of two extra linear heads picks ``prune_range`` tokens
    per frame and the joiner runs on that band only, memory T * prune_range * V). The pruned
    RNN-T term is pruned + simple_loss_scale * simple, with a constant scale (no warm-up
    schedule: the loss has no notion of the training step). prune_range >= 2 needs
    U <= (prune_range - 1) * T per utterance, else that utterance's loss is inf.
    """

    predictor: Literal["stateless", "lstm"] = "stateless"
    context_size: int = 2
    predictor_dim: int = 256
    joiner_dim: int = 320
    aux_ctc_weight: float = 0.0
    loss: Literal["full", "pruned"] = "full"
    prune_range: int = 5
    simple_loss_scale: float = 0.5

    def __post_init__(self) -> None:
        _at_least(self, "model.transducer", 1, "context_size", "predictor_dim", "joiner_dim")
        _at_least(self, "model.transducer", 2, "prune_range")
        if self.simple_loss_scale < 0:
            raise ConfigError(
                f"model.transducer.simple_loss_scale must be >= 0, got {self.simple_loss_scale}"
            )
        if not 0.0 <= self.aux_ctc_weight < 1.0:
            raise ConfigError(
                f"model.transducer.aux_ctc_weight must be in [0, 1), got {self.aux_ctc_weight}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """An ASR model of one ``kind``: ``ctc`` (an encoder with a CTC head),
    ``seq2seq`` (joint CTC/attention: an encoder and a ``decoder_module`` of
    ``num_decoder_layers`` layers) or ``transducer`` (RNN-T: an encoder, a predictor and a
    joiner, the ``transducer`` section).

    ``encoder_module: mamba`` is a causal Mamba stack (``MambaEncoder``, pre-norm residual
    Mamba + FFN layers, FFN activation ``encoder_activation`` or swish; ``mamba.bidirectional``
    is ignored). ``num_decoder_layers`` must be 0 unless the kind is seq2seq.
    """

    vocab_size: int
    kind: Literal["ctc", "seq2seq", "transducer"]
    encoder_module: Literal["conformer", "conmamba", "transformer", "mamba"] = "conmamba"
    decoder_module: Literal["transformer", "mamba"] = "transformer"
    d_model: int = 256
    nhead: int = 4
    num_encoder_layers: int = 12
    num_decoder_layers: int = 0
    d_ffn: int = 1024
    kernel_size: int = 31
    dropout: float = 0.1
    activation: Literal["gelu", "relu", "swish"] = "gelu"  # decoders and the transformer encoder
    # conformer/conmamba layers; None: as in Mamba-ASR (swish for conformer, gelu for conmamba)
    encoder_activation: Literal["gelu", "relu", "swish"] | None = None
    conv_norm: Literal["layernorm", "batchnorm"] = "layernorm"
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    blank_index: int = 0
    pad_index: int = 0
    bos_index: int = 1
    eos_index: int = 2
    mamba: MambaConfig = field(default_factory=MambaConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    transducer: TransducerConfig = field(default_factory=TransducerConfig)

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "d_model", "nhead", "num_encoder_layers", "d_ffn")
        if self.num_decoder_layers < 0:
            raise ConfigError(
                f"model.num_decoder_layers must be >= 0, got {self.num_decoder_layers}"
            )
        if self.d_model % self.nhead:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by model.nhead ({self.nhead})"
            )
        for name in ("dropout", "ctc_weight", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.kind == "seq2seq" and self.num_decoder_layers < 1:
            raise ConfigError("model.num_decoder_layers must be >= 1 for kind 'seq2seq'")
        if self.kind != "seq2seq" and self.num_decoder_layers:
            raise ConfigError(
                f"model.num_decoder_layers is for kind 'seq2seq' (this model is {self.kind!r}); "
                "leave it out or set 0"
            )


def infer_model_kind(model: dict[str, Any]) -> str:
    """The kind of a model section written before ``kind`` was a field (model files of
    format 1): ``decoder_module: transducer`` was a transducer, decoder layers a seq2seq
    model, none a CTC model. The section is not otherwise checked here."""
    if model.get("decoder_module") == "transducer":
        return "transducer"
    return "seq2seq" if model.get("num_decoder_layers", 0) else "ctc"


@dataclass(frozen=True)
class SpecAugmentConfig:
    """SpecAugment on normalised features, training only (``mamba_asr.audio.SpecAugment``).

    Defaults follow ESPnet's LibriSpeech Conformer recipe; ``enabled: false`` turns it off.
    """

    enabled: bool = True
    freq_masks: int = 2
    freq_width: int = 27
    time_masks: int = 10
    time_width_ratio: float = 0.05
    time_width: int | None = None  # cap on a time mask's width in frames; None: no cap
    time_warp: int = 5

    def __post_init__(self) -> None:
        _at_least(
            self, "data.specaugment", 0, "freq_masks", "freq_width", "time_masks", "time_warp"
        )
        if self.time_width is not None:
            _at_least(self, "data.specaugment", 0, "time_width")
        _in_unit_interval(self, "data.specaugment", "time_width_ratio")


@dataclass(frozen=True)
class WaveAugmentConfig:
    """Corruptions of the training waveforms in the loader (``mamba_asr.audio.corrupt``), each
    with its probability per utterance (all 0 by default: off).

    eq_p / eq_max_db: a smooth random equaliser of up to +-eq_max_db dB; telephone_p: 300-3400
    Hz at 8 kHz with mu-law 8 bit; band_p: random high- and low-pass edges (when no telephone);
    codec_p: an MP3 or Opus round trip at a low bitrate; noise_p / noise_snr_db: white, pink
    or brown noise at an SNR in that range; gain_p / gain_db: a level change of up to +-gain_db
    dB, clipped.
    """

    eq_p: float = 0.0
    eq_max_db: float = 10.0
    telephone_p: float = 0.0
    band_p: float = 0.0
    codec_p: float = 0.0
    noise_p: float = 0.0
    noise_snr_db: tuple[float, ...] = (5.0, 30.0)
    gain_p: float = 0.0
    gain_db: float = 10.0

    def __post_init__(self) -> None:
        _in_unit_interval(
            self, "data.wave_augment", "eq_p", "telephone_p", "band_p", "codec_p", "noise_p",
            "gain_p",
        )  # fmt: skip
        for name in ("eq_max_db", "gain_db"):
            if not 0.0 <= getattr(self, name) <= 40.0:
                raise ConfigError(
                    f"data.wave_augment.{name} must be in [0, 40], got {getattr(self, name)}"
                )
        snr = self.noise_snr_db
        if len(snr) != 2 or not snr[0] <= snr[1]:
            raise ConfigError(
                f"data.wave_augment.noise_snr_db must be [low, high], got {list(snr)}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Audio front end and augmentation of the training data.

    speed_perturb: speed factors drawn per utterance in training (``[0.9, 1.0, 1.1]`` as in
    Kaldi and SpeechBrain; ``[]`` turns it off). cmvn_max_utterances: training utterances the
    global mean/variance normalisation is fitted on (the first ones of a seeded shuffle).
    wave_augment: corruptions of the waveform in the loader (``WaveAugmentConfig``). vtlp:
    ``[low, high]`` warp factors of vocal-tract-length perturbation, one drawn uniformly per
    utterance in training and applied to the filterbank (``[]``: off; Jaitly and Hinton used
    0.9-1.1).
    """

    sample_rate: int = 16000
    n_mels: int = 80
    speed_perturb: tuple[float, ...] = (0.9, 1.0, 1.1)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    cmvn_max_utterances: int = 1000
    wave_augment: WaveAugmentConfig = field(default_factory=WaveAugmentConfig)
    vtlp: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _at_least(self, "data", 1, "sample_rate", "n_mels", "cmvn_max_utterances")
        for i, factor in enumerate(self.speed_perturb):
            if not 0.5 <= factor <= 2.0:
                raise ConfigError(f"data.speed_perturb[{i}] must be in [0.5, 2], got {factor}")
        if self.vtlp and not (len(self.vtlp) == 2 and 0.7 <= self.vtlp[0] <= self.vtlp[1] <= 1.4):
            raise ConfigError(
                f"data.vtlp must be [] or [low, high] with 0.7 <= low <= high <= 1.4, "
                f"got {list(self.vtlp)}"
            )


@dataclass(frozen=True)
class TokenizerConfig:
    """Output units: characters, or a SentencePiece model trained on the training transcripts.

    kind: ``char`` (a fixed alphabet, ``alphabet``; None: LibriSpeech's space, apostrophe and
    A-Z, 31 ids with blank, bos and eos), ``unigram`` or ``bpe`` (SentencePiece).
    vocab_size: SentencePiece pieces, special ids included; None: ``model.vocab_size``.
    path: a tokenizer folder made beforehand (``mamba-asr tokenizer train``) to use instead of
    building one; its kind must match ``kind`` (``char`` or a SentencePiece kind).
    The trainer checks that the tokenizer's size equals ``model.vocab_size``.
    """

    kind: Literal["char", "unigram", "bpe"] = "char"
    vocab_size: int | None = None
    alphabet: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.vocab_size is not None:
            _at_least(self, "tokenizer", 4, "vocab_size")
        if self.alphabet is not None and self.kind != "char":
            raise ConfigError(f"tokenizer.alphabet is for kind 'char' only, not {self.kind!r}")
        if self.alphabet is not None and (
            not self.alphabet or len(set(self.alphabet)) != len(self.alphabet)
        ):
            raise ConfigError(
                f"tokenizer.alphabet must be non-empty distinct characters, got {self.alphabet!r}"
            )


@dataclass(frozen=True)
class KDConfig:
    """Knowledge distillation from a teacher model (``train.kd``; the command line's
    ``--teacher``, ``--kd-weight``, ``--kd-temperature`` and ``--kd-target`` set these keys).

    teacher: a model file written by the toolkit (``model.pt``) or a bundled model's name;
    None: no distillation. The trainer writes it into the run's ``recipe.yaml`` as an absolute
    path, with ``teacher_sha256``, the SHA-256 of the file: a resume must find the same file
    there (give ``teacher_sha256`` in a recipe to pin a teacher; left out, it is filled in).
    The loss is the student's own loss + ``weight`` * KD, KD = ``temperature``^2 * the
    Kullback-Leibler divergence of the student's distributions from the teacher's, both at
    ``temperature``. target ``ctc``: the CTC posteriors of every frame (the student's CTC
    head, for a transducer the auxiliary one, against the teacher's); ``lattice``: the joiner's
    distributions on the student's RNN-T lattice (the pruned band with
    ``model.transducer.loss: pruned``), both models transducers. See docs/compression.md.
    """

    teacher: str | None = None
    weight: float = 0.5
    temperature: float = 1.0
    target: Literal["ctc", "lattice"] = "ctc"
    teacher_sha256: str | None = None

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"train.kd.weight (--kd-weight) must be >= 0, got {self.weight}")
        if not self.temperature > 0:
            raise ConfigError(
                f"train.kd.temperature (--kd-temperature) must be > 0, got {self.temperature}"
            )
        sha = self.teacher_sha256
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ConfigError(
                f"train.kd.teacher_sha256 must be 64 lowercase hex digits, got {sha!r}"
            )


@dataclass(frozen=True)
class FeatureKDConfig:
    """Feature distillation (``train.feature_kd``): one encoder layer of the student learns to
    predict a teacher's stored encoder features (``mamba_asr.train.feature_kd``).

    features: a folder of ``features.npy`` and ``index.json`` keyed by utterance id
    (``scripts/realspeech/moonshine_features.py`` writes one from a real-speech model, Moonshine
    base); None: off. Utterances without features there add nothing. The loss is the student's
    own loss + ``weight`` * the fraction of the (standardised) teacher features' variance that
    the best linear map of the output of encoder layer ``layer`` (counted from 1; None: the
    last) does not explain, the map fitted to each batch by ridge regression (``ridge``: its
    strength relative to the layer's mean energy) and differentiated through, so no parameter
    is added to the model. Student frame t is compared with the teacher's frame t - ``delay``
    (a causal student has heard ``delay`` frames more of what the teacher saw on both sides).
    cross_fit: the map fitted to half of the batch's utterances and scored on the other half,
    both ways (``ridge_kd_cross``), so that what it explains by chance does not count. At the
    default ridge the in-sample map mostly fits chance; cross-fitted, a ridge near 1 keeps it
    from fitting noise (docs/benchmarks.md, "What the layer really explains").
    """

    features: str | None = None
    weight: float = 1.0
    layer: int | None = None
    delay: int = 2
    ridge: float = 1e-3
    cross_fit: bool = False

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ConfigError(f"train.feature_kd.weight must be >= 0, got {self.weight}")
        if not self.ridge > 0:
            raise ConfigError(f"train.feature_kd.ridge must be > 0, got {self.ridge}")
        _at_least(self, "train.feature_kd", 0, "delay")
        if self.layer is not None:
            _at_least(self, "train.feature_kd", 1, "layer")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, batching, checkpoints and validation of ``mamba-asr train``.

    lr: peak learning rate of AdamW; schedule ``noam``: linear warm-up over ``warmup_steps``
    optimizer steps to ``lr``, then ``lr * sqrt(warmup_steps / step)``; ``constant``: ``lr``
    throughout. weight_decay applies to weights only (never to ``A_log``, ``D``, biases or
    norms). One optimizer step per ``grad_accum`` batches; gradients clipped to
    ``max_grad_norm`` (0: no clipping). precision: ``auto`` (bf16 autocast on CUDA, fp32
    elsewhere), ``fp32`` or ``bf16``. max_batch_seconds: audio per batch (dynamic batching in
    ``num_buckets`` duration buckets). keep_best: checkpoints kept by validation WER;
    average: how many of the best are averaged into the final ``model.pt``.
    checkpoint_every_steps: mid-epoch checkpoints (0: at epoch ends only). log_every: steps
    between training-loss rows in ``metrics.csv``. init_from: a model file (``model.pt``) to
    start from, e.g. to go on training a released model on new data: its tokenizer, CMVN
    statistics and weights are taken (its model section must equal this recipe's; the name of
    a bundled model, such as ``mct-small-synth-en``, works too; ``mamba-asr train --init
    MODEL`` takes the model section from the file instead, e.g. for a pruned model); the
    optimizer and schedule start afresh. valid_strategy: search used for the
    validation WER. qat: quantization-aware training (``mamba_asr.qat``), fake quantization
    while training, recorded in ``model.pt``: ``int8`` (int8 weights per channel and int8
    activations, what ``export onnx --int8`` runs) or ``int8-weights`` (weights only, what
    ``export coreml --weights int8`` runs) or ``int4-weights`` (the matrix products' weights
    in int4 blocks, what ``export onnx --int4`` runs); for streaming transducers, usually with
    ``init_from`` a trained model. qat_block: the input channels that share a scale with
    ``int4-weights`` (16, 32, 64, 128 or 256; the export takes the model's). kd: knowledge distillation from a teacher (``KDConfig``;
    off by default); feature_kd: one encoder layer taught by a teacher's stored features
    (``FeatureKDConfig``; off by default). decay_to_init: after every optimizer step, every parameter moves towards
    its value at the start of the run (the ``init_from`` model, pruned or QAT-prepared as the
    run trains it) by ``lr * decay_to_init`` of the distance (at most all of it): decoupled
    L2-SP, which keeps a fine-tuned model near the one it started from (0: off; needs
    ``init_from``). select_on: the validation set whose WER ranks the checkpoints that
    ``keep_best`` keeps and ``average`` averages: ``valid`` (``--valid``) or ``heldout``
    (``--valid-heldout``, e.g. voices, speakers or recording conditions left out of training:
    what a model meets in use).
    """

    epochs: int = 100
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    schedule: Literal["noam", "constant"] = "noam"
    warmup_steps: int = 10000
    grad_accum: int = 1
    max_grad_norm: float = 5.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_batch_seconds: float = 300.0
    num_buckets: int = 20
    num_workers: int = 4
    seed: int = 1234
    keep_best: int = 5
    average: int = 5
    checkpoint_every_steps: int = 0
    log_every: int = 50
    valid_strategy: Literal["greedy", "beam"] = "greedy"
    init_from: str | None = None
    qat: QatScheme | None = None
    qat_block: int = INT4_BLOCK
    kd: KDConfig = field(default_factory=KDConfig)
    feature_kd: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    decay_to_init: float = 0.0
    select_on: Literal["valid", "heldout"] = "valid"

    def __post_init__(self) -> None:
        _at_least(self, "train", 1, "epochs", "grad_accum", "num_buckets", "keep_best", "average")
        _at_least(self, "train", 1, "log_every")
        _at_least(self, "train", 0, "warmup_steps", "num_workers", "checkpoint_every_steps")
        if self.qat_block not in INT4_BLOCKS:
            raise ConfigError(f"train.qat_block must be one of "
                              f"{', '.join(map(str, INT4_BLOCKS))}, got {self.qat_block}")  # fmt: skip
        if self.qat_block != INT4_BLOCK and self.qat != "int4-weights":
            raise ConfigError("train.qat_block is for train.qat int4-weights")
        if self.schedule == "noam" and self.warmup_steps < 1:
            raise ConfigError("train.warmup_steps must be >= 1 with train.schedule 'noam'")
        for name in ("lr", "eps", "max_batch_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "decay_to_init"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.decay_to_init > 0 and self.init_from is None:
            raise ConfigError(
                "train.decay_to_init needs train.init_from (the weights it decays to)"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.average > self.keep_best:
            raise ConfigError(
                f"train.average ({self.average}) must be <= train.keep_best ({self.keep_best})"
            )


@dataclass(frozen=True)
class FeatureConfig:
    """The features a model hears: log-Mel filterbank of ``n_mels`` bins at ``sample_rate``
    (25 ms windows every 10 ms, ``mamba_asr.audio.Fbank``), normalised by the statistics
    stored with the weights."""

    sample_rate: int = 16000
    n_mels: int = 80

    def __post_init__(self) -> None:
        _at_least(self, "features", 1, "sample_rate", "n_mels")


@dataclass(frozen=True)
class InferenceConfig:
    """What a model file holds besides its weights and tokenizer: the architecture and the
    features. Training settings stay in the run folder, so no change to them can break
    loading a model."""

    model: ModelConfig
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.features.n_mels != self.model.frontend.n_mels:
            raise ConfigError(
                f"features.n_mels ({self.features.n_mels}) must equal model.frontend.n_mels "
                f"({self.model.frontend.n_mels})"
            )

    @classmethod
    def from_recipe(cls, recipe: RecipeConfig) -> InferenceConfig:
        """The inference part of a recipe."""
        return cls(recipe.model, FeatureConfig(recipe.data.sample_rate, recipe.data.n_mels))


@dataclass(frozen=True)
class RecipeConfig:
    """A whole recipe file: the model, and how to train it (every section but model optional)."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.n_mels != self.model.frontend.n_mels:
            raise ConfigError(
                f"data.n_mels ({self.data.n_mels}) must equal model.frontend.n_mels "
                f"({self.model.frontend.n_mels})"
            )
        if self.train.qat is not None and self.model.kind != "transducer":
            raise ConfigError(
                f"train.qat is for streaming transducers (what the quantized exports take), this "
                f"model is {self.model.kind!r}"
            )


def _positive(obj: Any, *names: str) -> None:
    _at_least(obj, "model", 1, *names)


def _at_least(obj: Any, section: str, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < minimum:
            raise ConfigError(f"{section}.{name} must be >= {minimum}, got {getattr(obj, name)}")


def _in_unit_interval(obj: Any, section: str, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ConfigError(f"{section}.{name} must be in [0, 1], got {getattr(obj, name)}")


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (dataclasses or plain dicts)."""
    a = to_dict(old) if dataclasses.is_dataclass(old) else old
    b = to_dict(new) if dataclasses.is_dataclass(new) else new
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(dotted)
            else:
                out.extend(config_differences(a[key], b[key], dotted))
        return out
    return [] if a == b else [prefix or "config"]


# --- YAML / dict -> dataclass ------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value to the annotated type ``tp``; ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key} must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a {_type_name(tp)}, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {dotted!r}{hint}; allowed: {', '.join(fields)}")
        kwargs[key] = _convert(value, hints[key], dotted)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(
            f"missing key{'s' if len(missing) > 1 else ''}{where}: {', '.join(missing)}"
        )
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(str(e)) from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) of a config dataclass, the inverse of ``from_dict``."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to a nested dict, in a copy."""
    out = yaml.safe_load(yaml.safe_dump(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        node = out
        parts = dotted.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: {dotted.strip()!r} is not a key like key.sub")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _override_value(dotted.strip(), raw)
    return out


def _override_value(key: str, raw: str) -> Any:
    """The YAML value of an override; ConfigError naming the key when it does not parse."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"override {key}: {raw!r} is not a valid YAML value ({problem}); quote a string, "
            "close brackets"
        ) from None


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    model: dict[str, Any] | None = None,
    init_from: str | None = None,
) -> RecipeConfig:
    """Read a YAML recipe (plus ``key=value`` overrides) into a checked ``RecipeConfig``.

    ``model``: a model section to use instead of the file's, and ``init_from``: a value for
    ``train.init_from`` (``mamba-asr train --init MODEL`` gives both: that model's
    architecture and weights); the overrides apply after them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(read_text(path, ConfigError)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping, got {data!r}")
    if model is not None:
        data = {**data, "model": model}
    if init_from is not None:
        train = data.get("train") or {}
        if not isinstance(train, dict):
            raise ConfigError(f"{path}: train must be a mapping, got {train!r}")
        data = {**data, "train": {**train, "init_from": init_from}}
    try:
        return from_dict(RecipeConfig, apply_overrides(data, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def replace_kd(recipe: RecipeConfig, **changes: Any) -> RecipeConfig:
    """``recipe`` with the given ``train.kd`` keys replaced (``None`` values leave a key as
    it is): how the command line's ``--teacher``, ``--kd-weight``, ``--kd-temperature`` and
    ``--kd-target`` override the recipe. ConfigError (one line) for a value out of range."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return recipe
    kd = dataclasses.replace(recipe.train.kd, **changes)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, kd=kd))
