"""The modules of ``mamba_asr`` that ship in mamba-asr-onnx: ``mamba_asr.runtime`` and what it
imports, none of which imports torch (tests/export/test_onnx_package.py checks the list)."""

from setuptools import setup
from setuptools.command.build_py import build_py

MODULES = {
    "mamba_asr": ["__init__", "files", "transcript"],
    "mamba_asr.audio": ["__init__", "io"],
    "mamba_asr.decode": ["__init__", "endpoint", "hypothesis", "options"],
    "mamba_asr.lm": ["__init__", "ngram"],
    "mamba_asr.runtime": ["__init__", "features", "onnx", "search"],
    "mamba_asr.text": ["__init__", "error_rates", "normalize", "tokenizer"],
}


class BuildPy(build_py):
    """Only the modules in ``MODULES`` of each package."""

    def find_package_modules(self, package, package_dir):
        found = super().find_package_modules(package, package_dir)
        return [m for m in found if m[1] in MODULES.get(package, [])]


setup(
    packages=list(MODULES),
    package_dir={"": "../../src"},  # relative to this folder, where the build runs
    package_data={"mamba_asr": ["py.typed"]},
    cmdclass={"build_py": BuildPy},
    options={"egg_info": {"egg_base": "."}},  # not into ../../src
)
