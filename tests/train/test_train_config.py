"""The recipe sections of training (train, data, tokenizer): defaults and errors naming keys."""

from __future__ import annotations

import pytest

from mamba_asr.config import (
    ConfigError,
    DataConfig,
    RecipeConfig,
    TrainConfig,
    config_differences,
    from_dict,
    load_recipe,
    to_dict,
)


def test_sections_have_defaults_and_round_trip(recipe_file):
    recipe = load_recipe(recipe_file)
    assert recipe.train == TrainConfig() and recipe.data == DataConfig()
    assert recipe.tokenizer.kind == "char" and recipe.train.precision == "auto"
    assert recipe.data.speed_perturb == (0.9, 1.0, 1.1)
    assert from_dict(RecipeConfig, to_dict(recipe)) == recipe
    for path in ("hparams/CTC/conmamba_large.yaml", "hparams/S2S/conmamba_small.yaml"):
        load_recipe(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", r"train.epochs must be >= 1, got 0"),
        ("train.lrr=0.1", r"unknown key 'train.lrr' \(did you mean 'lr'\?\)"),
        ("train.lr=fast", r"train.lr must be float, got 'fast'"),
        ("train.lr=-1.0", r"train.lr must be > 0"),
        ("train.schedule=cosine", r"train.schedule must be one of 'noam' \| 'constant'"),
        ("train.precision=fp16", r"train.precision must be one of 'auto' \| 'fp32' \| 'bf16'"),
        ("train.betas=[0.9]", r"train.betas must be two numbers"),
        ("train.average=6", r"train.average \(6\) must be <= train.keep_best \(5\)"),
        ("train.grad_accum=0", r"train.grad_accum must be >= 1"),
        ("train.checkpoint_every_steps=-1", r"train.checkpoint_every_steps must be >= 0"),
        ("train.valid_strategy=sample", r"train.valid_strategy must be one of"),
        ("train.max_grad_norm=-1", r"train.max_grad_norm must be >= 0"),
        ("data.speed_perturb=[0.9, 3.0]", r"data.speed_perturb\[1\] must be in \[0.5, 2\]"),
        ("data.speed_perturb=0.9", r"data.speed_perturb must be a list of float"),
        ("data.n_mels=40", r"data.n_mels \(40\) must equal model.frontend.n_mels \(80\)"),
        ("data.specaugment.time_width_ratio=2", r"data.specaugment.time_width_ratio must be in"),
        ("data.specaugment.freq_masks=-1", r"data.specaugment.freq_masks must be >= 0"),
        ("data.cmvn_max_utterances=0", r"data.cmvn_max_utterances must be >= 1"),
        ("tokenizer.kind=word", r"tokenizer.kind must be one of 'char' \| 'unigram' \| 'bpe'"),
        ("tokenizer.vocab_size=2", r"tokenizer.vocab_size must be >= 4"),
        ("tokenizer.alphabet=AAB", r"tokenizer.alphabet must be non-empty distinct characters"),
    ],
)
def test_bad_values_name_the_key(recipe_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_file, [override])


def test_alphabet_is_for_characters_only(recipe_file):
    with pytest.raises(ConfigError, match="tokenizer.alphabet is for kind 'char' only"):
        load_recipe(recipe_file, ["tokenizer.kind=unigram", "tokenizer.alphabet=AB"])


def test_floats_written_without_a_dot_are_floats(recipe_file):
    assert load_recipe(recipe_file, ["train.lr=5e-4"]).train.lr == 5e-4  # YAML 1.1: a string


def test_config_differences_lists_dotted_keys(recipe_file):
    a = load_recipe(recipe_file)
    b = load_recipe(recipe_file, ["train.lr=0.1", "data.specaugment.time_warp=0"])
    assert config_differences(a, b) == ["data.specaugment.time_warp", "train.lr"]
    assert config_differences(a, a) == []
    assert config_differences({"x": 1}, {"y": 1}) == ["x", "y"]
