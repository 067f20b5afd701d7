"""Structured pruning (``mamba_asr.compress.prune``, ``mamba-asr prune``) on tiny transducers.

The surgery is checked against plain references: pruning nothing gives the same model; pruning
channels that are exactly zero gives the same outputs; and a model with the channels zeroed in
place (a mask) computes what the physically smaller model computes, on fresh random inputs,
whole and chunk by chunk. Parameter counts, the model file (load, transcribe, stream, ONNX
export), the bias folding of calibrated pruning, the iterative loop with fine-tuning and the
one-line errors for bad input follow.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from helpers.recipes import RECIPES, tiny_overrides, tiny_recipe
from helpers.tones import write_corpus
from mamba_asr import load_model
from mamba_asr.asr import ASR
from mamba_asr.cli import main
from mamba_asr.compress.prune import (
    activation_stats,
    channel_scores,
    choose_channels,
    group_widths,
    mask_channels,
    parameter_count,
    prune_asr,
    prune_model_file,
    target_counts,
)
from mamba_asr.models.factory import build_model, count_parameters
from mamba_asr.text.tokenizer import CharTokenizer

EXACT_GROUPS = ("mamba", "ffn", "predictor", "joiner")  # the front end has a LayerNorm after


def tiny_asr(*more: str, seed: int = 0) -> ASR:
    """A random 2-layer MCT (d_model 16, d_inner 32, d_ffn 32, front end [8, 8, 8],
    predictor 8, joiner 8) with the "AB " tokenizer, random CMVN statistics and biases."""
    torch.manual_seed(seed)
    recipe = tiny_recipe("transducer", "model.num_encoder_layers=2", *more)
    asr = ASR.from_recipe(recipe, CharTokenizer("AB ")).eval()
    with torch.no_grad():
        for p in asr.parameters():  # no zero biases: every channel matters somewhere
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
        asr.cmvn.mean.copy_(torch.randn(asr.cmvn.mean.shape) - 8.0)
        asr.cmvn.std.copy_(torch.rand(asr.cmvn.std.shape) + 2.0)
        asr.model.joiner.out.bias[1:3] = -30.0  # no bos/eos
        asr.model.joiner.out.bias[0] -= 1.0  # some text
    return asr


def random_keep(asr: ASR, groups, ratio: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random kept channels (equal counts per kind, as the config needs)."""
    g = torch.Generator().manual_seed(seed)
    widths = group_widths(asr, groups)
    counts = target_counts(widths, ratio)
    return {k: torch.randperm(n, generator=g)[: counts[k]].sort().values for k, n in widths.items()}


class KeptLayerNorm(nn.Module):
    """The reference for a pruned front-end stage: LayerNorm over the kept channels only
    (zeros elsewhere), what the smaller stage's LayerNorm computes."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor) -> None:
        super().__init__()
        self.norm, self.keep = norm, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        w, b = self.norm.weight[self.keep], self.norm.bias[self.keep]
        out[..., self.keep] = F.layer_norm(x[..., self.keep], (len(self.keep),), w, b,
                                           self.norm.eps)  # fmt: skip
        return out


def masked_reference(asr: ASR, keep: dict[str, torch.Tensor]) -> ASR:
    ref = copy.deepcopy(asr)
    mask_channels(ref, keep)
    for key, idx in keep.items():
        if key.startswith("frontend.stages."):
            stage = ref.model.get_submodule(key)
            stage.norm = KeptLayerNorm(stage.norm, idx)
    return ref


def inputs(seed: int, batch: int = 2, frames: int = 77):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, 80, generator=g)
    lengths = torch.tensor([frames, frames - 13])[:batch]
    tokens = torch.randint(3, 6, (batch, 5), generator=g)
    return feats, lengths, tokens


@torch.no_grad()
def outputs(asr: ASR, seed: int) -> dict[str, torch.Tensor]:
    """Everything the model computes on fresh random inputs: the encoder memory whole and chunk
    by chunk (16 feature frames at a time, 2 encoder frames), the aux CTC head, the predictor
    and the joiner's logits over the lattice."""
    model = asr.model
    feats, lengths, tokens = inputs(seed)
    enc = model.encode(feats, lengths)
    state = model.init_state(feats.shape[0])
    chunks = []
    for start in range(0, feats.shape[1], 16):
        out, state = model.forward_chunk(feats[:, start : start + 16], state)
        chunks.append(out)
    pred, _ = model.predictor(tokens)
    logits = model.joiner(enc.memory[:, :, None], pred[:, None])
    return {
        "memory": enc.memory,
        "stream": torch.cat(chunks, dim=1),
        "ctc": model.ctc_lin(enc.memory) if model.ctc_lin is not None else enc.memory,
        "logits": logits,
    }


