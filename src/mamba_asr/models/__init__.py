"""Assembled models: encoders (``ENCODERS``), decoders, CTC, joint CTC/attention seq2seq and
the streaming transducer (``TransducerModel``, the ``StreamingModel`` protocol), built from
recipes by ``build_model``."""

from __future__ import annotations

from mamba_asr.models.ctc import CTCModel
from mamba_asr.models.encoders import ENCODERS
from mamba_asr.models.factory import build_model, count_parameters, layer_summary
from mamba_asr.models.seq2seq import Seq2SeqModel
from mamba_asr.models.streaming import StreamingModel
from mamba_asr.models.transducer import TransducerModel

__all__ = [
    "ENCODERS",
    "CTCModel",
    "Seq2SeqModel",
    "StreamingModel",
    "TransducerModel",
    "build_model",
    "count_parameters",
    "layer_summary",
]
