"""Gene graphs shared by the Perturb-seq models and one-shot selection: edge lists, gene -> GO tables,
the GO and co-expression graphs, GCN normalisation and L-hop propagation.

Both graphs follow GEARS (Roohani, Huang and Leskovec, Nat Biotechnol 2024):

* GO graph: the similarity of two genes is the Jaccard index of their GO term sets; for every target
  gene the 20 most similar source genes with Jaccard > 0.1, plus the gene itself (Jaccard 1), become
  edges ``source -> target`` weighted by the Jaccard index (:func:`go_graph_from_annotations`). The
  precomputed genome-wide graph ``go_top20_jaccard_orgHsEgDb_3.16.csv.gz`` (20,728 genes, 429,942
  edges) is not part of the package: it is read from the shared data folder,
  ``<shared data>/graphs/``, located by :func:`netformer.datasets.shared_data_dir` (environment
  variable ``NETFORMER_SHARED_DATA``, else ``../shared/data`` beside the repository).
* Co-expression graph: Pearson correlation of genes over training cells; for every gene the 20
  genes of highest ``|r|`` plus itself, then edges with ``|r| > 0.4`` (:func:`coexpression_graph`).

A third graph comes from a foundation model's gene embeddings (:func:`embedding_graph`): for every
target gene its ``k`` nearest genes by cosine similarity plus itself, in the GO graph's format.

Conventions (GEARS / PyTorch Geometric, ``flow="source_to_target"``): an edge list is a
:class:`pandas.DataFrame` with columns ``source, target, importance`` (the schema of GEARS's
``go_essential_all.csv``), and the edge ``source -> target`` of weight ``w`` is the matrix entry
``A[target, source] = w`` (messages flow from sources into targets; :class:`GeneGraph`). Row ``u``
of the propagation operator ``P = A_hat^L`` (:func:`propagation_operator`) lists the genes whose
embeddings feed the output at ``u``: what a GEARS-style model with ``L`` graph layers uses for
message passing, and what a measurement of perturbation ``u`` supervises in one-shot selection.
``A_hat`` is the one GCN normalisation of the package, :func:`gcn_normalize` (PyG ``gcn_norm`` with
``add_remaining_self_loops``).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .errors import ConfigError, CorruptFileError, GeneIdError, InputDataError

log = logging.getLogger(__name__)

EDGE_COLUMNS = ["source", "target", "importance"]
GO_GRAPH_FILE = "go_top20_jaccard_orgHsEgDb_3.16.csv.gz"
GENE2GO_FILE = "gene2go_orgHsEgDb_3.16.tsv.gz"

__all__ = [
    "EDGE_COLUMNS",
    "GeneGraph",
    "coexpression_graph",
    "default_gene2go_path",
    "default_go_graph_path",
    "embedding_graph",
    "embedding_table",
    "gcn_normalize",
    "go_graph",
    "go_graph_from_annotations",
    "load_edge_list",
    "load_edges",
    "pearson_matrix",
    "propagation_operator",
    "read_gene2go",
    "restrict_edges",
]


# --------------------------------------------------------------------------------------------
# files in the shared data folder
# --------------------------------------------------------------------------------------------
def default_go_graph_path() -> Path:
    """Path of the precomputed GEARS-style GO graph, ``<shared data>/graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz``.

    The folder is resolved by :func:`netformer.datasets.shared_data_dir` (``NETFORMER_SHARED_DATA``,
    else ``../shared/data`` beside the repository). Raises :class:`InputDataError` if it cannot be
    found.
    """
    from .datasets import shared_data_dir

    return shared_data_dir() / "graphs" / GO_GRAPH_FILE


def default_gene2go_path() -> Path:
    """Path of the gene -> GO table ``<shared data>/graphs/gene2go_orgHsEgDb_3.16.tsv.gz``
    (Bioconductor org.Hs.eg.db 3.16, direct annotations; columns ``symbol, entrez_id, go_id,
    evidence, ontology``), resolved like :func:`default_go_graph_path`."""
    from .datasets import shared_data_dir

    return shared_data_dir() / "graphs" / GENE2GO_FILE


def _sep(path: Path) -> str:
    return "\t" if path.name.removesuffix(".gz").endswith((".tsv", ".txt", ".tab")) else ","


# --------------------------------------------------------------------------------------------
# gene -> GO annotations
# --------------------------------------------------------------------------------------------
_GAF_COLUMNS = {"evidence": 6, "ontology": 8}  # 0-based GAF 2.x columns besides symbol (2) and GO id (4)
_GAF_ASPECT = {"P": "BP", "F": "MF", "C": "CC"}


def read_gene2go(path: str | os.PathLike | None = None, *, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Read a gene -> GO annotation table as a DataFrame ``gene, go_id`` (deduplicated).

    Parameters
    ----------
    path : path, optional
        Either a TSV/CSV (optionally gzipped) with a gene column ``symbol`` (or ``gene``,
        ``gene_symbol``, ``gene_name``) and ``go_id``, such as the org.Hs.eg.db table
        ``gene2go_orgHsEgDb_3.16.tsv.gz`` (columns ``symbol, entrez_id, go_id, evidence,
        ontology``); or a GO Annotation File (GAF 2.x: ``!`` comment lines, symbol in column 3, GO id
        in column 5; annotations with a ``NOT`` qualifier are dropped). Default:
        :func:`default_gene2go_path`.
    extra : sequence of str, default ()
        Further columns to keep after ``gene, go_id``, e.g. ``("ontology", "evidence")``. A table
        keeps them by name; a GAF offers ``evidence`` (column 7) and ``ontology`` (column 9, the
        aspect written as ``BP``/``MF``/``CC`` like org.Hs.eg.db).

    Returns
    -------
    DataFrame with columns ``gene, go_id, *extra`` (str), rows with a missing value dropped,
    duplicate rows dropped, index ``0..n-1``.

    Raises
    ------
    InputDataError
        The file does not exist, lacks the gene / ``go_id`` / ``extra`` columns, or holds no
        annotation.
    CorruptFileError
        The file cannot be read or parsed.
    """
    path = Path(path) if path is not None else default_gene2go_path()
    if not path.exists():
        raise InputDataError(f"gene -> GO table {path} does not exist.")
    extra = list(extra)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            first = fh.readline()
        if first.startswith("!"):  # GAF
            unknown = [c for c in extra if c not in _GAF_COLUMNS]
            if unknown:
                raise InputDataError(f"{path} is a GAF file; it offers extra columns {sorted(_GAF_COLUMNS)}, "
                                     f"not {unknown}.")
            cols = sorted({2, 3, 4, *(_GAF_COLUMNS[c] for c in extra)})
            tab = pd.read_csv(path, sep="\t", comment="!", header=None, dtype=str, usecols=cols)
        else:
            tab = pd.read_csv(path, sep="\t" if "\t" in first else ",", dtype=str)
    except InputDataError:
        raise
    except Exception as exc:  # gzip / pandas raise many types on malformed files
        raise CorruptFileError(f"cannot read gene -> GO table {path}: {exc}") from exc
    if first.startswith("!"):
        tab = tab[~tab[3].fillna("").str.contains("NOT")]
        out = pd.DataFrame({"gene": tab[2], "go_id": tab[4]})
        for c in extra:
            col = tab[_GAF_COLUMNS[c]]
            out[c] = col.replace(_GAF_ASPECT) if c == "ontology" else col
    else:
        gene_col = next((c for c in ("symbol", "gene", "gene_symbol", "gene_name") if c in tab), None)
        absent = [c for c in ["go_id", *extra] if c not in tab]
        if gene_col is None or absent:
            raise InputDataError(
                f"{path}: expected columns 'symbol' and 'go_id'{' and ' + str(extra) if extra else ''} "
                f"(or a GAF file); found {list(tab.columns)}."
            )
        out = pd.DataFrame({"gene": tab[gene_col], "go_id": tab["go_id"], **{c: tab[c] for c in extra}})
    out = out.dropna().drop_duplicates().reset_index(drop=True)
    if out.empty:
        raise InputDataError(f"{path} holds no gene -> GO annotations.")
    return out


