"""Quantization-aware training (``mamba_asr.qat``, ``train.qat``, ``mamba-asr train --qat``).

The fake quantizers (torchao's) against a plain quantize-dequantize written here, their
straight-through gradients, a few QAT steps on a tiny batch, streaming of a QAT model, the
model file (it records QAT and loads back with ``load_model``), the trainer from a model file
(``--init``) with exact resume, and the one-line errors. Tiny transducers
(``helpers.recipes``); the int8 exports of a QAT model: tests/export/test_qat_export.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from helpers.recipes import RECIPES, tiny_asr, tiny_overrides, tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.config import ConfigError
from mamba_asr.decode.options import DecodingOptions

pytest.importorskip("torchao")

from mamba_asr.qat import (  # noqa: E402 (after the skip)
    ACTIVATION_RANGE,
    INT4_RANGE,
    SCAN_INPUTS,
    WEIGHT_RANGE,
    InputQuantizer,
    Int4WeightQuantizer,
    prepare_qat,
    qat_record,
    qat_scheme,
    weight_quantizer,
)


def reference_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel: s = max |w| / 127, q = clamp(round(w / s) + 0)."""
    s = w.abs().flatten(1).amax(1) / 127
    s = s.view(-1, *([1] * (w.dim() - 1)))
    return (torch.clamp(torch.round(w / s) + 0, *WEIGHT_RANGE) - 0) * s


def reference_input(x: torch.Tensor, s: float, zp: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / s) + zp, *ACTIVATION_RANGE) - zp) * s


def speech_like(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(3 * t + seed)) * t)
    return torch.from_numpy((wave + 0.02 * rng.standard_normal(t.size)).astype(np.float32))


def batch(n: int = 2, seconds: float = 1.2) -> tuple[torch.Tensor, ...]:
    waves = torch.stack([speech_like(seconds, i) for i in range(n)])
    lengths = torch.tensor([waves.shape[1], waves.shape[1] * 3 // 4][:n])
    targets = torch.tensor([[3, 4, 5, 3], [4, 3, 0, 0]][:n])
    return waves, lengths, targets, torch.tensor([4, 2][:n])


def calibrated(scheme: str = "int8", seed: int = 0) -> ASR:
    """A tiny QAT transducer whose activation ranges saw a few batches (then eval mode)."""
    asr = prepare_qat(tiny_asr("transducer", blank_bias=0.0, seed=seed), scheme).train()
    waves, lengths, targets, _ = batch()
    observe(asr, lambda: asr.features(waves, lengths), targets)
    return asr.eval()


def observe(asr: ASR, features: Callable[[], tuple[torch.Tensor, ...]], targets: torch.Tensor):
    """Three training-mode passes without gradients, ``features()`` the encoder's input of
    each: every quantized layer (encoder, predictor, joiner) observes its inputs' ranges."""
    with torch.no_grad():
        for _ in range(3):
            memory = asr.model.encode(*features()).memory
            pred, _ = asr.model.predictor(targets)
            asr.model.joiner(memory[:, :, None], pred[:, None])


@pytest.mark.parametrize("shape", [(24, 16), (8, 1, 4), (6, 5, 1), (12, 3)])
def test_weight_fake_quant_equals_the_reference_per_channel(shape):
    torch.manual_seed(1)
    w = torch.randn(shape) * torch.rand(shape[0], *([1] * (len(shape) - 1)))  # scales differ
    w[0] = w[0].abs()  # a channel of one sign: still symmetric, zero point 0
    fq = weight_quantizer()
    out = fq(w)
    ref = reference_weight(w)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-7)
    assert torch.equal(fq.zero_point, torch.zeros_like(fq.zero_point))
    q = out / fq.scale.view(-1, *([1] * (len(shape) - 1)))
    assert torch.equal(q.round().abs().flatten(1).amax(1), torch.full((shape[0],), 127.0))


def test_a_prepared_model_reads_quantized_weights_everywhere():
    asr = prepare_qat(tiny_asr("transducer"), "int8")
    layers = [m for m in asr.model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding))]
    assert len(layers) >= 12
    for module in layers:
        original = module.parametrizations.weight.original
        torch.testing.assert_close(module.weight, reference_weight(original.detach()),
                                   rtol=0, atol=1e-7)  # fmt: skip
    named = dict(asr.model.named_modules())
    for name, module in named.items():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            quantized_input = isinstance(getattr(module, "input_quant", None), InputQuantizer)
            assert quantized_input == (name.rsplit(".", 1)[-1] not in SCAN_INPUTS), name
    weights_only = prepare_qat(tiny_asr("transducer"), "int8-weights")
    assert not any(isinstance(m, InputQuantizer) for m in weights_only.modules())


