"""Gene-gene graphs for perturbation models: the GO graph and the co-expression graph.

Both follow GEARS (Roohani, Huang and Leskovec, Nat Biotechnol 2024):

* GO graph: the similarity of two genes is the Jaccard index of their GO term sets; pairs with
  Jaccard > 0.1 are kept and, for every target gene, the 20 most similar source genes plus the gene
  itself (Jaccard 1) become edges ``source -> target`` weighted by the Jaccard index.
* Co-expression graph: Pearson correlation of genes over training cells; for every gene the 20
  genes of highest ``|r|`` plus itself, then edges with ``|r| > 0.4``.

Edges are returned as a :class:`pandas.DataFrame` with columns ``source, target, importance``
(the schema of GEARS's ``go_essential_all.csv`` and of
``../shared/data/graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz``). Message passing uses the GCN
normalisation of :func:`gcn_normalized_adjacency`.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import CorruptFileError, GeneIdError, InputDataError

log = logging.getLogger(__name__)

EDGE_COLUMNS = ["source", "target", "importance"]
DEFAULT_GO_EDGES = "graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz"
DEFAULT_GENE2GO = "graphs/gene2go_orgHsEgDb_3.16.tsv.gz"

__all__ = [
    "EDGE_COLUMNS",
    "coexpression_graph",
    "gcn_normalized_adjacency",
    "go_graph",
    "go_graph_from_annotations",
    "load_edges",
    "read_gene2go",
    "restrict_edges",
]


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_gene2go(path: str | os.PathLike) -> pd.DataFrame:
    """Read a gene -> GO annotation table as a two-column DataFrame ``gene, go_id`` (deduplicated).

    Accepted formats: a TSV/CSV with columns ``symbol`` (or ``gene``/``gene_symbol``) and
    ``go_id`` (e.g. ``gene2go_orgHsEgDb_3.16.tsv.gz``), or a GO Annotation File (GAF 2.x: ``!``
    comment lines, symbol in column 3, GO id in column 5; ``NOT`` qualifiers are dropped).
    Raises :class:`InputDataError` if neither layout is found.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            first = fh.readline()
    except OSError as exc:
        raise CorruptFileError(f"{path} could not be read ({exc}).") from None
    if first.startswith("!"):  # GAF
        gaf = pd.read_csv(path, sep="\t", comment="!", header=None, dtype=str, usecols=range(5))
        gaf = gaf[~gaf[3].fillna("").str.contains("NOT")]
        out = pd.DataFrame({"gene": gaf[2], "go_id": gaf[4]})
    else:
        sep = "\t" if "\t" in first else ","
        tab = pd.read_csv(path, sep=sep, dtype=str)
        gene_col = next((c for c in ("symbol", "gene", "gene_symbol", "gene_name") if c in tab), None)
        if gene_col is None or "go_id" not in tab:
            raise InputDataError(
                f"{path}: expected columns 'symbol' and 'go_id' (or a GAF file); found {list(tab.columns)}."
            )
        out = pd.DataFrame({"gene": tab[gene_col], "go_id": tab["go_id"]})
    out = out.dropna().drop_duplicates().reset_index(drop=True)
    if out.empty:
        raise InputDataError(f"{path} holds no gene -> GO annotations.")
    return out


