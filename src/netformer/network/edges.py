"""The result of every network kind, :class:`GeneNetwork`: all scored pairs, and edge tables cut from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputDataError

EDGE_COLUMNS = ["source", "target", "score", "n_cells"]


@dataclass
class GeneNetwork:
    """A directed, weighted gene network.

    Attributes
    ----------
    pairs
        Every scored pair: DataFrame ``source, target, score, n_cells`` (Ensembl ids, float64, int64),
        one row per ordered pair ``source -> target`` (no self pairs), sorted by source then
        decreasing score. ``n_cells``: the cells in which the pair was measured (attention: both
        genes among the cell's tokens; perturbation: ``target`` measured while ``source`` was
        deleted; co-expression: both genes detected).
    kind
        ``attention``, ``perturbation`` or ``coexpression``.
    info
        How it was made: cells, genes kept and left out (with counts), layers and heads, ...
    """

    pairs: pd.DataFrame
    kind: str
    info: dict = field(default_factory=dict)

    @property
    def genes(self) -> list[str]:
        """Genes of the scored pairs (sources and targets), sorted."""
        return sorted(set(self.pairs["source"]) | set(self.pairs["target"]))

    def edges(self, top_k: int | None = 20, threshold: float | None = None) -> pd.DataFrame:
        """The edge table: for every source its ``top_k`` highest-scoring targets (None: all), and of
        those only the edges with ``score >= threshold`` (None: no threshold). Ties are broken by target
        id (stable). Scores are those of :attr:`pairs` (for attention, row-normalised over all targets
        before this cut, so a cut row sums to at most 1)."""
        return top_edges(self.pairs, top_k, threshold)


def top_edges(pairs: pd.DataFrame, top_k: int | None = 20, threshold: float | None = None) -> pd.DataFrame:
    """``pairs`` (``source, target, score, ...``) cut to the ``top_k`` highest scores per source and to
    ``score >= threshold`` (see :meth:`GeneNetwork.edges`); sorted by source, decreasing score, target."""
    absent = [c for c in ("source", "target", "score") if c not in pairs.columns]
    if absent:
        raise InputDataError(f"the edge table lacks column(s) {absent}; found {list(pairs.columns)}")
    out = sort_pairs(pairs)
    if threshold is not None:
        out = out[out["score"] >= threshold]
    if top_k is not None:
        out = out.groupby("source", sort=False).head(top_k)
    return out.reset_index(drop=True)


def pairs_from_dense(genes, score: np.ndarray, n_cells: np.ndarray, min_pair_cells: int = 1) -> pd.DataFrame:
    """The pair table of a dense (G, G) score matrix (``score[i, j]`` = edge ``genes[i] -> genes[j]``) and
    its (G, G) cell counts: the off-diagonal pairs with ``n_cells >= min_pair_cells``."""
    keep = n_cells >= min_pair_cells
    np.fill_diagonal(keep, False)
    s, t = np.nonzero(keep)
    genes = np.asarray(genes, dtype=object)
    df = pd.DataFrame({"source": genes[s], "target": genes[t], "score": score[s, t].astype(np.float64),
                       "n_cells": n_cells[s, t].astype(np.int64)})
    return sort_pairs(df)


def sort_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs sorted by source, decreasing score, target (the one order of pair and edge tables)."""
    return df.sort_values(["source", "score", "target"], ascending=[True, False, True],
                          kind="stable").reset_index(drop=True)
