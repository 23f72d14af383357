"""Classification metrics and plots: accuracy, macro-F1, per-class precision/recall, confusion
matrix, ROC/AUC for binary tasks (scikit-learn definitions), PNGs via matplotlib (no pyplot, the
caller's backend is never switched)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .._io import new_figure, save_figure


@dataclass
class Metrics:
    """Metrics of one classifier on one evaluation set.

    Attributes
    ----------
    accuracy, macro_f1
        Fractions in [0, 1].
    auc
        ROC AUC of the positive class (binary tasks) or one-vs-rest macro AUC (multi-class, when
        every class is present in the truth); NaN when undefined.
    per_class
        DataFrame indexed by class: precision, recall, f1, support.
    confusion
        DataFrame (true class x predicted class) of counts.
    """

    accuracy: float
    macro_f1: float
    auc: float
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    n: int = 0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Scalar metrics as a dict."""
        return {"n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "auc": self.auc, **self.extra}


def classification_metrics(
    y_true: Sequence, y_pred: Sequence, proba: np.ndarray | None = None, classes: Sequence[str] | None = None
) -> Metrics:
    """Compute :class:`Metrics`.

    Parameters
    ----------
    y_true, y_pred
        Labels (strings), length n.
    proba
        (n, n_classes) class probabilities in the order of ``classes`` (for AUC), optional.
    classes
        Class order (default: sorted union of truth and prediction).
    """
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                                 roc_auc_score)

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    classes = list(classes) if classes is not None else sorted(set(y_true) | set(y_pred))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    per_class = pd.DataFrame({"precision": p, "recall": r, "f1": f, "support": s}, index=pd.Index(classes, name="class"))
    present = [c for c in classes if c in set(y_true)]
    macro_f1 = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    cm = pd.DataFrame(confusion_matrix(y_true, y_pred, labels=classes), index=pd.Index(classes, name="true"),
                      columns=pd.Index(classes, name="predicted"))
    auc = float("nan")
    if proba is not None and len(present) >= 2:
        proba = np.asarray(proba, dtype=float)
        if len(classes) == 2:
            auc = float(roc_auc_score((y_true == classes[1]).astype(int), proba[:, 1]))
        elif len(present) == len(classes):
            pr = proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)
            auc = float(roc_auc_score(y_true, pr, labels=classes, multi_class="ovr", average="macro"))
    return Metrics(float(accuracy_score(y_true, y_pred)), macro_f1, auc, per_class, cm, n=len(y_true))


def plot_confusion(confusion: pd.DataFrame, path: str | Path, title: str = "confusion matrix") -> Path:
    """Row-normalised confusion matrix heat map (counts annotated) as a PNG."""
    cm = confusion.to_numpy().astype(float)
    frac = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    k = len(confusion)
    fig, ax = new_figure(figsize=(1.0 + 0.6 * k + 2, 1.0 + 0.6 * k + 1))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), confusion.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), confusion.index, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return save_figure(fig, path, dpi=110)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, positive: str,
             title: str = "ROC") -> Path:
    """ROC curves of a binary task, one per method: ``{name: (y_true01, score)}`` -> PNG with AUCs."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = new_figure(figsize=(5, 5))
    for name, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel(f"true positive rate ({positive})")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path, dpi=110)