def test_activation_fake_quant_equals_the_reference_and_freezes_in_eval():
    quantizer = InputQuantizer().train()
    x = torch.randn(4, 7, 5) * 3 + 1
    quantizer(x)  # observes: the range of x (the first batch sets it)
    s, zp = quantizer.qparams()
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    assert s == pytest.approx((hi - lo) / ACTIVATION_RANGE[1], rel=1e-6)
    assert zp == round(-lo / s)
    quantizer.eval()
    y = torch.randn(3, 9) * 6  # beyond the range: clipped
    torch.testing.assert_close(quantizer(y), reference_input(y, s, zp), rtol=0, atol=1e-6)
    assert quantizer.qparams() == (s, zp)  # eval mode does not observe


def test_gradients_are_straight_through():
    torch.manual_seed(2)
    w = torch.randn(10, 6, requires_grad=True)
    g = torch.randn(10, 6)
    (weight_quantizer()(w) * g).sum().backward()
    torch.testing.assert_close(w.grad, g)  # every weight inside the range: identity

    quantizer = InputQuantizer().train()
    quantizer(torch.linspace(-2, 3, 50))
    quantizer.eval()
    s, zp = quantizer.qparams()
    x = (torch.randn(64) * 4).requires_grad_()
    g = torch.randn(64)
    (quantizer(x) * g).sum().backward()
    q = torch.round(x.detach() / s) + zp
    inside = (q >= ACTIVATION_RANGE[0]) & (q <= ACTIVATION_RANGE[1])
    assert 0 < int(inside.sum()) < 64  # both cases occur
    torch.testing.assert_close(x.grad, g * inside)  # the reference STE: zero where clipped

    asr = prepare_qat(tiny_asr("transducer"), "int8").train()
    asr(*batch()).loss.backward()
    for name, p in asr.named_parameters():
        if name.endswith("parametrizations.weight.original") and "ctc_lin" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_few_qat_steps_reduce_the_loss():
    torch.manual_seed(3)
    asr = prepare_qat(tiny_asr("transducer"), "int8").train()
    optimizer = torch.optim.Adam(asr.parameters(), lr=0.01)
    data = batch(seconds=0.6)
    losses = []
    for _ in range(8):
        loss = asr(*data).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_streaming_chunk_by_chunk_equals_the_full_forward():
    asr = calibrated()
    waves, lengths, _, _ = batch()
    with torch.no_grad():
        feats, feat_lengths = asr.features(waves, lengths)
        full = asr.model.encode(feats, feat_lengths).memory
        state, pieces = asr.model.init_state(2), []
        for i in range(0, feats.shape[1], 16):  # 2 encoder frames a chunk
            memory, state = asr.model.forward_chunk(feats[:, i : i + 16], state)
            pieces.append(memory)
        streamed = torch.cat(pieces, dim=1)
    torch.testing.assert_close(streamed[0], full[0], rtol=0, atol=1e-5)
    n = int(asr.model.frontend.output_lengths(feat_lengths)[1])
    torch.testing.assert_close(streamed[1, :n], full[1, :n], rtol=0, atol=1e-5)


