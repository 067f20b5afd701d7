"""The ASR bundle: features + CMVN + SpecAugment + model + tokenizer + recipe in one file."""

from __future__ import annotations

import pytest
import torch

from mamba_asr.asr import ASR, BundleError
from mamba_asr.config import ConfigError, InferenceConfig, to_dict
from mamba_asr.decode import DecodingOptions
from mamba_asr.text.tokenizer import CharTokenizer, train_sentencepiece
from mamba_asr.train.checkpoints import save_checkpoint


def waves(batch: int = 3, seconds: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(16000 * seconds)
    lengths = torch.tensor([n, n * 3 // 4, n // 2][:batch])
    x = 0.1 * torch.randn(batch, n)
    return x, lengths


def fitted(asr: ASR) -> ASR:
    x, lengths = waves()
    asr.cmvn.fit([asr.raw_features(x, lengths)])
    return asr


@pytest.mark.parametrize("decoder_layers", [0, 1])
def test_round_trip_gives_the_same_outputs(tmp_path, tiny_recipe, decoder_layers):
    kind = "seq2seq" if decoder_layers else "ctc"
    recipe = tiny_recipe(f"model.num_decoder_layers={decoder_layers}", f"model.kind={kind}")
    asr = fitted(ASR.from_recipe(recipe, CharTokenizer("AB ")))
    path = asr.save(tmp_path / "model.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    loaded = ASR.load(path)
    assert not loaded.training and loaded.config == InferenceConfig.from_recipe(recipe)
    assert loaded.tokenizer.alphabet == "AB "
    assert loaded.state_dict().keys() == asr.state_dict().keys()
    for name, tensor in asr.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.cmvn.is_fitted
    x, lengths = waves()
    targets, target_lengths = torch.tensor([[3, 4], [4, 3], [3, 0]]), torch.tensor([2, 2, 1])
    asr.eval()
    for options in (DecodingOptions(strategy="greedy"), DecodingOptions(beam_size=2)):
        assert asr.transcribe_batch(x, lengths, options) == loaded.transcribe_batch(
            x, lengths, options
        )
    with torch.no_grad():
        a, b = asr(x, lengths, targets, target_lengths), loaded(x, lengths, targets, target_lengths)
    assert torch.equal(a.loss, b.loss)


def test_the_model_file_holds_no_training_settings(tmp_path, tiny_recipe):
    recipe = tiny_recipe()
    asr = fitted(ASR.from_recipe(recipe, CharTokenizer("AB ")))
    data = torch.load(asr.save(tmp_path / "model.pt"), weights_only=True)
    assert set(data) == {
        "format", "version", "mamba_asr_version", "model", "features", "state_dict", "tokenizer"
    }  # fmt: skip
    assert data["version"] == 2 and data["features"] == {"sample_rate": 16000, "n_mels": 80}


def test_a_version_1_file_loads_whatever_its_training_settings(tmp_path, tiny_recipe):
    """Version 1 files held the whole recipe: training options renamed, added or removed
    since (here: unknown keys, and a section with a wrong type) cannot break loading."""
    recipe = tiny_recipe()
    asr = fitted(ASR.from_recipe(recipe, CharTokenizer("AB ")))
    v2 = asr.bundle()
    config = to_dict(recipe)
    config["train"] = {"renamed_option": 3, "lr": "not even a number"}
    config["data"]["a_new_data_option"] = True
    config["tokenizer"] = {"kind": "no such kind"}
    v1 = {k: v for k, v in v2.items() if k not in ("model", "features")}
    v1.update(version=1, config=config)
    torch.save(v1, tmp_path / "v1.pt")
    loaded = ASR.load(tmp_path / "v1.pt")
    assert loaded.config == asr.config
    x, lengths = waves()
    options = DecodingOptions(strategy="greedy")
    assert loaded.transcribe_batch(x, lengths, options) == asr.eval().transcribe_batch(
        x, lengths, options
    )


def test_transcribe_restores_training_mode_and_specaugment_only_trains(tiny_recipe):
    asr = fitted(ASR.from_recipe(tiny_recipe(), CharTokenizer("AB ")))
    x, lengths = waves()
    asr.train()
    texts = asr.transcribe_batch(x, lengths, DecodingOptions(strategy="greedy"))
    assert asr.training and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    feats_train, _ = asr.features(x, lengths)
    asr.eval()
    feats_eval, _ = asr.features(x, lengths)
    assert not torch.equal(feats_train, feats_eval)  # masked in training
    assert torch.equal(feats_eval, asr.features(x, lengths)[0])
    off = ASR.from_recipe(tiny_recipe("data.specaugment.enabled=false"), CharTokenizer("AB "))
    assert off.specaugment is None


def test_sentencepiece_tokenizer_travels_in_the_file(tmp_path, tiny_recipe, helpers):
    texts = ["HELLO WORLD", "GOOD MORNING", "HELLO THERE", "WORLD OF WORDS"] * 5
    spm = train_sentencepiece(texts, None, vocab_size=20, model_type="unigram")
    asr = ASR.from_recipe(tiny_recipe("model.vocab_size=20", "tokenizer.kind=unigram",
                          "tokenizer.alphabet=null"), spm)  # fmt: skip
    loaded = ASR.load(asr.save(tmp_path / "model.pt"))
    assert loaded.tokenizer.model_proto == spm.model_proto
    assert loaded.tokenizer.encode("HELLO WORLD") == spm.encode("HELLO WORLD")


def test_vocabulary_mismatch_names_the_key(tiny_recipe):
    with pytest.raises(ConfigError, match=r"model.vocab_size \(6\) must equal .* \(31\)"):
        ASR.from_recipe(tiny_recipe(), CharTokenizer())


def test_bad_files_give_one_line_errors(tmp_path, tiny_recipe):
    with pytest.raises(BundleError, match="nope.pt: no such model file"):
        ASR.load(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(
        BundleError, match=r"garbage.pt: not a mamba-asr model file \(not a PyTorch"
    ):
        ASR.load(garbage)
    truncated = tmp_path / "truncated.pt"
    torch.save({"format": "x", "w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(BundleError, match="truncated.pt: not a readable mamba-asr model file"):
        ASR.load(truncated)
    ckpt = save_checkpoint(tmp_path / "step-00000001.pt", {"model": {}})
    with pytest.raises(BundleError, match="it is a training checkpoint"):
        ASR.load(ckpt)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(BundleError, match="other.pt: not a mamba-asr model file"):
        ASR.load(other)

    asr = ASR.from_recipe(tiny_recipe(), CharTokenizer("AB "))
    data = asr.bundle()
    future = tmp_path / "future.pt"
    torch.save({**data, "version": 99}, future)
    with pytest.raises(BundleError, match="model file version 99"):
        ASR.load(future)
    broken = tmp_path / "broken.pt"
    weights = dict(data["state_dict"])
    weights.pop("model.ctc_lin.weight")
    torch.save({**data, "state_dict": weights}, broken)
    with pytest.raises(BundleError, match="broken.pt: broken mamba-asr model file") as info:
        ASR.load(broken)
    assert "\n" not in str(info.value)
    bad_config = tmp_path / "bad_config.pt"
    torch.save({**data, "model": {**data["model"], "d_model": "wide"}}, bad_config)
    with pytest.raises(BundleError, match="model.d_model must be int"):
        ASR.load(bad_config)


def test_half_bundle_is_smaller_and_close(tmp_path, tiny_recipe):
    recipe = tiny_recipe("model.d_model=64", "model.d_ffn=256")
    asr = fitted(ASR.from_recipe(recipe, CharTokenizer("AB ")))
    full, half = asr.save(tmp_path / "full.pt"), asr.save(tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    loaded = ASR.load(half)
    stored = torch.load(half, weights_only=True)["state_dict"]
    assert {v.dtype for v in stored.values() if v.numel() > 4096} == {torch.float16}
    assert stored["cmvn.mean"].dtype == torch.float32  # small statistics stay exact
    for name, tensor in asr.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == tensor.dtype, name
        torch.testing.assert_close(got, tensor, rtol=1e-3, atol=1e-3)
    x, lengths = waves()
    assert torch.equal(loaded.features(x, lengths)[0], asr.eval().features(x, lengths)[0])
