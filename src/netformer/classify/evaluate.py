"""Evaluation of a fine-tuned classifier beside its baseline on the same split.

Every :class:`Evaluation` holds two :class:`~netformer.classify.metrics.Metrics` - the fine-tuned
model's and the baseline's (see :mod:`netformer.classify.baselines`) - computed on identical
held-out cells or genes, plus a predictions table with both methods' outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .._io import atomic_file
from ..errors import ConfigError, InputDataError
from .baselines import GeneStatsBaseline, PCABaseline, gene_expression_stats
from .data import align_counts, get_labels, resolve_gene_labels
from .metrics import Metrics, classification_metrics, plot_confusion, plot_roc
from .splits import check_labels

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Fine-tuned model and baseline on the same held-out samples.

    Attributes
    ----------
    task
        ``"cell"`` or ``"gene"``.
    model, baseline
        :class:`Metrics` of each.
    predictions
        One row per held-out cell/gene: ``true``, ``model_pred``, ``baseline_pred`` and the
        probability of each class for both (``model_p_<c>``, ``baseline_p_<c>``).
    classes
        Class order.
    baseline_name
        Which baseline stands beside the model.
    """

    task: str
    model: Metrics
    baseline: Metrics
    predictions: pd.DataFrame
    classes: list[str]
    baseline_name: str

    def table(self) -> pd.DataFrame:
        """Scalar metrics, one row per method (``model``, baseline name)."""
        return pd.DataFrame([{"method": "fine-tuned model", **self.model.summary()},
                             {"method": self.baseline_name, **self.baseline.summary()}]).set_index("method")

    def per_class(self) -> pd.DataFrame:
        """Per-class precision / recall / F1 of both methods side by side."""
        return pd.concat({"model": self.model.per_class, "baseline": self.baseline.per_class}, axis=1)

    def save(self, output_dir: str | Path) -> Path:
        """Write ``metrics.csv``, ``per_class.csv``, ``predictions.csv``, ``confusion_model.png``,
        ``confusion_baseline.png`` and, for binary tasks, ``roc.png`` (each file atomically)."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, df in (("metrics.csv", self.table()), ("per_class.csv", self.per_class()),
                         ("predictions.csv", self.predictions)):
            with atomic_file(out / name) as tmp:
                df.to_csv(tmp)
        plot_confusion(self.model.confusion, out / "confusion_model.png", f"fine-tuned model ({self.task}s)")
        plot_confusion(self.baseline.confusion, out / "confusion_baseline.png", f"{self.baseline_name} ({self.task}s)")
        if len(self.classes) == 2:
            pos = self.classes[1]
            y = (self.predictions["true"] == pos).astype(int).to_numpy()
            if 0 < y.sum() < len(y):
                plot_roc({"fine-tuned model": (y, self.predictions[f"model_p_{pos}"].to_numpy()),
                          self.baseline_name: (y, self.predictions[f"baseline_p_{pos}"].to_numpy())},
                         out / "roc.png", positive=pos, title=f"{self.task} classification: {pos} vs {self.classes[0]}")
        return out


def _baseline_proba(base, proba: np.ndarray, classes: list[str]) -> np.ndarray:
    """Baseline probabilities re-ordered to ``classes`` (zeros for classes it never saw)."""
    out = np.zeros((proba.shape[0], len(classes)))
    for j, c in enumerate(base.classes_):
        out[:, classes.index(c)] = proba[:, j]
    return out


def _assemble(task, index, y, classes, model_proba, base_proba, baseline_name) -> Evaluation:
    classes = list(classes)
    model_pred = np.asarray(classes)[model_proba.argmax(1)]
    base_pred = np.asarray(classes)[base_proba.argmax(1)]
    pred = pd.DataFrame({"true": y, "model_pred": model_pred, "baseline_pred": base_pred}, index=index)
    for j, c in enumerate(classes):
        pred[f"model_p_{c}"] = model_proba[:, j]
    for j, c in enumerate(classes):
        pred[f"baseline_p_{c}"] = base_proba[:, j]
    return Evaluation(task, classification_metrics(y, model_pred, model_proba, classes),
                      classification_metrics(y, base_pred, base_proba, classes), pred, classes, baseline_name)


def evaluate_cells(clf, dataset, labels, adata, output_dir=None, train_adata=None,
                   n_comps: int = 50) -> Evaluation:
    """Score a fitted :class:`~netformer.classify.CellClassifier` and the PCA baseline on ``dataset``.

    The baseline (:class:`~netformer.classify.baselines.PCABaseline`) is fitted on the classifier's
    own training cells (``clf.train_info_``, looked up in ``train_adata`` or ``adata`` by cell id),
    with the same class weighting, and applied to the held-out cells.

    Raises
    ------
    ConfigError
        ``adata`` is None (a result is never reported without its baseline).
    InputDataError
        Labels missing, or cells absent from the count matrix.
    """
    if adata is None:
        raise ConfigError("evaluation needs the raw counts (adata) of the training and test cells for the "
                          "PCA + logistic regression baseline; every result is reported beside its baseline")
    y = check_labels(get_labels(dataset, labels))
    unseen = sorted(set(y) - set(clf.classes_))
    if unseen:
        log.warning("test labels %s were not among the training classes; they count as errors", unseen)
    classes = list(clf.classes_) + unseen
    test_counts = align_counts(dataset, adata)
    train_ids = clf.train_info_["cell_ids"]
    src = train_adata if train_adata is not None else adata
    pos = src.obs_names.get_indexer(pd.Index(train_ids))
    if (pos < 0).any():
        raise InputDataError(f"{int((pos < 0).sum())} training cells are not in the count matrix; pass the AnnData "
                             "holding the training cells (train_adata=)")
    cw = "balanced" if clf.config.class_weights == "balanced" else None
    base = PCABaseline(n_comps=n_comps, class_weight=cw, seed=clf.config.seed).fit(src[pos], clf.train_info_["labels"])
    model_proba = np.zeros((len(y), len(classes)))
    model_proba[:, : len(clf.classes_)] = clf.predict_proba(dataset)
    base_proba = _baseline_proba(base, base.predict_proba(test_counts), classes)
    ev = _assemble("cell", pd.Index(dataset["cell_id"], name="cell_id"), y, classes, model_proba, base_proba,
                   f"PCA{n_comps} + logistic regression")
    if output_dir is not None:
        ev.save(output_dir)
    return ev


def evaluate_genes(clf, dataset, gene_labels: Mapping[str, str], adata, output_dir=None, on_missing="drop",
                   stats: pd.DataFrame | None = None) -> Evaluation:
    """Score a fitted :class:`~netformer.classify.GeneClassifier` and the gene-statistics baseline
    on held-out genes. Genes absent from the cells or from ``adata`` are left out (logged)."""
    if adata is None and stats is None:
        raise ConfigError("evaluation needs the raw counts (adata) for the gene-statistics baseline; every result "
                          "is reported beside its baseline")
    labels = resolve_gene_labels(gene_labels, clf.vocab, on_missing)
    stats = stats if stats is not None else gene_expression_stats(adata, clf.vocab)
    pred = clf.predict(dataset, genes=list(labels))
    train = {g: c for g, c in clf.train_info_["gene_labels"].items() if g in stats.index}
    genes = [g for g in pred.index if g in stats.index]
    if len(genes) < len(labels):
        log.info("%d of %d test genes are absent from the cells or the count matrix and left out",
                 len(labels) - len(genes), len(labels))
    if not genes:
        raise InputDataError("none of the test genes occurs in the tokenized cells and the count matrix")
    y = np.array([labels[g] for g in genes])
    classes = list(clf.classes_) + sorted(set(y) - set(clf.classes_))
    base = GeneStatsBaseline().fit(stats.loc[list(train)], list(train.values()))
    model_proba = np.zeros((len(genes), len(classes)))
    model_proba[:, : len(clf.classes_)] = pred.loc[genes, [f"p_{c}" for c in clf.classes_]].to_numpy()
    base_proba = _baseline_proba(base, base.predict_proba(stats.loc[genes]), classes)
    ev = _assemble("gene", pd.Index(genes, name="gene"), y, classes, model_proba, base_proba,
                   "gene statistics + logistic regression")
    ev.predictions.insert(1, "n_cells", pred.loc[genes, "n_cells"].to_numpy())
    if output_dir is not None:
        ev.save(output_dir)
    return ev
