"""Feature distillation (``train.feature_kd``): the ridge loss against a plain float64
reference (value and gradient), what it measures, the frame pairing (resampling, delay,
padding), the store of features, and a training run of a tiny transducer with it.

The stores are random features written in the extractor's format (the mechanics need no real
teacher); ``scripts/realspeech/moonshine_features.py`` itself runs in its own torch-free
environment and is checked in tests/test_scripts.py.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from helpers.feature_stores import corpus_store, write_store
from helpers.recipes import tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.config import ConfigError
from mamba_asr.train import list_checkpoints, load_checkpoint, train
from mamba_asr.train.feature_kd import (
    FeatureTargets,
    feature_kd_loss,
    resample_rows,
    ridge_kd,
    ridge_kd_cross,
    ridge_kd_cross_reference,
    ridge_kd_reference,
)

STUDENT = ("model.dropout=0.1", "train.epochs=2")


def student(*more: str):
    return tiny_recipe("transducer", *STUDENT, *more)


# --- the loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("n,m,d", [(40, 6, 5), (300, 16, 9), (12, 16, 3)])
def test_ridge_kd_equals_the_float64_reference_value_and_gradient(n, m, d):
    g = torch.Generator().manual_seed(n + m)
    hidden = (torch.randn(n, m, generator=g) * 3 + 1).requires_grad_()
    targets = torch.randn(n, m, generator=g) @ torch.randn(m, d, generator=g)
    targets = targets + torch.randn(n, d, generator=g)
    ref_hidden = hidden.detach().clone().requires_grad_()
    value = ridge_kd(hidden, targets, 1e-2)
    ref = ridge_kd_reference(ref_hidden, targets, 1e-2)
    torch.testing.assert_close(value, ref, rtol=1e-4, atol=1e-6)
    value.backward()
    ref.backward()
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, rtol=1e-3, atol=1e-6)
    assert hidden.grad.abs().sum() > 0


def test_ridge_kd_under_bf16_autocast_is_computed_in_float32():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(500, 32, generator=g).bfloat16()
    targets = hidden.float() @ torch.randn(32, 6, generator=g) + 0.1 * torch.randn(
        500, 6, generator=g
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ridge_kd(hidden, targets, 1e-4)
    assert value.dtype == torch.float32
    torch.testing.assert_close(
        value, ridge_kd_reference(hidden, targets, 1e-4), rtol=1e-3, atol=1e-6
    )


def test_ridge_kd_of_a_constant_layer_is_1_not_an_error():
    hidden = torch.ones(50, 8, requires_grad=True)
    value = ridge_kd(hidden, torch.randn(50, 3), 1e-3)
    torch.testing.assert_close(value, torch.tensor(1.0))
    value.backward()
    assert torch.isfinite(hidden.grad).all()


def test_ridge_kd_is_near_0_for_an_affine_map_and_near_1_for_unrelated_features():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2000, 8, generator=g)
    mapped = hidden @ torch.randn(8, 5, generator=g) + 3.0
    assert ridge_kd(hidden, mapped, 1e-6) < 1e-4
    unrelated = torch.randn(2000, 5, generator=g)
    assert 0.98 < ridge_kd(hidden, unrelated, 1e-6) <= 1.0  # 8 of 2000 dof: about 0.996
    # invariant to the layer's basis: any invertible map of the hidden states, same loss
    mixed = hidden @ torch.randn(8, 8, generator=g)
    torch.testing.assert_close(ridge_kd(mixed, unrelated, 1e-6), ridge_kd(hidden, unrelated, 1e-6))


@pytest.mark.parametrize("n, m, d", [(40, 5, 3), (300, 16, 7)])
def test_cross_fitted_ridge_kd_equals_its_float64_reference_value_and_gradient(n, m, d):
    g = torch.Generator().manual_seed(n + m)
    hidden = torch.randn(n, m, generator=g)
    targets = hidden @ torch.randn(m, d, generator=g) + torch.randn(n, d, generator=g)
    fold = (torch.arange(n) * 7 // n) % 2  # runs of frames, as utterances give them
    grads = []
    for fn in (ridge_kd_cross, ridge_kd_cross_reference):
        leaf = hidden.clone().requires_grad_()
        value = fn(leaf, targets, fold, 1e-2)
        value.backward()
        grads.append((value, leaf.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1].float(), rtol=1e-3, atol=1e-6)


def test_cross_fitted_ridge_kd_does_not_count_a_chance_fit():
    """Unrelated features, few frames per dimension: in-sample the map explains about M / N of
    them by chance; fitted on one fold and scored on the other, nothing (the loss is >= 1)."""
    g = torch.Generator().manual_seed(4)
    hidden, unrelated = torch.randn(200, 40, generator=g), torch.randn(200, 6, generator=g)
    fold = torch.arange(200) % 2
    assert ridge_kd(hidden, unrelated, 1e-6) < 0.85  # 40 of 200 dof explained by chance
    assert ridge_kd_cross(hidden, unrelated, fold, 1e-6) > 1.0
    mapped = hidden @ torch.randn(40, 6, generator=g) - 2.0
    assert ridge_kd_cross(hidden, mapped, fold, 1e-6) < 1e-4  # an affine map still fits


def test_feature_kd_cross_fit_deals_utterances_into_two_folds():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(4, 12, 3, generator=g)
    lengths = torch.tensor([12, 9, 11, 8])
    targets = [torch.randn(int(n), 2, generator=g) for n in lengths]
    targets[2] = None  # no features: not in either fold
    value = feature_kd_loss(hidden, lengths, targets, delay=1, ridge=1e-3, cross_fit=True)
    h = [hidden[0, 1:12], hidden[1, 1:9], hidden[3, 1:8]]
    y = [targets[0][:11], targets[1][:8], targets[3][:7]]
    fold = torch.cat([torch.zeros(11), torch.ones(8), torch.zeros(7)])
    torch.testing.assert_close(value, ridge_kd_cross(torch.cat(h), torch.cat(y), fold, 1e-3))
    # one utterance: no second fold, so the in-sample loss
    one = feature_kd_loss(hidden, lengths, [targets[0], None, None, None], 1, 1e-3, True)
    torch.testing.assert_close(one, ridge_kd(h[0], y[0], 1e-3))


def test_resample_rows_keeps_equal_lengths_and_stretches_linearly():
    rows = torch.arange(8.0).repeat(3, 1).T  # (8, 3): row r holds r
    assert resample_rows(rows, 8) is rows
    out = resample_rows(rows, 16)
    assert out.shape == (16, 3)
    torch.testing.assert_close(out[:, 0], torch.nn.functional.interpolate(
        rows.T[None], size=16, mode="linear", align_corners=False)[0, 0])  # fmt: skip
    assert torch.all(out[1:, 0] >= out[:-1, 0])  # monotone, as the rows


def test_feature_kd_pairs_frame_t_with_row_t_minus_delay_and_ignores_padding():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 10, 4, generator=g, requires_grad=True)
    lengths = torch.tensor([10, 7, 9])
    targets = [torch.randn(10, 3, generator=g), torch.randn(7, 3, generator=g), None]
    value = feature_kd_loss(hidden, lengths, targets, delay=2, ridge=1e-3)
    expected = ridge_kd(torch.cat([hidden[0, 2:10], hidden[1, 2:7]]),
                        torch.cat([targets[0][:8], targets[1][:5]]), 1e-3)  # fmt: skip
    torch.testing.assert_close(value, expected)
    value.backward()
    assert hidden.grad[2].abs().sum() == 0  # no features: nothing learnt from it
    assert hidden.grad[1, 7:].abs().sum() == 0  # padding
    assert hidden.grad[:2, :2].abs().sum() == 0  # the first `delay` frames pair with nothing
    # what the padding holds changes nothing
    padded = hidden.detach().clone()
    padded[1, 7:] = 1e3
    torch.testing.assert_close(feature_kd_loss(padded, lengths, targets, 2), value.detach())
    assert feature_kd_loss(hidden, lengths, [None, None, None], 2) is None


def test_a_store_gives_standardised_rows_and_none_for_ids_it_lacks(tmp_path):
    g = np.random.default_rng(0)
    store = write_store(tmp_path / "s", {"a": g.normal(2, 3, (5, 4)), "b": g.normal(2, 3, (7, 4))})
    targets = FeatureTargets(store)
    assert len(targets) == 2 and targets.dim == 4 and targets.frame_ms == 80
    both = torch.cat([targets.get("a"), targets.get("b")])
    assert both.shape == (12, 4)
    torch.testing.assert_close(both.mean(0), torch.zeros(4), atol=2e-3, rtol=0)
    assert targets.get("c") is None


@pytest.mark.parametrize(
    "damage,message",
    [
        ("no_index", "no index.json there"),
        ("bad_json", "unreadable"),
        ("short", "points past the"),
        ("width", "describes 3 values a row"),
    ],
)  # fmt: skip
def test_a_broken_store_is_a_one_line_config_error(tmp_path, damage, message):
    store = write_store(tmp_path / "s", {"a": np.ones((5, 4)), "b": np.zeros((2, 4))})
    meta = json.loads((store / "index.json").read_text())
    if damage == "no_index":
        (store / "index.json").unlink()
    elif damage == "bad_json":
        (store / "index.json").write_text("{")
    elif damage == "short":
        meta["utterances"]["b"] = [5, 9]
        (store / "index.json").write_text(json.dumps(meta))
    else:
        meta["mean"] = meta["mean"][:3]
        (store / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=message) as info:
        FeatureTargets(store)
    assert "\n" not in str(info.value)


# --- in a training run ----------------------------------------------------------------------


def test_a_run_with_feature_kd_logs_it_and_exports_the_model_unchanged(tmp_path, corpus):
    store = corpus_store(tmp_path / "store", corpus, skip=3)
    out = tmp_path / "run"
    recipe = student(f"train.feature_kd.features={store}", "train.feature_kd.weight=2")
    result = train(recipe, corpus, corpus, out, device="cpu")
    assert result.finished
    with (out / "metrics.csv").open() as f:
        train_rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    kd = [float(r["kd_loss"]) for r in train_rows]
    assert kd and all(0 <= v <= 1 for v in kd) and max(kd) > 0.05
    log = (out / "train.log").read_text()
    assert "feature distillation from" in log and "9 of 12 training utterances have features" in log
    # nothing is added to the model: its weights are the architecture's own
    plain = ASR.from_recipe(student(), ASR.load(out / "model.pt").tokenizer).state_dict()
    assert ASR.load(out / "model.pt").state_dict().keys() == plain.keys()


def test_a_cross_fitted_run_says_so_and_trains_otherwise(tmp_path, corpus):
    store = corpus_store(tmp_path / "store", corpus)
    feature = (f"train.feature_kd.features={store}", "train.feature_kd.weight=5")
    weights = {}
    for name, more in {"in": (), "cross": ("train.feature_kd.cross_fit=true",)}.items():
        out = tmp_path / name
        train(student(*feature, *more), corpus, corpus, out, device="cpu", max_steps=3)
        weights[name] = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["model"]
        assert ("cross-fitted" in (out / "train.log").read_text()) == (name == "cross")
    assert any(not torch.equal(weights["in"][k], weights["cross"][k]) for k in weights["in"])


def test_feature_kd_changes_the_training_and_weight_0_does_not(tmp_path, corpus):
    store = corpus_store(tmp_path / "store", corpus)
    feature = f"train.feature_kd.features={store}"
    runs = {"plain": (), "zero": (feature, "train.feature_kd.weight=0"),
            "fkd": (feature, "train.feature_kd.weight=5")}  # fmt: skip
    weights = {}
    for name, more in runs.items():
        train(student(*more), corpus, corpus, tmp_path / name, device="cpu", max_steps=3)
        newest = list_checkpoints(tmp_path / name / "checkpoints")[-1]
        weights[name] = load_checkpoint(newest)["model"]
    same = all(torch.equal(weights["plain"][k], weights["zero"][k]) for k in weights["plain"])
    differ = any(not torch.equal(weights["plain"][k], weights["fkd"][k]) for k in weights["plain"])
    assert same and differ


@pytest.mark.parametrize(
    "more,message",
    [
        (("train.feature_kd.layer=2",), "train.feature_kd.layer is 2, the encoder has 1 layers"),
        ((), "none of the 12 training utterances has features there"),
        (("FRAME",), "its rows are 40 ms apart, the student's encoder frames 80 ms"),
    ],
)  # fmt: skip
def test_a_store_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path, corpus, more, message
):
    if "FRAME" in more:
        store = corpus_store(tmp_path / "store", corpus, frame_ms=40)
        more = ()
    elif more:
        store = corpus_store(tmp_path / "store", corpus)
    else:
        store = write_store(tmp_path / "store", {"other": np.ones((3, 6))})
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message) as info:
        train(student(f"train.feature_kd.features={store}", *more), corpus, corpus, out,
              device="cpu")  # fmt: skip
    assert "\n" not in str(info.value)
    assert not out.exists()


@pytest.mark.parametrize(
    "key,message",
    [
        ("weight=-1", "train.feature_kd.weight must be >= 0"),
        ("ridge=0", "train.feature_kd.ridge must be > 0"),
        ("delay=-1", "train.feature_kd.delay must be >= 0"),
        ("layer=0", "train.feature_kd.layer must be >= 1"),
        ("bogus=1", "bogus"),
    ],
)  # fmt: skip
def test_bad_feature_kd_keys_are_config_errors(key, message):
    with pytest.raises(ConfigError, match=message):
        student(f"train.feature_kd.{key}")
