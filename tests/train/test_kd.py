"""Knowledge distillation (``train.kd``, ``mamba-asr train --teacher``): the KD losses against
plain references, masking of padded frames, the teacher in a training run (frozen, eval mode,
not in the checkpoints, its file pinned by hash), exact resume, and the one-line errors.

The teachers are random tiny models saved as model files (the mechanics need no trained one):
a ConMamba CTC model with the 8x front end (the tiny transducer student's frame rate) and a
wider tiny transducer with an auxiliary CTC head.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from helpers.recipes import tiny_asr, tiny_recipe
from mamba_asr.asr import ASR
from mamba_asr.cli import main
from mamba_asr.config import ConfigError, KDConfig, load_recipe
from mamba_asr.models.losses import LossOutput
from mamba_asr.text import CharTokenizer
from mamba_asr.train import distill, list_checkpoints, load_checkpoint, train, trainer
from mamba_asr.train.distill import kd_kl, lattice_kd, sha256_file

CTC_8X = ("model.frontend.channels=[4, 4, 4]",)  # conv2d, 3 stages of stride 2: 80 ms frames
STUDENT = ("model.transducer.aux_ctc_weight=0.2", "model.dropout=0.1", "train.epochs=2")


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def save_teacher(path: Path, kind: str, *more: str, alphabet: str = "AB ", seed: int = 1) -> Path:
    torch.manual_seed(seed)
    recipe = tiny_recipe(kind, f"model.vocab_size={3 + len(alphabet)}", *more)
    ASR.from_recipe(recipe, CharTokenizer(alphabet)).save(path)
    return path


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("teachers")
    (folder / "garbage.pt").write_bytes(b"not a model")
    return {
        "ctc": save_teacher(folder / "ctc.pt", "ctc", *CTC_8X),
        "transducer": save_teacher(
            folder / "rnnt.pt",
            "transducer",
            "model.d_model=32",
            "model.transducer.aux_ctc_weight=0.2",
        ),  # fmt: skip
        "ctc_4x": save_teacher(folder / "ctc4.pt", "ctc"),
        "no_head": save_teacher(
            folder / "nohead.pt", "transducer", "model.transducer.aux_ctc_weight=0"
        ),  # fmt: skip
        "vocab": save_teacher(folder / "vocab.pt", "ctc", *CTC_8X, alphabet="ABC "),
        "mels40": save_teacher(
            folder / "mels40.pt", "ctc", *CTC_8X, "data.n_mels=40", "model.frontend.n_mels=40"
        ),
        "8khz": save_teacher(folder / "8khz.pt", "ctc", *CTC_8X, "data.sample_rate=8000"),
        "garbage": folder / "garbage.pt",
        "pieces": save_teacher(folder / "pieces.pt", "ctc", *CTC_8X, alphabet="BA "),
    }


def student(*more: str):
    return tiny_recipe("transducer", *STUDENT, *more)


# --- the losses against plain references -------------------------------------------------------


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, lengths: list[int], t: float):
    """Per utterance: torch's kl_div over its valid frames only, times T^2."""
    return torch.stack([
        F.kl_div(F.log_softmax(student[b, :n] / t, -1), F.log_softmax(teacher[b, :n] / t, -1),
                 log_target=True, reduction="sum") * t**2
        for b, n in enumerate(lengths)
    ])  # fmt: skip


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_kl_equals_kl_div_over_the_valid_frames_value_and_gradient(temperature):
    torch.manual_seed(0)
    lengths = [7, 4, 1]
    s = torch.randn(3, 7, 5, requires_grad=True)
    t = torch.randn(3, 7, 5) * 2
    s_ref = s.detach().clone().requires_grad_(True)
    for b, n in enumerate(lengths):  # padding holds garbage, even inf and NaN
        with torch.no_grad():
            s[b, n:] = float("nan")
        t[b, n:] = float("inf")
    got = kd_kl(s, t, torch.tensor(lengths), temperature, reduction="none")
    want = reference_kd(s_ref, t, lengths, temperature)
    torch.testing.assert_close(got, want)
    batchmean = kd_kl(s, t, torch.tensor(lengths), temperature)
    torch.testing.assert_close(batchmean, want.sum() / 3)
    batchmean.backward()
    (want.sum() / 3).backward()
    for b, n in enumerate(lengths):
        torch.testing.assert_close(s.grad[b, :n], s_ref.grad[b, :n])
        assert torch.equal(s.grad[b, n:], torch.zeros_like(s.grad[b, n:]))  # padding: none