def assert_same(a: dict, b: dict, atol: float = 1e-5) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


# --- the surgery ---------------------------------------------------------------------------------


def test_ratio_zero_keeps_the_model_exactly():
    asr = tiny_asr()
    same = prune_asr(asr, ratio=0.0)
    assert same.config == asr.config
    for k, v in asr.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    for seed in (1, 2):
        assert_same(outputs(same, seed), outputs(asr, seed), atol=0.0)


def test_streaming_of_the_pruned_model_equals_its_whole_forward():
    small = prune_asr(tiny_asr(), ratio=0.5, groups=("mamba", "ffn", "frontend"))
    out = outputs(small, 3)
    valid = (inputs(3)[1] + 7) // 8  # encoder frames: ceil(F / 8)
    for b, n in enumerate(valid.tolist()):
        torch.testing.assert_close(out["stream"][b, :n], out["memory"][b, :n], atol=1e-5, rtol=0)


def test_channels_that_are_exactly_zero_are_the_ones_removed_and_nothing_changes():
    asr = tiny_asr()
    keep = random_keep(asr, EXACT_GROUPS, ratio=0.25, seed=2)
    mask_channels(asr, keep)  # zero every weight of the channels to go
    chosen = choose_channels(
        channel_scores(asr, EXACT_GROUPS), {k: len(v) for k, v in keep.items()}
    )
    assert chosen.keys() == keep.keys()
    for key, idx in keep.items():
        assert torch.equal(chosen[key], idx), key
    small = prune_asr(asr, ratio=0.25, groups=EXACT_GROUPS)
    for seed in (4, 5):
        assert_same(outputs(small, seed), outputs(asr, seed))


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_the_pruned_model_computes_what_the_masked_model_computes(ratio):
    asr = tiny_asr()
    keep = random_keep(asr, None, ratio, seed=int(ratio * 8))
    small = prune_asr(asr, keep=keep)
    reference = masked_reference(asr, keep)
    for seed in (6, 7):  # fresh random inputs, whole and chunk by chunk
        assert_same(outputs(small, seed), outputs(reference, seed))


def test_without_the_kept_layernorm_a_front_end_mask_is_not_the_pruned_model():
    """Why the front end is the one inexact group: its stages' LayerNorms renormalise."""
    asr = tiny_asr()
    keep = random_keep(asr, ["frontend"], 0.5)
    plain = copy.deepcopy(asr)
    mask_channels(plain, keep)
    small = prune_asr(asr, keep=keep)
    assert not torch.allclose(outputs(small, 8)["memory"], outputs(plain, 8)["memory"], atol=1e-3)


def test_layers_choose_their_own_channels_but_keep_equal_counts():
    asr = tiny_asr()
    first, last = torch.arange(8), torch.arange(24, 32)
    # layer 0 has only its first 8 channels alive, layer 1 only its last 8
    mask_channels(asr, {"encoder.layers.0.mamba": first, "encoder.layers.1.mamba": last})
    counts = {"encoder.layers.0.mamba": 8, "encoder.layers.1.mamba": 8}
    keep = choose_channels(channel_scores(asr, ["mamba"]), counts)
    assert torch.equal(keep["encoder.layers.0.mamba"], first)
    assert torch.equal(keep["encoder.layers.1.mamba"], last)
    small = prune_asr(asr, keep=keep)
    assert small.config.model.mamba.d_inner == 8
    assert [layer.mamba.d_inner for layer in small.model.encoder.layers] == [8, 8]
    for seed in (12, 13):
        assert_same(outputs(small, seed), outputs(asr, seed))


