"""Candidate pools and budgets of one-shot selection, checked against a :class:`~netformer.graphs.GeneGraph`.

The gene graph itself (loading, GCN normalisation, propagation) lives in :mod:`netformer.graphs`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from ..errors import ConfigError, GeneIdError, InputDataError
from ..graphs import GeneGraph

log = logging.getLogger(__name__)

MISSING_POLICIES = ("drop", "error")  # what resolve_candidates does with candidates absent from the graph


class BudgetError(ConfigError):
    """The selection budget is not a positive integer no larger than the candidate pool."""


@dataclass
class CandidatePool:
    """Candidate perturbations resolved against a graph.

    Attributes
    ----------
    genes : np.ndarray of str, shape (c,)
        Candidates present in the graph, sorted alphabetically. Candidate index ``i`` (the tie-break
        order of every selection method) is the position in this array.
    node_index : np.ndarray of int, shape (c,)
        Graph node of each candidate.
    missing : list of str
        Requested candidates absent from the graph (dropped), in request order.
    n_components : int
        Weakly connected components of the graph.
    """

    genes: np.ndarray
    node_index: np.ndarray
    missing: list
    n_components: int

    def __len__(self) -> int:
        return len(self.genes)


def resolve_candidates(
    graph: GeneGraph,
    candidates: Iterable[str] | None = None,
    *,
    missing: Literal["drop", "error"] = "drop",
) -> CandidatePool:
    """Match candidate genes to graph nodes.

    Parameters
    ----------
    candidates : iterable of str, optional
        Gene symbols (duplicates are removed with a warning). Default: every node of the graph.
    missing : {"drop", "error"}
        Candidates absent from the graph are logged with their count and names, then dropped
        (``"drop"``) or raise :class:`GeneIdError` (``"error"``).

    Disconnected graphs are allowed: the component count is logged. Coverage and facility location
    simply sum over components, so greedy spreads picks across components in proportion to the
    nodes they can reach; isolated nodes (only a self loop) reach only themselves.

    Raises
    ------
    GeneIdError
        ``missing="error"`` and some candidates are absent, or no candidate is in the graph.
    ConfigError
        ``missing`` is not "drop" or "error".
    """
    if missing not in MISSING_POLICIES:
        raise ConfigError(f"missing must be 'drop' or 'error', got {missing!r}.")
    if candidates is None:
        req = list(graph.genes)
    else:
        req = [str(c) for c in candidates]
        if len(set(req)) != len(req):
            log.warning("candidate list holds %d duplicate gene(s); keeping each once",
                        len(req) - len(set(req)))
    absent = [g for g in dict.fromkeys(req) if g not in graph]
    if absent:
        msg = (f"{len(absent)} of {len(set(req))} candidate genes are absent from the graph: "
               f"{absent[:20]}{' ...' if len(absent) > 20 else ''}")
        if missing == "error":
            raise GeneIdError(msg + "; fix the symbols or pass missing='drop' (CLI: --missing drop).")
        log.warning(msg + "; dropping them")
    present = sorted(set(req) - set(absent))
    if not present:
        raise GeneIdError("no candidate gene is in the graph; are the candidates gene symbols "
                          "matching the graph's node names?")
    n_comp = graph.n_components()
    if n_comp > 1:
        log.info("graph has %d weakly connected components; selection covers them jointly", n_comp)
    return CandidatePool(np.array(present, dtype=object), graph.index_of(present), absent, n_comp)


def check_budget(budget: int, n_candidates: int) -> int:
    """Return ``budget`` as int; raise :class:`BudgetError` unless ``1 <= budget <= n_candidates``."""
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise BudgetError(f"budget must be a positive integer, got {budget!r}.")
    if budget > n_candidates:
        raise BudgetError(
            f"budget {budget} exceeds the candidate pool of {n_candidates} genes present in the "
            "graph; lower the budget or add candidates."
        )
    return int(budget)


def read_candidates(path: str | os.PathLike) -> list[str]:
    """Candidate genes from a text file (one symbol per line, ``#`` comments) or a CSV/TSV with a ``gene`` column.

    Raises
    ------
    InputDataError
        The file does not exist, has no ``gene`` column (CSV/TSV) or lists no gene.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"candidate file {path} does not exist.")
    name = path.name.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
        if "gene" not in df.columns:
            raise InputDataError(f"{path} has no 'gene' column (columns: {list(df.columns)}).")
        genes = df["gene"].astype(str).str.strip().tolist()
    else:
        import gzip

        text = gzip.open(path, "rt").read() if path.name.endswith(".gz") else path.read_text()
        genes = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not genes:
        raise InputDataError(f"candidate file {path} lists no genes.")
    return genes