def test_kd_is_zero_when_student_and_teacher_agree():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5, requires_grad=True)
    log_probs = logits.detach().log_softmax(-1)  # the same distributions as the logits
    for t in (1.0, 3.0):
        kd = kd_kl(logits, log_probs, torch.tensor([6, 3]), t)
        (grad,) = torch.autograd.grad(kd, logits)
        assert abs(float(kd.detach())) < 1e-6 and grad.abs().max() < 1e-6
    band = torch.randn(2, 6, 3, 5, requires_grad=True)
    kd = lattice_kd(band, band.detach(), torch.tensor([6, 3]), torch.tensor([4, 1]), None, 2.0)
    assert abs(float(kd.detach())) < 1e-6


def test_a_padded_batch_gives_each_utterance_the_kd_it_has_alone():
    torch.manual_seed(0)
    lengths = [5, 9, 2]
    alone = [(torch.randn(1, n, 6), torch.randn(1, n, 6)) for n in lengths]
    s = torch.randn(3, 9, 6) * 50  # padding: large values that would dominate if counted
    t = torch.randn(3, 9, 6) * 50
    for b, (a_s, a_t) in enumerate(alone):
        s[b, : lengths[b]], t[b, : lengths[b]] = a_s[0], a_t[0]
    batch = kd_kl(s, t, torch.tensor(lengths), 2.0, reduction="none")
    each = torch.cat([kd_kl(a_s, a_t, torch.tensor([a_s.shape[1]]), 2.0, "none")
                      for a_s, a_t in alone])  # fmt: skip
    torch.testing.assert_close(batch, each)


def test_lattice_kd_equals_a_per_node_reference_on_a_band():
    torch.manual_seed(0)
    frames, targets, width = torch.tensor([4, 2]), torch.tensor([3, 1]), 3
    s = torch.randn(2, 4, width, 5, requires_grad=True)
    t = torch.randn(2, 4, width, 5)
    starts = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])
    ranges = starts[:, :, None] + torch.arange(width)  # utterance 1: position 2 > its 1 token
    got = lattice_kd(s, t, frames, targets, ranges, 1.5, reduction="none")
    want = []
    for b in range(2):
        total = 0.0
        for f in range(int(frames[b])):
            rows = [r for r in range(width) if ranges[b, f, r] <= targets[b]]
            kl = [F.kl_div(F.log_softmax(s[b, f, r] / 1.5, -1), F.log_softmax(t[b, f, r] / 1.5, -1),
                           log_target=True, reduction="sum") for r in rows]  # fmt: skip
            total = total + torch.stack(kl).mean()
        want.append(total * 1.5**2)
    torch.testing.assert_close(got, torch.stack(want))
    (grad,) = torch.autograd.grad(got.sum(), s)
    (want_grad,) = torch.autograd.grad(torch.stack(want).sum(), s)
    torch.testing.assert_close(grad, want_grad)
    assert torch.equal(grad[1, 2:], torch.zeros_like(grad[1, 2:]))  # padded frames
    assert torch.equal(grad[1, :, 2], torch.zeros_like(grad[1, :, 2]))  # past the tokens


