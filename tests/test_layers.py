"""The package's layers import only downwards, and no module imports another's private names.

``LAYERS`` lists the parts of ``mamba_asr`` from the bottom up (docs/architecture.md describes
the same order). A module may import from its own part and from the parts of lower layers: never
from a higher layer, nor from another part of its own layer (parts of one layer are independent
of each other). Every import counts, also one inside a function (a lazy import) or under
``TYPE_CHECKING``. A part missing from ``LAYERS`` (a new module or subpackage) fails the test
until it is given its place.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PACKAGE = "mamba_asr"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# from the bottom up; a part is a top-level module or subpackage ("mamba_asr": its __init__.py)
LAYERS: list[tuple[str, ...]] = [
    ("device", "atomic", "files", "pretrained", "transcript"),  # foundations: import nothing
    ("config",),  # recipes and model configs (read through files)
    ("ops",),  # pure tensor functions
    ("modules",),  # building blocks
    # + transcripts written as txt/json/srt/vtt; fake quantization of a model's layers (QAT)
    ("models", "audio", "text", "lm", "writers", "qat"),
    ("decode", "data"),  # searches; manifests, datasets, batching
    ("streaming", "runtime"),  # streams of a bundle; recognition on onnxruntime (no torch)
    ("asr",),  # the deployable bundle (features + model + tokenizer)
    # the jobs done with a bundle; backends: inference outside PyTorch (MLX); export (ONNX,
    # Core ML)
    ("train", "evaluate", "transcription", "selfcheck", "backends", "export"),
    # the speech server (over transcription and streams); structured pruning (over train)
    ("serve", "compress"),
    (PACKAGE,),  # the public API: the package's __init__.py
    ("cli",),  # the command line
    ("__main__",),  # python -m mamba_asr
]

# (importing module, imported module, name) -> why this import against the order is fine
EXCEPTIONS: dict[tuple[str, str, str], str] = {
    ("mamba_asr.asr", PACKAGE, "__version__"): (
        "the version is a constant of the package's __init__.py, which Python runs before any "
        "submodule, and which imports the rest of the package only inside its functions"
    ),
    ("mamba_asr.backends.mlx.asr", PACKAGE, "__version__"): (
        "the same constant, written into an exported model folder"
    ),
    ("mamba_asr.export.onnx", PACKAGE, "__version__"): "the version, as for mamba_asr.asr",
    ("mamba_asr.serve.app", PACKAGE, "__version__"): "the version, shown by GET /health",
    ("mamba_asr.export.coreml", PACKAGE, "__version__"): "the version, as for mamba_asr.asr",
}


class Import(NamedTuple):
    module: str  # the importing module, e.g. "mamba_asr.ops.pruned_rnnt"
    line: int
    target: str  # the imported module, e.g. "mamba_asr.ops.rnnt_loss"
    name: str  # the imported name ("" for ``import target``)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether ``mamba_asr.x.y`` names a module or package under src/ (not a name inside one)."""
    path = SRC.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import of the package in ``module``'s source, at any depth of its syntax tree."""
    package = module if is_package else module.rpartition(".")[0]  # where "from ." starts
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}"  # ``from mamba_asr import asr`` imports a module
                if is_module(sub):
                    found.append(Import(module, node.lineno, sub, ""))
                else:
                    found.append(Import(module, node.lineno, target, alias.name))
    ours = [i for i in found if i.target == PACKAGE or i.target.startswith(PACKAGE + ".")]
    return sorted(ours, key=lambda i: i.line)


def all_imports() -> list[Import]:
    return [
        i
        for path in sorted(SRC.rglob("*.py"))
        for i in imports_in(
            path.read_text(encoding="utf-8"), module_name(path), path.stem == "__init__"
        )
    ]


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def layer_of(part: str) -> int:
    for index, parts in enumerate(LAYERS):
        if part in parts:
            return index
    raise KeyError(part)


def layer_violations(imports: list[Import]) -> list[str]:
    """One line per import that goes up or sideways, exceptions left out."""
    out = []
    for imp in imports:
        own, other = part_of(imp.module), part_of(imp.target)
        if own == other or (imp.module, imp.target, imp.name) in EXCEPTIONS:
            continue
        if layer_of(other) >= layer_of(own):
            what = f"{imp.target}.{imp.name}" if imp.name else imp.target
            where = "the same layer" if layer_of(other) == layer_of(own) else "a higher layer"
            out.append(f"{imp.module}:{imp.line} imports {what}, from {where} ({other!r})")
    return out


def private_imports(imports: list[Import]) -> list[str]:
    """One line per ``_name`` imported from another module."""
    return [
        f"{i.module}:{i.line} imports {i.name} from {i.target}"
        for i in imports
        if i.name.startswith("_") and not i.name.startswith("__") and i.target != i.module
    ]


def test_every_part_of_the_package_has_a_layer():
    parts = {p.stem for p in SRC.glob("*.py") if p.name != "__init__.py"}
    parts |= {p.parent.name for p in SRC.glob("*/__init__.py")}
    listed = [part for layer in LAYERS for part in layer]
    assert len(listed) == len(set(listed)), "a part is listed twice"
    assert parts | {PACKAGE} == set(listed)


def test_imports_go_only_downwards():
    violations = layer_violations(all_imports())
    assert not violations, "\n".join(violations)


def test_every_exception_is_still_needed():
    imports = {(i.module, i.target, i.name) for i in all_imports()}
    assert [key for key in EXCEPTIONS if key not in imports] == []


def test_no_private_names_are_imported_across_modules():
    violations = private_imports(all_imports())
    assert not violations, "\n".join(violations)


def test_the_checks_catch_bad_imports():
    """The checks on a made-up module of models/: a lazy import from a higher layer, one from
    the same layer, a private name, and what is allowed (own part, lower layers, relative)."""
    source = (
        "from mamba_asr.modules.masks import length_mask\n"
        "from mamba_asr.ops.rnnt_loss import _lattice_forward\n"
        "from .losses import LossOutput\n"
        "from . import ctc\n"
        "def f():\n"
        "    from mamba_asr.train.metrics import MetricsLog\n"
        "    import mamba_asr.audio.io\n"
        "    from .. import text\n"
    )
    imports = imports_in(source, "mamba_asr.models.made_up")
    assert [(i.line, i.target, i.name) for i in imports] == [
        (1, "mamba_asr.modules.masks", "length_mask"),
        (2, "mamba_asr.ops.rnnt_loss", "_lattice_forward"),
        (3, "mamba_asr.models.losses", "LossOutput"),
        (4, "mamba_asr.models.ctc", ""),
        (6, "mamba_asr.train.metrics", "MetricsLog"),
        (7, "mamba_asr.audio.io", ""),
        (8, "mamba_asr.text", ""),
    ]
    assert layer_violations(imports) == [
        "mamba_asr.models.made_up:6 imports mamba_asr.train.metrics.MetricsLog, from a higher "
        "layer ('train')",
        "mamba_asr.models.made_up:7 imports mamba_asr.audio.io, from the same layer ('audio')",
        "mamba_asr.models.made_up:8 imports mamba_asr.text, from the same layer ('text')",
    ]
    assert private_imports(imports) == [
        "mamba_asr.models.made_up:2 imports _lattice_forward from mamba_asr.ops.rnnt_loss"
    ]
