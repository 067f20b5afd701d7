"""``mamba-asr train`` and ``mamba-asr tokenizer train`` from the command line."""

from __future__ import annotations

import subprocess

import pytest

from mamba_asr.cli import main
from mamba_asr.text.tokenizer import CharTokenizer, SentencePieceTokenizer, load_tokenizer


def run(helpers, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(helpers.cli_command(*args), capture_output=True, text=True,
                          timeout=300, env=helpers.subprocess_env(),
                          stdin=subprocess.DEVNULL)  # fmt: skip


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mamba-asr: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_manifest_and_bad_override_are_one_line_errors(tmp_path, helpers, recipe_file,
                                                               corpus):  # fmt: skip
    args = helpers.train_args(recipe_file, corpus, tmp_path / "run")
    missing = [a if a != str(corpus) else str(tmp_path / "nope.jsonl") for a in args]
    assert_one_line_error(run(helpers, *missing), "nope.jsonl: no such manifest file")
    assert_one_line_error(run(helpers, *args, "--set", "train.schedule=cosine"),
                          "train.schedule must be one of")  # fmt: skip
    assert_one_line_error(run(helpers, *args, "--valid-heldout", str(tmp_path / "held.jsonl")),
                          "held.jsonl: no such manifest file")  # fmt: skip
    assert_one_line_error(run(helpers, *args, "--set", "train.select_on=heldout"),
                          "train.select_on heldout needs a held-out validation set "
                          "(--valid-heldout MANIFEST)")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_train_stop_resume_and_refuse_another_recipe(tmp_path, helpers, recipe_file, corpus,
                                                     capsys):  # fmt: skip
    out = tmp_path / "run"
    args = helpers.train_args(recipe_file, corpus, out)
    assert main([*args, "--max-steps", "2"]) == 0
    assert "stopped at step 2; run again to continue" in capsys.readouterr().out
    assert main([*args, "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.epochs is 3 there, 1 now" in err[0]
    assert main([*args, "--max-steps", "3"]) == 0
    assert "stopped at step 3" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_tokenizer_train_sentencepiece(tmp_path, helpers, corpus, kind):
    out = tmp_path / "tok"
    proc = run(helpers, "tokenizer", "train", "--manifest", str(corpus), "--out", str(out),
               "--kind", kind, "--vocab-size", "8")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"{kind} SentencePiece tokenizer, 8 ids, from 12 transcripts" in proc.stdout
    tokenizer = load_tokenizer(out)
    assert isinstance(tokenizer, SentencePieceTokenizer) and tokenizer.vocab_size == 8
    too_big = run(helpers, "tokenizer", "train", "--manifest", str(corpus), "--out",
                  str(tmp_path / "big"), "--kind", kind, "--vocab-size", "500")  # fmt: skip
    assert_one_line_error(too_big, "vocab_size=500 is too large")
    no_size = run(helpers, "tokenizer", "train", "--manifest", str(corpus), "--out",
                  str(tmp_path / "x"), "--kind", kind)  # fmt: skip
    assert_one_line_error(no_size, f"--vocab-size is required for --kind {kind}")


def test_a_tokenizer_folder_can_be_used_by_a_recipe(tmp_path, helpers, recipe_file, corpus,
                                                    capsys):  # fmt: skip
    tok = tmp_path / "tok"
    assert main(["tokenizer", "train", "--manifest", str(corpus), "--out", str(tok),
                 "--kind", "char"]) == 0  # fmt: skip
    assert "6 ids, alphabet ' AB'" in capsys.readouterr().out
    assert isinstance(load_tokenizer(tok), CharTokenizer)
    args = helpers.train_args(recipe_file, corpus, tmp_path / "run", f"tokenizer.path={tok}",
                              "tokenizer.alphabet=null")  # fmt: skip
    assert main([*args, "--max-steps", "1"]) == 0
    assert load_tokenizer(tmp_path / "run" / "tokenizer").alphabet == " AB"
    wrong = helpers.train_args(recipe_file, corpus, tmp_path / "run2", f"tokenizer.path={tok}",
                               "tokenizer.alphabet=null", "tokenizer.kind=unigram")  # fmt: skip
    assert main(wrong) == 2
    assert "holds a CharTokenizer, but tokenizer.kind is 'unigram'" in capsys.readouterr().err
