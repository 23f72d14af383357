"""Gene graphs for one-shot selection: loading, GCN normalisation, L-hop propagation, candidate pools.

The graph is the GEARS Gene Ontology graph (Roohani et al., Nat Biotechnol 2024): an edge list
``source,target,importance`` holding, for every target gene, its top-20 source genes by Jaccard
similarity of GO term sets (> 0.1) plus a self loop. We follow GEARS / PyTorch Geometric conventions
exactly: an edge ``source -> target`` with weight ``w`` is the matrix entry ``A[target, source] = w``
(messages flow from sources into targets), so row ``u`` of the propagation operator lists the genes
whose embeddings feed, and therefore are supervised by, a measurement of perturbation ``u``.

GCN normalisation (Kipf & Welling 2017, as PyG ``gcn_norm``): ``A_hat = D^-1/2 (A + I) D^-1/2`` with
``D = diag(row sums of A + I)``. Existing self loops are replaced by weight 1 (PyG
``add_remaining_self_loops``), so a file that already ships self loops is not double counted. The
propagation operator of a model with ``L`` graph layers is ``P = A_hat^L`` (``L = 1`` in GEARS).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError, CorruptFileError, GeneIdError, InputDataError

log = logging.getLogger(__name__)

GO_GRAPH_FILE = "go_top20_jaccard_orgHsEgDb_3.16.csv.gz"


class BudgetError(ConfigError):
    """The selection budget is not a positive integer no larger than the candidate pool."""


def default_go_graph_path() -> Path:
    """Path of the shipped GEARS-style GO graph (``<shared data>/graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz``).

    Raises :class:`InputDataError` if the shared data folder cannot be found (set
    ``NETFORMER_SHARED_DATA``).
    """
    from ..datasets import shared_data_dir

    return shared_data_dir() / "graphs" / GO_GRAPH_FILE


@dataclass
class GeneGraph:
    """A weighted directed gene graph.

    Attributes
    ----------
    genes : np.ndarray of str, shape (n,)
        Node names (gene symbols), sorted alphabetically; node ``i`` is ``genes[i]``.
    adjacency : scipy.sparse.csr_matrix, shape (n, n), float64
        ``adjacency[target, source] = importance`` (GEARS/PyG message direction), self loops as in
        the file.
    """

    genes: np.ndarray
    adjacency: sp.csr_matrix
    _index: dict = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.genes = np.asarray(self.genes, dtype=object)
        if self.adjacency.shape != (len(self.genes), len(self.genes)):
            raise InputDataError(
                f"adjacency shape {self.adjacency.shape} does not match {len(self.genes)} genes"
            )
        self.adjacency = sp.csr_matrix(self.adjacency, dtype=np.float64)
        self._index = {g: i for i, g in enumerate(self.genes)}

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_edges(self) -> int:
        return int(self.adjacency.nnz)

    def index_of(self, genes: Iterable[str]) -> np.ndarray:
        """Node indices of ``genes``; raises :class:`GeneIdError` naming any gene absent from the graph."""
        genes = list(genes)
        missing = [g for g in genes if g not in self._index]
        if missing:
            raise GeneIdError(
                f"{len(missing)} gene(s) are not in the graph: {missing[:10]}; check the gene "
                "symbols or use resolve_candidates(..., missing='drop')."
            )
        return np.array([self._index[g] for g in genes], dtype=np.int64)

    def __contains__(self, gene: str) -> bool:
        return gene in self._index

    def n_components(self) -> int:
        """Number of weakly connected components (scipy ``connected_components``)."""
        return int(connected_components(self.adjacency, directed=True, connection="weak")[0])

    def subgraph(self, genes: Sequence[str]) -> "GeneGraph":
        """Induced subgraph on ``genes`` (rows and columns kept), nodes re-sorted by name."""
        genes = sorted(set(genes))
        idx = self.index_of(genes)
        return GeneGraph(np.array(genes, dtype=object), self.adjacency[idx][:, idx].tocsr())


def load_edge_list(
    path: str | os.PathLike | None = None,
    *,
    source: str = "source",
    target: str = "target",
    weight: str | None = "importance",
    symmetrize: bool = False,
) -> GeneGraph:
    """Load a gene graph from a CSV/TSV edge list (optionally gzip-compressed).

    Parameters
    ----------
    path : path, optional
        Edge list with columns ``source``, ``target`` and (optionally) ``importance``. Default: the
        shipped GEARS GO graph (20,5xx genes, 429,942 edges), see :func:`default_go_graph_path`.
    source, target, weight : str
        Column names. ``weight=None`` gives every edge weight 1 (unweighted graph).
    symmetrize : bool, default False
        If True, use ``max(A, A^T)`` (undirected graph). GEARS uses the directed top-20 graph as is.

    Returns
    -------
    GeneGraph
        Duplicate edges are summed (scipy COO -> CSR); nodes are sorted by name.

    Raises
    ------
    CorruptFileError
        The file cannot be parsed or lacks the named columns.
    InputDataError
        Negative or non-finite weights, or an empty edge list.
    """
    path = Path(path) if path is not None else default_go_graph_path()
    if not path.exists():
        raise InputDataError(f"graph file {path} does not exist; pass the path of an edge list CSV.")
    sep = "\t" if path.name.removesuffix(".gz").endswith((".tsv", ".txt")) else ","
    try:
        df = pd.read_csv(path, sep=sep)
    except Exception as exc:  # pandas raises many types on malformed files
        raise CorruptFileError(f"cannot read edge list {path}: {exc}") from exc
    needed = [source, target] + ([weight] if weight else [])
    absent = [c for c in needed if c not in df.columns]
    if absent:
        raise CorruptFileError(
            f"edge list {path} lacks column(s) {absent}; found {list(df.columns)}. Pass "
            "source=/target=/weight= to name the columns (weight=None for an unweighted graph)."
        )
    if len(df) == 0:
        raise InputDataError(f"edge list {path} holds no edges.")
    src = df[source].astype(str).to_numpy()
    tgt = df[target].astype(str).to_numpy()
    w = df[weight].to_numpy(dtype=np.float64) if weight else np.ones(len(df))
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputDataError(f"edge list {path}: weights in column {weight!r} must be finite and >= 0.")
    genes, inv = np.unique(np.concatenate([src, tgt]), return_inverse=True)
    s_idx, t_idx = inv[: len(src)], inv[len(src):]
    n = len(genes)
    adj = sp.coo_matrix((w, (t_idx, s_idx)), shape=(n, n)).tocsr()
    adj.sum_duplicates()
    if symmetrize:
        adj = adj.maximum(adj.T).tocsr()
    adj.eliminate_zeros()
    g = GeneGraph(genes.astype(object), adj)
    log.info("loaded graph %s: %d genes, %d edges", path.name, g.n_genes, g.n_edges)
    return g


def gcn_normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """GCN normalisation with self loops: ``D^-1/2 (A + I) D^-1/2``, ``D = diag((A + I) 1)``.

    Existing diagonal entries are replaced by 1 (PyG ``add_remaining_self_loops`` with fill value 1).
    Input and output: (n, n) sparse, output CSR float64. Every row has at least its self loop, so
    no degree is zero.
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64, copy=True)
    a.setdiag(0.0)
    a.eliminate_zeros()
    a = (a + sp.identity(a.shape[0], format="csr")).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    dinv = 1.0 / np.sqrt(deg)
    d = sp.diags(dinv)
    return (d @ a @ d).tocsr()


def propagation_operator(graph: GeneGraph | sp.spmatrix, n_layers: int = 1) -> sp.csr_matrix:
    """Propagation operator ``P = A_hat^L`` of a model with ``n_layers`` (L) graph layers.

    ``P[u, v] > 0`` iff node ``v`` lies within ``L`` hops upstream of ``u`` (including ``u``):
    measuring perturbation ``u`` sends a supervision signal to the embedding of ``v`` with weight
    ``P[u, v]``. Shape (n, n), CSR float64. Raises :class:`ConfigError` if ``n_layers < 1``. The
    fill-in grows quickly with L (L = 2 on the GO graph: about 20x the nnz of L = 1).
    """
    if int(n_layers) != n_layers or n_layers < 1:
        raise ConfigError(f"n_layers must be a positive integer (GEARS uses 1), got {n_layers!r}.")
    adj = graph.adjacency if isinstance(graph, GeneGraph) else graph
    a_hat = gcn_normalize(adj)
    p = a_hat
    for _ in range(int(n_layers) - 1):
        p = (p @ a_hat).tocsr()
    p.sort_indices()
    return p


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
    if missing not in ("drop", "error"):
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
