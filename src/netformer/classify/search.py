"""Hyperparameter search for fine-tuning with Optuna (TPE sampler, Akiba et al. 2019).

Each trial fine-tunes on the training cells (or genes) and is scored by validation macro-F1 on a
held-out validation split (stratified, grouped when asked). The search space covers the knobs
upstream Geneformer tunes with Ray Tune: learning rate, schedule, warm-up, weight decay, frozen
layers, epochs and batch size. The best configuration, the table of trials and the baseline's
score on the same validation split are returned.

Trial ``n`` is sampled by a TPE sampler seeded with ``(seed, n)`` from the trials before it, so a
search is a deterministic function of its settings (the fine-tuning of each trial is deterministic
given ``FinetuneConfig.seed``). With ``output_dir`` the search is resumable trial by trial: every
finished trial is recorded in ``output_dir/manifest.json`` (beside a fingerprint of the settings, the
model and the cells); a search started again with the same settings replays the recorded trials into
the study and continues with the remaining ones, ending with the same trials and the same best
configuration as an uninterrupted search. (A single seeded ``TPESampler`` would not: its random state
after a restart differs from the one an uninterrupted search has reached.)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .._io import atomic_file
from ..distributed import refuse
from ..errors import ConfigError
from ..runs import RunFolder, open_run
from ..runs import fingerprint as _fingerprint
from .config import SCHEDULES, FinetuneConfig
from .cv import _gene_table, _holdout, config_settings, data_digest, model_digest
from .data import CellData, get_labels
from .evaluate import evaluate_cells, evaluate_genes
from .models import CellClassifier, GeneClassifier

log = logging.getLogger(__name__)


@dataclass
class SearchSpace:
    """Ranges searched (log-uniform for the learning rate and weight decay)."""

    learning_rate: tuple[float, float] = (1e-5, 3e-3)
    lr_scheduler: tuple[str, ...] = ("linear", "cosine", "constant_with_warmup")
    warmup_ratio: tuple[float, float] = (0.0, 0.3)
    weight_decay: tuple[float, float] = (1e-4, 0.1)
    freeze_layers: tuple[int, int] = (0, 2)
    epochs: tuple[int, int] = (1, 3)
    batch_size: tuple[int, ...] = (8, 16, 32)

    def __post_init__(self) -> None:
        bad = set(self.lr_scheduler) - set(SCHEDULES)
        if bad:
            raise ConfigError(f"unknown schedules {sorted(bad)}")

    def suggest(self, trial, base: FinetuneConfig) -> FinetuneConfig:
        return replace(
            base,
            learning_rate=trial.suggest_float("learning_rate", *self.learning_rate, log=True),
            lr_scheduler=trial.suggest_categorical("lr_scheduler", list(self.lr_scheduler)),
            warmup_ratio=trial.suggest_float("warmup_ratio", *self.warmup_ratio),
            weight_decay=trial.suggest_float("weight_decay", *self.weight_decay, log=True),
            freeze_layers=trial.suggest_int("freeze_layers", *self.freeze_layers),
            epochs=trial.suggest_int("epochs", *self.epochs),
            batch_size=trial.suggest_categorical("batch_size", list(self.batch_size)),
        )


@dataclass
class SearchResult:
    """Outcome of :func:`search_cells` / :func:`search_genes`.

    Attributes
    ----------
    best_config
        :class:`FinetuneConfig` of the best trial.
    best_value
        Its validation macro-F1.
    trials
        One row per trial: parameters, validation macro-F1 (and AUC for binary tasks), seconds.
    baseline
        The baseline's scalar metrics on the same validation split.

    With ``output_dir`` the search also writes ``trials.csv`` and ``best_config.json`` there.
    """

    best_config: FinetuneConfig
    best_value: float
    trials: pd.DataFrame
    baseline: dict = field(default_factory=dict)


def _trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a search seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _plain(d: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def _run(objective, n_trials: int, seed: int, space: SearchSpace, base: FinetuneConfig,
         run: RunFolder | None = None) -> SearchResult:
    """Run (or resume) the search: the trials recorded in ``run`` are replayed, the others evaluated
    and recorded one by one; the result uses the first ``n_trials`` trials."""
    refuse("a hyperparameter search (its trials are separate fits)")
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return _run_trials(objective, n_trials, seed, space, base, run)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_trials(objective, n_trials: int, seed: int, space: SearchSpace, base: FinetuneConfig,
                run: RunFolder | None) -> SearchResult:
    import optuna

    records: list[dict] = list(run.manifest.get("trials", [])) if run is not None else []
    baseline = dict(run.manifest.get("baseline", {})) if run is not None else {}
    if records:
        log.info("search: %d trial(s) done in an earlier run", len(records))
    if len(records) < n_trials:
        study = optuna.create_study(direction="maximize")
        for rec in records:
            dists = {k: optuna.distributions.json_to_distribution(v) for k, v in rec["distributions"].items()}
            study.add_trial(optuna.trial.create_trial(params=rec["params"], distributions=dists, value=rec["value"]))
        for number in range(len(records), n_trials):
            study.sampler = optuna.samplers.TPESampler(seed=_trial_seed(seed, number))
            trial = study.ask()
            cfg = space.suggest(trial, base)
            t0 = time.perf_counter()
            ev = objective(cfg)
            value = float(ev.model.macro_f1)
            study.tell(trial, value)
            rec = {"trial": number, "params": dict(trial.params), "value": value,
                   "metrics": _plain({"val_macro_f1": ev.model.macro_f1, "val_auc": ev.model.auc,
                                      "val_accuracy": ev.model.accuracy}),
                   "seconds": time.perf_counter() - t0,
                   "distributions": {k: optuna.distributions.distribution_to_json(d)
                                     for k, d in trial.distributions.items()}}
            records.append(rec)
            baseline = baseline or _plain(ev.baseline.summary())
            log.info("trial %d: %s, validation macro-F1 %.4f", number, rec["params"], value)
            if run is not None:  # recorded before the next trial starts: a kill loses at most the running one
                run.manifest.update(trials=records, baseline=baseline)
                run.write_manifest()
    used = records[:n_trials]
    best = int(np.argmax([r["value"] for r in used]))  # the first of equal values, as optuna's best_trial
    best_config = space.suggest(optuna.trial.FixedTrial(used[best]["params"]), base)
    table = pd.DataFrame([{"trial": r["trial"], **r["params"], **r["metrics"], "seconds": r["seconds"]}
                          for r in used])
    res = SearchResult(best_config, float(used[best]["value"]), table, baseline)
    if run is not None:
        with atomic_file(run.folder / "trials.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_file(run.folder / "best_config.json") as tmp:
            tmp.write_text(json.dumps({"value": res.best_value, "trial": used[best]["trial"],
                                       "config": best_config.to_dict()}, indent=1) + "\n")
        run.commit()
    return res


def _open_search(output_dir, settings: dict, overwrite: bool) -> RunFolder | None:
    if output_dir is None:
        return None
    return open_run(output_dir, settings, overwrite, "best_config.json", "hyperparameter search")


def _search_settings(task: str, base: FinetuneConfig, space: SearchSpace, seed: int, val_size: float,
                     model_dir, data: CellData, **extra) -> dict:
    return {"task": task, "base_config": config_settings(base), "space": json.loads(json.dumps(asdict(space))),
            "seed": seed, "val_size": val_size, **extra, "model": model_digest(model_dir), "cells": data_digest(
                data, [extra.get("label_column"), extra.get("group_column")])}


def search_cells(model_dir: str | Path, data: CellData, label_column: str, n_trials: int = 10,
                 space: SearchSpace | None = None, base_config: FinetuneConfig | None = None,
                 group_column: str | None = None, val_size: float = 0.2, seed: int = 0,
                 output_dir: str | Path | None = None, overwrite: bool = False) -> SearchResult:
    """Search fine-tuning hyperparameters of a cell classifier.

    ``data`` is split once into training and validation cells (stratified; grouped by
    ``group_column`` when given); every trial trains on the training cells and is scored on the
    validation cells, beside the PCA baseline fitted on the same training cells. Keep a separate
    test set out of ``data`` to report the chosen configuration honestly.

    Parameters
    ----------
    output_dir
        Make the search resumable (see the module docstring): finished trials are recorded in
        ``output_dir/manifest.json``; called again with the same settings, the search continues
        with the remaining trials (or, with fewer ``n_trials`` than recorded, uses the first ones;
        ``n_trials`` is not part of the fingerprint, so a finished search can be extended) and
        returns what an uninterrupted search would. ``trials.csv`` and ``best_config.json`` are
        written at the end.
    overwrite
        Replace an ``output_dir`` holding a finished search with other settings, or an unfinished
        one with other settings (the new search works in ``.NAME.overwrite`` and replaces the old
        one only when complete).

    Raises
    ------
    ConfigError
        ``n_trials < 1``; ``output_dir`` holds an unfinished search with other settings.
    OutputExistsError
        ``output_dir`` holds a finished search with other settings, or other files.
    InputDataError
        Missing labels, a single class, a class or group too small for the validation split
        (before anything is written).
    """
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    space = space or SearchSpace()
    base = base_config or FinetuneConfig(seed=seed)
    y = get_labels(data.dataset, label_column)
    groups = get_labels(data.dataset, group_column) if group_column else None
    tr, va = _holdout(y, val_size, groups, seed, "cells")
    run = _open_search(output_dir, _search_settings("cell", base, space, seed, val_size, model_dir, data,
                                                    label_column=label_column, group_column=group_column)
                       if output_dir is not None else None, overwrite)
    train, val = data.subset(tr), data.subset(va)

    def objective(cfg):
        clf = CellClassifier(model_dir, replace(cfg, select_best=False)).fit(train.dataset, label_column)
        return evaluate_cells(clf, val.dataset, label_column, val.adata, train_adata=train.adata)

    return _run(objective, n_trials, seed, space, base, run)


def search_genes(model_dir: str | Path, data: CellData, gene_labels: Mapping[str, str], n_trials: int = 10,
                 space: SearchSpace | None = None, base_config: FinetuneConfig | None = None,
                 val_size: float = 0.2, seed: int = 0, on_missing: str = "drop",
                 output_dir: str | Path | None = None, overwrite: bool = False) -> SearchResult:
    """Search fine-tuning hyperparameters of a gene classifier (genes split into train/validation).

    Only genes that occur in the tokenized cells and the count matrix take part. ``output_dir`` and
    ``overwrite`` as in :func:`search_cells` (the fingerprint includes the gene labels).

    Raises
    ------
    GeneIdError, InputDataError, ConfigError, OutputExistsError
        As :func:`search_cells` and :func:`~netformer.classify.cross_validate_genes`.
    """
    if n_trials < 1:
        raise ConfigError(f"n_trials must be >= 1, got {n_trials}")
    space = space or SearchSpace()
    base = base_config or FinetuneConfig(seed=seed)
    genes, y, stats = _gene_table(model_dir, data, gene_labels, base, on_missing)
    tr, va = _holdout(y, val_size, None, seed, "genes")
    run = _open_search(output_dir, _search_settings(
        "gene", base, space, seed, val_size, model_dir, data,
        gene_labels=_fingerprint(dict(zip(genes.tolist(), y.tolist())))) if output_dir is not None else None,
        overwrite)

    def objective(cfg):
        clf = GeneClassifier(model_dir, replace(cfg, select_best=False)).fit(data.dataset, dict(zip(genes[tr], y[tr])))
        return evaluate_genes(clf, data.dataset, dict(zip(genes[va], y[va])), None, stats=stats)

    return _run(objective, n_trials, seed, space, base, run)
