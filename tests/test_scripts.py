"""Tests for the data helpers of scripts/: the Czech voice-acting manifest's text, Tux Paint's
stamp descriptions romanized, the speech sets packed to travel (pack_mix.py) and the mixed
training manifests of kd_compare.py, and the feature-fit report (fkd_fit.py)."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mamba_asr.audio.io import load_audio
from mamba_asr.data.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _script(path: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fillets = _script("scripts/realspeech/fillets_cs.py")
tuxpaint = _script("scripts/realspeech/tuxpaint_stamps.py")
pack_mix = _script("scripts/device/pack_mix.py")
kd_compare = _script("scripts/device/kd_compare.py")
moonshine = _script("scripts/realspeech/moonshine_features.py")


def test_ascii_czech() -> None:
    assert fillets.ascii_czech("Už mě z té hlavy bolí hlava.") == "UZ ME Z TE HLAVY BOLI HLAVA"
    assert fillets.ascii_czech("Proč? Dozvídáme se… ‘cenné’ poznatky!") == (
        "PROC DOZVIDAME SE CENNE POZNATKY"
    )
    assert fillets.ascii_czech("Co ’s tím?") == "CO S TIM"
    assert fillets.ascii_czech("Máme 3 ryby.") == ""  # digits: not spelled, left out
    assert fillets.ascii_czech("") == ""


def test_czech_lines() -> None:
    lua = (
        'dialogId("vit-m-hlava", "font_small", "I’m getting a headache from that head.")\n'
        'dialogStr("Už mě z té hlavy bolí hlava.")\n\n\n'
        'dialogId("vit-v-krabi", "font_big", "If we could get all these crabs...")\n\n'
        'dialogId("vit-v-proc", "font_big", "Why?")\n'
        'dialogStr("Řekl \\"ne\\".")\n'
    )
    lines = fillets.czech_lines(lua)
    assert lines == {"vit-m-hlava": "Už mě z té hlavy bolí hlava.", "vit-v-proc": 'Řekl \\"ne\\".'}
    assert fillets.ascii_czech(lines["vit-v-proc"]) == "REKL NE"


@pytest.mark.parametrize("t,n", [(415, 125), (7, 3), (5, 5), (3, 7), (1, 1)])
def test_teacher_frames_pool_as_adaptive_avg_pool(t, n) -> None:
    import torch

    x = np.random.default_rng(t).normal(size=(t, 6)).astype(np.float32)
    ref = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(x).T[None], n)[0].T
    np.testing.assert_allclose(moonshine.adaptive_pool(x, n), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_teacher_frames_per_utterance() -> None:
    assert moonshine.frames_for(16000 * 10, 80) == 125
    assert moonshine.frames_for(100, 80) == 1  # never none
    assert moonshine.frames_for(1920, 80) == 2  # 1.5 frames rounds to even


def test_tuxpaint_descriptions_and_romanize() -> None:
    txt = (
        "A US 25 cent piece called a quarter.\n"
        "be.utf8=Белы мядзведзь.\n"
        "el.utf8=Νόμισμα των ΗΠΑ.\n"
        "fr.utf8=Une pièce de monnaie américaine, appelée “quarter”.\n"
        "ro.utf8=O monedă de 25 de cenți.\n"
        "ca@valencia.utf8=Una moneda.\n"
    )
    lines = tuxpaint.descriptions(txt)
    assert set(lines) == {"be", "el", "fr", "ro", "ca@valencia"}  # the English line is not one
    assert tuxpaint.romanize(lines["fr"]) == "UNE PIECE DE MONNAIE AMERICAINE APPELEE QUARTER"
    assert tuxpaint.romanize(lines["be"]) == "BELY MYADZVEDZ"  # a word's edge ' goes
    assert tuxpaint.romanize(lines["el"]) == "NOMISMA TON IPA"
    assert tuxpaint.romanize(lines["ro"]) == ""  # digits: not spelled, left out
    assert tuxpaint.romanize("l’ours d'or") == "L'OURS D'OR"
    assert tuxpaint.CLIP.match("001penny_desc_fr.ogg")["lang"] == "fr"
    assert tuxpaint.CLIP.match("frog_desc.ogg") is None  # English: said as the bare name
    assert tuxpaint.letter_rate("AB CD", 0.5) == 8.0


def _wav_set(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for k in range(n):
        t = np.arange(16000 * (k + 1)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"u{k}.wav", wave.astype(np.float32), 16000)
        records.append({"id": f"u{k}", "audio": f"u{k}.wav", "text": "HELLO", "duration": k + 1.0})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "manifest.jsonl"


def test_pack_set_opus_roundtrip(tmp_path: Path) -> None:
    manifest = _wav_set(tmp_path / "src")
    dest = tmp_path / "s.tar"
    n, hours = pack_mix.pack_set("s", manifest, dest, 0.9)
    assert (n, hours) == (2, pytest.approx(3 / 3600))
    with tarfile.open(dest) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    utts = read_manifest(tmp_path / "out" / "s" / "manifest.jsonl")
    assert [u.id for u in utts] == ["u0", "u1"] and all(u.text == "HELLO" for u in utts)
    for u, seconds in zip(utts, (1, 2), strict=True):
        assert u.audio.suffix == ".ogg" and pack_mix.is_opus(u.audio)
        wave = load_audio(u.audio)
        assert abs(len(wave) - 16000 * seconds) < 16000 * 0.05
        assert 0.15 < float(np.sqrt(np.mean(wave**2))) < 0.3  # the tone survives the codec


def test_mixed_manifest(tmp_path: Path) -> None:
    import argparse

    corpus, mix, runs = tmp_path / "corpus", tmp_path / "mix", tmp_path / "runs"
    _wav_set(corpus / "train", 2)
    _wav_set(mix / "extra", 1)
    (runs / "r").mkdir(parents=True)
    args = argparse.Namespace(corpus=corpus, runs=runs, name="r", mix_root=mix)
    utts = read_manifest(kd_compare.mixed_manifest(args, {"extra": 3}))
    assert [u.id for u in utts] == ["u0", "u1", "extra-u0", "extra-u0-r1", "extra-u0-r2"]
    assert all(u.audio.is_file() for u in utts)
    assert utts[2].audio == (mix / "extra" / "u0.wav").resolve()
    alone = read_manifest(kd_compare.mixed_manifest(args, {"extra": 2}, corpus=False))
    assert [u.id for u in alone] == ["extra-u0", "extra-u0-r1"]  # the corpus left out
    with pytest.raises(SystemExit, match="no .*missing/manifest.jsonl"):
        kd_compare.mixed_manifest(args, {"missing": 1})


def test_mix_runs_are_declared() -> None:
    for name, spec in kd_compare.RUNS_INIT.items():
        for set_name, repeats in spec.get("mix", {}).items():
            assert set_name.isidentifier() and int(repeats) >= 1, name
        if "init" in spec:  # another run's model: that run is declared
            assert spec["init"].split("/")[0] in kd_compare.RUNS_INIT, name
        assert spec.get("corpus", True) or spec.get("mix"), name  # something to train on


def test_fkd_fit_reports_in_sample_and_cross_fitted_losses(tmp_path: Path) -> None:
    from helpers.feature_stores import corpus_store
    from helpers.recipes import tiny_recipe
    from helpers.tones import write_corpus
    from mamba_asr.asr import ASR
    from mamba_asr.text import CharTokenizer

    fkd_fit = _script("scripts/realspeech/fkd_fit.py")
    corpus = write_corpus(tmp_path / "corpus")
    store = corpus_store(tmp_path / "store", corpus)
    torch.manual_seed(0)
    model = ASR.from_recipe(tiny_recipe("transducer"), CharTokenizer("AB ")).save(tmp_path / "m.pt")
    out = tmp_path / "fit.json"
    fkd_fit.main(["--store", str(store), "--manifest", str(corpus), "--model", str(model),
                  "--layer", "1", "--batch-seconds", "4", "--batches", "2",
                  "--ridge", "0.001", "1", "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [(r["ridge"], r["cross_fit"]) for r in rows] == [
        (0.001, False),
        (0.001, True),
        (1.0, False),
        (1.0, True),
    ]
    assert all(len(r["losses"]) == 2 and all(v > 0 for v in r["losses"]) for r in rows)
    # random features: in sample the map explains some by chance, out of sample it does not
    assert all(r["mean"] < 1 for r in rows if not r["cross_fit"])
    assert rows[1]["mean"] > rows[0]["mean"] and rows[3]["mean"] > rows[2]["mean"]


def test_python_host_profile_groups_own_time_by_source() -> None:
    timing = _script("benchmarks/timing.py")
    from mamba_asr.modules.masks import length_mask

    lengths = torch.tensor([3, 5])

    def work() -> None:
        for _ in range(50):
            length_mask(lengths, 6, torch.device("cpu"))
        sum(i * i for i in range(20000))

    out = timing.python_host_profile(work, steps=2, top=5)
    by = out["by_source"]
    assert any(k.startswith("mamba_asr/modules/masks.py") for k in by)
    assert "C" in by and by["C"] > 0
    assert out["total_ms"] == pytest.approx(sum(by.values()))
    assert len(out["functions"]) == 5
    ms = [row[1] for row in out["functions"]]
    assert ms == sorted(ms, reverse=True)
    # 50 calls of length_mask a call of work
    calls = {
        row[0]: row[2] for row in timing.python_host_profile(work, steps=2, top=100)["functions"]
    }
    assert any(k.endswith("(length_mask)") and v == 50 for k, v in calls.items())
    assert timing._source("/x/site-packages/triton/runtime/jit.py") == "triton"
    assert timing._source("/x/site-packages/torch/autograd/function.py") == "torch"
    assert timing._source("~") == "C"
    assert (
        timing._source("/x/src/mamba_asr/ops/triton_launch.py") == "mamba_asr/ops/triton_launch.py"
    )


def test_host_proxy_takes_the_cuda_host_paths_and_restores_them(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import mamba_asr.ops.depthwise_conv as depthwise_conv
    import mamba_asr.ops.directions as directions
    import mamba_asr.ops.directions_triton as directions_triton
    import mamba_asr.ops.selective_scan.triton_time as triton_time
    from mamba_asr.ops.selective_scan.triton_kernel import CONFIG

    host_proxy = _script("scripts/host_proxy.py")
    state = lambda: (triton_time.launch, depthwise_conv.triton_runs_on, CONFIG["kernel"],  # noqa: E731
                     directions.triton_runs_on, directions_triton.launch)  # fmt: skip
    before = state()
    torch_threads = torch.get_num_threads()
    try:
        out = host_proxy.main(["--encoders", "conmamba", "--repeats", "1", "--top", "5"])
    finally:
        torch.set_num_threads(torch_threads)
    by = out["conmamba"]["by_source"]
    # the scan's time kernels, the depthwise conv's and the reshuffles' Triton kernels ran their
    # host code
    assert "mamba_asr/ops/selective_scan/triton_time.py" in by
    assert "mamba_asr/ops/depthwise_conv_triton.py" in by
    assert "mamba_asr/ops/directions_triton.py" in by
    assert out["conmamba"]["step_ms"] > 0
    assert state() == before


@pytest.mark.parametrize("order", ["interleaved", "sequential"])
def test_encoder_scaling_times_the_encoders_in_the_order_asked(monkeypatch, order) -> None:
    """interleaved: the two encoders' timed steps alternate A B, B A, ... (a slow spell falls on
    both); sequential: one encoder's steps, then the other's. Each gets the median of its own
    steps, and an encoder out of memory gets None while the other is still timed."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    scaling = _script("benchmarks/encoder_scaling.py")
    timed = []
    clock = iter(range(1, 100))

    def fake_step(model, batch, seconds, device):
        calls = []

        def step() -> None:
            calls.append(1)
            if model == "oom" or (model == "late" and len(calls) == 3):
                raise torch.cuda.OutOfMemoryError("out of memory")

        step.name = model
        return step

    def fake_timed(step, device) -> float:
        timed.append(step.name)
        step()
        return next(clock) / 1e3  # ms 1, 2, 3, ...

    class Model(str):
        def zero_grad(self, set_to_none: bool = True) -> None:
            pass

    monkeypatch.setattr(scaling, "training_step", fake_step)
    monkeypatch.setattr(scaling, "timed", fake_timed)
    monkeypatch.setattr(scaling, "saved_gib", lambda step: 0.5)
    models = {"conformer": Model("a"), "conmamba": Model("b")}
    out = scaling.measure(models, 1, 1.0, torch.device("cpu"), 4, order)
    if order == "interleaved":
        assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]
        expected = {"conformer": 4.5, "conmamba": 4.5}  # a: 1 4 5 8 ms; b: 2 3 6 7 ms
    else:
        assert timed == ["a"] * 4 + ["b"] * 4
        expected = {"conformer": 2.5, "conmamba": 6.5}
    assert {k: v[0] for k, v in out.items()} == pytest.approx(expected)
    assert all(v[1] == 0.5 for v in out.values())
    timed.clear()
    clock = iter(range(1, 100))
    out = scaling.measure({"conformer": Model("oom"), "conmamba": Model("b")}, 1, 1.0,
                          torch.device("cpu"), 3, order)  # fmt: skip
    assert out["conformer"] == (None, None)
    assert out["conmamba"] == (pytest.approx(2.0), 0.5)
    assert timed == ["b"] * 3
    # out of memory only in a timed step (its third call: two warm-ups, then the first timed):
    # that encoder gets None and leaves the rotation, the other is still timed
    timed.clear()
    clock = iter(range(1, 100))
    out = scaling.measure({"conformer": Model("late"), "conmamba": Model("b")}, 1, 1.0,
                          torch.device("cpu"), 3, order)  # fmt: skip
    assert out["conformer"] == (None, None)
    assert out["conmamba"][0] is not None
    assert timed.count("late") == 1 and timed.count("b") == 3