def load_edges(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read an edge list ``source,target,importance`` (CSV/TSV, optionally gzipped).

    ``path=None`` reads the shipped GEARS-style GO graph
    (``<shared data>/graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz``, 20,728 genes, 429,942 edges).
    A file without an ``importance`` column gets weight 1. Raises :class:`InputDataError` on a
    missing file or columns.
    """
    if path is None:
        from ..datasets import shared_data_dir

        path = shared_data_dir() / DEFAULT_GO_EDGES
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"edge list {path} does not exist.")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _EDGE_CACHE:  # the 430k-edge default graph is read by every model fit
        _EDGE_CACHE.clear()
        _EDGE_CACHE[key] = _read_edge_file(path)
    return _EDGE_CACHE[key].copy()


_EDGE_CACHE: dict = {}


def _read_edge_file(path: Path) -> pd.DataFrame:
    sep = "\t" if ".tsv" in path.name or ".txt" in path.name else ","
    edges = pd.read_csv(path, sep=sep)
    if not {"source", "target"} <= set(edges.columns):
        raise InputDataError(f"{path}: an edge list needs columns source,target[,importance]; found {list(edges.columns)}.")
    if "importance" not in edges:
        edges["importance"] = 1.0
    return _clean_edges(edges)


def _clean_edges(edges: pd.DataFrame) -> pd.DataFrame:
    edges = edges[EDGE_COLUMNS].copy()
    edges["source"] = edges["source"].astype(str)
    edges["target"] = edges["target"].astype(str)
    edges["importance"] = edges["importance"].astype(np.float64)
    if not np.all(np.isfinite(edges["importance"])) or (edges["importance"] < 0).any():
        raise InputDataError("edge importances must be finite and non-negative.")
    return edges.reset_index(drop=True)


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
    row come from ``numpy.argpartition``; memory is O(block_size x n_genes).

    Parameters
    ----------
    annotations
        DataFrame with columns ``gene, go_id`` (see :func:`read_gene2go`) or a path to one.
    targets
        Compute the in-edges of these genes only (sources still range over all annotated genes), so
        the rows match the whole-genome graph exactly; default all genes. Unannotated targets are
        skipped with a warning.

    Returns
    -------
    DataFrame ``source, target, importance`` sorted by target then decreasing importance.
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
    """The GO graph as an edge DataFrame, from whatever the user has.

    ``source``: ``None`` (the shipped precomputed graph, see :func:`load_edges`), an edge DataFrame
    or edge-list file (columns ``source,target[,importance]``), or an annotation table / GAF file
    (built with :func:`go_graph_from_annotations`, ``kwargs`` passed on).
    """
    if source is None:
        return load_edges(None)
    if isinstance(source, pd.DataFrame):
        if {"source", "target"} <= set(source.columns):
            src = source.copy()
            if "importance" not in src:
                src["importance"] = 1.0
            return _clean_edges(src)
        return go_graph_from_annotations(source, **kwargs)
    path = Path(source)
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.exists():
        raise InputDataError(f"{path} does not exist.")
    with opener(path, "rt") as fh:
        header = fh.readline()
    if "source" in header and "target" in header:
        return load_edges(path)
    return go_graph_from_annotations(read_gene2go(path), **kwargs)


def restrict_edges(edges: pd.DataFrame, genes: Iterable[str], *, how: str = "both") -> pd.DataFrame:
    """Keep the edges whose ends are in ``genes``.

    ``how='both'`` (default) keeps edges with source and target in ``genes`` (the induced
    subgraph); ``'target'`` keeps every in-edge of the listed genes (what one round of message
    passing to them needs); ``'source'`` every out-edge.
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
# co-expression graph
# --------------------------------------------------------------------------------------------
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
    (which uses the training split's cells). Returns ``source, target, importance``.
    """
    X = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(genes):
        raise InputDataError(f"X has shape {X.shape}, expected (n_cells, {len(genes)}).")
    if X.shape[0] < 3:
        raise InputDataError("a co-expression graph needs at least 3 cells.")
    Xc = X - X.mean(0, keepdims=True)
    norm = np.sqrt((Xc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        R = (Xc.T @ Xc) / np.outer(norm, norm)
    R = np.abs(np.nan_to_num(R, nan=0.0, posinf=0.0, neginf=0.0))
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
# operators and embeddings
# --------------------------------------------------------------------------------------------
def gcn_normalized_adjacency(edges: pd.DataFrame, nodes: Sequence[str], *, add_self_loops: bool = True) -> sp.csr_matrix:
    """GCN-normalised adjacency ``A_hat`` (n_nodes x n_nodes, CSR) over ``nodes``.

    ``A_hat[t, s] = w(s -> t) / sqrt(d_t d_s)`` with ``d`` the weighted in-degree, after adding a
    weight-1 self loop to every node that lacks one (PyG ``gcn_norm`` with
    ``add_remaining_self_loops``, as used by GEARS's ``SGConv``). One message-passing layer is
    ``H' = A_hat @ H``. Edges with an end outside ``nodes`` are dropped; ``nodes`` absent from the
    graph are isolated (self loop only).
    """
    nodes = [str(g) for g in nodes]
    pos = pd.Index(nodes)
    if pos.has_duplicates:
        raise GeneIdError("nodes contain duplicates.")
    s = pos.get_indexer(edges["source"].astype(str))
    t = pos.get_indexer(edges["target"].astype(str))
    ok = (s >= 0) & (t >= 0)
    s, t, w = s[ok], t[ok], edges["importance"].to_numpy(np.float64)[ok]
    n = len(nodes)
    A = sp.csr_matrix((w, (t, s)), shape=(n, n))  # rows = targets
    A.sum_duplicates()
    if add_self_loops:
        diag = A.diagonal()
        missing = diag == 0
        A = A + sp.diags(missing.astype(np.float64))
    deg = np.asarray(A.sum(1)).ravel()
    with np.errstate(divide="ignore"):
        dis = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0)
    return (sp.diags(dis) @ A @ sp.diags(dis)).tocsr()