def test_parameter_count_falls_by_the_removed_channels_weights():
    asr = tiny_asr()
    cfg = asr.config.model
    small = prune_asr(asr, ratio=0.5)
    m, layers, k, n = cfg.d_model, cfg.num_encoder_layers, cfg.mamba.d_conv, cfg.mamba.d_state
    rank = math.ceil(m / 16)
    # a Mamba channel: 2 in_proj rows, conv kernel + bias, an x_proj column, a dt_proj row +
    # bias, an A_log row, D, an out_proj column; an FFN unit: a row + bias, a column
    per_mamba = 2 * m + (k + 1) + (rank + 2 * n) + (rank + 1) + n + 1 + m
    per_ffn = (m + 1) + m
    encoder = layers * ((2 * m // 2) * per_mamba + (cfg.d_ffn // 2) * per_ffn)
    v, ctx = cfg.vocab_size, cfg.transducer.context_size

    def heads(p: int, j: int) -> int:  # embedding, conv, enc_proj, pred_proj, out
        return v * p + p * ctx + j * (m + 1) + j * (p + 1) + v * j + v

    def front(channels: tuple[int, ...]) -> int:  # depthwise, pointwise, norm; proj
        kf, ins = cfg.frontend.kernel_size, (cfg.frontend.n_mels, *channels[:-1])
        stages = sum(c_in * (kf + 1) + c * (c_in + 1) + 2 * c
                     for c_in, c in zip(ins, channels, strict=True))  # fmt: skip
        return stages + channels[-1] * m + m

    p, j, c = cfg.transducer.predictor_dim, cfg.transducer.joiner_dim, cfg.frontend.channels
    half = tuple(x // 2 for x in c)
    removed = encoder + heads(p, j) - heads(p // 2, j // 2) + front(c) - front(half)
    assert parameter_count(asr) - parameter_count(small) == removed
    assert parameter_count(small) == count_parameters(build_model(small.config.model))
    widths = small.config.model
    assert (widths.mamba.d_inner, widths.d_ffn, widths.frontend.channels) == (16, 16, (4, 4, 4))
    assert (widths.transducer.predictor_dim, widths.transducer.joiner_dim) == (4, 4)


def test_counts_round_and_keep_one_channel_at_least():
    assert target_counts({"a": 512, "b": 10, "c": 1}, 0.25) == {"a": 384, "b": 7, "c": 1}
    assert target_counts({"a": 3}, 0.99) == {"a": 1}


# --- calibrated pruning: bias folding ---------------------------------------------------------


def test_calibrated_pruning_folds_constant_channels_exactly():
    """A unit whose activation never changes (no weights into it, only a bias) is worth its
    mean: with measured statistics it scores 0, goes first, and its mean goes into the next
    bias, so the outputs stay the same."""
    asr = tiny_asr()
    model = asr.model
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.ffn.net[0].weight[:8] = 0.0  # silu(bias): a constant
        model.joiner.enc_proj.weight[:3] = 0.0  # tanh(bias + bias): a constant
        model.joiner.pred_proj.weight[:3] = 0.0
    rng = np.random.default_rng(0)
    examples = [(torch.from_numpy(rng.standard_normal(8000).astype(np.float32)), [3, 4, 5])
                for _ in range(2)]  # fmt: skip
    stats = activation_stats(asr, examples, ["ffn", "joiner"])
    counts = {k: v - (8 if k.endswith("ffn") else 3) for k, v in
              group_widths(asr, ["ffn", "joiner"]).items()}  # fmt: skip
    small = prune_asr(asr, groups=["ffn", "joiner"], counts=counts, stats=stats)
    for layer in small.model.encoder.layers:
        assert layer.ffn.net[0].out_features == 24
    plain = prune_asr(asr, groups=["ffn", "joiner"], counts=counts)  # no folding
    for seed in (9, 10):
        want = outputs(asr, seed)
        assert_same(outputs(small, seed), want, atol=1e-4)
        assert not torch.allclose(outputs(plain, seed)["logits"], want["logits"], atol=1e-3)


# --- model files and the command -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prune") / "tiny.pt"
    tiny_asr().save(path)
    return path


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(3 * t)) * t) + 0.02 * rng.standard_normal(
        t.size
    )
    sf.write(path, wave.astype(np.float32), 16000)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mamba-asr: error: ")
    return err[0]


def test_the_command_writes_a_model_that_loads_transcribes_and_streams(
    model_file, wav, tmp_path, capsys
):
    out = tmp_path / "small.pt"
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert str(out) in line and "d_inner 32 -> 16" in line and "joiner" not in line
    small = load_model(str(out), device="cpu")
    model = small.config.model
    assert (model.mamba.d_inner, model.d_ffn, model.frontend.channels) == (16, 16, (4, 4, 4))
    assert model.transducer.joiner_dim == 8  # not pruned unless asked for
    expected = prune_asr(load_model(str(model_file), device="cpu"), ratio=0.5,
                         groups=("mamba", "ffn", "frontend", "predictor"))  # fmt: skip
    for k, v in expected.state_dict().items():
        assert torch.equal(small.state_dict()[k], v), k
    for extra in ([], ["--stream"]):
        assert main(["transcribe", "--model", str(out), "--device", "cpu", str(wav), *extra]) == 0
    assert capsys.readouterr().err == ""


def test_a_pruned_model_exports_to_onnx_and_decodes_there_as_in_pytorch(model_file, wav, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mamba_asr.decode.options import DecodingOptions
    from mamba_asr.runtime.onnx import OnnxASR
    from mamba_asr.transcription import transcribe_file

    out = tmp_path / "small.pt"
    assert main(["prune", str(model_file), "--ratio", "0.25", "--out", str(out),
                 "--groups", "all"]) == 0  # fmt: skip
    folder = tmp_path / "onnx"
    assert main(["export", "onnx", str(out), "--out", str(folder), "--chunk-ms", "0"]) == 0
    options = DecodingOptions(strategy="greedy")
    torch_text = transcribe_file(load_model(str(out), device="cpu"), wav, options).text
    onnx_text = OnnxASR.load(folder).transcribe_file(wav, options).text
    assert onnx_text == torch_text


def test_half_precision_files_stay_half(tmp_path):
    source = tmp_path / "half.pt"
    tiny_asr("model.d_model=64").save(source, half=True)  # in_proj: 256 x 64, stored in fp16
    out = tmp_path / "small.pt"
    prune_model_file(str(source), out, 0.5)
    state = torch.load(out, weights_only=True)["state_dict"]
    assert any(v.dtype == torch.float16 for v in state.values())


@pytest.mark.parametrize("ratio", ["0", "1", "-0.1", "1.5", "nan"])
def test_a_ratio_outside_zero_one_is_one_line(model_file, tmp_path, capsys, ratio):
    out = tmp_path / "x.pt"
    assert main(["prune", str(model_file), "--ratio", ratio, "--out", str(out)]) == 2
    assert "--ratio must be in (0, 1)" in one_error_line(capsys)
    assert not out.exists()


def test_a_model_of_another_kind_is_refused_naming_it(tmp_path, capsys):
    torch.manual_seed(0)
    ctc = tmp_path / "ctc.pt"
    ASR.from_recipe(tiny_recipe("ctc"), CharTokenizer("AB ")).save(ctc)
    out = tmp_path / "x.pt"
    assert main(["prune", str(ctc), "--ratio", "0.5", "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "kind 'ctc'" in line and "conmamba" in line and "Mamba-CNN transducer" in line
    assert not out.exists()


def test_an_existing_out_is_refused_and_left_as_it_was(model_file, tmp_path, capsys):
    out = tmp_path / "x.pt"
    out.write_bytes(b"keep me")
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", str(out)]) == 2
    assert "already exists" in one_error_line(capsys)
    assert out.read_bytes() == b"keep me"
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", str(out),
                 "--overwrite"]) == 0  # fmt: skip
    assert load_model(str(out), device="cpu").config.model.d_ffn == 16


def test_an_out_that_cannot_be_written_is_one_line(model_file, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out",
                 str(blocker / "x.pt")]) == 2  # fmt: skip
    assert "is not a folder" in one_error_line(capsys)
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", str(model_file)]) == 2
    assert "input" in one_error_line(capsys)


def test_a_failed_write_leaves_nothing(model_file, tmp_path, monkeypatch):
    def broken_save(obj, f):
        f.write(b"half a model")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    out = tmp_path / "x.pt"
    with pytest.raises(OSError, match="disk full"):
        prune_model_file(str(model_file), out, 0.5)
    assert list(tmp_path.iterdir()) == []


def test_bad_groups_and_lone_fine_tuning_options_are_one_line(model_file, tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", out, "--groups",
                 "mamba,attention"]) == 2  # fmt: skip
    assert "attention" in one_error_line(capsys)
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", out, "--steps", "2"]) == 2
    assert "--recipe" in one_error_line(capsys)
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", out, "--calib",
                 str(tmp_path / "nothing")]) == 2  # fmt: skip
    assert "--calib" in one_error_line(capsys)
    assert not Path(out).exists()


