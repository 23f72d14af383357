"""Reproducible train / validation / test splits of perturbations (GEARS's split types).

A gene is *seen* when its single-gene perturbation is in the training set. Split kinds:

* ``'unseen_single'``: a fraction of the singly perturbed genes is held out; their singles go to
  test, and so do the doubles containing a held-out gene, labelled ``combo_seen0`` / ``combo_seen1``
  by how many of their genes are seen (GEARS's ``simulation`` split places them in test the same
  way); with ``doubles='drop'`` those doubles are excluded instead.
* ``'combo_seen0'`` / ``'combo_seen1'``: held-out genes as above (their singles excluded); test =
  the doubles with exactly 0 / 1 seen genes; other doubles containing a held-out gene are
  excluded, the rest train.
* ``'combo_seen2'``: a fraction of the doubles whose two genes are both seen goes to test.
* ``'random'``: a random fraction of all perturbations.
* ``'custom'``: ``test_conditions`` (and optionally ``val_conditions``) given by the user.

The validation set is a random fraction ``val_frac`` of the remaining training perturbations,
excluding singles of genes that occur in test perturbations (moving those would change the test
subgroups, e.g. turn a ``combo_seen2`` double into ``combo_seen1``).
Everything is drawn from ``numpy.random.default_rng(seed)`` over sorted lists, so the same input
and seed give the same split. Control is never part of a split (models always see it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, InputDataError
from .data import CONTROL, PerturbData, canonical_condition, condition_genes

__all__ = ["SPLIT_KINDS", "Split", "split_conditions"]

SPLIT_KINDS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2", "random", "custom")


@dataclass
class Split:
    """Result of :func:`split_conditions`: canonical condition lists (sorted, control excluded).

    ``subgroup`` maps each test condition to ``'unseen_single'``, ``'seen_single'``,
    ``'combo_seen0'``, ``'combo_seen1'`` or ``'combo_seen2'`` (number of its genes whose single is in
    train). ``excluded`` holds perturbations in neither set (held-out genes' singles or doubles
    that would leak a held-out gene into training).
    """

    train: list[str]
    val: list[str]
    test: list[str]
    subgroup: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    kind: str = "custom"
    seed: int = 0
    held_out_genes: list[str] = field(default_factory=list)

    def test_by_subgroup(self) -> dict[str, list[str]]:
        """Test conditions grouped by subgroup."""
        out: dict[str, list[str]] = {}
        for c in self.test:
            out.setdefault(self.subgroup[c], []).append(c)
        return out


def _subgroup(cond: str, seen: set[str]) -> str:
    genes = condition_genes(cond)
    k = sum(g in seen for g in genes)
    if len(genes) == 1:
        return "seen_single" if k else "unseen_single"
    return f"combo_seen{k}"


def split_conditions(
    data: PerturbData | Sequence[str],
    kind: str = "unseen_single",
    *,
    test_frac: float = 0.25,
    val_frac: float = 0.1,
    seed: int = 0,
    doubles: str = "test",
    test_conditions: Sequence[str] | None = None,
    val_conditions: Sequence[str] | None = None,
) -> Split:
    """Split the perturbations of ``data`` (a PerturbData or a list of condition names).

    Parameters
    ----------
    kind
        One of :data:`SPLIT_KINDS` (see the module docstring).
    test_frac
        Fraction of single genes held out (``unseen_single``, ``combo_seen0/1``), of eligible
        doubles (``combo_seen2``) or of all perturbations (``random``); at least one is held out.
    val_frac
        Fraction of the remaining training perturbations moved to validation (0 for none).
    doubles
        ``unseen_single`` only: ``'test'`` (default) or ``'drop'`` for doubles with a held-out gene.
    test_conditions, val_conditions
        ``custom`` only.

    Raises
    ------
    ConfigError
        Unknown kind, fractions outside [0, 1), custom split without test conditions.
    InputDataError
        No perturbation fits the requested kind (e.g. ``combo_seen2`` without doubles whose
        singles are measured), or custom conditions absent from the data.
    """
    if kind not in SPLIT_KINDS:
        raise ConfigError(f"unknown split kind {kind!r}; choose one of {SPLIT_KINDS}.")
    if not (0 <= test_frac < 1 and 0 <= val_frac < 1):
        raise ConfigError(f"test_frac and val_frac must lie in [0, 1), got {test_frac}, {val_frac}.")
    if doubles not in ("test", "drop"):
        raise ConfigError(f"doubles must be 'test' or 'drop', not {doubles!r}.")
    perts = sorted({canonical_condition(c) for c in (data.perturbations if isinstance(data, PerturbData) else data)} - {CONTROL})
    if not perts:
        raise InputDataError("no perturbations to split.")
    rng = np.random.default_rng(seed)
    singles = [c for c in perts if "+" not in c]
    doubles_list = [c for c in perts if "+" in c]

    def n_of(n: int) -> int:
        return max(1, int(round(test_frac * n))) if n else 0

    held: list[str] = []
    excluded: list[str] = []
    if kind == "custom":
        if not test_conditions:
            raise ConfigError("a custom split needs test_conditions.")
        test = sorted({canonical_condition(c) for c in test_conditions})
        missing = sorted(set(test) - set(perts))
        if missing:
            raise InputDataError(f"custom test conditions not among the perturbations: {missing[:8]}.")
        train = [c for c in perts if c not in set(test)]
    elif kind == "random":
        test = sorted(rng.choice(perts, n_of(len(perts)), replace=False).tolist())
        train = [c for c in perts if c not in set(test)]
    elif kind == "combo_seen2":
        single_set = set(singles)
        eligible = [c for c in doubles_list if all(g in single_set for g in condition_genes(c))]
        if not eligible:
            raise InputDataError("combo_seen2 needs doubles whose two singles are both measured; there are none.")
        test = sorted(rng.choice(eligible, n_of(len(eligible)), replace=False).tolist())
        train = [c for c in perts if c not in set(test)]
    else:
        if not singles:
            raise InputDataError(f"{kind} holds out single genes, but the data have no single perturbations.")
        held = sorted(rng.choice(singles, n_of(len(singles)), replace=False).tolist())
        held_set = set(held)
        seen = set(singles) - held_set
        test, train = [], []
        if kind == "unseen_single":
            test += held
            for c in doubles_list:
                if any(g in held_set for g in condition_genes(c)):
                    (test if doubles == "test" else excluded).append(c)
                else:
                    train.append(c)
            train += sorted(seen)
        else:
            k = int(kind[-1])
            excluded += held
            for c in doubles_list:
                n_seen = sum(g in seen for g in condition_genes(c))
                if n_seen == k:
                    test.append(c)
                elif any(g in held_set for g in condition_genes(c)):
                    excluded.append(c)
                else:
                    train.append(c)
            train += sorted(seen)
            if not test:
                raise InputDataError(f"no doubles with exactly {k} seen genes after holding out {held}; try another seed or kind.")
        test, train = sorted(test), sorted(train)
    if val_conditions is not None:
        val = sorted({canonical_condition(c) for c in val_conditions})
        bad = sorted(set(val) - set(train))
        if bad:
            raise InputDataError(f"validation conditions {bad[:8]} are not training perturbations.")
    else:
        # singles of genes that occur in test perturbations stay in train, so that moving them to
        # validation does not change what the test set measures (e.g. combo_seen2 stays seen2)
        test_genes = {g for c in test for g in condition_genes(c)}
        pool = [c for c in train if "+" in c or c not in test_genes]
        n_val = int(round(val_frac * len(pool))) if len(pool) > 1 else 0
        if val_frac > 0 and len(pool) > 1:
            n_val = max(1, n_val)
        val = sorted(rng.choice(pool, n_val, replace=False).tolist()) if n_val else []
    train = [c for c in train if c not in set(val)]
    seen_train = {c for c in train if "+" not in c}
    subgroup = {c: _subgroup(c, seen_train) for c in test}
    return Split(
        train=train, val=val, test=test, subgroup=subgroup, excluded=sorted(excluded), kind=kind, seed=seed,
        held_out_genes=held,
    )
