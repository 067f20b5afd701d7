"""Models that ship inside the package, by name.

``MODELS`` maps a name to its file in this folder; ``DEFAULT_MODEL`` is what ``load_model()``
and ``mamba-asr transcribe`` / ``eval`` use when no model is named. ``resolve_model`` turns a
name, a path or ``None`` into the model file, with a one-line ``ValueError`` otherwise.
``LMS`` maps a bundled model's name to the n-gram LM shipped beside it (``bundled_lm``), which
``mamba-asr transcribe`` / ``eval`` fuse into beam search unless told ``--lm none``.

mct-small-synth-en
    The streaming Mamba transducer of ``hparams/Transducer/mct_small.yaml`` trained on English
    synthetic speech (``mamba-asr synth``): 16 kHz, 256 unigram pieces, 80 ms encoder frames.
    Its LM: a token 5-gram of the recipe's training sentences (Debian's fortunes, dict-gcide
    and dict-jargon text; none of the dev sentences), n-grams of order >= 3 seen fewer than
    2 times dropped (``mamba-asr lm train --order 5 --min-count 2``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL",
    "LMS",
    "MODELS",
    "PRETRAINED_DIR",
    "bundled_lm",
    "bundled_path",
    "resolve_model",
]

PRETRAINED_DIR = Path(__file__).resolve().parent
MODELS: dict[str, str] = {"mct-small-synth-en": "mct-small-synth-en.pt"}
LMS: dict[str, str] = {"mct-small-synth-en": "mct-small-synth-en.lm.npz"}
DEFAULT_MODEL = "mct-small-synth-en"


def bundled_path(name: str = DEFAULT_MODEL) -> Path:
    """Where the bundled model ``name`` lies (whether or not the file is there)."""
    if name not in MODELS:
        raise ValueError(f"unknown bundled model {name!r} (bundled: {', '.join(MODELS)})")
    return PRETRAINED_DIR / MODELS[name]


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The model file for a bundled model's name, a path, or ``None`` (``DEFAULT_MODEL``).

    A name is looked up first, then a path is taken as it is if it is a file. Raises a
    one-line ``ValueError`` for a name whose file this installation lacks and for anything
    that is neither a file nor a bundled model.
    """
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    if name in MODELS:
        path = bundled_path(name)
        if not path.is_file():
            raise ValueError(
                f"bundled model {name!r} is not installed: this mamba-asr package was "
                f"installed without its file ({path}); give a model file (--model FILE, "
                "load_model(FILE))"
            )
        return path
    path = Path(name)
    if path.is_file():
        return path
    raise ValueError(
        f"unknown model {name!r}: not a file and not a bundled model (bundled: {', '.join(MODELS)})"
    )


def bundled_lm(name_or_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The LM file shipped with the bundled model ``name_or_path`` (``None``: ``DEFAULT_MODEL``;
    a bundled model's name or its file); ``None`` for another model file, a model without one,
    or an installation without the file."""
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    for bundled, file in MODELS.items():
        if Path(name).is_file() and Path(name).resolve() == (PRETRAINED_DIR / file).resolve():
            name = bundled
    if name not in LMS:
        return None
    path = PRETRAINED_DIR / LMS[name]
    return path if path.is_file() else None
