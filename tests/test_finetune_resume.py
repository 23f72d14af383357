"""Crash and input safety of fine-tuning: `netformer finetune` killed with SIGKILL during the Optuna
search and again during the cross-validation, run again, ends with the outputs of an uninterrupted
run byte for byte; other settings over an unfinished run are refused, --overwrite keeps the old
results until the new run is complete; bad labels are one clear error before anything is written.

Real cells: 240 pbmc3k cells of four types (60 each), the tiny pretrained test model, 1 epoch,
64 tokens, batch 16, 3 folds, 2 search trials, on the CPU (bitwise equality of two runs needs
deterministic kernels; CUDA's are not all deterministic).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from netformer.classify import CellData, FinetuneConfig, align_counts, check_labels, cross_validate_cells
from netformer.errors import ConfigError, InputDataError, OutputExistsError
from test_cli_errors import error_line, run_cli

TIMINGS = ("timings.csv", "timing.json")  # wall-clock seconds: the only outputs that differ between runs


@pytest.fixture(scope="module")
def cells(scrna, tmp_path_factory) -> Path:
    """240 labelled pbmc3k cells (raw counts), and copies of them with bad labels."""
    root = tmp_path_factory.mktemp("finetune_resume")
    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")
    rng = np.random.default_rng(0)
    types = ["CD4 T cells", "CD14+ Monocytes", "B cells", "CD8 T cells"]
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(a.obs["cell_type"] == t), 60, replace=False)
                                  for t in types]))
    a = a[idx].copy()
    a.write_h5ad(root / "cells.h5ad")
    bad = {"nolabel": pd.Categorical([np.nan] * a.n_obs, categories=["B cells"]),
           "oneclass": ["B cells"] * a.n_obs,
           "rare": ["B cells"] * (a.n_obs - 2) + ["NK cells"] * 2}
    for name, labels in bad.items():
        b = a.copy()
        b.obs["cell_type"] = labels
        b.write_h5ad(root / f"{name}.h5ad")
    b = a.copy()
    b.obs["donor"] = np.where(np.arange(a.n_obs) % 2, "d1", "d2")
    b.write_h5ad(root / "two_donors.h5ad")
    return root


def _command(cells: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "netformer", "finetune", "cell", str(cells / "cells.h5ad"), str(model),
            "--out", str(out), "--folds", "3", "--search", "2", "--epochs", "1", "--max-length", "64",
            "--batch-size", "16", "--device", "cpu", *extra]


def _run_until(args: list[str], ready, log: Path, timeout: float = 300) -> None:
    """Start ``args``, SIGKILL it as soon as ``ready()`` holds (polled every 50 ms)."""
    with open(log, "w") as f:
        p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        while not ready():
            assert p.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - t0 < timeout, "timed out"
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL


def _n_trials(out: Path) -> int:
    try:
        return len(json.loads((out / "search" / "manifest.json").read_text()).get("trials", []))
    except (OSError, ValueError):
        return 0


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones too) but the timings, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in TIMINGS}


def test_killed_search_and_cv_resume_to_the_uninterrupted_result(cells, tiny_pretrained, tmp_path, capsys):
    model = tiny_pretrained.model_dir
    ref = tmp_path / "uninterrupted"
    r = subprocess.run(_command(cells, model, ref), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    # 1. killed during the search, once its first trial is recorded
    _run_until(_command(cells, model, out), lambda: _n_trials(out) >= 1, tmp_path / "run1.log")
    assert not (out / "search" / "best_config.json").exists() and not (out / "cv").exists()
    # 2. started again: the recorded trial is replayed, not trained again; killed after the first fold
    _run_until(_command(cells, model, out), lambda: (out / "cv" / "fold_0" / "fold.json").exists(),
               tmp_path / "run2.log")
    assert "search: 1 trial(s) done in an earlier run" in (tmp_path / "run2.log").read_text()
    assert (out / "search" / "best_config.json").exists() and not (out / "cv" / "folds.csv").exists()
    assert not (out / "model").exists()
    # other settings over the unfinished run: refused, naming the difference, nothing touched
    before = _files(out)
    code, _, err = run_cli(capsys, *_command(cells, model, out, "--lr", "0.001")[3:])
    assert code == 2 and "unfinished" in error_line(err) and "config.learning_rate" in error_line(err)
    assert _files(out) == before
    # 3. started again: runs to the end, skipping the finished fold
    r = subprocess.run(_command(cells, model, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fold 1/3: done in an earlier run, skipped" in r.stderr

    # the cross-validation: every file byte for byte (timings aside), no leftover temporaries
    assert _files(out / "cv") == _files(ref / "cv")
    assert {p.name for p in (out / "cv").iterdir()} == {p.name for p in (ref / "cv").iterdir()}
    # the search: the same trials and the same best configuration; the same final model
    trials = [pd.read_csv(d / "search_trials.csv").drop(columns="seconds") for d in (out, ref)]
    pd.testing.assert_frame_equal(*trials)
    assert len(trials[0]) == 2
    for f in ("search/best_config.json", "config.json", "model/model.safetensors"):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert not list(tmp_path.glob(".killed*"))

    # a finished run is refused at once
    code, _, err = run_cli(capsys, *_command(cells, model, out)[3:])
    assert code == 2 and "already exists" in error_line(err)


@pytest.fixture(scope="module")
def data(tiny_pretrained, scrna) -> CellData:
    """120 tokenized pbmc3k cells of four types (30 each) with their counts."""
    types = pd.Series(tiny_pretrained.pbmc["cell_type"])
    idx = np.sort(np.concatenate([np.flatnonzero((types == t).to_numpy())[:30]
                                  for t in ["CD4 T cells", "CD14+ Monocytes", "B cells", "CD8 T cells"]]))
    ds = tiny_pretrained.pbmc.select(idx.tolist())
    return CellData(ds, align_counts(ds, ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")))


class _Interrupted(Exception):
    pass


def test_other_settings_refused_and_overwrite_keeps_old_results(tiny_pretrained, data, tmp_path, monkeypatch):
    """In one process: a failure inside fold 1 stands for the kill."""
    import netformer.classify.cv as cv_module

    calls = {"fits": 0, "fail_at": None}
    real = cv_module.CellClassifier

    class Counting(real):
        def fit(self, *a, **kw):
            calls["fits"] += 1
            if calls["fits"] == calls["fail_at"]:
                raise _Interrupted
            return super().fit(*a, **kw)

    monkeypatch.setattr(cv_module, "CellClassifier", Counting)
    model, out = tiny_pretrained.model_dir, tmp_path / "cv"
    a = FinetuneConfig(epochs=1, max_length=64, batch_size=16, learning_rate=3e-3)
    b = FinetuneConfig(epochs=1, max_length=64, batch_size=16, learning_rate=1e-3)

    def cv(cfg, fail_at=None, **kw):
        calls.update(fits=0, fail_at=fail_at)
        return cross_validate_cells(model, data, "cell_type", n_splits=2, config=cfg, output_dir=out, **kw)

    with pytest.raises(_Interrupted):
        cv(a, fail_at=2)
    assert (out / "fold_0" / "fold.json").exists() and not (out / "fold_1").exists()
    with pytest.raises(ConfigError, match="learning_rate"):
        cv(b)
    res = cv(a)  # resumed: only fold 1 is trained
    assert calls["fits"] == 1 and len(res.folds) == 2 and res.pooled.model.n == len(data)
    again = cv(a)  # finished with the same settings: read back
    assert calls["fits"] == 0
    pd.testing.assert_frame_equal(again.folds, res.folds)
    pd.testing.assert_frame_equal(again.pooled.predictions, res.pooled.predictions)
    old = (out / "folds.csv").read_bytes()
    with pytest.raises(OutputExistsError):
        cv(b)
    with pytest.raises(_Interrupted):  # the replacement run dies in its second fold ...
        cv(b, fail_at=2, overwrite=True)
    assert (out / "folds.csv").read_bytes() == old  # ... and the old results are still there
    staging = tmp_path / ".cv.overwrite"
    assert (staging / "fold_0" / "fold.json").exists()
    new = cv(b, overwrite=True)  # resumes the replacement run, then replaces the old results
    assert calls["fits"] == 1 and not staging.exists()
    assert json.loads((out / "manifest.json").read_text())["settings"]["config"]["learning_rate"] == 1e-3
    assert (out / "folds.csv").read_bytes() != old and len(new.folds) == 2


@pytest.mark.parametrize("name, extra, words", [
    ("nolabel", [], ["none of the 240 cells has a 'cell_type' label", "--label-column"]),
    ("oneclass", [], ["single class", "another class"]),
    ("rare", [], ["fewer members than the 3 folds", "'NK cells': 2", "--folds"]),
    ("two_donors", ["--group-column", "donor"], ["only 2 groups for 3 folds"]),
    ("cells", ["--folds", "1"], ["--folds 1"]),
])
def test_bad_labels_are_one_error_before_any_output(cells, tiny_pretrained, capsys, tmp_path, name, extra, words):
    out = tmp_path / "ft"
    args = ["finetune", "cell", cells / f"{name}.h5ad", tiny_pretrained.model_dir, "--out", out, "--folds", "3",
            "--epochs", "1", "--max-length", "64", *extra]
    code, _, err = run_cli(capsys, *args)
    line = error_line(err)
    assert code == 2 and all(w in line for w in words), line
    assert not out.exists() and not list(tmp_path.glob(".ft*"))
    if name == "oneclass":  # also with a search only, and with neither search nor folds
        for more in (["--folds", "0", "--search", "2"], ["--folds", "0"]):
            code, _, err = run_cli(capsys, *args, *more)
            assert code == 2 and "single class" in error_line(err) and not out.exists()


def test_bad_labels_in_python_raise_before_output(tiny_pretrained, data, tmp_path):
    from netformer.classify import cross_validate_genes, search_cells

    with pytest.raises(InputDataError, match="no cells to classify"):
        check_labels([])
    with pytest.raises(InputDataError, match="none of the 3 cells has a label"):
        check_labels([None, None, float("nan")])
    unlabelled = CellData(data.dataset.map(lambda r: {"cell_type": None}), data.adata)
    with pytest.raises(InputDataError, match="none of the 120 cells has a 'cell_type' label"):
        cross_validate_cells(tiny_pretrained.model_dir, unlabelled, "cell_type", n_splits=3, drop_missing=True,
                             output_dir=tmp_path / "a")
    one = CellData(data.dataset.map(lambda r: {"cell_type": "B cells"}), data.adata)
    with pytest.raises(InputDataError, match="single class"):
        search_cells(tiny_pretrained.model_dir, one, "cell_type", n_trials=2, output_dir=tmp_path / "b")
    vocab = tiny_pretrained.vocab
    genes = [vocab.token_to_gene(t) for t in data.dataset[0]["input_ids"][:40] if t not in vocab.special_ids][:30]
    with pytest.raises(InputDataError, match="single class|fewer members"):
        cross_validate_genes(tiny_pretrained.model_dir, data, {g: "TF" for g in genes}, n_splits=3,
                             output_dir=tmp_path / "c")
    assert not list(tmp_path.iterdir())


def test_search_resumed_from_recorded_trials_equals_uninterrupted(tiny_pretrained, data, tmp_path, monkeypatch):
    """Trial n is sampled by a TPE sampler seeded with (seed, n) from the trials before it: replaying the
    recorded trials and continuing gives the trials of an uninterrupted search (a single seeded sampler
    would not)."""
    import netformer.classify.search as search_module
    from netformer.classify import SearchSpace, search_cells

    fits = {"n": 0}
    real = search_module.CellClassifier

    class Counting(real):
        def fit(self, *a, **kw):
            fits["n"] += 1
            return super().fit(*a, **kw)

    monkeypatch.setattr(search_module, "CellClassifier", Counting)
    space = SearchSpace(epochs=(1, 1), batch_size=(16, 32))
    kw = dict(n_trials=3, space=space, base_config=FinetuneConfig(max_length=64, batch_size=16))
    full = search_cells(tiny_pretrained.model_dir, data, "cell_type", **kw)
    out = tmp_path / "search"
    search_cells(tiny_pretrained.model_dir, data, "cell_type", **{**kw, "n_trials": 1}, output_dir=out)
    assert len(json.loads((out / "manifest.json").read_text())["trials"]) == 1
    fits["n"] = 0
    resumed = search_cells(tiny_pretrained.model_dir, data, "cell_type", **kw, output_dir=out)
    assert fits["n"] == 2  # only the two missing trials are trained
    pd.testing.assert_frame_equal(resumed.trials.drop(columns="seconds"), full.trials.drop(columns="seconds"))
    assert resumed.best_config == full.best_config and resumed.best_value == full.best_value
    assert resumed.baseline == full.baseline
    best = json.loads((out / "best_config.json").read_text())
    assert FinetuneConfig.from_dict(best["config"]) == full.best_config
    killed = _unfinished_copy(out, tmp_path / "killed")
    with pytest.raises(ConfigError, match=r"unfinished hyperparameter search with other settings \(seed\)"):
        search_cells(tiny_pretrained.model_dir, data, "cell_type", **kw, seed=1, output_dir=killed)


def _unfinished_copy(src: Path, dst: Path) -> Path:
    """A copy of a search folder as a kill would leave it: trials recorded, no best_config.json."""
    import shutil

    shutil.copytree(src, dst)
    (dst / "best_config.json").unlink()
    (dst / "trials.csv").unlink()
    return dst


def test_gene_cv_resumable_and_read_back(tiny_pretrained, data, tmp_path):
    from netformer.classify import cross_validate_genes, tf_gene_labels

    labels = tf_gene_labels(tiny_pretrained.vocab)
    cfg = FinetuneConfig(epochs=1, max_length=64, batch_size=16, class_weights="balanced")
    out = tmp_path / "gcv"
    a = cross_validate_genes(tiny_pretrained.model_dir, data, labels, n_splits=2, config=cfg, output_dir=out)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("fold_")) == ["fold_0", "fold_1"]
    b = cross_validate_genes(tiny_pretrained.model_dir, data, labels, n_splits=2, config=cfg, output_dir=out)
    pd.testing.assert_frame_equal(a.folds, b.folds)
    pd.testing.assert_frame_equal(a.pooled.predictions, b.pooled.predictions)
    assert set(a.pooled.classes) == {"TF", "non-TF"}
    gene = a.pooled.predictions.index[0]
    flipped = {**labels, gene: "TF" if labels[gene] == "non-TF" else "non-TF"}
    with pytest.raises(OutputExistsError):  # finished, with other gene labels
        cross_validate_genes(tiny_pretrained.model_dir, data, flipped, n_splits=2, config=cfg, output_dir=out)
