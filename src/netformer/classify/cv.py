"""k-fold cross-validation of the fine-tuned classifiers, each fold scored beside its baseline.

With ``output_dir`` a cross-validation is resumable fold by fold, as in silico perturbation resumes
chunk by chunk (:mod:`netformer.perturb.run`): each finished fold is written atomically into
``output_dir/fold_<k>/`` and ``manifest.json`` records a fingerprint of the settings, the model and
the cells. A run killed at any moment and started again with the same settings skips the finished
folds and ends with exactly the result of an uninterrupted run (the same tables, and every file but
``timings.csv`` / ``fold_<k>/timing.json`` byte for byte: training is deterministic given
``FinetuneConfig.seed`` on the CPU; on CUDA as far as its kernels are, see
``torch.use_deterministic_algorithms``). The fingerprint leaves ``FinetuneConfig.device`` out, so a
run may be resumed on another device. The resumable-run folder is :func:`netformer.runs.open_run` (shared with in
silico perturbation); the digests of the model and the cells (:func:`model_digest`, :func:`data_digest`)
are shared with the hyperparameter search (:mod:`netformer.classify.search`) and ``netformer finetune``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._io import atomic_dir, atomic_file
from ..distributed import refuse
from ..errors import ConfigError, InputDataError
from ..runs import RunFolder, open_run
from ..runs import fingerprint as _fingerprint
from .baselines import gene_expression_stats
from .config import FinetuneConfig
from .data import CellData, get_labels, resolve_gene_labels
from .evaluate import Evaluation, _assemble, evaluate_cells, evaluate_genes
from .models import CellClassifier, GeneClassifier
from .splits import (
    check_labels,
    check_training_classes,
    kfold_indices,
    train_val_test_split,
)

log = logging.getLogger(__name__)

TIMING_COLUMNS = ("seconds_per_epoch",)


@dataclass
class CVResult:
    """Cross-validation of model and baseline.

    Attributes
    ----------
    folds
        One row per fold: n_train, n_test, model_/baseline_ accuracy, macro_f1, auc,
        seconds_per_epoch, test groups (when grouped).
    pooled
        :class:`Evaluation` over the concatenated held-out predictions of all folds.
    genes
        Gene CV only: the counts of :class:`GeneTable` (labelled, in the dictionary, in no cell, used).
    """

    folds: pd.DataFrame
    pooled: Evaluation
    genes: dict | None = None

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation over folds of each metric, for model and baseline."""
        cols = [c for c in self.folds.columns if c.startswith(("model_", "baseline_"))]
        return self.folds[cols].agg(["mean", "std"]).T

    def save(self, output_dir: str | Path) -> Path:
        """Write the pooled evaluation (:meth:`Evaluation.save`), ``timings.csv`` (seconds per epoch of
        each fold) and, last, ``folds.csv`` (the folds table without the timings, so that it is the same
        in every run), each file atomically."""
        out = Path(output_dir)
        self.pooled.save(out)
        timing = [c for c in TIMING_COLUMNS if c in self.folds.columns]
        with atomic_file(out / "timings.csv") as tmp:
            self.folds[["fold", *timing]].to_csv(tmp, index=False)
        with atomic_file(out / "folds.csv") as tmp:
            self.folds.drop(columns=timing).to_csv(tmp, index=False)
        return out


# ------------------------------------------------------------------------------------------------
# resumable runs: fingerprints and the run folder (shared with search.py and the CLI)
# ------------------------------------------------------------------------------------------------
_MODEL_DIGESTS: dict = {}


