"""Hyperparameter search for fine-tuning with Optuna (TPE sampler, Akiba et al. 2019).

Each trial fine-tunes on the training cells (or genes) and is scored by validation macro-F1 on a
held-out validation split (stratified, grouped when asked). The search space covers the knobs
upstream Geneformer tunes with Ray Tune: learning rate, schedule, warm-up, weight decay, frozen
layers, epochs and batch size. The best configuration, the table of trials and the baseline's
score on the same validation split are returned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .config import SCHEDULES, FinetuneConfig
from .data import CellData, get_labels, resolve_gene_labels
from .evaluate import evaluate_cells, evaluate_genes
from .models import CellClassifier, GeneClassifier
from .splits import train_val_test_split

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
    """

    best_config: FinetuneConfig
    best_value: float
    trials: pd.DataFrame
    baseline: dict = field(default_factory=dict)


def _run(objective, n_trials: int, seed: int, space: SearchSpace, base: FinetuneConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    records: list[dict] = []
    holder: dict = {}

    def wrapped(trial):
        cfg = space.suggest(trial, base)
        t0 = time.perf_counter()
        ev = objective(cfg)
        holder.setdefault("baseline", ev.baseline.summary())
        rec = {"trial": trial.number, **trial.params, "val_macro_f1": ev.model.macro_f1, "val_auc": ev.model.auc,
               "val_accuracy": ev.model.accuracy, "seconds": time.perf_counter() - t0}
        records.append(rec)
        log.info("trial %d: %s", trial.number, rec)
        return ev.model.macro_f1

    study.optimize(wrapped, n_trials=n_trials)
    best = space.suggest(optuna.trial.FixedTrial(study.best_params), base)
    return SearchResult(best, float(study.best_value), pd.DataFrame(records), holder.get("baseline", {}))


def search_cells(model_dir: str | Path, data: CellData, label_column: str, n_trials: int = 10,
                 space: SearchSpace | None = None, base_config: FinetuneConfig | None = None,
                 group_column: str | None = None, val_size: float = 0.2, seed: int = 0) -> SearchResult:
    """Search fine-tuning hyperparameters of a cell classifier.

    ``data`` is split once into training and validation cells (stratified; grouped by
    ``group_column`` when given); every trial trains on the training cells and is scored on the
    validation cells, beside the PCA baseline fitted on the same training cells. Keep a separate
    test set out of ``data`` to report the chosen configuration honestly.
    """
    if n_trials < 1:
        raise ConfigError("n_trials must be >= 1")
    space = space or SearchSpace()
    base = base_config or FinetuneConfig(seed=seed)
    y = get_labels(data.dataset, label_column)
    groups = get_labels(data.dataset, group_column) if group_column else None
    split = train_val_test_split(y, test_size=val_size, val_size=0.0, groups=groups, seed=seed)
    train, val = data.subset(split["train"]), data.subset(split["test"])

    def objective(cfg):
        clf = CellClassifier(model_dir, replace(cfg, select_best=False)).fit(train.dataset, label_column)
        return evaluate_cells(clf, val.dataset, label_column, val.adata, train_adata=train.adata)

    return _run(objective, n_trials, seed, space, base)


def search_genes(model_dir: str | Path, data: CellData, gene_labels: Mapping[str, str], n_trials: int = 10,
                 space: SearchSpace | None = None, base_config: FinetuneConfig | None = None,
                 val_size: float = 0.2, seed: int = 0) -> SearchResult:
    """Search fine-tuning hyperparameters of a gene classifier (genes split into train/validation)."""
    from .baselines import gene_expression_stats

    if n_trials < 1:
        raise ConfigError("n_trials must be >= 1")
    space = space or SearchSpace()
    base = base_config or FinetuneConfig(seed=seed)
    probe = GeneClassifier(model_dir, base)
    vocab = probe._need_vocab()
    stats = gene_expression_stats(data.adata, vocab)
    present = probe._present_tokens(data.dataset["input_ids"])
    labels = {g: c for g, c in resolve_gene_labels(gene_labels, vocab).items()
              if vocab.token_dict[g] in present and g in stats.index}
    genes = np.array(list(labels))
    y = np.array([labels[g] for g in genes])
    split = train_val_test_split(y, test_size=val_size, val_size=0.0, seed=seed)
    tr, va = split["train"], split["test"]

    def objective(cfg):
        clf = GeneClassifier(model_dir, replace(cfg, select_best=False)).fit(data.dataset, dict(zip(genes[tr], y[tr])))
        return evaluate_genes(clf, data.dataset, dict(zip(genes[va], y[va])), None, stats=stats)

    return _run(objective, n_trials, seed, space, base)
