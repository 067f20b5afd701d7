"""Assembled models: encoders, decoders, CTC and joint CTC/attention seq2seq, built from recipes."""

from __future__ import annotations

from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.factory import build_model, count_parameters, layer_summary
from mamba_asr.models.seq2seq import Seq2SeqModel

__all__ = ["CTCModel", "Seq2SeqModel", "build_model", "count_parameters", "layer_summary"]
