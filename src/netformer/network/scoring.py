"""How good is a gene network? Scores against knowledge the model never saw.

- :func:`go_scores`: AUPRC of the edge scores for recovering GO edges. The GO graph is GEARS's
  (Jaccard of GO term sets > 0.1, top 20 per gene; :func:`netformer.graphs.load_edges`, read as
  undirected, self loops dropped). Among the scored pairs whose two genes (as symbols, GENCODE) are
  both in the GO graph, a pair is positive when it is a GO edge in either direction; each directed
  pair is one instance. Reported beside the AUPRC of the same pairs with the scores shuffled (mean
  over seeded permutations), the base rate (fraction positive: the AUPRC of a random ranking), and
  the AUPRC of a baseline network (co-expression) on the same pairs. AUPRC is scikit-learn's
  ``average_precision_score``.
- :func:`module_score`: whether a gene set (e.g. interferon-stimulated genes) forms a connected,
  central module of a network: the fraction of the set's network genes in the largest connected
  component of the set's induced subgraph (edges of the edge table, undirected), and the set's mean
  PageRank percentile among all network genes; each with a one-sided permutation p-value against
  random gene sets of the same size drawn from the network's genes (seeded):
  ``p = (1 + #{random >= observed}) / (1 + n_permutations)``.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..errors import InputDataError

log = logging.getLogger(__name__)


def _symbols(genes: Iterable[str], species: str) -> dict[str, str]:
    """Gene id -> symbol (GENCODE for Ensembl ids; other ids are taken as symbols), upper-cased."""
    from ..genes import ensembl_to_symbol, looks_like_ensembl

    genes = sorted(set(genes))
    if not looks_like_ensembl(genes):
        return {g: g.upper() for g in genes}
    sym = ensembl_to_symbol(genes, species=species)
    return {g: s.upper() for g, s in sym.items() if isinstance(s, str)}


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Undirected pair keys ``min * n + max`` of integer node codes."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo.astype(np.int64) * n + hi


def go_scores(pairs: pd.DataFrame, go_edges: pd.DataFrame | None = None, baseline: pd.DataFrame | None = None,
              n_shuffles: int = 20, seed: int = 0, species: str = "human") -> dict:
    """AUPRC of ``pairs.score`` for GO edges (method: the module docstring).

    Parameters
    ----------
    pairs
        Scored pairs ``source, target, score`` (a :attr:`GeneNetwork.pairs` or an edge table).
    go_edges
        GO graph ``source, target`` (symbols); default the shared data folder's
        (:func:`netformer.graphs.load_edges`).
    baseline
        Pairs of a baseline network (``source, target, score``); the pairs scored by both are compared.
    n_shuffles, seed
        Shuffled-score permutations for the null AUPRC.

    Returns
    -------
    dict
        ``n_pairs`` (pairs with both genes in GO), ``n_positive``, ``base_rate``, ``auprc``,
        ``auprc_shuffled`` (mean) and ``auprc_shuffled_sd``; with a baseline also ``baseline_auprc``
        and ``n_pairs_baseline`` (the pairs both networks score; ``auprc`` is then on those pairs too).

    Raises
    ------
    InputDataError
        No scored pair with both genes in GO, or no GO edge among them.
    """
    from sklearn.metrics import average_precision_score

    from ..graphs import load_edges

    go = load_edges(None) if go_edges is None else go_edges
    go = go[go["source"].astype(str) != go["target"].astype(str)]
    nodes = pd.Index(sorted(set(go["source"].astype(str).str.upper()) | set(go["target"].astype(str).str.upper())))
    go_keys = np.unique(_pair_keys(nodes.get_indexer(go["source"].astype(str).str.upper()),
                                   nodes.get_indexer(go["target"].astype(str).str.upper()), len(nodes)))
    df = pairs[["source", "target", "score"]]
    if baseline is not None:
        df = df.merge(baseline[["source", "target", "score"]].rename(columns={"score": "baseline"}),
                      on=["source", "target"], how="inner")
    sym = _symbols(pd.concat([df["source"], df["target"]]).astype(str), species)
    s = nodes.get_indexer(df["source"].astype(str).map(sym))
    t = nodes.get_indexer(df["target"].astype(str).map(sym))
    ok = (s >= 0) & (t >= 0) & (s != t)
    if not ok.any():
        raise InputDataError("no scored pair has both genes in the GO graph; check the gene ids (Ensembl ids or "
                             "symbols) and the species")
    y = np.isin(_pair_keys(s[ok], t[ok], len(nodes)), go_keys)
    if not y.any():
        raise InputDataError(f"none of the {int(ok.sum())} scored pairs in the GO graph is a GO edge; no AUPRC")
    score = df["score"].to_numpy(np.float64)[ok]
    rng = np.random.default_rng(seed)
    shuffled = [average_precision_score(y, rng.permutation(score)) for _ in range(n_shuffles)]
    out = {"n_pairs": int(ok.sum()), "n_positive": int(y.sum()), "base_rate": float(y.mean()),
           "auprc": float(average_precision_score(y, score)),
           "auprc_shuffled": float(np.mean(shuffled)) if shuffled else None,
           "auprc_shuffled_sd": float(np.std(shuffled)) if shuffled else None, "n_shuffles": n_shuffles}
    if baseline is not None:
        out["baseline_auprc"] = float(average_precision_score(y, df["baseline"].to_numpy(np.float64)[ok]))
        out["n_pairs_baseline"] = out["n_pairs"]
    return out


def module_score(edges: pd.DataFrame, table: pd.DataFrame, gene_set: Iterable[str], n_permutations: int = 1000,
                 seed: int = 0) -> dict:
    """Is ``gene_set`` a connected, central module of a network? (method: the module docstring)

    Parameters
    ----------
    edges
        The network's edge table (``source, target``; e.g. its top-k edges).
    table
        Its centrality table (:func:`netformer.network.centrality`: ``gene, symbol, pagerank``).
    gene_set
        Symbols or gene ids (matched case-insensitively to ``symbol`` or ``gene``).

    Returns
    -------
    dict
        ``n_set`` (set genes in the network), ``lcc_fraction`` and its ``lcc_p``, ``n_edges_within``,
        ``mean_pagerank_percentile`` (0-100; 100 = the most central gene) and its ``pagerank_p``,
        ``n_permutations``, and ``genes`` (the set's network genes as symbols, by PageRank).

    Raises
    ------
    InputDataError
        Fewer than two genes of the set in the network.
    """
    wanted = {str(g).upper() for g in gene_set}
    genes = table["gene"].astype(str).to_numpy()
    names = table["symbol"].astype(str).str.upper().to_numpy()
    member = np.array([n in wanted or g.upper() in wanted for g, n in zip(genes, names)])
    m = int(member.sum())
    if m < 2:
        raise InputDataError(f"{m} gene(s) of the set are in the network; a module needs two")
    index = pd.Index(genes)
    s = index.get_indexer(edges["source"].astype(str))
    t = index.get_indexer(edges["target"].astype(str))
    ok = (s >= 0) & (t >= 0) & (s != t)
    n = len(genes)
    adj = sp.coo_matrix((np.ones(int(ok.sum())), (s[ok], t[ok])), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.int8).tocsr()
    pct = 100.0 * pd.Series(table["pagerank"].to_numpy()).rank(method="average", pct=True).to_numpy()

    def stats(idx: np.ndarray) -> tuple[float, float, int]:
        sub = adj[idx][:, idx]
        _, comp = connected_components(sub, directed=False)
        return np.bincount(comp).max() / len(idx), float(pct[idx].mean()), int(sub.nnz // 2)

    idx = np.flatnonzero(member)
    lcc, mean_pct, within = stats(idx)
    rng = np.random.default_rng(seed)
    null = np.array([stats(np.sort(rng.choice(n, size=m, replace=False)))[:2] for _ in range(n_permutations)]).reshape(-1, 2)
    p = (1 + (null >= np.array([lcc, mean_pct]) - 1e-12).sum(0)) / (1 + n_permutations)
    return {"n_set": m, "n_genes": n, "lcc_fraction": float(lcc), "lcc_p": float(p[0]),
            "lcc_fraction_random": float(null[:, 0].mean()), "n_edges_within": within,
            "mean_pagerank_percentile": mean_pct, "pagerank_p": float(p[1]),
            "mean_pagerank_percentile_random": float(null[:, 1].mean()), "n_permutations": n_permutations,
            "genes": [str(x) for x in names[idx]]}
