"""Device choice, dtype policy and MPS environment defaults.

Device: ``get_device()`` picks MPS, then CUDA, then CPU. ``MAMBA_ASR_DEVICE`` (``cpu``, ``cuda``,
``cuda:1``, ``mps``) overrides that order, and an explicit ``prefer`` argument (a ``--device``
flag) overrides both. A device that is unknown or not available here raises ``ValueError``.

Dtype: ``autocast_dtype()`` gives bf16 autocast on CUDA (where the GPU supports it) and plain fp32
(``None``) on MPS and CPU unless another dtype is asked for; ``autocast()`` turns that into a
context manager.

MPS: ``configure_mps_env()`` sets ``PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.8`` unless the user set it.
PyTorch reads that variable once, when the MPS allocator starts (the first MPS tensor), so it must
run before anything is put on MPS; ``get_device()`` calls it whenever it returns an MPS device, so
call ``get_device()`` first. ``PYTORCH_ENABLE_MPS_FALLBACK`` is never set: an op missing on MPS
should fail loudly, not run silently on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

__all__ = [
    "DEVICE_ENV",
    "MPS_WATERMARK_DEFAULT",
    "MPS_WATERMARK_ENV",
    "autocast",
    "autocast_dtype",
    "available_devices",
    "configure_mps_env",
    "get_device",
    "parse_dtype",
]

log = logging.getLogger(__name__)

DEVICE_ENV = "MAMBA_ASR_DEVICE"
MPS_WATERMARK_ENV = "PYTORCH_MPS_HIGH_WATERMARK_RATIO"
MPS_WATERMARK_DEFAULT = "0.8"

DEVICE_TYPES = ("cpu", "cuda", "mps")

DTYPE_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Devices usable here, in the automatic order: ``mps``, ``cuda``/``cuda:i``, ``cpu``."""
    found = []
    if _mps_available():
        found.append("mps")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        found.append("cuda")
        found.extend(f"cuda:{i}" for i in range(count) if count > 1)
    found.append("cpu")
    return found


def configure_mps_env() -> None:
    """Set ``PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.8`` unless the user has set it.

    Safe to call at any time and more than once, but it only has an effect before the first MPS
    allocation of the process (PyTorch reads the variable when its MPS allocator starts). Never
    touches ``PYTORCH_ENABLE_MPS_FALLBACK``.
    """
    os.environ.setdefault(MPS_WATERMARK_ENV, MPS_WATERMARK_DEFAULT)


def _parse_device(name: str, source: str) -> torch.device:
    """``name`` -> an available torch.device, else ValueError naming it and the options.

    ``source`` prefixes the message (e.g. the environment variable the name came from).
    """
    options = ", ".join(available_devices())
    try:
        device = torch.device(name.strip().lower())
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{source}unknown device {name!r} (available here: {options})")
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"{source}device {name!r} is not available here (available: {options})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{source}device {name!r} is not available here (available: {options})"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{source}device {name!r} is not available here "
                f"({torch.cuda.device_count()} CUDA device(s); available: {options})"
            )
    return device


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given, else ``$MAMBA_ASR_DEVICE``, else MPS > CUDA > CPU.

    ``prefer`` and the variable take ``cpu``, ``cuda``, ``cuda:<i>`` or ``mps``; ``"auto"`` or an
    empty value means the automatic order. Raises ValueError (one line, naming the device and
    what is available) for an unknown or unavailable device. Calls ``configure_mps_env()`` when
    the answer is MPS, and logs the choice at INFO.
    """
    if isinstance(prefer, torch.device):
        prefer = str(prefer)
    env = os.environ.get(DEVICE_ENV, "").strip()
    if prefer is not None and prefer.strip() not in ("", "auto"):
        device, reason = _parse_device(prefer, ""), "requested"
    elif env and env != "auto":
        device, reason = _parse_device(env, f"{DEVICE_ENV}: "), f"from {DEVICE_ENV}"
    else:
        device = torch.device(available_devices()[0])
        reason = "auto: MPS > CUDA > CPU"
    if device.type == "mps":
        configure_mps_env()
    log.info("using device %s (%s)", device, reason)
    return device


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bf16"``/``"bfloat16"``, ``"fp16"``/``"float16"``/``"half"``, ``"fp32"``/``"float32"``
    (or a torch.dtype among those) -> torch.dtype; ValueError naming the allowed names otherwise."""
    if isinstance(name, torch.dtype):
        if name in DTYPE_NAMES.values():
            return name
        raise ValueError(f"unsupported dtype {name} (allowed: bf16, fp16, fp32)")
    dtype = DTYPE_NAMES.get(str(name).strip().lower())
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r} (allowed: {', '.join(DTYPE_NAMES)})")
    return dtype


def autocast_dtype(
    device: str | torch.device, dtype: str | torch.dtype | None = None
) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None for plain fp32 (no autocast).

    Default policy: bf16 on CUDA (fp32 on a GPU without bf16 support), fp32 on MPS and CPU. An
    explicit ``dtype`` ("bf16", "fp16", "fp32", or a torch.dtype) overrides it; "fp32" gives None.
    """
    device = torch.device(device)
    if dtype is not None:
        chosen = parse_dtype(dtype)
        return None if chosen == torch.float32 else chosen
    if device.type == "cuda":
        # pre-Ampere GPUs emulate bf16 slowly: stay in fp32 there (fp16 would need a GradScaler)
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return None
        return torch.bfloat16
    return None


def autocast(
    device: str | torch.device, dtype: str | torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``autocast_dtype(device, dtype)``, or a no-op context for fp32."""
    device = torch.device(device)
    chosen = autocast_dtype(device, dtype)
    if chosen is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=chosen)
