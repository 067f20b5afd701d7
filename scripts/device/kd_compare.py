"""The compression chain side by side on one GPU (docs/compression.md). Knowledge distillation:
a small Mamba-CNN transducer trained from scratch on a synthetic corpus without a teacher, and
with the bundled mct-small-synth-en (12.2 M parameters, 8x, an auxiliary CTC head) as the
teacher on each KD target, with the same seed, data order, batches and epochs. The other steps,
from the bundled model on the same corpus: structured pruning (calibrated, 25% and 50%) then
fine-tuning, and quantization-aware training (int8). All runs at once.

    python3 scripts/device/kd_compare.py train CORPUS RUNS --epochs 8 --deadline UNIX_TIME \
        [--only NAME ...] [--set KEY=VALUE ...]
    python3 scripts/device/kd_compare.py evaluate CORPUS RUNS OUT.json [--extra-dev NAME=MANIFEST]
    python3 scripts/device/kd_compare.py report OUT.json

CORPUS comes from ``scripts/device/synth_corpus.py --held-out-dev`` (train/, dev/: the
training voices, dev_heldout/: voices neither the teacher nor the students heard). ``train`` writes the
teacher's tokenizer to RUNS/teacher_tokenizer (the student must share it) and trains every run
of RUNS_KD to ``--epochs`` epochs, each in a process of its own, stopping at ``--deadline``
(seconds since the epoch) with a checkpoint if that comes first; calling it again resumes them
(the trainer's resume is exact). ``evaluate``: greedy WER on dev/ of the teacher and of each
finished run's model.pt (no LM) on dev/ and dev_heldout/, with the runs' training figures,
into OUT.json (``plot OUT.json PNG``: the students' curves). ``pack``: each named run's model.pt in float16 storage into a folder, split in
parts of at most 15 MiB (``cat NAME.pt.part* > NAME.pt`` joins them). ``report``:
a Markdown table of OUT.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "hparams/Transducer/mct_small.yaml"
TEACHER = "mct-small-synth-en"
# the student: the teacher's recipe at half the width and half the depth (about 1.7 M parameters
# against 12.2 M), the same front end (8x: the frame rates match) and tokenizer
STUDENT = [
    "model.d_model=128", "model.num_encoder_layers=6", "model.d_ffn=512",
    "model.frontend.channels=[128, 128, 128]", "model.transducer.predictor_dim=128",
    "model.transducer.joiner_dim=160", "model.transducer.aux_ctc_weight=0.1",
]  # fmt: skip
COMMON = [
    "train.lr=0.002", "train.warmup_steps=300", "train.max_batch_seconds=200",
    "train.num_buckets=30", "train.num_workers=3", "train.log_every=25",
    "train.checkpoint_every_steps=0", "train.keep_best=3", "train.average=3",
    "train.seed=1234", "data.specaugment.time_masks=4",
]  # fmt: skip
# fine-tuning the bundled model after pruning or with QAT: a lower peak learning rate
FINETUNE = [
    "train.warmup_steps=100", "train.max_batch_seconds=200", "train.num_buckets=30",
    "train.num_workers=2", "train.log_every=25", "train.checkpoint_every_steps=0",
    "train.keep_best=2", "train.average=2", "train.seed=1234", "data.specaugment.time_masks=4",
]  # fmt: skip
# the recipe of the row that met the size goal (docs/compression.md) and of its variants: FFN
# units pruned 37.5% (640, a multiple of the int4 block), KD on the CTC head, int4 QAT in blocks
# of 64, lr 0.0002
FFN375_QAT4_B64_LR2: dict[str, object] = {
    "ratio": 0.375,
    "groups": ["ffn"],
    "lr": 0.0002,
    "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    "qat": "int4-weights",
    "qat_block": 64,
}
# the CPU fine-tuning with people mixed in (RUNS_INIT's ft_h2_e2_real), which the feature
# distillation runs extend
H2_E2_REAL = {"lr": 0.0005, "hours": 2.5, "epochs": 2, "mix": {"tux": 1, "czech": 1}}


def fkd_layer8(weight: int) -> list[str]:
    """train.feature_kd at encoder layer 8 with ``weight`` (the store: --set ...features=)."""
    return ["train.feature_kd.layer=8", f"train.feature_kd.weight={weight}"]


RUNS_INIT: dict[str, dict[str, object]] = {
    "ft_baseline": {"lr": 0.0005},  # the control: the same fine-tuning, nothing removed
    "prune25": {"ratio": 0.25, "lr": 0.0005},
    "prune25_kd": {
        "ratio": 0.25,
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    },
    "prune50": {"ratio": 0.5, "lr": 0.0005},
    "qat_int8": {"qat": "int8", "lr": 0.0001},
    # some groups only (the front end, predictor and joiner keep their widths): the small
    # models for int4 weights (export onnx --int4)
    "prune_ffn50": {"ratio": 0.5, "groups": ["ffn"], "lr": 0.0005},
    "prune_ffn60": {"ratio": 0.6, "groups": ["ffn"], "lr": 0.0005},
    "prune_mamba_ffn30": {"ratio": 0.3, "groups": ["mamba", "ffn"], "lr": 0.0005},
    # the control above with the loader's waveform corruptions on (mamba_asr.audio.corrupt):
    # does what the bundled model never heard in training help on unseen voices, real speech?
    "ft_waveaug": {
        "lr": 0.0005,
        "set": [
            "data.wave_augment.eq_p=0.5",
            "data.wave_augment.telephone_p=0.1",
            "data.wave_augment.band_p=0.2",
            "data.wave_augment.noise_p=0.4",
            "data.wave_augment.gain_p=0.3",
        ],
    },
    "prune_ffn60_kd": {
        "ratio": 0.6,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    },
    # less of the FFN units, distilled from the unpruned model: with int4 weights and fp16
    # scales (export onnx --int4), 35-45% brings the graphs near a quarter of the shipped file
    "prune_ffn35_kd": {
        "ratio": 0.35,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    },
    "prune_ffn45": {"ratio": 0.45, "groups": ["ffn"], "lr": 0.0005},
    "prune_ffn45_kd": {
        "ratio": 0.45,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    },
    # the same trained with its Linear weights fake-quantized as export onnx --int4 stores
    # them (mamba_asr.qat, int4-weights): the int4 graphs compute the trained weights
    "prune_ffn45_kd_qat4": {
        "ratio": 0.45,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
        "qat": "int4-weights",
    },
    "prune_ffn50_kd_qat4": {
        "ratio": 0.5,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
        "qat": "int4-weights",
    },
    # the front end's pointwise convolutions int4 too, blocks of 64 input channels, and the
    # FFN pruned to 640 units (a multiple of 64): 6.1 MB of int4 graphs
    "prune_ffn375_kd_qat4_b64": {
        "ratio": 0.375,
        "groups": ["ffn"],
        "lr": 0.0005,
        "kd": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
        "qat": "int4-weights",
        "qat_block": 64,
    },
    # the same at a lower peak learning rate: nearer the unpruned model's weights (fine-tuning
    # the bundled model at 0.0005 alone cost 1 point on unseen voices)
    "prune_ffn375_kd_qat4_b64_lr2": FFN375_QAT4_B64_LR2,
    # fine-tuning costs the unseen voices (dev_heldout) more than the seen ones: a stronger
    # teacher term and a lower peak learning rate, 5 epochs, keep the student nearer the
    # unpruned model
    "prune_ffn375_kd2_qat4_b64_lr1": {
        "ratio": 0.375,
        "groups": ["ffn"],
        "lr": 0.0001,
        "kd": {"target": "ctc", "weight": 2.0, "temperature": 1.0},
        "qat": "int4-weights",
        "qat_block": 64,
    },
    "prune_ffn375_kd1_qat4_b64_lr2": {
        "ratio": 0.375,
        "groups": ["ffn"],
        "lr": 0.0002,
        "kd": {"target": "ctc", "weight": 1.0, "temperature": 1.0},
        "qat": "int4-weights",
        "qat_block": 64,
    },
    # the 8-epoch run at lr 0.0002 on twice the distinct audio for the same steps (HOURS=16,
    # FT_EPOCHS=4: 64 h seen either way), and the same with decoupled L2-SP
    # (train.decay_to_init): its pull, lr x 10 per step, adds up to about one e-folding of the
    # distance to the pruned start over the run's schedule
    "ffn375_qat4_b64_lr2_h16": {**FFN375_QAT4_B64_LR2, "hours": 16},
    "ffn375_qat4_b64_lr2_h16_dti10": {
        **FFN375_QAT4_B64_LR2,
        "hours": 16,
        "set": ["train.decay_to_init=10"],
    },
    # the lr 0.0002 run with the teacher's transducer distributions on the pruned band as the
    # KD target instead of its auxiliary CTC head's (the head is a side output, weight 0.2 in
    # the teacher's training; the lattice is what the student decodes with)
    "ffn375_qat4_b64_lr2_kdlat": {
        **FFN375_QAT4_B64_LR2,
        "kd": {"target": "lattice", "weight": 0.5, "temperature": 1.0},
        "hours": 8,
    },
    # the 16 h row's recipe for 8 epochs (128 h seen): the 8 h row's steps on the 16 h corpus
    "ffn375_qat4_b64_lr2_h16_e8": {**FFN375_QAT4_B64_LR2, "hours": 16, "epochs": 8},
    # what the bundled model hears beside its engines (docs/benchmarks.md, real speech): the
    # same 2-epoch fine-tuning on the 16 h corpus alone (the control), with 1.2 h of the Piper
    # voice (scripts/device/pack_mix.py), and with 1.6 h of Czech voice acting
    # (scripts/realspeech/fillets_cs.py); the Piper set three times per epoch, the Czech twice
    "ft_h16_e2": {"lr": 0.0005, "hours": 16, "epochs": 2},
    "ft_h16_e2_piper": {"lr": 0.0005, "hours": 16, "epochs": 2, "mix": {"piper": 3}},
    "ft_h16_e2_czech": {"lr": 0.0005, "hours": 16, "epochs": 2, "mix": {"czech": 2}},
    # the neural voice at a larger share: 3.5 h of it (seeds 501 and 502) three times an epoch
    # (about 40% of what the model hears), 3 epochs; beside it the same with vocal-tract-length
    # perturbation of the filterbank (every utterance: one voice heard at many tract lengths)
    # and the control
    "ft_h16_e3": {"lr": 0.0005, "hours": 16, "epochs": 3},
    "ft_h16_e3_piper35": {"lr": 0.0005, "hours": 16, "epochs": 3, "mix": {"piper35": 3}},
    "ft_h16_e3_piper35_vtlp": {
        "lr": 0.0005,
        "hours": 16,
        "epochs": 3,
        "mix": {"piper35": 3},
        "set": ["data.vtlp=[0.85, 1.15]"],
    },
    # on a CPU: a 2.5 h corpus (synth_corpus.py --train-hours 2.5 --seed 31), 2 epochs, alone
    # and with real speech of other languages once an epoch: Tux Paint's stamp descriptions in
    # ten languages (scripts/realspeech/tuxpaint_stamps.py, 2.5 h) and the Czech voice acting
    # (1.6 h), 62% of what the model hears
    "ft_h2_e2": {"lr": 0.0005, "hours": 2.5, "epochs": 2},
    "ft_h2_e2_real": H2_E2_REAL,
    # the real speech first and alone (2 epochs of the 4.1 h), then the control's fine-tuning
    # from that model: pre-training on people, then English
    "real_e2": {"lr": 0.0005, "epochs": 2, "mix": {"tux": 1, "czech": 1}, "corpus": False},
    "ft_h2_e2_after_real": {"lr": 0.0005, "hours": 2.5, "epochs": 2, "init": "real_e2/model.pt"},
    # ft_h2_e2_real with encoder layer 8 taught Moonshine base's encoder features of every
    # utterance, synthetic and real (train.feature_kd; give the store with --set
    # train.feature_kd.features=DIR, made by scripts/realspeech/moonshine_features.py from this
    # run's train_mix.jsonl). Weight 500: the FKD gradient on the encoder about as large as the
    # RNN-T loss's at the start (measured on one 64-utterance batch: ratio 534)
    "ft_h2_e2_real_fkd8": {**H2_E2_REAL, "set": fkd_layer8(500)},
    # the same at a fifth of the weight: weight 500 cost 8 points on the synthetic sets
    "ft_h2_e2_real_fkd8_w100": {**H2_E2_REAL, "set": fkd_layer8(100)},
    # the same with the features of the real speech only (a store of the tux- and czech- ids):
    # the synthetic utterances learn from their transcripts alone
    "ft_h2_e2_real_fkd8_w100_realonly": {**H2_E2_REAL, "set": fkd_layer8(100)},
}
RUNS_KD: dict[str, dict[str, object]] = {
    "no_kd": {},
    "kd_ctc": {"target": "ctc", "weight": 0.5, "temperature": 1.0},
    "kd_ctc_t2": {"target": "ctc", "weight": 0.5, "temperature": 2.0},
    "kd_lattice": {"target": "lattice", "weight": 0.5, "temperature": 1.0},
}
RUNS = [*RUNS_KD, *RUNS_INIT]


def teacher_tokenizer(runs: Path) -> Path:
    from mamba_asr.asr import ASR
    from mamba_asr.pretrained import resolve_model

    folder = runs / "teacher_tokenizer"
    if not folder.is_dir():
        ASR.load(resolve_model(TEACHER)).tokenizer.save(folder)
    return folder


def init_recipe(args: argparse.Namespace):  # noqa: ANN201
    """The recipe of a RUNS_INIT run: the bundled model (pruned first, calibrated on the first
    32 training utterances) as the starting point, its own architecture."""
    from mamba_asr.compress.prune import prune_model_file
    from mamba_asr.config import load_recipe, replace_kd
    from mamba_asr.pretrained import resolve_model
    from mamba_asr.train.trainer import init_model_section

    spec = RUNS_INIT[args.name]
    if "hours" in spec:  # a run made for a corpus of another size would mean something else
        hours = json.loads((args.corpus / "synth.json").read_text())["train"]["hours"]
        if abs(hours - float(spec["hours"])) > 0.5:
            raise SystemExit(f"{args.name} is for a corpus of {spec['hours']} h, "
                             f"{args.corpus} holds {hours:.1f} h (HOURS=)")  # fmt: skip
    start = str(args.runs / spec["init"]) if "init" in spec else str(resolve_model(TEACHER))
    if "init" in spec and not Path(start).is_file():  # that run first, on its own
        raise SystemExit(
            f"{args.name} starts from {start}: train {spec['init'].split('/')[0]} first"
        )
    if "ratio" in spec:
        pruned = args.runs / f"{args.name}_init.pt"
        if not pruned.is_file():
            prune_model_file(start, pruned, float(spec["ratio"]), groups=spec.get("groups"),
                             calib=args.corpus / "train" / "manifest.jsonl")  # fmt: skip
        start = str(pruned)
    qat = [f"train.qat={spec['qat']}"] if "qat" in spec else []
    qat += [f"train.qat_block={spec['qat_block']}"] if "qat_block" in spec else []
    epochs = spec.get("epochs", args.ft_epochs)
    overrides = [*FINETUNE, f"train.lr={spec['lr']}", f"train.epochs={epochs}", *qat,
                 *spec.get("set", []), *args.set]  # fmt: skip
    recipe = load_recipe(RECIPE, overrides, model=init_model_section(start), init_from=start)
    if "kd" in spec:  # the unpruned model teaches its pruned self
        recipe = replace_kd(recipe, teacher=args.teacher, **spec["kd"])
    return recipe


def mixed_manifest(args: argparse.Namespace, mix: dict[str, int], corpus: bool = True) -> Path:
    """The corpus's training manifest (unless ``corpus`` is False) with each extra set
    (``MIX_ROOT/NAME/manifest.jsonl``) appended ``repeats`` times, audio paths made absolute,
    into the run's folder. An extra set's ids get its name in front (and ``-rK`` on the K-th
    repeat), so none repeats."""
    from dataclasses import replace

    from mamba_asr.data.manifest import read_manifest, write_manifest

    utts = []
    sources = [("", args.corpus / "train" / "manifest.jsonl", 1)] if corpus else []
    sources += [(f"{name}-", args.mix_root / name / "manifest.jsonl", int(n))
                for name, n in mix.items()]  # fmt: skip
    for prefix, manifest, repeats in sources:
        if not manifest.is_file():
            raise SystemExit(f"{args.name}: no {manifest} (the extra sets travel in .mix)")
        records = read_manifest(manifest)  # audio paths absolute
        for k in range(repeats):
            utts += [replace(u, id=prefix + u.id + (f"-r{k}" if k else "")) for u in records]
    return write_manifest(args.runs / args.name / "train_mix.jsonl", utts)


def one(args: argparse.Namespace) -> None:
    """Train run ``args.name`` (in this process) to its epochs or the deadline."""
    from mamba_asr.config import load_recipe, replace_kd
    from mamba_asr.train import train

    if args.name in RUNS_INIT:
        recipe = init_recipe(args)
    else:
        tok = teacher_tokenizer(args.runs)
        recipe = load_recipe(RECIPE, [*STUDENT, *COMMON, f"train.epochs={args.epochs}",
                                      f"tokenizer.path={tok}", *args.set])  # fmt: skip
        kd = RUNS_KD[args.name]
        if kd:
            recipe = replace_kd(recipe, teacher=args.teacher, **kd)
    out = args.runs / args.name
    start = time.time()
    heldout = args.corpus / "dev_heldout" / "manifest.jsonl"  # F: its WER curve, not a choice
    spec = RUNS_INIT.get(args.name, {})
    mix = spec.get("mix")
    train_manifest = (mixed_manifest(args, mix, bool(spec.get("corpus", True))) if mix
                      else args.corpus / "train" / "manifest.jsonl")  # fmt: skip
    result = train(recipe, train_manifest, args.corpus / "dev" / "manifest.jsonl", out,
                   max_seconds=max(args.deadline - start, 1.0), progress=False,
                   heldout_manifest=heldout if heldout.is_file() else None)  # fmt: skip
    wall = out / "wall.json"
    spent = json.loads(wall.read_text()) if wall.is_file() else []
    spent.append({"seconds": time.time() - start, "step": result.step})
    wall.write_text(json.dumps(spent))
    print(f"{args.name}: step {result.step}, finished {result.finished}", flush=True)


def train_all(args: argparse.Namespace) -> None:
    args.runs.mkdir(parents=True, exist_ok=True)
    teacher_tokenizer(args.runs)
    names = args.only or list(RUNS)
    procs = []
    for name in names:
        cmd = [sys.executable, __file__, "one", name, str(args.corpus), str(args.runs),
               "--epochs", str(args.epochs), "--ft-epochs", str(args.ft_epochs),
               "--deadline", str(args.deadline),
               "--teacher", args.teacher, "--mix-root", str(args.mix_root),
               "--set", *args.set]  # fmt: skip
        (args.runs / name).mkdir(exist_ok=True)
        log = (args.runs / f"{name}.stdout.txt").open("a")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    for name, code in zip(names, codes, strict=True):
        print(f"{name}: exit {code}")


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _greedy_wer(model: str, dev: Path, hyps: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "mamba_asr", "eval", str(dev), "--model", model,
           "--strategy", "greedy", "--lm", "none", "--json", "--hyps", str(hyps),
           "--overwrite"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # the summary, then the JSON line


def _model_facts(model: str) -> dict[str, float]:
    """Parameters and the size of the model file in float16 storage (as models are shipped)."""
    import tempfile

    from mamba_asr.asr import ASR
    from mamba_asr.pretrained import resolve_model

    asr = ASR.load(resolve_model(model))
    with tempfile.TemporaryDirectory() as tmp:
        asr.save(Path(tmp) / "m.pt", half=True)
        size = (Path(tmp) / "m.pt").stat().st_size
    return {"parameters": sum(p.numel() for p in asr.model.parameters()), "file_mb": size / 1e6}


def evaluate(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sets = {s: args.corpus / s / "manifest.jsonl" for s in ("dev", "dev_heldout")}
    for item in args.extra_dev:  # NAME=MANIFEST: measured only (real speech), never chosen on
        name, _, path = item.partition("=")
        sets[name] = Path(path)
    sets = {k: v for k, v in sets.items() if v.is_file()}
    models = {"teacher": TEACHER}
    for name in RUNS:
        if (args.runs / name / "model.pt").is_file():
            models[name] = str(args.runs / name / "model.pt")
    jobs = {(n, s): (m, sets[s], args.runs / f"hyps_{n}_{s}.jsonl")
            for n, m in models.items() for s in sets}  # fmt: skip
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {k: pool.submit(_greedy_wer, *v) for k, v in jobs.items()}
        wers = {k: f.result() for k, f in futures.items()}
    report: dict[str, object] = {
        "teacher": {"model": TEACHER, **_model_facts(TEACHER),
                    **{s: wers["teacher", s] for s in sets}},
    }  # fmt: skip
    for name in RUNS:
        run = args.runs / name
        if not (run / "metrics.csv").is_file():
            continue
        rows = _rows(run)
        train_rows = [r for r in rows if r["train_loss"]]
        valid = [r for r in rows if r["wer"]]
        tail = train_rows[-4:]  # the last 100 steps (log_every 25)
        entry: dict[str, object] = {
            "kd": RUNS_KD.get(name, {}),
            "init": RUNS_INIT.get(name),
            "steps": int(train_rows[-1]["step"]),
            "epochs": len(valid),
            "valid_wer": [(int(r["step"]), float(r["wer"])) for r in valid],
            "train_loss_last100": sum(float(r["train_loss"]) for r in tail) / len(tail),
            "kd_loss_last100": (
                sum(float(r["kd_loss"]) for r in tail) / len(tail)
                if tail[0].get("kd_loss")
                else None
            ),  # fmt: skip
            "train_seconds": sum(w["seconds"] for w in json.loads((run / "wall.json").read_text())),
        }
        if name in models:
            entry.update(_model_facts(models[name]))
            for s in sets:
                entry[s] = wers[name, s]
        report[name] = entry
        print(name, json.dumps(entry), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


def pack(args: argparse.Namespace) -> None:
    from mamba_asr.asr import ASR

    args.dest.mkdir(parents=True, exist_ok=True)
    part = 15 * 2**20
    names = list(args.names)
    if args.one_of:  # the one with the lowest WER on --by in the evaluation report
        report = json.loads(Path(args.report).read_text())
        scored = [(report[n][args.by]["wer"], n) for n in args.one_of
                  if n in report and args.by in report[n]]  # fmt: skip
        if scored:
            names.append(min(scored)[1])
            print(f"pack: of {' '.join(args.one_of)}, {min(scored)[1]} (lowest {args.by} WER)")
    for name in names:
        src = args.runs / name / "model.pt"
        if not src.is_file():
            print(f"pack: {name}: no model.pt")
            continue
        whole = args.dest / f"{name}.pt"
        ASR.load(src).save(whole, half=True)
        data = whole.read_bytes()
        if len(data) > part:
            whole.unlink()
            for k in range(0, len(data), part):
                (args.dest / f"{name}.pt.part{k // part}").write_bytes(data[k : k + part])
        print(f"pack: {name}: {len(data) / 1e6:.1f} MB")


def _groups(init: dict[str, object]) -> str:
    groups = init.get("groups")
    return f"; {' + '.join(map(str, groups))} only" if isinstance(groups, list) else ""


def table(args: argparse.Namespace) -> None:
    data = json.loads(Path(args.out).read_text())
    sets = [s for s, v in data["teacher"].items() if isinstance(v, dict) and "wer" in v]
    head = " | ".join(f"{s} WER (%)" for s in sets)
    print(f"| run | what | steps | valid WER by epoch (%) | {head} | parameters | file MB (fp16) "
          "| train loss (last 100 steps) | KD loss | training s |")  # fmt: skip
    print("|---" * (9 + len(sets)) + "|")
    for name, e in data.items():
        if name == "teacher":
            wers = " | ".join(f"{100 * e[s]['wer']:.2f}" for s in sets)
            print(f"| teacher | {e['model']} | - | - | {wers} | {e['parameters']:,} | "
                  f"{e['file_mb']:.1f} | - | - | - |")  # fmt: skip
            continue
        kd, init = e["kd"], e.get("init")
        if init:
            what = (f"prune {init['ratio']:g} (calibrated{_groups(init)}), fine-tuned" if "ratio" in init
                    else f"QAT {init['qat']}" if "qat" in init
                    else "fine-tuned") + f", lr {init['lr']:g}"  # fmt: skip
            what += f", KD {init['kd']['target']} from the unpruned model" if "kd" in init else ""
        elif kd:
            what = f"student, KD {kd['target']}, W {kd['weight']:g}, T {kd['temperature']:g}"
        else:
            what = "student, no KD"
        curve = " ".join(f"{100 * w:.1f}" for _, w in e["valid_wer"])
        wers = " | ".join(f"{100 * e[s]['wer']:.2f}" if s in e else "-" for s in sets)
        params = f"{e['parameters']:,}" if "parameters" in e else "-"
        size = f"{e['file_mb']:.1f}" if "file_mb" in e else "-"
        kd_loss = f"{e['kd_loss_last100']:.3f}" if e["kd_loss_last100"] is not None else "-"
        print(
            f"| {name} | {what} | {e['steps']} | {curve} | {wers} | {params} | {size} | "
            f"{e['train_loss_last100']:.2f} | {kd_loss} | {e['train_seconds']:.0f} |"
        )


def plot(args: argparse.Namespace) -> None:
    """The students' validation WER along the steps, with the teacher's, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.out).read_text())
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in RUNS_KD:
        if name in data:
            kd = data[name]["kd"]
            label = (f"KD {kd['target']} (W {kd['weight']:g}, T {kd['temperature']:g})" if kd
                     else "no teacher")  # fmt: skip
            steps, wer = zip(*data[name]["valid_wer"], strict=True)
            ax.plot(steps, [100 * w for w in wer], label=label)
    teacher = data["teacher"]
    ax.axhline(100 * teacher["dev"]["wer"], color="gray", ls="--",
               label=f"teacher {teacher['model']}")  # fmt: skip
    ax.set_xlabel("step (the same batches in every run)")
    ax.set_ylabel("validation WER, training voices (%)")
    ax.set_ylim(0, 105)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    for name, fn in (("train", train_all), ("one", one)):
        p = sub.add_parser(name)
        if name == "one":
            p.add_argument("name", choices=RUNS)
        p.add_argument("corpus", type=Path)
        p.add_argument("runs", type=Path)
        p.add_argument("--epochs", type=int, default=8)
        p.add_argument("--ft-epochs", type=int, default=3, help="epochs of the RUNS_INIT runs")
        p.add_argument("--deadline", type=float, default=time.time() + 1e9)
        p.add_argument("--teacher", default=TEACHER)
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
        p.add_argument(
            "--mix-root",
            type=Path,
            default=Path("/tmp/mix"),
            help="folder of the extra training sets of RUNS_INIT's 'mix'",
        )
        if name == "train":
            p.add_argument("--only", nargs="+", choices=RUNS)
        p.set_defaults(func=fn)
    p = sub.add_parser("evaluate")
    p.add_argument("corpus", type=Path)
    p.add_argument("runs", type=Path)
    p.add_argument("out")
    p.add_argument(
        "--extra-dev",
        nargs="*",
        default=[],
        metavar="NAME=MANIFEST",
        help="more sets to measure every model on (real speech)",
    )
    p.set_defaults(func=evaluate)
    p = sub.add_parser("pack")
    p.add_argument("runs", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("names", nargs="*")
    p.add_argument(
        "--one-of",
        nargs="*",
        default=[],
        metavar="NAME",
        help="also the one of these runs with the lowest WER on --by",
    )
    p.add_argument("--by", default="dev", help="the set of --one-of")
    p.add_argument("--report", help="evaluate's OUT.json (for --one-of)")
    p.set_defaults(func=pack)
    p = sub.add_parser("plot")
    p.add_argument("out")
    p.add_argument("png")
    p.set_defaults(func=plot)
    p = sub.add_parser("report")
    p.add_argument("out")
    p.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