def test_scan_cuda_backward_takes_gradients_without_summing_into_grad(monkeypatch) -> None:
    """benchmarks/scan_cuda.py's forward+backward: by default the inputs' gradients come from
    torch.autograd.grad with one gradient of ones made once (no .grad is written, no fill a
    call); with --accumulate (ACCUMULATE) from .backward(), summed into .grad call after call."""
    import sys
    import types

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setitem(sys.modules, "peer_scan", types.ModuleType("peer_scan"))
    scan_cuda = _script("benchmarks/scan_cuda.py")
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 3, 5, generator=g).requires_grad_() for _ in range(3))
    seen = []

    def peer(u, delta, z, delta_softplus):
        out = u * delta * z
        out.register_hook(lambda grad: seen.append(grad) or None)  # kept: new ones differ
        return out

    call = scan_cuda.runner("peer", peer, dict(u=u, delta=delta, z=z), True)
    call()
    call()
    assert u.grad is None and delta.grad is None and z.grad is None
    assert len(seen) == 2 and seen[0].data_ptr() == seen[1].data_ptr()  # made once
    monkeypatch.setattr(scan_cuda, "ACCUMULATE", True)
    call()
    call()
    torch.testing.assert_close(u.grad, 2 * (delta * z).detach())
    torch.testing.assert_close(z.grad, 2 * (u * delta).detach())