def test_the_model_file_records_qat_and_loads_with_load_model(tmp_path):
    import mamba_asr

    asr = calibrated()
    path = asr.save(tmp_path / "qat.pt")
    data = torch.load(path, weights_only=True)
    assert data["qat"]["scheme"] == "int8" and data["qat"]["library"].startswith("torchao ")
    assert not any("parametrizations" in k or "input_quant" in k for k in data["state_dict"])
    loaded = mamba_asr.load_model(str(path), device="cpu")
    assert qat_scheme(loaded) == "int8" and not loaded.training
    waves, lengths, _, _ = batch()
    with torch.no_grad():
        f, n = asr.features(waves, lengths)
        torch.testing.assert_close(
            loaded.model.encode(f, n).memory, asr.model.encode(f, n).memory, rtol=0, atol=0
        )
    greedy = DecodingOptions(strategy="greedy")
    texts = loaded.transcribe_batch(waves, lengths, greedy)
    assert texts == asr.transcribe_batch(waves, lengths, greedy)
    plain = ASR(asr.config, asr.tokenizer)  # a reader that ignores "qat": the float model
    plain.load_state_dict(data["state_dict"])
    broken = {**data, "qat": {**data["qat"], "scheme": "int4"}}
    with pytest.raises(ValueError, match="qat scheme must be one of int8, int8-weights"):
        ASR.from_bundle(broken)


