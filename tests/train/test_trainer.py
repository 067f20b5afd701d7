"""The trainer, in-process: what a run writes, exact resume, refusals, every model type."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml

from mamba_asr.asr import ASR
from mamba_asr.config import ConfigError, to_dict
from mamba_asr.data.manifest import ManifestError
from mamba_asr.train import average_checkpoints, list_checkpoints, load_checkpoint, train


def rows(run) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def assert_same_state(a: dict, b: dict) -> None:
    """Bitwise-equal model weights and optimizer moments, same step, schedule and sampler."""
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for i, moments in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[key], b["optimizer"]["state"][i][key]), (i, key)
    assert a["scheduler"] == b["scheduler"]
    assert a["sampler"] == b["sampler"]
    assert a["progress"] == b["progress"]


def test_a_run_writes_checkpoints_metrics_and_the_averaged_model(reference_run, helpers):
    run = reference_run
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["epochs"] == 3
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    table = rows(run)
    train_rows = [r for r in table if r["train_loss"]]
    valid_rows = [r for r in table if r["wer"]]
    assert [int(r["step"]) for r in train_rows] == list(range(1, helpers.STEPS + 1))
    assert [(r["step"], r["epoch"]) for r in valid_rows] == [("4", "1"), ("8", "2"), ("12", "3")]
    assert all(float(r["lr"]) > 0 for r in train_rows)
    assert all(float(r["cer"]) >= 0 for r in valid_rows)

    ckpts = list_checkpoints(run / "checkpoints")
    newest = load_checkpoint(ckpts[-1])
    assert ckpts[-1].name == "step-00000012.pt" and newest["progress"]["epoch"] == 3
    best = newest["progress"]["best"]
    assert len(best) == 2 and [e["wer"] for e in best] == sorted(e["wer"] for e in best)
    assert {c.name for c in ckpts} == {"step-00000012.pt", *(e["file"] for e in best)}

    model = ASR.load(run / "model.pt")
    expected = average_checkpoints([run / "checkpoints" / e["file"] for e in best])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert model.cmvn.is_fitted
    assert (run / "curves.png").stat().st_size > 0
    assert "CMVN fitted" in (run / "train.log").read_text()
    if _has("tensorboard"):
        assert any((run / "tensorboard").iterdir())


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_stopping_and_resuming_gives_the_uninterrupted_run(tmp_path, corpus, tiny_recipe,
                                                            reference_run, helpers):  # fmt: skip
    out = tmp_path / "run"
    first = train(tiny_recipe(), corpus, corpus, out, device="cpu", max_steps=3)
    assert (first.step, first.finished, first.model_path) == (3, False, None)
    assert list_checkpoints(out / "checkpoints")[-1].name == "step-00000003.pt"
    train(tiny_recipe(), corpus, corpus, out, device="cpu", max_steps=4)  # an epoch's end
    train(tiny_recipe(), corpus, corpus, out, device="cpu", max_steps=6)  # mid-epoch again
    last = train(tiny_recipe(), corpus, corpus, out, device="cpu")
    assert (last.step, last.finished) == (helpers.STEPS, True)
    assert rows(out) == rows(reference_run)  # every step's loss and lr, every validation
    final = "checkpoints/step-00000012.pt"
    assert_same_state(load_checkpoint(out / final), load_checkpoint(reference_run / final))
    ours, theirs = ASR.load(out / "model.pt"), ASR.load(reference_run / "model.pt")
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs.state_dict()[name]), name


def test_a_finished_run_run_again_changes_nothing(tmp_path, corpus, tiny_recipe, reference_run):
    out = shutil.copytree(reference_run, tmp_path / "run")
    before = (out / "model.pt").read_bytes(), rows(out)
    result = train(tiny_recipe(), corpus, corpus, out, device="cpu")
    assert result.finished and result.step == 12
    assert ((out / "model.pt").read_bytes(), rows(out)) == before


@pytest.mark.parametrize("decoder", ["transformer", "mamba"])
def test_seq2seq_with_gradient_accumulation_resumes_exactly(tmp_path, corpus, tiny_recipe,
                                                            decoder):  # fmt: skip
    # 4 batches an epoch in groups of 3 and 1: 2 optimizer steps an epoch
    recipe = tiny_recipe("model.kind=seq2seq", "model.num_decoder_layers=1",
                         f"model.decoder_module={decoder}",
                         "train.grad_accum=3", "train.epochs=2", "train.checkpoint_every_steps=1",
                         "train.num_workers=1")  # fmt: skip
    whole = train(recipe, corpus, corpus, tmp_path / "a", device="cpu")
    assert whole.step == 4 and whole.finished
    train(recipe, corpus, corpus, tmp_path / "b", device="cpu", max_steps=1)
    train(recipe, corpus, corpus, tmp_path / "b", device="cpu")
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    final = "checkpoints/step-00000004.pt"
    assert_same_state(load_checkpoint(tmp_path / "a" / final),
                      load_checkpoint(tmp_path / "b" / final))  # fmt: skip
    assert ASR.load(tmp_path / "a" / "model.pt").config.model.kind == "seq2seq"


def test_sentencepiece_tokenizer_is_trained_on_the_transcripts(tmp_path, corpus, tiny_recipe):
    recipe = tiny_recipe("tokenizer.kind=bpe", "tokenizer.alphabet=null", "model.vocab_size=9",
                         "train.epochs=1")  # fmt: skip
    out = tmp_path / "run"
    train(recipe, corpus, corpus, out, device="cpu")
    assert (out / "tokenizer" / "spm.model").is_file()
    model = ASR.load(out / "model.pt")
    assert model.tokenizer.vocab_size == 9
    assert model.tokenizer.decode(model.tokenizer.encode("AB BA")) == "AB BA"


def test_a_different_recipe_is_refused_naming_the_key(tmp_path, corpus, tiny_recipe):
    out = tmp_path / "run"
    train(tiny_recipe(), corpus, corpus, out, device="cpu", max_steps=1)
    saved = (out / "recipe.yaml").read_text()
    with pytest.raises(ConfigError, match=r"train.lr is 0.002 there, 0.001 now") as info:
        train(tiny_recipe("train.lr=0.001"), corpus, corpus, out, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"data.specaugment.time_masks is 2 there, 3 now"):
        train(tiny_recipe("data.specaugment.time_masks=3"), corpus, corpus, out, device="cpu")
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_recipe(), corpus, corpus, out, device="cpu", resume=False)
    assert (out / "recipe.yaml").read_text() == saved
    assert yaml.safe_load(saved) == to_dict(tiny_recipe())


def test_bad_inputs_fail_before_anything_is_written(tmp_path, corpus, tiny_recipe):
    out = tmp_path / "run"
    with pytest.raises(ManifestError, match="missing.jsonl: no such manifest file"):
        train(tiny_recipe(), tmp_path / "missing.jsonl", corpus, out, device="cpu")
    with pytest.raises(ConfigError, match=r"model.vocab_size \(7\) must equal the char"):
        train(tiny_recipe("model.vocab_size=7"), corpus, corpus, out, device="cpu")
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        train(tiny_recipe(), corpus, corpus, out, device="cpu", max_steps=0)
    assert not out.exists()
    foreign = tmp_path / "foreign"
    (foreign / "checkpoints").mkdir(parents=True)
    (foreign / "metrics.csv").write_text("precious\n")
    with pytest.raises(ValueError, match="holds training output .* but no recipe.yaml"):
        train(tiny_recipe(), corpus, corpus, foreign, device="cpu")
    assert (foreign / "metrics.csv").read_text() == "precious\n"


def test_max_seconds_stops_with_a_checkpoint_and_reports_speed(tmp_path, corpus, tiny_recipe):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        train(tiny_recipe(), corpus, corpus, out, device="cpu", max_seconds=0)
    result = train(tiny_recipe("train.log_every=1"), corpus, corpus, out, device="cpu",
                   max_seconds=1e-6)  # fmt: skip
    assert result.step == 1 and not result.finished and result.model_path is None
    assert [c.name for c in list_checkpoints(out / "checkpoints")] == ["step-00000001.pt"]
    assert [s for s, _ in result.throughput] == [1] and result.throughput[0][1] > 0
    assert "s of audio per second" in (out / "train.log").read_text()
    resumed = train(tiny_recipe("train.log_every=1"), corpus, corpus, out, device="cpu")
    assert resumed.finished and resumed.step > 1


def test_init_from_a_model_file_takes_its_tokenizer_cmvn_and_weights(
    tmp_path, corpus, tiny_recipe, reference_run
):
    source = ASR.load(reference_run / "model.pt")
    with pytest.raises(ConfigError, match="train.init_from: unknown model .*none.pt"):
        train(
            tiny_recipe(f"train.init_from={tmp_path / 'none.pt'}"), corpus, corpus, tmp_path / "x"
        )
    other = tiny_recipe("model.d_ffn=48", f"train.init_from={reference_run / 'model.pt'}")
    with pytest.raises(ConfigError, match=r"does not fit this recipe's model: .* \(64, 32\) there"):
        train(other, corpus, corpus, tmp_path / "y")
    recipe = tiny_recipe(f"train.init_from={reference_run / 'model.pt'}", "train.lr=1e-9")
    out = tmp_path / "run"
    train(recipe, corpus, corpus, out, device="cpu", max_steps=1)
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["model"]
    for name, tensor in source.state_dict().items():  # lr 1e-9: one step moves nothing visibly
        torch.testing.assert_close(state[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert ASR.load(reference_run / "model.pt").tokenizer.alphabet == source.tokenizer.alphabet


def test_decay_to_init_pulls_each_step_towards_the_starting_weights(
    tmp_path, corpus, tiny_recipe, reference_run
):
    """One step with train.decay_to_init is the plain step moved lr * decay_to_init of the way
    back to the start; a pull of more than all the way keeps the start; a resumed run decays to
    the start, not to the weights it resumed from."""
    start_file = reference_run / "model.pt"
    with pytest.raises(ConfigError, match="train.decay_to_init needs train.init_from"):
        tiny_recipe("train.decay_to_init=1")
    with pytest.raises(ConfigError, match="train.decay_to_init must be >= 0, got -1"):
        tiny_recipe(f"train.init_from={start_file}", "train.decay_to_init=-1")
    start = ASR.load(start_file).state_dict()
    params = {n for n, _ in ASR.load(start_file).named_parameters()}

    def last(out):
        return load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["model"]

    init = f"train.init_from={start_file}"
    train(tiny_recipe(init, "train.log_every=1"), corpus, corpus, tmp_path / "plain",
          device="cpu", max_steps=1)  # fmt: skip
    train(tiny_recipe(init, "train.log_every=1", "train.decay_to_init=300"), corpus, corpus,
          tmp_path / "pulled", device="cpu", max_steps=1)  # fmt: skip
    lr = float(rows(tmp_path / "pulled")[0]["lr"])
    assert 0 < lr * 300 < 1
    plain, pulled = last(tmp_path / "plain"), last(tmp_path / "pulled")
    moved = 0
    for name in params:
        expected = plain[name] + lr * 300 * (start[name] - plain[name])
        torch.testing.assert_close(pulled[name], expected, rtol=1e-5, atol=1e-7, msg=name)
        moved += not torch.equal(plain[name], start[name])
    assert moved > len(params) // 2  # the plain step did move the weights

    held = tiny_recipe(init, "train.decay_to_init=1e12")
    train(held, corpus, corpus, tmp_path / "held", device="cpu", max_steps=3)
    for name in params:
        assert torch.equal(last(tmp_path / "held")[name], start[name]), name

    # stopped after 2 steps and resumed == uninterrupted (the anchor is the start both times)
    decayed = tiny_recipe(init, "train.decay_to_init=20", "train.checkpoint_every_steps=1")
    train(decayed, corpus, corpus, tmp_path / "whole", device="cpu", max_steps=4)
    train(decayed, corpus, corpus, tmp_path / "split", device="cpu", max_steps=2)
    train(decayed, corpus, corpus, tmp_path / "split", device="cpu", max_steps=4)
    whole, split = last(tmp_path / "whole"), last(tmp_path / "split")
    for name in whole:
        assert torch.equal(whole[name], split[name]), name


def test_a_held_out_set_is_validated_beside_and_can_choose_the_checkpoints(
    tmp_path, corpus, tiny_recipe, reference_run
):
    """--valid-heldout: its WER and CER at every epoch end in metrics.csv, training itself
    unchanged (the same rows as a run without it); train.select_on heldout ranks the kept
    checkpoints by it; refused without the set, or with an empty one, before anything is
    written."""
    held = tmp_path / "held.jsonl"  # three of the corpus's utterances, by absolute path
    lines = [json.loads(line) for line in corpus.read_text().splitlines()[:3]]
    held.write_text("".join(json.dumps({**u, "audio": str(corpus.parent / u["audio"])}) + "\n"
                            for u in lines))  # fmt: skip
    out = tmp_path / "run"
    train(tiny_recipe(), corpus, corpus, out, device="cpu", heldout_manifest=held)
    table, reference = rows(out), rows(reference_run)
    for name in ("train_loss", "valid_loss", "wer", "cer"):
        assert [r[name] for r in table] == [r[name] for r in reference], name
    valid_rows = [r for r in table if r["wer"]]
    assert len(valid_rows) == 3 and all(r["wer_heldout"] and r["cer_heldout"] for r in valid_rows)
    assert not any(r["wer_heldout"] for r in table if r["train_loss"])
    best = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["progress"]["best"]
    by_step = {int(r["step"]): r for r in valid_rows}
    assert [e["wer"] for e in best] == pytest.approx([float(by_step[e["step"]]["wer"])
                                                      for e in best], rel=1e-5)  # fmt: skip
    assert "held-out set: WER" in (out / "train.log").read_text()

    chosen = tmp_path / "chosen"
    train(tiny_recipe("train.select_on=heldout"), corpus, corpus, chosen, device="cpu",
          heldout_manifest=held)  # fmt: skip
    state = load_checkpoint(list_checkpoints(chosen / "checkpoints")[-1])
    ranked = sorted(valid_rows, key=lambda r: (float(r["wer_heldout"]), -int(r["step"])))
    kept = state["progress"]["best"]
    assert [e["step"] for e in kept] == [int(r["step"]) for r in ranked[:2]]
    assert [e["wer"] for e in kept] == pytest.approx([float(r["wer_heldout"])
                                                      for r in ranked[:2]], rel=1e-5)  # fmt: skip
    assert {round(e["wer"], 5) for e in kept}.isdisjoint(round(float(r["wer"]), 5)
                                                         for r in valid_rows)  # fmt: skip
    assert state["valid_heldout"]["utterances"] == 3

    with pytest.raises(ConfigError, match=r"train.select_on heldout needs a held-out"):
        train(tiny_recipe("train.select_on=heldout"), corpus, corpus, tmp_path / "x")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ManifestError, match="empty.jsonl: no utterances in the held-out set"):
        train(tiny_recipe(), corpus, corpus, tmp_path / "y", heldout_manifest=empty)
    with pytest.raises(ConfigError, match="train.select_on must be one of"):
        tiny_recipe("train.select_on=test")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_profile_env_records_steps_and_the_log_shows_data_waits(
    tmp_path, corpus, tiny_recipe, monkeypatch
):
    monkeypatch.setenv("MAMBA_ASR_PROFILE", f"{tmp_path / 'prof'},1,2")
    train(tiny_recipe("train.log_every=1"), corpus, corpus, tmp_path / "run", device="cpu",
          max_steps=4)  # fmt: skip
    assert (tmp_path / "prof" / "rank0.json").stat().st_size > 0
    assert "Self CPU" in (tmp_path / "prof" / "rank0.txt").read_text()
    assert "of the time waiting for data" in (tmp_path / "run" / "train.log").read_text()
    monkeypatch.setenv("MAMBA_ASR_PROFILE", "nowhere")
    with pytest.raises(ValueError, match="MAMBA_ASR_PROFILE must be DIR,FIRST,COUNT"):
        train(tiny_recipe(), corpus, corpus, tmp_path / "run2", device="cpu", max_steps=1)


def test_a_run_recipe_that_is_not_utf8_is_named(tmp_path, corpus, tiny_recipe):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{out / 'recipe.yaml'}:1: not UTF-8 text"):
        train(tiny_recipe(), corpus, corpus, out, device="cpu")


def test_an_empty_training_manifest_is_refused_before_anything_is_written(
    tmp_path, corpus, tiny_recipe
):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "run"
    with pytest.raises(ManifestError, match="empty.jsonl: no utterances, nothing to train on"):
        train(tiny_recipe(), empty, corpus, out, device="cpu")
    assert not out.exists()