# --------------------------------------------------------------------------------------------
# edge lists
# --------------------------------------------------------------------------------------------
_EDGE_CACHE: dict = {}


def load_edges(
    path: str | os.PathLike | None = None,
    *,
    source: str = "source",
    target: str = "target",
    weight: str | None = "importance",
) -> pd.DataFrame:
    """Read an edge list (CSV, or TSV for ``.tsv``/``.txt``/``.tab``; optionally gzipped).

    Parameters
    ----------
    path : path, optional
        Default: the precomputed GO graph in the shared data folder, :func:`default_go_graph_path`
        (20,728 genes, 429,942 edges).
    source, target, weight : str
        Column names in the file. ``weight=None`` gives every edge weight 1 (unweighted graph).

    Returns
    -------
    DataFrame with columns ``source, target, importance`` (str, str, float64), in file order
    (duplicate edges are kept; :class:`GeneGraph` sums them). The last file read is cached (keyed
    by path, modification time and columns), since every model fit reads the 430k-edge GO graph;
    each call returns a copy.

    Raises
    ------
    InputDataError
        The file does not exist, holds no edge, or has negative or non-finite weights.
    CorruptFileError
        The file cannot be parsed or lacks the named columns.
    """
    path = Path(path) if path is not None else default_go_graph_path()
    if not path.exists():
        raise InputDataError(f"edge list {path} does not exist; pass the path of an edge list CSV.")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, source, target, weight)
    if key not in _EDGE_CACHE:
        _EDGE_CACHE.clear()
        _EDGE_CACHE[key] = _read_edge_file(path, source, target, weight)
    return _EDGE_CACHE[key].copy()


