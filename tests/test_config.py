"""Recipe configs: every key checked, errors that name the key."""

from __future__ import annotations

import pytest

from mamba_asr.config import (
    ConfigError,
    ModelConfig,
    RecipeConfig,
    apply_overrides,
    from_dict,
    load_recipe,
    to_dict,
)


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_round_trip_through_dict():
    cfg = RecipeConfig(model=ModelConfig(vocab_size=31, kind="seq2seq", num_decoder_layers=2))
    assert from_dict(RecipeConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "model:\n  vocab_size: 31\n  d_modle: 128\n")
    with pytest.raises(
        ConfigError, match=r"recipe.yaml: unknown key 'model.d_modle' \(did you mean 'd_model'\?\)"
    ):
        load_recipe(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.encoder_module=lstm", "model.encoder_module must be one of 'conformer'"),
        ("model.mamba.d_state=2.5", "model.mamba.d_state must be int"),
        ("model.frontend.channels=7", "model.frontend.channels must be a list of int"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\]"),
        ("model.nhead=3", "must be divisible by model.nhead"),
        ("model.d_model=true", "model.d_model must be int"),
        ("model.mamba=3", "model.mamba must be a mapping"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe("hparams/CTC/conmamba_large.yaml", [override])


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match="missing keys in model: vocab_size, kind"):
        load_recipe(write(tmp_path, "model:\n  d_model: 128\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))


def test_overrides_parse_yaml_values_and_keep_the_input():
    data = {"model": {"vocab_size": 31, "mamba": {"d_state": 16}}}
    out = apply_overrides(data, ["model.mamba.d_state=8", "model.frontend.channels=[8, 4]"])
    assert out["model"]["mamba"]["d_state"] == 8
    assert out["model"]["frontend"]["channels"] == [8, 4]
    assert data["model"]["mamba"]["d_state"] == 16
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides(data, ["model.d_model"])


def test_ints_are_accepted_for_floats_and_lists_become_tuples():
    data = {"vocab_size": 10, "kind": "ctc", "dropout": 0, "frontend": {"channels": [8]}}
    cfg = from_dict(ModelConfig, data)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    assert cfg.frontend.channels == (8,)
    assert cfg.kind == "ctc"


def test_the_model_kind_is_stated_and_checked():
    with pytest.raises(ConfigError, match="missing key in model: kind"):
        from_dict(ModelConfig, {"vocab_size": 10}, "model")
    with pytest.raises(ConfigError, match="model.kind must be one of"):
        from_dict(ModelConfig, {"vocab_size": 10, "kind": "rnnt"}, "model")
    with pytest.raises(ConfigError, match="num_decoder_layers is for kind 'seq2seq'"):
        ModelConfig(vocab_size=10, kind="ctc", num_decoder_layers=2)
    with pytest.raises(ConfigError, match="num_decoder_layers must be >= 1 for kind 'seq2seq'"):
        ModelConfig(vocab_size=10, kind="seq2seq")


@pytest.mark.parametrize("raw", ["[1,", "{a", "'x", "@x"])
def test_an_override_that_is_not_yaml_names_the_key(raw):
    with pytest.raises(ConfigError) as info:
        load_recipe("hparams/CTC/conmamba_large.yaml", [f"train.lr={raw}"])
    message = str(info.value)
    assert "\n" not in message
    assert f"override train.lr: {raw!r} is not a valid YAML value" in message
    with pytest.raises(ConfigError, match="is not a key like key.sub"):
        apply_overrides({}, ["train..lr=1"])