def test_models_padded_together_give_each_utterance_its_own_kd(tmp_path, teachers):
    """Whole models: a transducer student's aux CTC head against a transducer teacher, each
    utterance alone and in a padded batch."""
    asr = tiny_asr("transducer", "model.transducer.aux_ctc_weight=0.2", seed=0)
    kd = KDConfig(teacher=str(teachers["transducer"]), temperature=2.0)
    teacher = distill.Teacher(torch.load(teachers["transducer"], weights_only=True), kd, "cpu")
    torch.manual_seed(3)
    waves = [torch.randn(n) * 0.1 for n in (16000, 9000, 12345)]
    texts = [[3, 4, 5], [4], [5, 3]]

    def per_utterance(batch: list[int]) -> torch.Tensor:
        n = max(len(waves[i]) for i in batch)
        w = torch.stack([F.pad(waves[i], (0, n - len(waves[i]))) for i in batch])
        wl = torch.tensor([len(waves[i]) for i in batch])
        s = max(len(texts[i]) for i in batch)
        tg = torch.tensor([texts[i] + [0] * (s - len(texts[i])) for i in batch])
        tl = torch.tensor([len(texts[i]) for i in batch])
        feats, lengths = asr.features(w, wl)
        out = asr.model.loss(feats, lengths, tg, tl)
        teacher_lp, teacher_len = teacher.ctc_log_probs(w, wl)
        assert torch.equal(teacher_len, out.lengths)
        return kd_kl(out.log_probs, teacher_lp, out.lengths, 2.0, reduction="none")

    together = per_utterance([0, 1, 2])
    alone = torch.cat([per_utterance([i]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert (alone > 0).all()


# --- training with a teacher -------------------------------------------------------------------


class WatchedTeacher(distill.Teacher):
    """The trainer's teacher, checked at every batch: eval mode, no gradients anywhere."""

    calls: list[bool] = []

    def loss(self, out: LossOutput, *args):  # type: ignore[override]
        params = list(self.asr.parameters())
        frozen = not self.asr.training and not any(p.requires_grad for p in params)
        value = super().loss(out, *args)
        WatchedTeacher.calls.append(frozen and all(p.grad is None for p in params))
        return value


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, corpus, teachers) -> tuple[Path, Path]:
    """An uninterrupted 8-step run of the transducer student with the CTC teacher."""
    out = tmp_path_factory.mktemp("kd") / "run"
    recipe = student(f"train.kd.teacher={teachers['ctc']}", "train.kd.weight=0.5",
                     "train.kd.temperature=2")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "Teacher", WatchedTeacher)
        WatchedTeacher.calls.clear()
        result = train(recipe, corpus, corpus, out, device="cpu")
    assert result.finished and result.step == 8
    assert len(WatchedTeacher.calls) == 8 and all(WatchedTeacher.calls)
    return out, teachers["ctc"]


def test_a_kd_run_logs_the_kd_loss_and_records_the_teacher_not_its_weights(kd_run):
    out, teacher = kd_run
    table = rows(out)
    train_rows = [r for r in table if r["train_loss"]]
    assert len(train_rows) == 8 and all(float(r["kd_loss"]) > 0 for r in train_rows)
    assert all(r["kd_loss"] == "" for r in table if r["wer"])
    kd = yaml.safe_load((out / "recipe.yaml").read_text())["train"]["kd"]
    assert kd == {"teacher": str(teacher.resolve()), "weight": 0.5, "temperature": 2.0,
                  "target": "ctc", "teacher_sha256": sha256_file(teacher)}  # fmt: skip
    newest = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert newest["config"]["train"]["kd"] == kd
    own = ASR.from_recipe(student(), CharTokenizer("AB ")).state_dict()
    assert newest["model"].keys() == own.keys()  # the student's weights, no teacher's
    log = (out / "train.log").read_text()
    assert "distilling from" in log and ", KD " in log
    assert ASR.load(out / "model.pt").config.model.kind == "transducer"


def test_a_kd_run_stopped_and_resumed_gives_the_uninterrupted_run(tmp_path, corpus, kd_run):
    reference, teacher = kd_run
    out = tmp_path / "run"
    recipe = student(f"train.kd.teacher={teacher}", "train.kd.weight=0.5",
                     "train.kd.temperature=2")  # fmt: skip
    assert train(recipe, corpus, corpus, out, device="cpu", max_steps=3).step == 3
    # resumed from the run's own recipe.yaml: it holds the teacher's path and hash
    last = train(load_recipe(out / "recipe.yaml"), corpus, corpus, out, device="cpu")
    assert last.finished and last.step == 8
    assert rows(out) == rows(reference)
    final = "checkpoints/step-00000008.pt"
    a, b = load_checkpoint(out / final), load_checkpoint(reference / final)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["progress"] == b["progress"]


def test_a_changed_teacher_file_is_refused_on_resume(tmp_path, corpus, teachers):
    teacher = save_teacher(tmp_path / "t.pt", "ctc", *CTC_8X)
    recipe = student(f"train.kd.teacher={teacher}")
    out = tmp_path / "run"
    train(recipe, corpus, corpus, out, device="cpu", max_steps=1)
    pinned = yaml.safe_load((out / "recipe.yaml").read_text())["train"]["kd"]["teacher_sha256"]
    save_teacher(teacher, "ctc", *CTC_8X, seed=2)  # other weights, same path
    with pytest.raises(ConfigError, match="train.kd.teacher_sha256 is") as info:
        train(recipe, corpus, corpus, out, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=f"SHA-256 {pinned[:12]}.*the teacher file changed"):
        train(load_recipe(out / "recipe.yaml"), corpus, corpus, out, device="cpu")


def test_a_teacher_with_other_features_computes_its_own(tmp_path, corpus, teachers):
    """40 mel bins against the student's 80: the teacher's own filterbank and CMVN."""
    recipe = student(f"train.kd.teacher={teachers['mels40']}", "train.epochs=1")
    assert train(recipe, corpus, corpus, tmp_path / "run", device="cpu", max_steps=1).step == 1
    assert float(rows(tmp_path / "run")[0]["kd_loss"]) > 0


@pytest.mark.parametrize("loss", ["full", "pruned"])
def test_lattice_kd_trains_a_transducer_student(tmp_path, corpus, teachers, loss):
    recipe = student(f"train.kd.teacher={teachers['transducer']}", "train.kd.target=lattice",
                     f"model.transducer.loss={loss}", "model.transducer.prune_range=2",
                     "train.epochs=1")  # fmt: skip
    result = train(recipe, corpus, corpus, tmp_path / "run", device="cpu", max_steps=2)
    assert result.step == 2
    assert all(float(r["kd_loss"]) > 0 for r in rows(tmp_path / "run") if r["train_loss"])


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "more", "message"),
    [
        ("missing", (), "train.kd.teacher: unknown model .*none.pt.: not a file"),
        ("garbage", (), "train.kd.teacher: .*garbage.pt: not a readable model file"),
        ("vocab", (), "the teacher's vocabulary has 7 ids, the student's 6"),
        ("pieces", (), r"tokenizer differs from the student's \(id 3 is 'B' there, 'A' here\)"),
        ("ctc_4x", (), r"frame rate is 25 frames/s \(4x subsampling\), the student's 12.5 "
                       r"frames/s \(8x\)"),
        ("ctc", ("model.transducer.aux_ctc_weight=0",),
         "train.kd.target 'ctc' needs a CTC head on the student.*aux_ctc_weight is 0"),
        ("no_head", (), "needs a CTC head on the teacher"),
        ("8khz", (), "the teacher hears 8000 Hz audio, the student 16000 Hz"),
        ("ctc", ("train.kd.target=lattice",), "'lattice' needs transducers, but the teacher is"),
    ],
)  # fmt: skip
def test_a_teacher_that_cannot_teach_is_refused_before_anything_is_written(
    tmp_path, corpus, teachers, key, more, message
):
    path = tmp_path / "none.pt" if key == "missing" else teachers[key]
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message) as info:
        train(student(f"train.kd.teacher={path}", *more), corpus, corpus, out, device="cpu")
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_kd_weight_and_temperature_out_of_range_are_config_errors():
    with pytest.raises(ConfigError, match=r"train.kd.weight \(--kd-weight\) must be >= 0"):
        student("train.kd.weight=-0.1")
    for t in ("0", "-1"):
        with pytest.raises(ConfigError, match=r"train.kd.temperature .* must be > 0"):
            student(f"train.kd.temperature={t}")