def _read_edge_file(path: Path, source: str, target: str, weight: str | None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, sep=_sep(path))
    except Exception as exc:  # pandas / gzip raise many types on malformed files
        raise CorruptFileError(f"cannot read edge list {path}: {exc}") from exc
    absent = [c for c in (source, target, weight) if c is not None and c not in df.columns]
    if absent:
        raise CorruptFileError(
            f"edge list {path} lacks column(s) {absent}; found {list(df.columns)}. Pass "
            "source=/target=/weight= to name the columns (weight=None for an unweighted graph)."
        )
    edges = _clean_edges(df, source, target, weight, origin=f"edge list {path}")
    log.info("read edge list %s: %d edges", path.name, len(edges))
    return edges


def _clean_edges(df: pd.DataFrame, source: str = "source", target: str = "target",
                 weight: str | None = "importance", *, origin: str = "edge list") -> pd.DataFrame:
    """``df`` as ``source, target, importance`` (str, str, float64); raises on empty or bad weights."""
    if len(df) == 0:
        raise InputDataError(f"{origin} holds no edges.")
    w = df[weight].to_numpy(dtype=np.float64) if weight is not None else np.ones(len(df))
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputDataError(f"{origin}: edge weights (column {weight!r}) must be finite and >= 0.")
    return pd.DataFrame({"source": df[source].astype(str).to_numpy(), "target": df[target].astype(str).to_numpy(),
                         "importance": w})


def restrict_edges(edges: pd.DataFrame, genes: Iterable[str], *, how: str = "both") -> pd.DataFrame:
    """Keep the edges whose ends are in ``genes``.

    ``how='both'`` (default) keeps edges with source and target in ``genes`` (the induced
    subgraph); ``'target'`` keeps every in-edge of the listed genes (what one round of message
    passing to them needs); ``'source'`` every out-edge. Raises :class:`InputDataError` for another
    ``how``.
    """
    genes = set(map(str, genes))
    if how == "both":
        mask = edges["source"].isin(genes) & edges["target"].isin(genes)
    elif how == "target":
        mask = edges["target"].isin(genes)
    elif how == "source":
        mask = edges["source"].isin(genes)
    else:
        raise InputDataError(f"how must be 'both', 'target' or 'source', not {how!r}.")
    return edges[mask].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# GeneGraph: the sparse adjacency