def model_digest(model_dir: str | Path) -> str:
    """SHA-256 of the files of a model directory (config, weights, dictionary; not its path).

    Every regular file directly in the folder (hidden ones excepted) is read; the digest is cached
    per (path, file names, sizes, modification times), so a second call costs nothing.
    """
    folder = Path(model_dir)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    key = (str(folder.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _MODEL_DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}\0{p.stat().st_size}\0".encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _MODEL_DIGESTS[key] = h.hexdigest()
    return _MODEL_DIGESTS[key]


def data_digest(data: CellData, columns: Sequence[str | None] = ()) -> str:
    """SHA-256 of the cells a fine-tuning job sees: every cell's token ids, ``cell_id`` and the given
    columns of the tokenized dataset, and the raw counts (values, cell and gene names) when present."""
    import pyarrow as pa

    h = hashlib.sha256()
    ds = data.dataset
    h.update(f"{len(ds)}\0".encode())
    for tbl in ds.select_columns(["input_ids"]).with_format("arrow").iter(batch_size=4096):
        col = tbl.column("input_ids").combine_chunks()
        h.update(np.asarray(col.value_lengths(), dtype=np.int64).tobytes())
        h.update(np.asarray(col.flatten().cast(pa.int64()), dtype=np.int64).tobytes())
    for c in ["cell_id", *[c for c in columns if c]]:
        if c in ds.column_names:
            h.update(json.dumps([c, list(ds[c])], default=str).encode())
    a = data.adata
    if a is not None:
        import scipy.sparse as sp

        h.update(json.dumps([list(map(str, a.obs_names)), list(map(str, a.var_names))]).encode())
        x = a.X
        if sp.issparse(x):
            x = sp.csr_matrix(x)
            for part in (x.data, x.indices.astype(np.int64), x.indptr.astype(np.int64)):
                h.update(f"{part.dtype}{part.shape}".encode())
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            x = np.ascontiguousarray(np.asarray(x))
            h.update(f"{x.dtype}{x.shape}".encode())
            h.update(x.tobytes())
    return h.hexdigest()


def config_settings(config: FinetuneConfig) -> dict:
    """The fields of a :class:`FinetuneConfig` that decide a result (all but ``device``)."""
    d = config.to_dict()
    d.pop("device", None)
    return d


# ------------------------------------------------------------------------------------------------
# inputs, checked before anything is written
# ------------------------------------------------------------------------------------------------
def drop_unlabelled(data: CellData, label_column: str) -> CellData:
    """The cells of ``data`` with a ``label_column`` value (the number dropped is logged).

    Raises :class:`InputDataError` when no cell has one (or the column is absent).
    """
    y = get_labels(data.dataset, label_column)
    keep = np.flatnonzero([v is not None for v in y])
    if len(keep) == 0:
        raise InputDataError(f"none of the {len(y)} cells has a {label_column!r} label; label the cells, or "
                             "choose the column that holds the labels (CLI: --label-column)")
    if len(keep) < len(y):
        log.info("dropping %d cells without a %r label", len(y) - len(keep), label_column)
        data = data.subset(keep)
    return data


def _folds(y, n_splits: int, groups, seed: int, what: str):
    refuse("cross-validation (its folds are separate fits)")
    folds = kfold_indices(y, n_splits, groups=groups, seed=seed, what=what)
    check_training_classes(y, folds, what)
    return folds


def _holdout(y, val_size: float, groups, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) split of a hyperparameter search."""
    split = train_val_test_split(y, test_size=val_size, val_size=0.0, groups=groups, seed=seed, what=what)
    check_training_classes(y, [(split["train"], split["test"])], what)
    return split["train"], split["test"]


@dataclass
class GeneTable:
    """The labelled genes a gene job uses, and how many were left out at each step.

    Attributes
    ----------
    genes
        (n,) vocabulary gene ids taking part, in label order.
    y
        (n,) their classes.
    stats
        Per-gene expression statistics (:func:`~netformer.classify.baselines.gene_expression_stats`) or None.
    counts
        ``labelled`` (genes given), ``in_dictionary`` (mapped onto the token dictionary),
        ``not_in_cells`` (in the dictionary but in no tokenized cell within the input size, or absent
        from the count matrix), ``used``.
    """

    genes: np.ndarray
    y: np.ndarray
    stats: pd.DataFrame | None
    counts: dict


def gene_table(model_dir, data: CellData, gene_labels, config: FinetuneConfig, on_missing: str = "drop",
               with_stats: bool = True) -> GeneTable:
    """Labelled genes that occur in the tokenized cells (within ``config.max_length``) and in the counts.

    Genes not in the dictionary are handled by :func:`resolve_gene_labels` (logged and dropped, or
    ``GeneIdError``); genes of the dictionary that no cell expresses within its input size are logged with
    their count and dropped (upstream Geneformer likewise uses only genes present in its cells).

    Raises
    ------
    InputDataError
        No labelled gene occurs in the cells (and the count matrix).
    """
    from ..genes import resolve_vocab

    probe = GeneClassifier(model_dir, config)
    vocab = resolve_vocab(model_dir, data.dataset, probe.vocab)  # the model's, else the cells' dictionary
    labels = resolve_gene_labels(gene_labels, vocab, on_missing)
    stats = gene_expression_stats(data.adata, vocab) if with_stats else None
    present = probe._present_tokens(data.dataset["input_ids"])
    kept = {g: c for g, c in labels.items()
            if vocab.token_dict[g] in present and (stats is None or g in stats.index)}
    dropped = len(labels) - len(kept)
    if dropped:
        log.info("%d of %d labelled genes of the dictionary occur in none of the %d cells%s: left out", dropped,
                 len(labels), len(data), " (or not in the count matrix)" if stats is not None else "")
    if not kept:
        raise InputDataError("no labelled gene occurs in the tokenized cells" +
                             (" and the count matrix" if with_stats else "") +
                             "; label genes that the cells express")
    genes = np.array(list(kept))
    counts = {"labelled": len(dict(gene_labels)), "in_dictionary": len(labels), "not_in_cells": dropped,
              "used": len(kept)}
    return GeneTable(genes, np.array([kept[g] for g in genes]), stats, counts)


def _gene_table(model_dir, data: CellData, gene_labels, config: FinetuneConfig, on_missing: str = "drop",
                with_stats: bool = True):
    """``(genes, y, stats)`` of :func:`gene_table`."""
    t = gene_table(model_dir, data, gene_labels, config, on_missing, with_stats)
    return t.genes, t.y, t.stats


def check_finetune_inputs(model_dir, data: CellData, labels, *, task: str = "cell", n_splits: int = 0,
                          n_trials: int = 0, group_column: str | None = None, config: FinetuneConfig | None = None,
                          seed: int = 0, val_size: float = 0.2, on_missing: str = "drop") -> None:
    """Raise, before anything is written, the input error a fine-tuning job would meet later.

    The job: an optional search of ``n_trials`` trials (:func:`~netformer.classify.search_cells` /
    ``search_genes``), an optional ``n_splits``-fold cross-validation, a final fit on all cells.
    ``labels`` is the label column (cell task) or the gene labels (gene task). The checks are the
    ones these functions run themselves: labels present, at least two classes, every class in every
    fold (ungrouped: at least ``n_splits`` members; grouped: enough groups, and two classes in every
    training part).

    Raises
    ------
    InputDataError, GeneIdError, DictionaryError, ConfigError
    """
    cfg = config or FinetuneConfig(seed=seed)
    if task == "cell":
        y = get_labels(data.dataset, labels)
        groups = get_labels(data.dataset, group_column) if group_column else None
        what = "cells"
    elif task == "gene":
        _, y, _ = _gene_table(model_dir, data, labels, cfg, on_missing, with_stats=data.adata is not None)
        groups, what = None, "genes"
    else:
        raise ConfigError(f"task must be 'cell' or 'gene', got {task!r}")
    check_labels(y, what=what)
    if n_splits:
        _folds(y, n_splits, groups, seed, what)
    if n_trials > 0:
        _holdout(y, val_size, groups, seed, what)


# ------------------------------------------------------------------------------------------------
# folds
# ------------------------------------------------------------------------------------------------
def _plain(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _fold_row(k, ev: Evaluation, n_train, clf, extra=None) -> dict:
    row = {"fold": k, "n_train": n_train, "n_test": ev.model.n}
    for who, m in (("model", ev.model), ("baseline", ev.baseline)):
        row.update({f"{who}_accuracy": m.accuracy, f"{who}_macro_f1": m.macro_f1, f"{who}_auc": m.auc})
    row["seconds_per_epoch"] = clf.seconds_per_epoch
    row.update(extra or {})
    return {k: _plain(v) for k, v in row.items()}


def _pool(parts: list[tuple[pd.DataFrame, list]], task: str, baseline_name: str) -> Evaluation:
    """One :class:`Evaluation` over the held-out predictions of all folds: ``parts`` holds each fold's
    (predictions, classes)."""
    pred = pd.concat([p for p, _ in parts])
    classes = sorted(set().union(*[c for _, c in parts]))
    mp = np.column_stack([pred.get(f"model_p_{c}", pd.Series(0.0, index=pred.index)).fillna(0).to_numpy()
                          for c in classes])
    bp = np.column_stack([pred.get(f"baseline_p_{c}", pd.Series(0.0, index=pred.index)).fillna(0).to_numpy()
                          for c in classes])
    return _assemble(task, pred.index, pred["true"].to_numpy(), classes, mp, bp, baseline_name)


def _fold_dir(folder: Path, k: int) -> Path:
    return folder / f"fold_{k}"


def _write_fold(run: RunFolder, k: int, row: dict, ev: Evaluation) -> None:
    """Write one finished fold atomically (``fold_<k>/``: fold.json, predictions.parquet, metrics.csv,
    per_class.csv, timing.json), then record it in the manifest."""
    timing = {c: row[c] for c in TIMING_COLUMNS if c in row}
    meta = {"row": {c: v for c, v in row.items() if c not in timing}, "classes": list(ev.classes),
            "baseline_name": ev.baseline_name, "task": ev.task}
    with atomic_dir(_fold_dir(run.folder, k), overwrite=True) as tmp:
        ev.predictions.to_parquet(tmp / "predictions.parquet")
        ev.table().to_csv(tmp / "metrics.csv")
        ev.per_class().to_csv(tmp / "per_class.csv")
        (tmp / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
        (tmp / "fold.json").write_text(json.dumps(meta, indent=1) + "\n")
    run.manifest["done"] = sorted(set(run.manifest.get("done", [])) | {k})
    run.write_manifest()


def _fold_done(folder: Path, k: int) -> bool:
    return (_fold_dir(folder, k) / "fold.json").is_file()


def _load_cv(folder: Path, n_splits: int) -> CVResult:
    """The :class:`CVResult` of the finished folds in ``folder`` (the same whether they were computed in
    this session or an earlier one)."""
    rows, parts, meta = [], [], {}
    for k in range(n_splits):
        d = _fold_dir(folder, k)
        meta = json.loads((d / "fold.json").read_text())
        timing = json.loads((d / "timing.json").read_text()) if (d / "timing.json").exists() else {}
        row = dict(meta["row"])
        tail = {c: row.pop(c) for c in list(row) if c == "test_groups"}
        row.update({c: timing.get(c, float("nan")) for c in TIMING_COLUMNS}, **tail)
        rows.append(row)
        parts.append((pd.read_parquet(d / "predictions.parquet"), meta["classes"]))
    return CVResult(pd.DataFrame(rows), _pool(parts, meta["task"], meta["baseline_name"]))


def _run_folds(folds, fit_fold: Callable, run: RunFolder | None, task: str) -> CVResult:
    """Fit and score every fold not yet done (``fit_fold(k, train, test) -> (clf, Evaluation, extra)``)."""
    rows, evals = [], []
    n = len(folds)
    for k, (tr, te) in enumerate(folds):
        if run is not None and _fold_done(run.folder, k):
            log.info("fold %d/%d: done in an earlier run, skipped", k + 1, n)
            continue
        clf, ev, extra = fit_fold(k, tr, te)
        row = _fold_row(k, ev, len(tr), clf, extra)
        if run is not None:
            _write_fold(run, k, row, ev)
        else:
            rows.append(row)
            evals.append(ev)
        metric = "macro-F1" if task == "cell" else "AUC"
        get = (lambda m: m.macro_f1) if task == "cell" else (lambda m: m.auc)
        log.info("fold %d/%d: model %s %.3f, baseline %.3f", k + 1, n, metric, get(ev.model), get(ev.baseline))
    if run is None:
        return CVResult(pd.DataFrame(rows), _pool([(e.predictions, e.classes) for e in evals], task,
                                                  evals[0].baseline_name))
    res = _load_cv(run.folder, n)
    res.save(run.folder)
    run.commit()
    return res


def _open_cv(output_dir, settings: dict, overwrite: bool, n_splits: int) -> tuple[RunFolder | None, CVResult | None]:
    if output_dir is None:
        return None, None
    run = open_run(output_dir, settings, overwrite, "folds.csv", "cross-validation")
    if run.finished:
        log.info("%s holds this finished cross-validation; read back", run.final)
        return run, _load_cv(run.final, n_splits)
    run.manifest.setdefault("n_splits", n_splits)
    return run, None


def cross_validate_cells(
    model_dir: str | Path,
    data: CellData,
    label_column: str,
    n_splits: int = 5,
    group_column: str | None = None,
    config: FinetuneConfig | None = None,
    seed: int = 0,
    drop_missing: bool = False,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
) -> CVResult:
    """k-fold cross-validation of :class:`CellClassifier` beside the PCA baseline.

    Parameters
    ----------
    model_dir
        Pretrained encoder directory.
    data
        :class:`CellData` (tokenized cells + aligned counts, see :func:`tokenize_cells`), holding
        ``label_column`` (and ``group_column``) as dataset columns.
    n_splits
        Folds; stratified by label, grouped by ``group_column`` when given (no group in two folds).
    drop_missing
        Drop cells without a label (logged) instead of raising :class:`InputDataError`.
    output_dir
        Write the result there (:meth:`CVResult.save`) and make the run resumable: every finished
        fold goes atomically into ``output_dir/fold_<k>/`` beside ``manifest.json`` (a fingerprint
        of the settings, ``config`` but its ``device``, the model's files and the cells). Called
        again with the same settings, the finished folds are skipped (a killed run continues) and
        the result equals an uninterrupted run's; a finished ``output_dir`` is read back.
    overwrite
        Replace an ``output_dir`` that holds a finished run, or an unfinished one with other
        settings; the new run works in ``.NAME.overwrite`` beside it (itself resumable) and
        replaces the old results only when complete.

    Returns
    -------
    CVResult

    Raises
    ------
    InputDataError
        Before anything is written: no cell labelled, missing labels (without ``drop_missing``),
        a single class, a class with fewer members than ``n_splits``, fewer groups than folds, a
        fold whose training cells hold one class.
    ConfigError
        ``n_splits < 2``; ``output_dir`` holds an unfinished run with other settings (the message
        names them) and not ``overwrite``.
    OutputExistsError
        ``output_dir`` holds a finished run with other settings, or other files, and not ``overwrite``.
    """
    if drop_missing:
        data = drop_unlabelled(data, label_column)
    y = get_labels(data.dataset, label_column)
    groups = get_labels(data.dataset, group_column) if group_column else None
    folds = _folds(y, n_splits, groups, seed, "cells")
    cfg = config or FinetuneConfig(seed=seed)
    settings = None
    if output_dir is not None:
        settings = {"task": "cell", "config": config_settings(cfg), "n_splits": n_splits, "seed": seed,
                    "label_column": label_column, "group_column": group_column, "model": model_digest(model_dir),
                    "cells": data_digest(data, [label_column, group_column])}
    run, done = _open_cv(output_dir, settings, overwrite, n_splits)
    if done is not None:
        return done

    def fit_fold(k, tr, te):
        train, test = data.subset(tr), data.subset(te)
        clf = CellClassifier(model_dir, cfg).fit(train.dataset, label_column)
        ev = evaluate_cells(clf, test.dataset, label_column, test.adata, train_adata=train.adata)
        extra = {"test_groups": ";".join(sorted(set(map(str, groups[te]))))} if groups is not None else None
        return clf, ev, extra

    return _run_folds(folds, fit_fold, run, "cell")


def cross_validate_genes(
    model_dir: str | Path,
    data: CellData,
    gene_labels: Mapping[str, str],
    n_splits: int = 5,
    config: FinetuneConfig | None = None,
    seed: int = 0,
    on_missing: str = "drop",
    output_dir: str | Path | None = None,
    overwrite: bool = False,
) -> CVResult:
    """k-fold cross-validation over genes of :class:`GeneClassifier` beside the gene-statistics baseline.

    Genes (not cells) are split into stratified folds; each fold's model is fine-tuned on all cells
    with labels only for its training genes and scored on the held-out genes. Only genes that occur
    in the tokenized cells and in the count matrix take part. ``output_dir`` and ``overwrite`` as in
    :func:`cross_validate_cells` (resumable fold by fold; the fingerprint includes the gene labels).

    Raises
    ------
    GeneIdError
        No labelled gene is in the dictionary (or ``on_missing="raise"`` and some are not).
    InputDataError
        No labelled gene occurs in the cells and the counts, a single class, a class with fewer
        genes than ``n_splits`` (all before anything is written).
    ConfigError, OutputExistsError
        As :func:`cross_validate_cells`.
    """
    cfg = config or FinetuneConfig(seed=seed)
    table = gene_table(model_dir, data, gene_labels, cfg, on_missing)
    genes, y, stats = table.genes, table.y, table.stats
    folds = _folds(y, n_splits, None, seed, "genes")
    settings = None
    if output_dir is not None:
        settings = {"task": "gene", "config": config_settings(cfg), "n_splits": n_splits, "seed": seed,
                    "gene_labels": _fingerprint(dict(zip(genes.tolist(), y.tolist()))),
                    "model": model_digest(model_dir), "cells": data_digest(data)}
    run, done = _open_cv(output_dir, settings, overwrite, n_splits)
    if done is None:
        def fit_fold(k, tr, te):
            clf = GeneClassifier(model_dir, cfg).fit(data.dataset, dict(zip(genes[tr], y[tr])))
            ev = evaluate_genes(clf, data.dataset, dict(zip(genes[te], y[te])), None, stats=stats)
            return clf, ev, None

        done = _run_folds(folds, fit_fold, run, "gene")
    done.genes = table.counts
    return done