def test_calibrated_command_prunes_the_joiner_when_asked(model_file, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "tones")
    out = tmp_path / "small.pt"
    assert main(["prune", str(model_file), "--ratio", "0.5", "--out", str(out), "--calib",
                 str(manifest), "--calib-utts", "3", "--groups", "all"]) == 0  # fmt: skip
    assert "joiner_dim 8 -> 4" in capsys.readouterr().out
    assert load_model(str(out), device="cpu").config.model.transducer.joiner_dim == 4


# --- the iterative loop: prune -> train --init -> prune ----------------------------------------


def test_pruning_in_rounds_fine_tunes_between_them(model_file, tmp_path, capsys):
    manifest = write_corpus(tmp_path / "tones")
    work, out = tmp_path / "work", tmp_path / "small.pt"
    training = [o for o in tiny_overrides("transducer") if not o.startswith("model.")]
    sets = [x for o in [*training, "train.epochs=1"] for x in ("--set", o)]
    args = ["prune", str(model_file), "--ratio", "0.5", "--out", str(out), "--steps", "2",
            "--recipe", str(RECIPES["transducer"]), "--train", str(manifest), "--valid",
            str(manifest), "--work", str(work), "--device", "cpu", *sets]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    rounds = [load_model(str(work / f"round-{k}" / "pruned.pt"), device="cpu") for k in (1, 2)]
    assert [r.config.model.mamba.d_inner for r in rounds] == [24, 16]  # 32 -> 24 -> 16
    tuned = load_model(str(work / "round-1" / "finetune" / "model.pt"), device="cpu")
    assert tuned.config.model == rounds[0].config.model
    changed = [k for k, v in tuned.state_dict().items()
               if not torch.equal(v, rounds[0].state_dict()[k])]  # fmt: skip
    assert changed, "fine-tuning changed no weight"
    final = load_model(str(out), device="cpu")
    assert final.config.model == rounds[1].config.model
    for k, v in load_model(str(work / "round-2" / "finetune" / "model.pt"),
                           device="cpu").state_dict().items():  # fmt: skip
        assert torch.equal(final.state_dict()[k], v), k
    out.unlink()  # the same command again: every round's work is found and reused
    assert main(args) == 0
    assert out.is_file()