def test_unknown_qat_values_are_one_line_errors(tmp_path, capsys):
    from mamba_asr.cli import main

    args = ["train", str(RECIPES["transducer"]), "--train", "x.jsonl", "--valid", "x.jsonl",
            "--out", str(tmp_path / "run"), "--qat", "int4"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "mamba-asr: error: --qat must be one of int8, int8-weights, int4-weights, got 'int4'"
    )
    with pytest.raises(ConfigError, match="train.qat must be one of 'int8' | 'int8-weights'"):
        tiny_recipe("transducer", "train.qat=fp8")
    with pytest.raises(ConfigError, match="train.qat is for streaming transducers"):
        tiny_recipe("ctc", "train.qat=int8")
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(calibrated(), "int8")
    assert main([*args[:-1], "int8", "--qat-block", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mamba-asr: error: --qat-block is for --qat int4-weights"
    assert main([*args[:-1], "int4-weights", "--qat-block", "48"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mamba-asr: error: train.qat_block must be one of 16, 32, 64, 128, 256, got 48"
    with pytest.raises(ConfigError, match="train.qat_block is for train.qat int4-weights"):
        tiny_recipe("transducer", "train.qat=int8", "train.qat_block=64")


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    from helpers.tones import write_corpus

    return write_corpus(tmp_path_factory.mktemp("tones"))


def test_train_init_qat_resumes_exactly_and_writes_a_qat_model(tmp_path, tones):
    """The same run in-process (recipe keys) and by the command line (--init, --qat), the
    latter stopped after one step and resumed: the same checkpoints bit for bit."""
    from mamba_asr.cli import main
    from mamba_asr.train import list_checkpoints, load_checkpoint, train

    start = tiny_asr("transducer").save(tmp_path / "start.pt")
    more = ("train.epochs=1", "train.checkpoint_every_steps=1")
    recipe = tiny_recipe("transducer", *more, f"train.init_from={start}", "train.qat=int8")
    whole = train(recipe, tones, tones, tmp_path / "a", device="cpu")
    assert whole.finished and whole.step == 4

    sets = [x for o in tiny_overrides("transducer", *more) for x in ("--set", o)]
    cli = ["train", str(RECIPES["transducer"]), "--train", str(tones), "--valid", str(tones),
           "--out", str(tmp_path / "b"), "--device", "cpu", "--init", str(start),
           "--qat", "int8", *sets]  # fmt: skip
    assert main([*cli, "--max-steps", "1"]) == 0
    assert main(cli) == 0
    a = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    assert a["progress"] == b["progress"] and a["model"].keys() == b["model"].keys()
    assert any(k.endswith("input_quant.fq.scale") for k in a["model"])
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name

    model = ASR.load(tmp_path / "b" / "model.pt")
    assert qat_scheme(model) == "int8"
    waves, lengths, _, _ = batch()
    assert len(model.transcribe_batch(waves, lengths, DecodingOptions(strategy="greedy"))) == 2


def test_train_int4_qat_with_a_block_of_64_writes_that_block(tmp_path, tones):
    from mamba_asr.qat import Int4WeightQuantizer, int4_block
    from mamba_asr.train import train

    start = tiny_asr("transducer").save(tmp_path / "start.pt")
    recipe = tiny_recipe("transducer", "train.epochs=1", f"train.init_from={start}",
                         "train.qat=int4-weights", "train.qat_block=64")  # fmt: skip
    assert train(recipe, tones, tones, tmp_path / "run", device="cpu").finished
    model = ASR.load(tmp_path / "run" / "model.pt")
    assert qat_scheme(model) == "int4-weights" and int4_block(model) == 64
    assert all(m.block == 64 for m in model.modules() if isinstance(m, Int4WeightQuantizer))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("scheme", ["int8", "int8-weights"])
def test_prepared_on_cuda_equals_prepared_on_cpu(scheme, monkeypatch):
    """The trainer prepares the model after moving it to its device: the quantizers must be
    made there (a CPU quantizer on a CUDA weight failed at once). Same ranges observed on both
    devices, then the same outputs (TF32 off: cuDNN's convolutions use it by default)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    waves, lengths, targets, _ = batch()
    # the features once, on the CPU: log-mel values of near-silent bins differ between devices
    feats = tiny_asr("transducer", blank_bias=0.0).features(waves, lengths)
    out = {}
    for device in ("cpu", "cuda"):
        asr = prepare_qat(tiny_asr("transducer", blank_bias=0.0).to(device), scheme).train()
        x, n, t = (v.to(device) for v in (*feats, targets))
        observe(asr, lambda: (x, n), t)  # noqa: B023 (called at once)
        with torch.no_grad():
            out[device] = asr.eval().model.encode(x, n).memory.cpu()
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=1e-3, atol=1e-3)


def reference_int4(w: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's symmetric int4 of a Linear weight (out, in) in blocks of ``block`` input
    channels, its scale rounded to fp16: s = fp16(the block's signed value of largest magnitude
    / -8), q = clamp(round(w / s), -8, 7); -> (q (out, in), s (out, blocks))."""
    out, k = w.shape
    blocks = torch.nn.functional.pad(w, (0, -k % block)).reshape(out, -1, block)
    largest = blocks.gather(2, blocks.abs().argmax(2, keepdim=True))  # (out, blocks, 1)
    s = (largest / -8).half().float()
    q = torch.clamp(torch.round(blocks / s), *INT4_RANGE)
    return q.reshape(out, -1)[:, :k], s[..., 0]


@pytest.mark.parametrize("shape", [(6, 64), (5, 40), (3, 7)])
def test_int4_fake_quant_is_q_times_the_block_scale(shape):
    torch.manual_seed(4)
    w = torch.randn(shape) * torch.rand(shape[0], 1)
    w[0, :2] = torch.tensor([3.0, -2.0])  # a block whose largest value is positive
    got = Int4WeightQuantizer()(w)
    q, s = reference_int4(w)
    torch.testing.assert_close(got, q * s.repeat_interleave(32, 1)[:, : shape[1]], rtol=0, atol=0)
    assert q.min() >= INT4_RANGE[0] and q.max() <= INT4_RANGE[1]
    assert torch.equal(q[:, :32].min(1).values, torch.full((shape[0],), -8.0))  # largest: -8
    assert torch.equal(s.half().float(), s)  # fp16 scales: what the int4 graphs store


@pytest.mark.parametrize("block", [16, 64])
def test_int4_blocks_of_other_sizes_and_pointwise_convolutions(block):
    """A block of 16 or 64 input channels shares a scale; a pointwise Conv1d's (out, in, 1)
    weight is quantized as its (out, in) matrix."""
    torch.manual_seed(block)
    w = torch.randn(6, 100) * torch.rand(6, 1)
    q, s = reference_int4(w, block)
    want = q * s.repeat_interleave(block, 1)[:, :100]
    torch.testing.assert_close(Int4WeightQuantizer(block)(w), want, rtol=0, atol=0)
    got = Int4WeightQuantizer(block)(w[:, :, None])
    assert got.shape == (6, 100, 1)
    torch.testing.assert_close(got[:, :, 0], want, rtol=0, atol=0)


def test_the_int4_block_is_checked():
    from mamba_asr.qat import apply_record

    with pytest.raises(ValueError, match="int4 block must be one of 16, 32, 64, 128, 256, got 48"):
        prepare_qat(tiny_asr("transducer"), "int4-weights", 48)
    with pytest.raises(ValueError, match="for int4-weights only, not int8-weights"):
        prepare_qat(tiny_asr("transducer"), "int8-weights", 64)
    with pytest.raises(ValueError, match="its qat block must be one of .*got 12"):
        apply_record(tiny_asr("transducer"), {"scheme": "int4-weights", "block": 12})
    with pytest.raises(ValueError, match="its qat pointwise must be true or false, got 'yes'"):
        apply_record(tiny_asr("transducer"), {"scheme": "int4-weights", "pointwise": "yes"})


def test_int4_gradients_are_straight_through_and_only_linears_are_quantized():
    torch.manual_seed(5)
    w = torch.randn(4, 40)
    w[0, :2] = torch.tensor([3.0, -3.0])  # -3 is q = +8: clipped to 7
    w.requires_grad_()
    g = torch.randn(4, 40)
    (Int4WeightQuantizer()(w) * g).sum().backward()
    _, s = reference_int4(w.detach())
    q = (w.detach() / s.repeat_interleave(32, 1)[:, :40]).round()  # before clipping
    inside = (q >= INT4_RANGE[0]) & (q <= INT4_RANGE[1])
    assert not inside[0, 1] and inside.sum() > 150
    torch.testing.assert_close(w.grad, g * inside)  # identity, zero where clipped
    asr = prepare_qat(tiny_asr("transducer"), "int4-weights").train()
    assert not any(isinstance(m, InputQuantizer) for m in asr.modules())
    pointwise = 0
    for m in asr.model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)):
            matrix = isinstance(m, nn.Linear) or (
                isinstance(m, nn.Conv1d) and m.kernel_size == (1,) and m.groups == 1
            )
            pointwise += matrix and isinstance(m, nn.Conv1d)
            assert hasattr(m, "parametrizations") == matrix, m
    assert pointwise == len(asr.model.frontend.stages)  # the front end's pointwise convolutions
    asr(*batch()).loss.backward()
    for name, p in asr.named_parameters():
        if name.endswith("parametrizations.weight.original") and "ctc_lin" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("block", [32, 64])
def test_an_int4_model_file_loads_back_without_activations(tmp_path, block):
    """The model file records the scheme and the block; it loads back with both."""
    import mamba_asr
    from mamba_asr.qat import apply_record, int4_block

    asr = prepare_qat(tiny_asr("transducer", blank_bias=0.0), "int4-weights", block).eval()
    path = asr.save(tmp_path / "qat4.pt")
    data = torch.load(path, weights_only=True)
    assert data["qat"]["scheme"] == "int4-weights" and data["qat"]["activations"] == {}
    assert data["qat"]["block"] == block and data["qat"]["pointwise"] is True
    loaded = mamba_asr.load_model(str(path), device="cpu")
    assert qat_scheme(loaded) == "int4-weights" and int4_block(loaded) == block
    waves, lengths, _, _ = batch()
    with torch.no_grad():
        f, n = asr.features(waves, lengths)
        torch.testing.assert_close(
            loaded.model.encode(f, n).memory, asr.model.encode(f, n).memory, rtol=0, atol=0
        )
    again = ASR(asr.config, asr.tokenizer)
    again.load_state_dict(data["state_dict"])
    # a file of int4 QAT from before "block" and "pointwise" (and without "activations": a
    # weights-only scheme): blocks of 32, the Linear layers only, as it was trained
    apply_record(again, {"scheme": "int4-weights"})
    assert qat_scheme(again) == "int4-weights" and int4_block(again) == 32
    quantized = [m for m in again.model.modules() if hasattr(m, "parametrizations")]
    assert quantized and all(isinstance(m, nn.Linear) for m in quantized)
    assert qat_record(again)["pointwise"] is False
    # with "block" and without "pointwise" (a file of the first release of blocks): both
    again = ASR(asr.config, asr.tokenizer)
    again.load_state_dict(data["state_dict"])
    apply_record(again, {"scheme": "int4-weights", "block": 64})
    assert qat_record(again)["pointwise"] is True and int4_block(again) == 64
