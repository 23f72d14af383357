"""k-fold cross-validation of the fine-tuned classifiers, each fold scored beside its baseline."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .._io import atomic_file
from ..errors import InputDataError
from .baselines import gene_expression_stats
from .config import FinetuneConfig
from .data import CellData, get_labels, resolve_gene_labels
from .evaluate import Evaluation, _assemble, evaluate_cells, evaluate_genes
from .models import CellClassifier, GeneClassifier
from .splits import kfold_indices

log = logging.getLogger(__name__)


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
    """

    folds: pd.DataFrame
    pooled: Evaluation

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation over folds of each metric, for model and baseline."""
        cols = [c for c in self.folds.columns if c.startswith(("model_", "baseline_"))]
        return self.folds[cols].agg(["mean", "std"]).T

    def save(self, output_dir: str | Path) -> Path:
        out = Path(output_dir)
        self.pooled.save(out)
        with atomic_file(out / "folds.csv") as tmp:
            self.folds.to_csv(tmp, index=False)
        return out


def _fold_row(k, ev: Evaluation, n_train, clf, extra=None) -> dict:
    row = {"fold": k, "n_train": n_train, "n_test": ev.model.n}
    for who, m in (("model", ev.model), ("baseline", ev.baseline)):
        row.update({f"{who}_accuracy": m.accuracy, f"{who}_macro_f1": m.macro_f1, f"{who}_auc": m.auc})
    row["seconds_per_epoch"] = clf.seconds_per_epoch
    row.update(extra or {})
    return row


def _pool(evals: list[Evaluation], task: str) -> Evaluation:
    pred = pd.concat([e.predictions for e in evals])
    classes = sorted(set().union(*[e.classes for e in evals]))
    mp = np.column_stack([pred.get(f"model_p_{c}", pd.Series(0.0, index=pred.index)).fillna(0).to_numpy()
                          for c in classes])
    bp = np.column_stack([pred.get(f"baseline_p_{c}", pd.Series(0.0, index=pred.index)).fillna(0).to_numpy()
                          for c in classes])
    return _assemble(task, pred.index, pred["true"].to_numpy(), classes, mp, bp, evals[0].baseline_name)


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

    Returns
    -------
    CVResult
    """
    y = get_labels(data.dataset, label_column)
    if drop_missing:
        keep = np.flatnonzero([v is not None for v in y])
        if len(keep) < len(y):
            log.info("dropping %d cells without a %r label", len(y) - len(keep), label_column)
            data = data.subset(keep)
            y = y[keep]
    groups = get_labels(data.dataset, group_column) if group_column else None
    folds = kfold_indices(y, n_splits, groups=groups, seed=seed)
    cfg = config or FinetuneConfig(seed=seed)
    rows, evals = [], []
    for k, (tr, te) in enumerate(folds):
        train, test = data.subset(tr), data.subset(te)
        clf = CellClassifier(model_dir, cfg).fit(train.dataset, label_column)
        ev = evaluate_cells(clf, test.dataset, label_column, test.adata, train_adata=train.adata)
        extra = {"test_groups": ";".join(sorted(set(map(str, groups[te]))))} if groups is not None else None
        rows.append(_fold_row(k, ev, len(tr), clf, extra))
        evals.append(ev)
        log.info("fold %d/%d: model macro-F1 %.3f, baseline %.3f", k + 1, n_splits, ev.model.macro_f1,
                 ev.baseline.macro_f1)
    res = CVResult(pd.DataFrame(rows), _pool(evals, "cell"))
    if output_dir is not None:
        res.save(output_dir)
    return res


def cross_validate_genes(
    model_dir: str | Path,
    data: CellData,
    gene_labels: Mapping[str, str],
    n_splits: int = 5,
    config: FinetuneConfig | None = None,
    seed: int = 0,
    on_missing: str = "drop",
    output_dir: str | Path | None = None,
) -> CVResult:
    """k-fold cross-validation over genes of :class:`GeneClassifier` beside the gene-statistics baseline.

    Genes (not cells) are split into stratified folds; each fold's model is fine-tuned on all cells
    with labels only for its training genes and scored on the held-out genes. Only genes that occur
    in the tokenized cells and in the count matrix take part.
    """
    probe = GeneClassifier(model_dir, config)
    vocab = probe._need_vocab()
    labels = resolve_gene_labels(gene_labels, vocab, on_missing)
    stats = gene_expression_stats(data.adata, vocab)
    present = probe._present_tokens(data.dataset["input_ids"])
    labels = {g: c for g, c in labels.items() if vocab.token_dict[g] in present and g in stats.index}
    if not labels:
        raise InputDataError("no labelled gene occurs in the tokenized cells")
    genes = np.array(list(labels))
    y = np.array([labels[g] for g in genes])
    folds = kfold_indices(y, n_splits, seed=seed)
    cfg = config or FinetuneConfig(seed=seed)
    rows, evals = [], []
    for k, (tr, te) in enumerate(folds):
        clf = GeneClassifier(model_dir, cfg).fit(data.dataset, dict(zip(genes[tr], y[tr])))
        ev = evaluate_genes(clf, data.dataset, dict(zip(genes[te], y[te])), None, stats=stats)
        rows.append(_fold_row(k, ev, len(tr), clf))
        evals.append(ev)
        log.info("fold %d/%d: model AUC %.3f, baseline %.3f", k + 1, n_splits, ev.model.auc, ev.baseline.auc)
    res = CVResult(pd.DataFrame(rows), _pool(evals, "gene"))
    if output_dir is not None:
        res.save(output_dir)
    return res