def test_train_init_takes_the_models_architecture(model_file, tmp_path, capsys):
    small = tmp_path / "small.pt"
    prune_model_file(str(model_file), small, 0.5)
    manifest = write_corpus(tmp_path / "tones")
    training = [o for o in tiny_overrides("transducer") if not o.startswith("model.")]
    sets = [x for o in training for x in ("--set", o)]
    run = tmp_path / "run"
    args = ["train", str(RECIPES["transducer"]), "--init", str(small), "--train", str(manifest),
            "--valid", str(manifest), "--out", str(run), "--device", "cpu", "--max-steps", "1",
            *sets]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "d_inner: 16" in (run / "recipe.yaml").read_text()
    bad = ["train", str(RECIPES["transducer"]), "--init", str(tmp_path / "none.pt"), "--train",
           str(manifest), "--valid", str(manifest), "--out", str(tmp_path / "r2")]  # fmt: skip
    assert main(bad) == 2
    assert "--init" in one_error_line(capsys)


def test_model_files_name_d_inner_only_when_pruned(tmp_path):
    asr = tiny_asr()
    assert "d_inner" not in asr.bundle()["model"]["mamba"]  # as before the key existed
    small = prune_asr(asr, ratio=0.5)
    assert small.bundle()["model"]["mamba"]["d_inner"] == 16


def test_a_run_begun_before_mamba_d_inner_existed_resumes(tmp_path):
    import yaml

    from mamba_asr.config import to_dict
    from mamba_asr.train.trainer import RECIPE_FILE, _check_recipe

    recipe = tiny_recipe("transducer")
    saved = to_dict(recipe)
    del saved["model"]["mamba"]["d_inner"]
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(saved))
    assert _check_recipe(tmp_path, recipe) is True


@pytest.mark.parametrize(
    "override", ["model.transducer.loss=pruned", "model.transducer.predictor=lstm"]
)
def test_other_transducer_options_prune_and_train(override):
    """The pruned RNN-T loss's simple heads follow the predictor's units; an LSTM predictor
    is left as it is (its group is stateless only)."""
    asr = tiny_asr(override)
    small = prune_asr(asr, ratio=0.5, groups=("mamba", "ffn", "frontend", "predictor", "joiner"))
    lstm = "lstm" in override
    assert small.config.model.transducer.predictor_dim == (8 if lstm else 4)
    assert small.config.model.transducer.joiner_dim == 4
    feats, lengths, tokens = inputs(11)
    loss = small.model.loss(feats, lengths, tokens, torch.tensor([5, 3]))
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