def test_the_command_line_flags_set_the_kd_keys(tmp_path, corpus, teachers, capsys):
    from helpers.recipes import RECIPES, tiny_overrides

    out = tmp_path / "run"
    args = ["train", str(RECIPES["transducer"]), "--train", str(corpus), "--valid", str(corpus),
            "--out", str(out), "--device", "cpu"]  # fmt: skip
    for item in tiny_overrides("transducer", *STUDENT):
        args += ["--set", item]

    def error(*extra: str) -> str:
        assert main([*args, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mamba-asr: error: "), lines
        return lines[0]

    teacher = ["--teacher", str(teachers["ctc"])]
    assert "train.kd.weight (--kd-weight) must be >= 0, got -1.0" in error(
        *teacher, "--kd-weight", "-1"
    )
    assert "must be > 0, got 0" in error(*teacher, "--kd-temperature", "0")
    assert "need a teacher" in error("--kd-weight", "0.5")
    assert "not a file and not a bundled model" in error("--teacher", str(tmp_path / "x.pt"))
    assert not out.exists()
    assert main([*args, *teacher, "--kd-weight", "0.25", "--kd-temperature", "3",
                 "--max-steps", "1"]) == 0  # fmt: skip
    kd = yaml.safe_load((out / "recipe.yaml").read_text())["train"]["kd"]
    assert (kd["weight"], kd["temperature"], kd["target"]) == (0.25, 3.0, "ctc")
    assert rows(out)[0]["kd_loss"]


def test_the_distilled_student_loads_transcribes_and_exports(kd_run, corpus, tmp_path):
    """The student of a KD run is a model like any other: load_model, transcription in
    PyTorch and, exported, the same transcript in onnxruntime."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mamba_asr import load_model
    from mamba_asr.decode.options import DecodingOptions
    from mamba_asr.runtime.onnx import OnnxASR
    from mamba_asr.transcription import transcribe_file

    out, _ = kd_run
    wav = corpus.parent / "utt00.wav"
    options = DecodingOptions(strategy="greedy")
    text = transcribe_file(load_model(str(out / "model.pt"), device="cpu"), wav, options).text
    folder = tmp_path / "onnx"
    assert main(["export", "onnx", str(out / "model.pt"), "--out", str(folder),
                 "--chunk-ms", "0"]) == 0  # fmt: skip
    assert OnnxASR.load(folder).transcribe_file(wav, options).text == text
