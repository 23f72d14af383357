"""Which genes and cells to perturb: gene id resolution, cell filters, cell states."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConfigError, GeneIdError, InputDataError
from ..genes import SPECIAL_TOKENS, GeneVocab, symbol_to_ensembl

log = logging.getLogger(__name__)


@dataclass
class CellStates:
    """Cell states for in silico treatment (upstream ``cell_states_to_model``).

    Attributes
    ----------
    column
        obs column of the tokenized dataset holding state labels (e.g. ``"condition"``).
    start
        State of the cells that are perturbed (e.g. ``"stim"``, the diseased state).
    goal
        State to move toward (e.g. ``"ctrl"``, the healthy state).
    alternatives
        Other states; shifts toward each are reported so genes that move cells toward them
        can be told apart.
    """

    column: str
    start: str
    goal: str
    alternatives: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.start, self.goal = str(self.start), str(self.goal)
        self.alternatives = tuple(str(a) for a in self.alternatives)
        if self.start == self.goal:
            raise ConfigError(f"start state and goal state are both {self.start!r}; choose two different states")
        clash = set(self.alternatives) & {self.start, self.goal}
        if clash:
            raise ConfigError(f"alternative states {sorted(clash)} repeat the start or goal state")

    @property
    def labels(self) -> list[str]:
        return [self.start, self.goal, *self.alternatives]

    def validate(self, dataset) -> np.ndarray:
        """Return the dataset's state labels as strings; raise on a missing column or unknown label."""
        if self.column not in dataset.column_names:
            raise InputDataError(
                f"the dataset has no column {self.column!r} (columns: {dataset.column_names}); tokenize with "
                f"obs_columns=[{self.column!r}]"
            )
        values = np.asarray([str(v) for v in dataset[self.column]], dtype=object)
        present = set(values)
        unknown = [s for s in self.labels if s not in present]
        if unknown:
            raise InputDataError(
                f"state labels {unknown} do not occur in column {self.column!r}; present: {sorted(present)[:20]}"
            )
        return values


def resolve_genes(genes: Sequence[str], vocab: GeneVocab, species: str = "human") -> list[int]:
    """Token ids of genes given as Ensembl ids or symbols.

    Each gene is looked up as a key of the token dictionary, then through the vocabulary's Ensembl
    mapping dictionary (symbols, aliases; :meth:`GeneVocab.map_ids`), then as a symbol in the bundled
    GENCODE table (:func:`netformer.genes.symbol_to_ensembl`).

    Raises
    ------
    GeneIdError
        Any gene not in the token dictionary (all such genes are named).
    """
    out, missing = [], []
    mapped = vocab.map_ids(genes)
    for g, m in zip(genes, mapped):
        key = str(g).upper().split(".")[0]
        if key in vocab.token_dict and key not in SPECIAL_TOKENS:
            out.append(vocab.token_dict[key])
        elif m is not None and m in vocab.token_dict:
            out.append(vocab.token_dict[m])
        else:
            ens = symbol_to_ensembl([g], species=species).iloc[0]
            if ens is not None and ens in vocab.token_dict:
                out.append(vocab.token_dict[ens])
            else:
                missing.append(str(g))
    if missing:
        raise GeneIdError(
            f"{len(missing)} gene(s) are not in the token dictionary '{vocab.name}': {missing[:20]}; give Ensembl ids "
            "or symbols of genes the model was trained on"
        )
    return out


def select_cells(
    dataset,
    cell_filter: Mapping[str, Sequence] | None = None,
    states: CellStates | None = None,
    max_cells: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of the cells to perturb.

    Cells are kept when every ``cell_filter`` column holds one of the listed values (compared as
    strings) and, with ``states``, when they are in the start state; then at most ``max_cells``
    are drawn without replacement with ``numpy.random.default_rng(seed)`` (same seed, same cells).

    Raises
    ------
    InputDataError
        A filter column that does not exist, or no cell left.
    """
    keep = np.ones(len(dataset), dtype=bool)
    for col, values in (cell_filter or {}).items():
        if col not in dataset.column_names:
            raise InputDataError(f"cell filter column {col!r} is not in the dataset (columns: {dataset.column_names})")
        allowed = {str(v) for v in (values if isinstance(values, (list, tuple, set)) else [values])}
        keep &= np.isin(np.asarray([str(v) for v in dataset[col]], dtype=object), list(allowed))
    if states is not None:
        keep &= states.validate(dataset) == states.start
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        raise InputDataError("no cell passes the cell filter / start state; check the filter values")
    if max_cells is not None and idx.size > max_cells:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
    log.info("selected %d cells to perturb", idx.size)
    return idx
