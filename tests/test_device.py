"""Device choice, MPS environment defaults and the dtype policy (mamba_asr.device)."""

from __future__ import annotations

import contextlib
import logging
import os

import pytest
import torch

from mamba_asr import device as dev

FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MAMBA_ASR_DEVICE, no MPS variables; whatever a test sets is undone afterwards."""
    for name in (dev.DEVICE_ENV, dev.MPS_WATERMARK_ENV, FALLBACK_ENV):
        # setenv first so that teardown restores (or removes) the variable even if code under
        # test sets it later
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def fake_hardware(
    monkeypatch: pytest.MonkeyPatch, *, mps: bool, cuda: bool, cuda_count: int = 1
) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if cuda else 0)


@pytest.mark.parametrize(
    ("mps", "cuda", "expected"),
    [
        (True, True, "mps"),
        (True, False, "mps"),
        (False, True, "cuda"),
        (False, False, "cpu"),
    ],
)
def test_auto_order_is_mps_cuda_cpu(clean_env, mps, cuda, expected):
    fake_hardware(clean_env, mps=mps, cuda=cuda)
    assert dev.get_device().type == expected
    assert dev.get_device("auto").type == expected


def test_env_var_overrides_auto_order(clean_env):
    fake_hardware(clean_env, mps=True, cuda=True, cuda_count=2)
    clean_env.setenv(dev.DEVICE_ENV, "cpu")
    assert dev.get_device() == torch.device("cpu")
    clean_env.setenv(dev.DEVICE_ENV, "cuda:1")
    assert dev.get_device() == torch.device("cuda:1")
    clean_env.setenv(dev.DEVICE_ENV, " CUDA ")
    assert dev.get_device() == torch.device("cuda")


def test_explicit_request_overrides_env_var(clean_env):
    fake_hardware(clean_env, mps=True, cuda=False)
    clean_env.setenv(dev.DEVICE_ENV, "mps")
    assert dev.get_device("cpu") == torch.device("cpu")
    assert dev.get_device(torch.device("cpu")) == torch.device("cpu")


def test_empty_or_auto_env_var_means_auto(clean_env):
    fake_hardware(clean_env, mps=False, cuda=True)
    for value in ("", "auto"):
        clean_env.setenv(dev.DEVICE_ENV, value)
        assert dev.get_device() == torch.device("cuda")


@pytest.mark.parametrize("name", ["nope", "xpu", "meta", "cuda:x"])
def test_unknown_device_raises_one_line_value_error(clean_env, name):
    fake_hardware(clean_env, mps=False, cuda=False)
    with pytest.raises(ValueError, match="unknown device") as info:
        dev.get_device(name)
    message = str(info.value)
    assert "\n" not in message
    assert repr(name) in message
    assert "available here: cpu" in message


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_unavailable_device_raises_and_names_what_is_available(clean_env, name):
    fake_hardware(clean_env, mps=False, cuda=False)
    with pytest.raises(ValueError, match="not available") as info:
        dev.get_device(name)
    assert repr(name) in str(info.value)
    assert "available: cpu" in str(info.value)
    assert "\n" not in str(info.value)


def test_cuda_index_past_device_count_raises(clean_env):
    fake_hardware(clean_env, mps=False, cuda=True, cuda_count=2)
    assert dev.get_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="'cuda:2' is not available"):
        dev.get_device("cuda:2")


def test_bad_env_var_names_the_variable(clean_env):
    fake_hardware(clean_env, mps=False, cuda=False)
    clean_env.setenv(dev.DEVICE_ENV, "tpu")
    with pytest.raises(ValueError, match=dev.DEVICE_ENV):
        dev.get_device()


def test_choice_is_logged(clean_env, caplog):
    fake_hardware(clean_env, mps=False, cuda=False)
    with caplog.at_level(logging.INFO, logger="mamba_asr.device"):
        dev.get_device()
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "cpu" in caplog.records[0].getMessage()
    assert "auto" in caplog.records[0].getMessage()


def test_choice_is_logged_not_printed(clean_env, capsys):
    fake_hardware(clean_env, mps=False, cuda=False)
    dev.get_device()
    assert capsys.readouterr() == ("", "")


def test_picking_mps_sets_watermark_default_and_never_the_fallback(clean_env):
    fake_hardware(clean_env, mps=True, cuda=False)
    assert dev.get_device() == torch.device("mps")
    assert os.environ[dev.MPS_WATERMARK_ENV] == dev.MPS_WATERMARK_DEFAULT
    assert FALLBACK_ENV not in os.environ


def test_picking_cpu_leaves_mps_env_alone(clean_env):
    fake_hardware(clean_env, mps=True, cuda=False)
    dev.get_device("cpu")
    assert dev.MPS_WATERMARK_ENV not in os.environ


def test_mps_env_respects_user_value(clean_env):
    clean_env.setenv(dev.MPS_WATERMARK_ENV, "0.0")
    dev.configure_mps_env()
    dev.configure_mps_env()  # safe to call again
    assert os.environ[dev.MPS_WATERMARK_ENV] == "0.0"
    assert FALLBACK_ENV not in os.environ


def test_mps_env_keeps_user_fallback_choice(clean_env):
    clean_env.setenv(FALLBACK_ENV, "0")
    dev.configure_mps_env()
    assert os.environ[FALLBACK_ENV] == "0"
    assert os.environ[dev.MPS_WATERMARK_ENV] == dev.MPS_WATERMARK_DEFAULT


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16), ("mps", None), ("cpu", None)],
)
def test_default_dtype_policy(monkeypatch, device, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.autocast_dtype(device) == expected
    assert dev.autocast_dtype(torch.device(device)) == expected


def test_cuda_without_bf16_stays_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.autocast_dtype("cuda") is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("fp32", None),
        ("float32", None),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, None),
    ],
)
@pytest.mark.parametrize("device", ["cpu", "mps", "cuda"])
def test_explicit_dtype_overrides_policy(device, name, expected):
    assert dev.autocast_dtype(device, name) == expected


@pytest.mark.parametrize("name", ["fp8", "int8", "", "float64", torch.float64, torch.int32])
def test_unknown_dtype_raises_value_error(name):
    with pytest.raises(ValueError, match="dtype") as info:
        dev.autocast_dtype("cpu", name)
    assert "bf16" in str(info.value)  # names the allowed values
    with pytest.raises(ValueError):
        dev.autocast("cpu", name)


def test_autocast_fp32_is_a_no_op_context():
    ctx = dev.autocast("cpu")
    assert isinstance(ctx, contextlib.nullcontext)
    with ctx:
        out = torch.randn(2, 3) @ torch.randn(3, 2)
    assert out.dtype == torch.float32


def test_autocast_bf16_on_cpu_when_asked():
    ctx = dev.autocast("cpu", "bf16")
    assert isinstance(ctx, torch.autocast)
    with ctx:
        out = torch.randn(2, 3) @ torch.randn(3, 2)
    assert out.dtype == torch.bfloat16