def test_scan_cuda_reports_the_peer_over_each_impl_in_event_and_gpu_time(monkeypatch, tmp_path,
                                                                         capsys) -> None:  # fmt: skip
    """benchmarks/scan_cuda.py's table and JSON, the GPU and its timings stubbed: with --gpu, each
    impl's forward and forward+backward kernel time and the peer's over them; without the peer,
    "-" where a ratio would be."""
    import sys
    import types

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    peer = types.ModuleType("peer_scan")
    peer.load = lambda: lambda **kw: None
    monkeypatch.setitem(sys.modules, "peer_scan", peer)
    scan_cuda = _script("benchmarks/scan_cuda.py")
    events = iter([0.1, 0.4, 0.3, 0.6])  # triton fwd, fwd+bwd; peer fwd, fwd+bwd
    kernels = iter([0.01, 0.04, 0.02, 0.10])  # the same, summed kernel time
    monkeypatch.setattr(scan_cuda, "event_ms", lambda fn, iters: next(events))
    monkeypatch.setattr(scan_cuda, "gpu_kernels", lambda fn, iters: {"k": next(kernels)})
    monkeypatch.setattr(scan_cuda, "peak_extra_mib", lambda fn: 1.0)
    monkeypatch.setattr(scan_cuda, "make_inputs", lambda *a, **k: {})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub")
    out = tmp_path / "scan.json"
    scan_cuda.main(["--impls", "triton", "peer", "--peer", "p", "--gpu", "--dtypes", "float32",
                    "--shapes", "1,2,3", "--json", str(out)])  # fmt: skip
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| triton")]
    assert table[0].endswith("| 3.00x | 1.50x | 0.010 | 0.040 | 2.00x | 2.50x |"), table
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["triton"]["peer_over_impl_gpu_fwd"] == pytest.approx(2.0)
    assert rows["triton"]["peer_over_impl_gpu_fwd_bwd"] == pytest.approx(2.5)
    assert rows["peer"]["peer_over_impl_fwd_bwd"] == pytest.approx(1.0)
    events = iter([0.1, 0.4])
    scan_cuda.main(["--impls", "triton", "--dtypes", "float32", "--shapes", "1,2,3", "--json",
                    str(out)])  # fmt: skip
    assert json.loads(out.read_text())["rows"][0]["peer_over_impl_fwd"] is None
