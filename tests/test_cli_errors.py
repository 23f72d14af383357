"""The command line's front door and error boundary: `python -m netformer`, validated choices, parse
errors, missing / unwritable files and library errors as one line with exit status 2, unexpected
errors as one line with exit status 1 (the traceback with --verbose)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from netformer.cli import describe_error, main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``netformer ARGS`` in this process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def error_line(err: str) -> str:
    """The error line of stderr, checking that there is exactly one and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_python_m_netformer(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for module in ("netformer", "netformer.cli"):
        r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        for command in ("tokenize", "annotate", "pretrain", "embed", "demo", "finetune", "perturb", "select"):
            assert command in r.stdout
    r = subprocess.run([sys.executable, "-m", "netformer", "embed", str(tmp_path / "m"), str(tmp_path / "d"), "--out",
                        str(tmp_path / "e.parquet")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and error_line(r.stderr)


def test_help_without_a_command(capsys):
    code, _, err = run_cli(capsys)
    assert code == 0 and "tokenize" in err
    code, _, err = run_cli(capsys, "select")
    assert code == 0 and "benchmark" in err


@pytest.mark.parametrize("args, choices", [
    (["embed", "m", "d", "--out", "e.parquet", "--pooling", "max"], "'mean', 'cls'"),
    (["perturb", "m", "d", "--out", "o", "--mode", "fast"], "'exact', 'screen'"),
    (["perturb", "m", "d", "--out", "o", "--perturbation", "knockout"], "'delete'"),
    (["pretrain", "d", "--out", "o", "--preset", "huge"], "'tiny'"),
    (["pretrain", "d", "--out", "o", "--lr-scheduler", "step"], "'cosine'"),
    (["finetune", "cat", "c.h5ad", "m", "--out", "o"], "'cell', 'gene'"),
    (["finetune", "cell", "c.h5ad", "m", "--out", "o", "--class-weights", "inverse"], "'balanced'"),
    (["select", "run", "--out", "o", "--budget", "3", "--method", "best"], "'graphreach'"),
    (["select", "run", "--out", "o", "--budget", "3", "--missing", "ignore"], "'drop', 'error'"),
    (["select", "benchmark", "--out", "o", "--model", "xgboost"], "'ridge'"),
    (["select", "benchmark", "--out", "o", "--strategy", "greedy"], "'iterpert'"),
])
def test_bad_choices_are_refused(capsys, tmp_path, monkeypatch, args, choices):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args)
    line = error_line(err)
    assert code == 2 and choices in line and "--help" in line
    assert list(tmp_path.iterdir()) == []


def test_parse_errors_are_one_line(capsys, tmp_path):
    out = tmp_path / "bench"
    code, _, err = run_cli(capsys, "select", "benchmark", "--out", out, "--subset", "dataset")
    assert code == 2 and "--subset expects KEY=VALUE, got 'dataset'" in error_line(err)
    code, _, err = run_cli(capsys, "select", "benchmark", "--out", out, "--model-option", "epochs")
    assert code == 2 and "--model-option" in error_line(err)
    code, _, err = run_cli(capsys, "perturb", tmp_path, tmp_path, "--out", out, "--filter", "cell_type")
    assert code == 2 and "--filter" in error_line(err)
    code, _, err = run_cli(capsys, "tokenize", tmp_path / "x.h5ad", "--out", out)
    assert code == 2 and "--build-vocab" in error_line(err)
    code, _, err = run_cli(capsys, "embed", "--out", out)
    assert code == 2 and "Missing argument" in error_line(err)
    assert not out.exists()


def test_missing_and_unwritable_paths(capsys, scrna, tmp_path):
    code, _, err = run_cli(capsys, "tokenize", tmp_path / "missing.h5ad", "--build-vocab", "--out", tmp_path / "tok")
    assert code == 2 and "missing.h5ad" in error_line(err)
    (tmp_path / "a_file").write_text("")
    src = scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
    code, _, err = run_cli(capsys, "annotate", src, "--out", tmp_path / "a_file" / "labels.csv")
    assert code == 2 and "a_file" in error_line(err)
    code, _, err = run_cli(capsys, "select", "run", "--out", tmp_path / "sel", "--budget", "2",
                           "--candidates", tmp_path / "nope.txt")
    assert code == 2 and "nope.txt" in error_line(err) and not (tmp_path / "sel").exists()
    if os.geteuid() != 0:  # root writes into read-only folders
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, _, err = run_cli(capsys, "embed", tmp_path, tmp_path, "--out", ro / "sub" / "e.parquet")
        assert code == 2 and "permission" in error_line(err)


def test_describe_error_of_real_library_errors(tmp_path):
    import pandas as pd

    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(Exception) as exc:
        pd.read_csv(tmp_path / "empty.csv")
    message, code = describe_error(exc.value)
    assert code == 2 and message.startswith("cannot read a table (EmptyDataError")

    from safetensors.torch import load_file

    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception) as exc:
        load_file(tmp_path / "model.safetensors")
    message, code = describe_error(exc.value)
    assert code == 2 and message.startswith("cannot read model weights") and "download the model again" in message

    message, code = describe_error(OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".out.tmp-x1")))
    assert code == 2 and message == f"{tmp_path / 'out'}: the file system is read-only; write the output elsewhere (--out)"
    message, code = describe_error(ZeroDivisionError("division by zero"))
    assert code == 1 and message == "unexpected ZeroDivisionError: division by zero; run with --verbose for the traceback"


def test_unexpected_error_and_verbose(capsys, scrna, tmp_path, monkeypatch):
    from netformer.tokenize import TranscriptomeTokenizer

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(TranscriptomeTokenizer, "write", broken)  # a fault injected behind a real command
    src = scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
    args = ["tokenize", src, "--vocab", scrna.parent / "genes" / "geneformer_gc104M", "--out", tmp_path / "tok"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and error_line(err) == "error: unexpected RuntimeError: a bug; run with --verbose for the traceback"
    with pytest.raises(SystemExit) as exc:
        main(["--verbose"] + [str(a) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "Traceback" in err and "in broken" in err