# --------------------------------------------------------------------------------------------
@dataclass
class GeneGraph:
    """A weighted directed gene graph.

    Attributes
    ----------
    genes : np.ndarray of str, shape (n,)
        Node names (gene symbols); node ``i`` is ``genes[i]``. Sorted alphabetically when built by
        :meth:`from_edges` without ``nodes`` or by :meth:`subgraph`.
    adjacency : scipy.sparse.csr_matrix, shape (n, n), float64
        ``adjacency[target, source] = importance`` (GEARS/PyG message direction), self loops as in
        the edges.
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
        if len(self._index) != len(self.genes):
            raise GeneIdError("graph node names contain duplicates.")

    @classmethod
    def from_edges(cls, edges: pd.DataFrame, nodes: Sequence[str] | None = None, *,
                   symmetrize: bool = False) -> "GeneGraph":
        """Graph of an edge DataFrame ``source, target, importance`` (e.g. :func:`load_edges`).

        Parameters
        ----------
        edges : DataFrame
            Columns ``source``, ``target`` and ``importance`` (finite, >= 0). Duplicate edges are
            summed (scipy COO -> CSR), zero weights dropped.
        nodes : sequence of str, optional
            Node order. Default: every gene of the edges, sorted. When given, edges with an end
            outside ``nodes`` are dropped and ``nodes`` absent from the edges are isolated.
        symmetrize : bool, default False
            If True, use ``max(A, A^T)`` (undirected graph). GEARS uses the directed top-20 graph as is.

        Raises
        ------
        InputDataError
            Missing columns, or negative or non-finite weights.
        GeneIdError
            ``nodes`` contains duplicates.
        """
        absent = [c for c in EDGE_COLUMNS if c not in edges.columns]
        if absent:
            raise InputDataError(f"edges lack column(s) {absent}; found {list(edges.columns)}.")
        src = edges["source"].to_numpy(dtype=str)
        tgt = edges["target"].to_numpy(dtype=str)
        w = edges["importance"].to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InputDataError("edge importances must be finite and >= 0.")
        if nodes is None:
            genes, inv = np.unique(np.concatenate([src, tgt]), return_inverse=True)
            s, t = inv[: len(src)], inv[len(src):]
        else:
            genes = np.asarray([str(g) for g in nodes], dtype=str)
            pos = pd.Index(genes)
            if pos.has_duplicates:
                raise GeneIdError("nodes contain duplicates.")
            s, t = pos.get_indexer(src), pos.get_indexer(tgt)
            ok = (s >= 0) & (t >= 0)
            s, t, w = s[ok], t[ok], w[ok]
        n = len(genes)
        adj = sp.coo_matrix((w, (t, s)), shape=(n, n)).tocsr()  # rows = targets
        adj.sum_duplicates()
        if symmetrize:
            adj = adj.maximum(adj.T).tocsr()
        adj.eliminate_zeros()
        return cls(genes.astype(object), adj)

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
    """:class:`GeneGraph` of an edge-list file: ``GeneGraph.from_edges(load_edges(path, ...), symmetrize=...)``.

    ``path=None`` reads the precomputed GO graph from the shared data folder
    (:func:`default_go_graph_path`). Column options and errors as :func:`load_edges`; nodes sorted
    by name, duplicate edges summed, ``symmetrize`` as :meth:`GeneGraph.from_edges`.
    """
    g = GeneGraph.from_edges(load_edges(path, source=source, target=target, weight=weight), symmetrize=symmetrize)
    log.info("graph %s: %d genes, %d edges", Path(path).name if path else GO_GRAPH_FILE, g.n_genes, g.n_edges)
    return g


# --------------------------------------------------------------------------------------------
# GO graph
# --------------------------------------------------------------------------------------------
def go_graph_from_annotations(
    annotations: pd.DataFrame | str | os.PathLike,
    *,
    targets: Iterable[str] | None = None,
    threshold: float = 0.1,
    k: int = 20,
    block_size: int = 1024,
) -> pd.DataFrame:
    """GEARS's GO gene-gene graph from gene -> GO annotations.

    Jaccard(u, v) = |T_u ∩ T_v| / |T_u ∪ T_v| over GO term sets T. For each target gene ``v`` the
    edges ``u -> v`` with Jaccard > ``threshold`` are ranked and the ``k`` highest kept, plus the
    self loop ``v -> v`` (importance 1), matching GEARS's ``nlargest(k + 1)`` per target
    (``get_GO_edge_list`` / ``make_GO``). Ties at rank ``k`` are broken by source symbol order,
    which may differ from GEARS for exactly tied edges.

    Vectorised: the intersection counts of a block of ``block_size`` targets against all genes are
    one sparse product ``B_block @ B.T`` of the binary gene x term matrix ``B``, and the top ``k`` per
    row come from a lexicographic sort; memory is O(block_size x n_genes).

    Parameters
    ----------
    annotations
        DataFrame with columns ``gene, go_id`` (see :func:`read_gene2go`) or a path to one.
    targets
        Compute the in-edges of these genes only (sources still range over all annotated genes), so
        the rows match the whole-genome graph exactly; default all genes. Unannotated targets are
        skipped with a warning.
    threshold, k : float, int
        Jaccard cut (default 0.1, ``0 <= threshold < 1``) and sources kept per target (default 20).

    Returns
    -------
    DataFrame ``source, target, importance`` sorted by target then decreasing importance.

    Raises
    ------
    InputDataError
        Missing ``gene``/``go_id`` columns, or ``threshold``/``k`` out of range.
    """
    if not isinstance(annotations, pd.DataFrame):
        annotations = read_gene2go(annotations)
    if not {"gene", "go_id"} <= set(annotations.columns):
        raise InputDataError("annotations need columns 'gene' and 'go_id' (see read_gene2go).")
    if not 0 <= threshold < 1 or k < 1:
        raise InputDataError(f"need 0 <= threshold < 1 and k >= 1, got threshold={threshold}, k={k}.")
    ann = annotations[["gene", "go_id"]].drop_duplicates()
    genes, gene_codes = np.unique(ann["gene"].to_numpy(dtype=str), return_inverse=True)
    _, term_codes = np.unique(ann["go_id"].to_numpy(dtype=str), return_inverse=True)
    B = sp.csr_matrix(
        (np.ones(len(ann), dtype=np.float32), (gene_codes, term_codes)),
        shape=(len(genes), term_codes.max() + 1),
    )
    size = np.asarray(B.sum(1)).ravel()
    if targets is None:
        tidx = np.arange(len(genes))
    else:
        pos = {g: i for i, g in enumerate(genes)}
        wanted = list(dict.fromkeys(str(t) for t in targets))
        missing = [t for t in wanted if t not in pos]
        if missing:
            log.warning("%d target genes have no GO annotation and get no edges: %s", len(missing), missing[:10])
        tidx = np.array([pos[t] for t in wanted if t in pos], dtype=np.int64)
    src_all, tgt_all, w_all = [], [], []
    kk = min(k, len(genes) - 1)
    BT = B.T.tocsc()
    for start in range(0, len(tidx), block_size):
        rows = tidx[start : start + block_size]
        inter = (B[rows] @ BT).tocoo()  # shared-term counts of the block's genes with all genes
        r, c = inter.row, inter.col
        v = inter.data.astype(np.float64)
        v = v / (size[rows[r]] + size[c] - v)  # Jaccard on the non-zero pairs only
        ok = (v > threshold) & (c != rows[r])  # self loop added separately
        r, c, v = r[ok], c[ok], v[ok]
        # order by (target, -jaccard, source index) and keep the first k of each target
        order = np.lexsort((c, -v, r))
        r, c, v = r[order], c[order], v[order]
        first = np.searchsorted(r, np.arange(len(rows)))
        keep = (np.arange(len(r)) - first[r]) < kk
        src_all += [rows, c[keep]]
        tgt_all += [rows, rows[r[keep]]]
        w_all += [np.ones(len(rows)), v[keep]]
    if not src_all:
        return pd.DataFrame(columns=EDGE_COLUMNS)
    src, tgt, w = (np.concatenate(a) for a in (src_all, tgt_all, w_all))
    edges = pd.DataFrame({"source": genes[src], "target": genes[tgt], "importance": w})
    edges = edges.sort_values(["target", "importance", "source"], ascending=[True, False, True], kind="stable")
    return edges.reset_index(drop=True)


def go_graph(source: pd.DataFrame | str | os.PathLike | None = None, **kwargs) -> pd.DataFrame:
    """The GO graph as an edge DataFrame ``source, target, importance``, from whatever the user has.

    ``source``: ``None`` (the precomputed graph in the shared data folder, see :func:`load_edges`),
    an edge DataFrame or edge-list file (columns ``source,target[,importance]``; without
    ``importance`` every edge weighs 1), or an annotation table / GAF file (built with
    :func:`go_graph_from_annotations`, ``kwargs`` passed on). Errors as :func:`load_edges` and
    :func:`read_gene2go`.
    """
    if source is None:
        return load_edges(None)
    if isinstance(source, pd.DataFrame):
        if {"source", "target"} <= set(source.columns):
            weight = "importance" if "importance" in source else None
            return _clean_edges(source, weight=weight, origin="edge DataFrame")
        return go_graph_from_annotations(source, **kwargs)
    path = Path(source)
    if not path.exists():
        raise InputDataError(f"{path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            header = [h.strip().strip('"') for h in fh.readline().split(_sep(path))]
    except Exception as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}") from exc
    if "source" in header and "target" in header:
        return load_edges(path, weight="importance" if "importance" in header else None)
    return go_graph_from_annotations(read_gene2go(path), **kwargs)


# --------------------------------------------------------------------------------------------
# co-expression graph
# --------------------------------------------------------------------------------------------
def pearson_matrix(X: np.ndarray | sp.spmatrix, n_genes: int | None = None) -> np.ndarray:
    """Pearson ``r`` between the columns (genes) of ``X`` (cells x genes) over the cells: (genes, genes)
    float64, constant genes get ``r = 0`` (diagonal included). Raises :class:`InputDataError` if ``X``
    is not 2-D with ``n_genes`` columns or has fewer than 3 cells."""
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or (n_genes is not None and X.shape[1] != n_genes):
        raise InputDataError(f"X has shape {X.shape}, expected (n_cells, {n_genes}).")
    if X.shape[0] < 3:
        raise InputDataError("a co-expression graph needs at least 3 cells.")
    Xc = X - X.mean(0, keepdims=True)
    norm = np.sqrt((Xc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        R = (Xc.T @ Xc) / np.outer(norm, norm)
    return np.nan_to_num(R, nan=0.0, posinf=0.0, neginf=0.0)


def coexpression_graph(
    X: np.ndarray | sp.spmatrix,
    genes: Sequence[str],
    *,
    threshold: float = 0.4,
    k: int = 20,
) -> pd.DataFrame:
    """GEARS's gene co-expression graph from expression ``X`` (cells x genes, log-normalised).

    Pearson ``r`` between genes over the cells (constant genes get ``r = 0``), then for every target
    gene the ``k + 1`` sources of largest ``|r|`` (the gene itself included), keeping edges with
    ``|r| > threshold``; importance ``|r|``. Matches GEARS ``get_coexpression_network_from_train``
    (which uses the training split's cells). Returns ``source, target, importance`` sorted by target
    then decreasing importance. Raises :class:`InputDataError` if ``X`` is not (n_cells,
    len(genes)) or has fewer than 3 cells.
    """
    R = np.abs(pearson_matrix(X, len(genes)))
    n = len(genes)
    kk = min(k + 1, n)
    top = np.argpartition(-R, kk - 1, axis=1)[:, :kk]
    val = np.take_along_axis(R, top, 1)
    tgt = np.repeat(np.arange(n), kk)
    keep = val.ravel() > threshold
    genes = np.asarray(genes, dtype=str)
    edges = pd.DataFrame({"source": genes[top.ravel()[keep]], "target": genes[tgt[keep]], "importance": val.ravel()[keep]})
    return edges.sort_values(["target", "importance"], ascending=[True, False], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# embedding (foundation-model) graph
# --------------------------------------------------------------------------------------------
def _embedding_rows(embeddings, genes, names) -> tuple[np.ndarray, np.ndarray]:
    """Rows (float64, finite) and node names of a gene embedding table or array: the one reading of
    :func:`embedding_graph` and :func:`embedding_table` (errors as :func:`embedding_graph`)."""
    if isinstance(embeddings, pd.DataFrame):
        if names not in ("symbol", "index"):
            raise InputDataError(f"names must be 'symbol' or 'index', not {names!r}.")
        dims = [c for c in embeddings.columns if str(c).startswith("dim_")]
        if not dims:
            raise InputDataError("the embedding table has no dim_* columns (see netformer.embed.gene_embeddings).")
        if names == "symbol":
            if "symbol" not in embeddings:
                raise InputDataError("the embedding table has no 'symbol' column; pass names='index'.")
            sym = embeddings["symbol"]
            ok = sym.notna().to_numpy() & ~sym.astype(str).duplicated().to_numpy()
            if (~ok).any():
                log.info("gene embeddings: %d of %d genes dropped (no symbol, or a symbol already taken)",
                         int((~ok).sum()), len(ok))
            X, node_names = embeddings.loc[ok, dims].to_numpy(np.float64), sym[ok].astype(str).to_numpy()
        else:
            X, node_names = embeddings[dims].to_numpy(np.float64), embeddings.index.astype(str).to_numpy()
    else:
        X = np.asarray(embeddings, dtype=np.float64)
        if genes is None or X.ndim != 2 or len(genes) != len(X):
            raise InputDataError("an embedding array needs shape (n_genes, dims) and genes= of length n_genes.")
        node_names = np.asarray([str(g) for g in genes], dtype=object)
    if not np.all(np.isfinite(X)):
        raise InputDataError("gene embeddings hold non-finite values.")
    return X, node_names


def embedding_table(embeddings: pd.DataFrame, names: str = "symbol") -> pd.DataFrame:
    """Gene embeddings as a plain table (genes x dims, float64), indexed by gene symbol or by the table's index.

    With ``names="symbol"``, rows without a symbol are dropped and of several rows with one symbol the
    first is kept, as in :func:`embedding_graph`. With ``names="index"`` the table's index is used.
    ``embeddings`` is a :func:`netformer.embed.gene_embeddings` table. The result is the shape that
    :class:`~netformer.perturbseq.models.RidgeModel` takes as its perturbation embedding
    (``pert_embedding``). Raises :class:`InputDataError` as :func:`embedding_graph`."""
    if not isinstance(embeddings, pd.DataFrame):
        raise InputDataError("embedding_table needs a gene embedding DataFrame (netformer.embed.gene_embeddings).")
    X, node_names = _embedding_rows(embeddings, None, names)
    dims = [c for c in embeddings.columns if str(c).startswith("dim_")]
    return pd.DataFrame(X, index=pd.Index(node_names.astype(str), name="gene"), columns=dims)


def embedding_graph(
    embeddings: pd.DataFrame | np.ndarray,
    k: int = 20,
    *,
    genes: Sequence[str] | None = None,
    names: str = "symbol",
    min_similarity: float = 0.0,
) -> pd.DataFrame:
    """kNN cosine gene graph of gene embeddings, in the GO graph's edge format.

    For every target gene ``v`` the ``k`` genes ``u != v`` of highest cosine similarity
    ``cos(e_u, e_v)`` (exact brute-force search with scikit-learn ``NearestNeighbors`` on the unit
    vectors, whose Euclidean neighbours are the cosine neighbours, ``||u - v||^2 = 2 - 2 cos``, and 16x
    faster than its ``metric="cosine"``)
    become edges ``u -> v`` of importance ``cos(e_u, e_v)``, keeping those with similarity
    ``> min_similarity`` (default 0: weights must be >= 0, as in GEARS's GO graph), plus the self loop
    ``v -> v`` of importance 1: GEARS's top-k-per-target construction of the GO graph
    (:func:`go_graph_from_annotations`) with cosine in place of Jaccard. Cosine similarity is
    symmetric, the kNN relation is not, so the graph is directed like the GO graph.

    Parameters
    ----------
    embeddings : DataFrame or ndarray, shape (n_genes, dims)
        A table of :func:`netformer.embed.gene_embeddings` (index Ensembl id, column ``symbol``,
        ``dim_*`` columns; other columns such as ``n_cells`` are ignored), or an array with ``genes``.
    k : int, default 20
        Sources per target (GEARS: 20); capped at ``n_genes - 1``.
    genes : sequence of str, optional
        Node names of an ndarray's rows (required for an ndarray; ignored for a DataFrame).
    names : {"symbol", "index"}, default "symbol"
        Node names taken from a DataFrame: its ``symbol`` column (the GO graph is in symbols; rows
        without a symbol are dropped, and of several rows with one symbol the first is kept, both
        logged), or its index (Ensembl ids).
    min_similarity : float, default 0.0
        Edges need cosine similarity above this (``-1 <= min_similarity < 1``).

    Returns
    -------
    DataFrame ``source, target, importance`` sorted by target then decreasing importance (self loop
    first), ``n_genes * (k + 1)`` rows at most.

    Raises
    ------
    InputDataError
        Fewer than 2 genes, non-finite values, ``genes`` missing or of the wrong length, no ``dim_*``
        columns, no ``symbol`` column with ``names="symbol"``, or ``k`` / ``min_similarity`` /
        ``names`` out of range. Zero vectors (no direction) are dropped with a warning.
    """
    from sklearn.neighbors import NearestNeighbors

    if isinstance(k, bool) or int(k) != k or k < 1 or not -1 <= min_similarity < 1:
        raise InputDataError(f"need an integer k >= 1 and -1 <= min_similarity < 1, got k={k}, "
                             f"min_similarity={min_similarity}.")
    X, node_names = _embedding_rows(embeddings, genes, names)
    zero = np.linalg.norm(X, axis=1) == 0
    if zero.any():
        log.warning("embedding graph: %d zero embedding vectors dropped (no cosine similarity)", int(zero.sum()))
        X, node_names = X[~zero], node_names[~zero]
    n = len(X)
    if n < 2:
        raise InputDataError(f"an embedding graph needs at least 2 genes, got {n}.")
    kk = min(int(k), n - 1)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    nn = NearestNeighbors(n_neighbors=kk + 1, metric="euclidean", algorithm="brute").fit(U)
    dist, idx = nn.kneighbors(U)
    dist = dist**2 / 2  # cosine distance 1 - cos: ||u - v||^2 = 2 - 2 cos for unit vectors
    rows = np.arange(n)[:, None]
    # drop each gene itself from its neighbours (the last neighbour where exact ties moved it out)
    is_self = idx == rows
    drop = np.where(is_self.any(1), is_self.argmax(1), kk)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    src, sim = idx[keep].reshape(n, kk), 1.0 - dist[keep].reshape(n, kk)
    tgt = np.repeat(np.arange(n), kk)
    ok = sim.ravel() > min_similarity
    s = np.concatenate([np.arange(n), src.ravel()[ok]])
    t = np.concatenate([np.arange(n), tgt[ok]])
    w = np.concatenate([np.ones(n), np.clip(sim.ravel()[ok], 0.0, 1.0)])
    edges = pd.DataFrame({"source": node_names[s], "target": node_names[t], "importance": w})
    edges["_self"] = edges["source"] != edges["target"]
    edges = edges.sort_values(["target", "_self", "importance", "source"], ascending=[True, True, False, True],
                              kind="stable").drop(columns="_self")
    log.info("embedding graph: %d genes, %d edges (k=%d, cosine > %g)", n, len(edges), kk, min_similarity)
    return edges.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------
def gcn_normalize(adjacency: sp.spmatrix, *, add_self_loops: bool = True) -> sp.csr_matrix:
    """GCN-normalised adjacency ``A_hat = D^-1/2 (A + L) D^-1/2`` (Kipf & Welling 2017).

    ``A`` (n x n, scipy sparse) holds ``A[target, source] = w``. ``L`` adds a weight-1 self loop to
    every node that has none and leaves existing self loops at their weight: PyTorch Geometric
    ``gcn_norm`` with ``add_remaining_self_loops(fill_value=1)``
    (``torch_geometric/nn/conv/gcn_conv.py``), as used by GEARS's ``SGConv``. ``D`` is the weighted
    in-degree of ``A + L`` (its row sums; PyG scatters the weights onto ``edge_index[1]``, the
    targets), so ``A_hat[t, s] = w(s -> t) / sqrt(d_t d_s)``; a zero degree (possible only with
    ``add_self_loops=False``) gives a zero row. One message-passing layer is ``H' = A_hat @ H``.

    Differences from PyG that only edge cases see: scipy sums duplicate entries, self loops
    included (PyG keeps the last duplicate self loop), and a stored self loop of weight 0 counts
    as absent (weight 1 is added).

    Returns CSR float64, shape (n, n). Input is not modified.
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64, copy=True)
    a.sum_duplicates()
    if add_self_loops:
        a = (a + sp.diags((a.diagonal() == 0).astype(np.float64))).tocsr()
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        dinv = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
    out = (sp.diags(dinv) @ a @ sp.diags(dinv)).tocsr()
    out.eliminate_zeros()
    return out


def propagation_operator(graph: GeneGraph | sp.spmatrix, n_layers: int = 1) -> sp.csr_matrix:
    """Propagation operator ``P = A_hat^L`` of a model with ``n_layers`` (L) graph layers.

    ``A_hat = gcn_normalize(adjacency)``. ``P[u, v] > 0`` iff node ``v`` lies within ``L`` hops
    upstream of ``u`` (including ``u``): measuring perturbation ``u`` sends a supervision signal to
    the embedding of ``v`` with weight ``P[u, v]``. Shape (n, n), CSR float64 with sorted indices.
    Raises :class:`ConfigError` if ``n_layers`` is not a positive integer. The fill-in grows quickly
    with L (L = 2 on the GO graph: about 20x the nnz of L = 1).
    """
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers < 1:
        raise ConfigError(f"n_layers must be a positive integer (GEARS uses 1), got {n_layers!r}.")
    a_hat = gcn_normalize(graph.adjacency if isinstance(graph, GeneGraph) else graph)
    p = a_hat
    for _ in range(int(n_layers) - 1):
        p = (p @ a_hat).tocsr()
    p.sort_indices()
    return p
