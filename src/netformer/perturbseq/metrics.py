"""Metrics of perturbation outcome prediction (GEARS, Roohani et al. 2024; IterPert, Huang et al. 2024).

All metrics compare the predicted and the true *mean* expression of a perturbation, each taken
relative to the control mean ``ctrl`` (the change, or "delta"):

* ``mse_top20_de``: mean squared error over the top-20 differentially expressed genes of the
  perturbation (DE genes from :meth:`PerturbData.top_de_genes`, scanpy ``rank_genes_groups``
  against control, as GEARS). The control cancels, so this equals the MSE of the expressions.
* ``pearson_delta``: Pearson correlation of predicted vs true change over all genes.
* ``pearson_delta_top20_de``: the same over the top-20 DE genes.
* ``direction_acc_top20_de``: fraction of the top-20 DE genes whose predicted change has the sign of
  the true change (GEARS ``frac_correct_direction_top20``).
* ``mse``: mean squared error over all genes.

IterPert's ``mse_top20_de_non_dropout`` restricts DE genes to non-dropout genes; with the
``n_de``/``de_genes`` arguments any gene list can be used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import InputDataError
from .data import PerturbData, canonical_condition

__all__ = [
    "METRICS",
    "direction_accuracy",
    "evaluate",
    "mse_top20_de",
    "pearson_delta",
    "pearson_delta_top20_de",
]

METRICS = ("mse_top20_de", "pearson_delta", "pearson_delta_top20_de", "direction_acc_top20_de", "mse")


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (n, m) arrays; 0 where a row is constant (no association)."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)


def _as2d(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[None, :] if x.ndim == 1 else x


def mse_top20_de(pred: np.ndarray, truth: np.ndarray, de_idx: np.ndarray) -> np.ndarray:
    """MSE over each condition's DE genes. ``pred``/``truth`` (n, n_genes), ``de_idx`` (n, k) -> (n,)."""
    pred, truth, de_idx = _as2d(pred), _as2d(truth), np.atleast_2d(de_idx)
    p = np.take_along_axis(pred, de_idx, 1)
    t = np.take_along_axis(truth, de_idx, 1)
    return ((p - t) ** 2).mean(1)


def pearson_delta(pred: np.ndarray, truth: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Pearson of ``pred - ctrl`` vs ``truth - ctrl`` over all genes, per condition -> (n,).

    Defined as 0 where a change vector is constant (the no-change baseline predicts zero change
    everywhere; scipy would return NaN), so that such baselines can be averaged and ranked.
    """
    pred, truth = _as2d(pred), _as2d(truth)
    return _pearson(pred - ctrl, truth - ctrl)


def pearson_delta_top20_de(pred: np.ndarray, truth: np.ndarray, ctrl: np.ndarray, de_idx: np.ndarray) -> np.ndarray:
    """Pearson of the changes restricted to each condition's DE genes -> (n,)."""
    pred, truth, de_idx = _as2d(pred), _as2d(truth), np.atleast_2d(de_idx)
    c = np.asarray(ctrl, dtype=np.float64)[de_idx]
    return _pearson(np.take_along_axis(pred, de_idx, 1) - c, np.take_along_axis(truth, de_idx, 1) - c)


def direction_accuracy(pred: np.ndarray, truth: np.ndarray, ctrl: np.ndarray, de_idx: np.ndarray | None = None) -> np.ndarray:
    """Fraction of genes (DE genes if ``de_idx`` given) whose predicted change has the true sign -> (n,)."""
    pred, truth = _as2d(pred), _as2d(truth)
    dp, dt = np.sign(pred - ctrl), np.sign(truth - ctrl)
    if de_idx is not None:
        de_idx = np.atleast_2d(de_idx)
        dp, dt = np.take_along_axis(dp, de_idx, 1), np.take_along_axis(dt, de_idx, 1)
    return (dp == dt).mean(1)


def evaluate(
    model_or_predictions,
    data: PerturbData,
    conditions: Sequence[str],
    *,
    n_de: int = 20,
    add_mean: bool = True,
) -> pd.DataFrame:
    """Score predictions of held-out perturbations against their measured means.

    Parameters
    ----------
    model_or_predictions
        A fitted :class:`~netformer.perturbseq.models.PerturbationModel` (its ``predict`` is
        called), an array (n_conditions, n_genes) of predicted mean expression in the order of
        ``conditions``, or a DataFrame indexed by condition with ``data.genes`` columns.
    data
        The measured data (truth, control mean and DE genes).
    conditions
        Perturbations to score (any naming convention; must be in ``data``).
    n_de
        Number of DE genes (default 20, as GEARS).
    add_mean
        Append a row ``'mean'`` with the mean of each metric over conditions (NaNs skipped).

    Returns
    -------
    DataFrame indexed by canonical condition (plus ``'mean'``), columns :data:`METRICS` and
    ``n_genes_perturbed`` (1 or 2).

    Raises
    ------
    InputDataError
        Conditions missing from ``data`` or predictions of the wrong shape.
    """
    conds = data.check_conditions(list(conditions))
    if not conds:
        raise InputDataError("evaluate needs at least one condition.")
    if hasattr(model_or_predictions, "predict"):
        pred = model_or_predictions.predict(conds)
    elif isinstance(model_or_predictions, pd.DataFrame):
        df = model_or_predictions.copy()
        df.index = [canonical_condition(c) for c in df.index]
        missing = sorted(set(conds) - set(df.index))
        if missing:
            raise InputDataError(f"predictions lack conditions {missing[:5]}.")
        pred = df.loc[conds, data.genes].to_numpy(dtype=np.float64)
    else:
        pred = np.asarray(model_or_predictions, dtype=np.float64)
    if pred.shape != (len(conds), data.n_genes):
        raise InputDataError(f"predictions have shape {pred.shape}, expected {(len(conds), data.n_genes)}.")
    truth = data.mean(conds)
    ctrl = data.control_mean()
    de = data.de_indices(conds, n=n_de)
    out = pd.DataFrame(
        {
            "mse_top20_de": mse_top20_de(pred, truth, de),
            "pearson_delta": pearson_delta(pred, truth, ctrl),
            "pearson_delta_top20_de": pearson_delta_top20_de(pred, truth, ctrl, de),
            "direction_acc_top20_de": direction_accuracy(pred, truth, ctrl, de),
            "mse": ((pred - truth) ** 2).mean(1),
            "n_genes_perturbed": [c.count("+") + 1 for c in conds],
        },
        index=pd.Index(conds, name="condition"),
    )
    if add_mean:
        out.loc["mean"] = out.mean(numeric_only=True, skipna=True)
    return out


def summarize(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Table of the ``'mean'`` rows of several :func:`evaluate` results, one row per model name."""
    return pd.DataFrame({name: df.loc["mean", list(METRICS)] for name, df in results.items()}).T
