"""Train / validation / test splits and k-fold cross-validation, stratified by label and grouped
by a column (donor, batch, sample) so that no group is in two splits.

Built on scikit-learn's ``StratifiedKFold`` and ``StratifiedGroupKFold`` (Pedregosa et al. 2011).
All splits are deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputDataError

log = logging.getLogger(__name__)


def check_labels(labels: Sequence, n_splits: int | None = None, what: str = "cells") -> np.ndarray:
    """Validate classification labels; return them as a string array.

    Raises
    ------
    InputDataError
        If a label is missing (None/NaN), there is only one class, or (with ``n_splits``) a class
        has fewer members than folds.
    """
    s = pd.Series(list(labels), dtype=object)
    if len(s) == 0:
        raise InputDataError(f"there are no {what} to classify (no labels); give labelled {what}")
    missing = s.isna()
    if missing.all():
        raise InputDataError(
            f"none of the {len(s)} {what} has a label; label them, or choose the column that holds the labels "
            "(CLI: --label-column)"
        )
    if missing.any():
        raise InputDataError(
            f"{int(missing.sum())} of {len(s)} {what} have no label; drop them first "
            "(e.g. dataset.filter(lambda r: r['cell_type'] is not None)) or pass drop_missing=True"
        )
    y = s.astype(str).to_numpy()
    counts = pd.Series(y).value_counts()
    if len(counts) < 2:
        raise InputDataError(
            f"the labels of the {len(s)} {what} hold a single class ({counts.index[0]!r}); a classifier needs at "
            "least two classes: add labelled examples of another class"
        )
    if n_splits is not None and counts.min() < n_splits:
        rare = counts[counts < n_splits]
        raise InputDataError(
            f"classes of {what} with fewer members than the {n_splits} folds/splits: "
            f"{ {str(k): int(v) for k, v in rare.items()} }; drop or merge "
            "these classes, or lower n_splits (CLI: --folds)"
        )
    return y


def check_training_classes(labels: Sequence, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                           what: str = "cells") -> None:
    """Raise :class:`InputDataError` unless the training part of every ``(train, test)`` split holds at
    least two classes (grouped splits can leave a class in one group only)."""
    y = np.asarray(labels)
    for k, (tr, _) in enumerate(splits):
        classes = np.unique(y[tr])
        if len(classes) < 2:
            raise InputDataError(
                f"the training {what} of split {k} hold a single class ({classes[0] if len(classes) else None!r}): "
                "with grouped splits every class must occur in several groups; drop that class, or split "
                "without groups"
            )


def _check_groups(groups: Sequence, n: int, n_splits: int) -> np.ndarray:
    g = pd.Series(list(groups), dtype=object)
    if len(g) != n:
        raise InputDataError(f"groups has {len(g)} entries for {n} labels")
    if g.isna().any():
        raise InputDataError(f"{int(g.isna().sum())} cells have no group; fill the group column first")
    g = g.astype(str).to_numpy()
    n_groups = len(np.unique(g))
    if n_groups < n_splits:
        raise InputDataError(
            f"only {n_groups} groups for {n_splits} folds; lower n_splits to at most {n_groups} "
            "or split without groups"
        )
    return g


def kfold_indices(
    labels: Sequence,
    n_splits: int = 5,
    groups: Sequence | None = None,
    seed: int = 0,
    what: str = "cells",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (optionally grouped) k-fold splits.

    Parameters
    ----------
    labels
        One label per sample (cells or genes), length n.
    n_splits
        Number of folds (>= 2).
    groups
        Optional group per sample; every group falls into exactly one test fold
        (``StratifiedGroupKFold``), so train and test never share a group.
    seed
        Shuffling seed.
    what
        What the samples are (``"cells"``, ``"genes"``), for the error messages.

    Returns
    -------
    list of (train_indices, test_indices)
        Integer index arrays into ``labels``; the test folds partition ``range(n)``.

    Raises
    ------
    InputDataError
        No labels, missing labels, a single class, a class smaller than ``n_splits`` (ungrouped),
        fewer groups than folds.
    ConfigError
        ``n_splits < 2``.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if n_splits < 2:
        raise ConfigError(f"n_splits must be >= 2, got {n_splits}")
    y = check_labels(labels, None if groups is not None else n_splits, what=what)
    idx = np.arange(len(y))
    if groups is None:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in cv.split(idx, y)]
    g = _check_groups(groups, len(y), n_splits)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [(tr, te) for tr, te in cv.split(idx, y, g)]
    for tr, te in folds:
        assert not set(g[tr]) & set(g[te])
    return folds


def train_val_test_split(
    labels: Sequence,
    test_size: float = 0.2,
    val_size: float = 0.1,
    groups: Sequence | None = None,
    seed: int = 0,
    what: str = "cells",
) -> dict[str, np.ndarray]:
    """One train / validation / test split, stratified by label and, with ``groups``, grouped.

    Without groups, ``sklearn.model_selection.train_test_split`` (stratified) is applied twice.
    With groups, the test set is one fold of a ``StratifiedGroupKFold`` with
    ``round(1 / test_size)`` folds, and the validation set one fold of the remaining samples with
    ``round((1 - test_size) / val_size)`` folds, so sizes are approximate (whole groups move).

    Returns ``{"train": idx, "validation": idx, "test": idx}`` (``validation`` empty when
    ``val_size == 0``). Raises :class:`InputDataError` as :func:`kfold_indices`.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1 or not 0 <= val_size < 1 or test_size + val_size >= 1:
        raise ConfigError("need 0 < test_size < 1, 0 <= val_size < 1 and test_size + val_size < 1")
    y = check_labels(labels, None if groups is not None else 2, what=what)
    idx = np.arange(len(y))
    if groups is None:
        rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        if val_size == 0:
            return {"train": np.sort(rest), "validation": np.array([], dtype=int), "test": np.sort(test)}
        train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=y[rest],
                                      random_state=seed)
        return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}
    g = np.asarray(pd.Series(list(groups), dtype=object).astype(str))
    k_test = max(2, int(round(1 / test_size)))
    rest, test = kfold_indices(y, k_test, groups=g, seed=seed, what=what)[0]
    if val_size == 0:
        return {"train": rest, "validation": np.array([], dtype=int), "test": test}
    k_val = max(2, int(round((1 - test_size) / val_size)))
    tr, va = kfold_indices(y[rest], k_val, groups=g[rest], seed=seed, what=what)[0]
    return {"train": rest[tr], "validation": rest[va], "test": test}
