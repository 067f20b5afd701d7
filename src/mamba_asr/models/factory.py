"""Build models from configs, count their parameters and summarize their layers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mamba_asr.config import ModelConfig
from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.decoders import DECODERS
from mamba_asr.models.encoders import ENCODERS
from mamba_asr.models.seq2seq import Seq2SeqModel
from mamba_asr.models.transducer import (
    Joiner,
    LSTMPredictor,
    StatelessPredictor,
    TransducerModel,
)
from mamba_asr.modules.causal_frontend import CausalConvFrontEnd
from mamba_asr.modules.frontend import ConvFrontEnd

Device = torch.device | str | None


def build_frontend(cfg: ModelConfig, device: Device = None, dtype: torch.dtype | None = None):
    """The front end named by ``cfg.frontend.kind``: (B, T, n_mels) features -> (B, T', d_model)
    (``conv2d``: T' = T / stride**stages; ``causal``: T' = ceil(T / subsampling))."""
    f = cfg.frontend
    if f.kind == "causal":
        return CausalConvFrontEnd(
            f.n_mels, cfg.d_model, f.channels, f.kernel_size, cfg.dropout, device, dtype
        )
    return ConvFrontEnd(
        f.n_mels, cfg.d_model, f.channels, f.kernel_size, f.stride, cfg.dropout, device, dtype
    )


def build_encoder(cfg: ModelConfig, device: Device = None, dtype: torch.dtype | None = None):
    """The encoder named by ``cfg.encoder_module``: (B, T, d_model), lengths -> (B, T, d_model)."""
    if cfg.encoder_module == "mamba":  # causal, streams (MambaEncoder.forward_chunk)
        return ENCODERS["mamba"](
            cfg.d_model, cfg.num_encoder_layers, cfg.d_ffn, cfg.dropout,
            cfg.encoder_activation or "swish", dataclasses.asdict(cfg.mamba), device, dtype,
        )  # fmt: skip
    kwargs = dict(
        d_model=cfg.d_model, num_layers=cfg.num_encoder_layers, nhead=cfg.nhead, d_ffn=cfg.d_ffn,
        kernel_size=cfg.kernel_size, dropout=cfg.dropout, mamba=dataclasses.asdict(cfg.mamba),
        device=device, dtype=dtype,
    )  # fmt: skip
    if cfg.encoder_module in ("conformer", "conmamba"):
        kwargs["conv_norm"] = cfg.conv_norm
        if cfg.encoder_activation is not None:  # else the encoder's own (Mamba-ASR's) default
            kwargs["activation"] = cfg.encoder_activation
    else:
        kwargs["activation"] = cfg.activation
    return ENCODERS[cfg.encoder_module](**kwargs)


def build_decoder(cfg: ModelConfig, device: Device = None, dtype: torch.dtype | None = None):
    """The decoder named by ``cfg.decoder_module`` (tokens, memory -> (B, U, d_model))."""
    return DECODERS[cfg.decoder_module](
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_layers=cfg.num_decoder_layers,
        nhead=cfg.nhead, d_ffn=cfg.d_ffn, dropout=cfg.dropout, activation=cfg.activation,
        mamba=dataclasses.asdict(cfg.mamba), device=device, dtype=dtype,
    )  # fmt: skip


def build_transducer(
    cfg: ModelConfig,
    frontend: nn.Module,
    encoder: nn.Module,
    device: Device = None,
    dtype: torch.dtype | None = None,
) -> TransducerModel:
    """The RNN-T model of ``cfg.transducer`` around a front end and an encoder."""
    t = cfg.transducer
    if t.predictor == "lstm":
        predictor = LSTMPredictor(cfg.vocab_size, t.predictor_dim, cfg.blank_index, cfg.dropout,
                                  device, dtype)  # fmt: skip
    else:
        predictor = StatelessPredictor(cfg.vocab_size, t.predictor_dim, t.context_size,
                                       cfg.blank_index, device, dtype)  # fmt: skip
    joiner = Joiner(cfg.d_model, t.predictor_dim, t.joiner_dim, cfg.vocab_size, device, dtype)
    return TransducerModel(
        frontend, encoder, cfg.vocab_size, predictor, joiner, blank=cfg.blank_index,
        aux_ctc_weight=t.aux_ctc_weight, d_model=cfg.d_model, rnnt_kind=t.loss,
        prune_range=t.prune_range, simple_loss_scale=t.simple_loss_scale, device=device,
        dtype=dtype,
    )  # fmt: skip


def build_model(
    cfg: ModelConfig, device: Device = None, dtype: torch.dtype | None = None
) -> CTCModel | Seq2SeqModel | TransducerModel:
    """The model of ``cfg.kind``: a CTC model, the joint CTC/attention seq2seq model, or a
    transducer."""
    frontend = build_frontend(cfg, device, dtype)
    encoder = build_encoder(cfg, device, dtype)
    if cfg.kind == "transducer":
        return build_transducer(cfg, frontend, encoder, device, dtype)
    if cfg.kind == "ctc":
        return CTCModel(frontend, encoder, cfg.d_model, cfg.vocab_size, cfg.blank_index,
                        device=device, dtype=dtype)  # fmt: skip
    return Seq2SeqModel(
        frontend, encoder, build_decoder(cfg, device, dtype), cfg.d_model, cfg.vocab_size,
        ctc_weight=cfg.ctc_weight, label_smoothing=cfg.label_smoothing, blank=cfg.blank_index,
        pad=cfg.pad_index, bos=cfg.bos_index, eos=cfg.eos_index, device=device, dtype=dtype,
    )  # fmt: skip


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str
    parameters: int


def layer_summary(model: nn.Module) -> list[LayerInfo]:
    """One row per child module and per grandchild; a stack of layers is one row ("18 x Layer")."""
    rows: list[LayerInfo] = []
    for name, child in model.named_children():
        rows.append(LayerInfo(name, type(child).__name__, count_parameters(child)))
        for sub, grandchild in child.named_children():
            kind = type(grandchild).__name__
            if isinstance(grandchild, nn.ModuleList) and len(grandchild):
                kind = f"{len(grandchild)} x {type(grandchild[0]).__name__}"
            rows.append(LayerInfo(f"{name}.{sub}", kind, count_parameters(grandchild)))
    return rows
