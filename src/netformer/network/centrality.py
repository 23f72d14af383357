"""Centrality of the genes of a network (networkx), a picture of its top subnetwork, and
"central vs peripheral" gene labels for the gene classifier.

Centralities of an edge table ``source, target, score`` read as a weighted directed graph
``source -> target`` of weight ``score`` (:func:`to_digraph`):

- ``in_degree`` / ``out_degree``: the weighted in- and out-degree (strength; networkx
  ``in_degree(weight=)`` / ``out_degree(weight=)``), ``degree`` their sum;
- ``pagerank``: networkx ``pagerank`` (damping 0.85, weights as given, along the edge direction: a gene
  ranks high when high-ranked genes point at it: attention networks, genes much attended to;
  perturbation networks, genes shifted by many deletions);
- ``eigenvector``: networkx ``eigenvector_centrality`` (power iteration on ``A + I``, 1,000 iterations,
  tol 1e-6) of the undirected graph whose edge weight is the sum of both directions.

Centrality is the shape of Geneformer's gene network centrality task (Theodoris et al. 2023:
central vs peripheral genes of a network, classified from the model); :func:`centrality_labels`
draws such labels from any network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputDataError

CENTRALITIES = ("degree", "in_degree", "out_degree", "pagerank", "eigenvector")


def to_digraph(edges: pd.DataFrame):
    """A networkx ``DiGraph`` of an edge table (``source -> target``, attribute ``weight`` = ``score``)."""
    import networkx as nx

    absent = [c for c in ("source", "target", "score") if c not in edges.columns]
    if absent:
        raise InputDataError(f"the edge table lacks column(s) {absent}; found {list(edges.columns)}")
    if len(edges) == 0:
        raise InputDataError("the edge table holds no edge")
    w = edges["score"].to_numpy(np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputDataError("edge scores must be finite and >= 0 for centrality")
    g = nx.DiGraph()
    g.add_weighted_edges_from(zip(edges["source"].astype(str), edges["target"].astype(str), w))
    return g


def _undirected(g):
    import networkx as nx

    u = nx.Graph()
    u.add_nodes_from(g.nodes)
    for s, t, w in g.edges(data="weight"):
        u.add_edge(s, t, weight=u[s][t]["weight"] + w if u.has_edge(s, t) else w)
    return u


def centrality(edges: pd.DataFrame, species: str = "human") -> pd.DataFrame:
    """Gene table of centralities of an edge table (definitions: the module docstring).

    Returns a DataFrame ``gene, symbol, degree, in_degree, out_degree, pagerank, eigenvector`` (one row per
    gene of the edges; ``symbol`` from GENCODE, the gene id where unknown), sorted by decreasing
    PageRank (ties by gene id). Raises :class:`InputDataError` for an empty table or negative scores.
    """
    import networkx as nx

    from ..genes import ensembl_to_symbol

    g = to_digraph(edges)
    nodes = sorted(g.nodes)
    pr = nx.pagerank(g, weight="weight")
    try:
        ev = nx.eigenvector_centrality(_undirected(g), weight="weight", max_iter=1000, tol=1e-6)
    except nx.PowerIterationFailedConvergence:
        ev = nx.eigenvector_centrality_numpy(_undirected(g), weight="weight")
    ind, outd = dict(g.in_degree(weight="weight")), dict(g.out_degree(weight="weight"))
    sym = ensembl_to_symbol(nodes, species=species)
    table = pd.DataFrame({
        "gene": nodes,
        "symbol": [s if isinstance(s, str) else n for n, s in zip(nodes, sym.to_numpy())],
        "degree": [ind[n] + outd[n] for n in nodes],
        "in_degree": [ind[n] for n in nodes],
        "out_degree": [outd[n] for n in nodes],
        "pagerank": [pr[n] for n in nodes],
        "eigenvector": [ev[n] for n in nodes],
    })
    return table.sort_values(["pagerank", "gene"], ascending=[False, True], kind="stable").reset_index(drop=True)


def plot_top_subnetwork(edges: pd.DataFrame, table: pd.DataFrame, path: str | Path, top_n: int = 30,
                        title: str = "gene network: top genes by PageRank", seed: int = 0,
                        highlight: Iterable[str] | None = None, highlight_label: str = "gene set") -> Path:
    """PNG of the subnetwork induced by the ``top_n`` genes of highest PageRank in ``table``
    (:func:`centrality`): symbols as labels, node area by PageRank, edge width by score; spring layout
    (networkx, ``seed``). Genes of ``highlight`` (symbols or ids, case-insensitive) are drawn in orange
    and named ``highlight_label`` in the legend. 1,650 x 1,650 pixels. Returns the path (written
    atomically)."""
    import networkx as nx

    from .._io import new_figure, save_figure

    top = table.head(top_n)
    keep = set(top["gene"])
    sub = edges[edges["source"].isin(keep) & edges["target"].isin(keep)]
    g = nx.DiGraph()
    g.add_nodes_from(top["gene"])
    g.add_weighted_edges_from(zip(sub["source"], sub["target"], sub["score"]))
    pos = nx.spring_layout(g, seed=seed, weight="weight", k=1.5 / np.sqrt(max(len(g), 1)))
    fig, ax = new_figure(figsize=(11, 11))
    pr = top.set_index("gene")["pagerank"]
    sizes = 300 + 4000 * (pr / pr.max()).reindex(list(g.nodes)).to_numpy()
    w = np.array([d for _, _, d in g.edges(data="weight")], dtype=float)
    widths = 0.5 + 3.5 * w / w.max() if len(w) else []
    nx.draw_networkx_edges(g, pos, ax=ax, width=widths, alpha=0.35, edge_color="#555555", arrows=True,
                           arrowsize=10, node_size=sizes, connectionstyle="arc3,rad=0.08")
    marked = {str(x).upper() for x in (highlight or ())}
    names = dict(zip(top["gene"], top["symbol"]))
    hit = [n.upper() in marked or str(names[n]).upper() in marked for n in g.nodes]
    colours = ["#f4a259" if h else "#8fb8de" for h in hit]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_size=sizes, node_color=colours, edgecolors="#2b5b84")
    if any(hit):
        from matplotlib.lines import Line2D

        ax.legend(handles=[Line2D([], [], marker="o", ls="", color="#f4a259", markersize=12,
                                  label=f"{highlight_label} ({sum(hit)} of {len(hit)})")], loc="lower left", fontsize=11)
    nx.draw_networkx_labels(g, pos, ax=ax, labels=names, font_size=11)
    ax.set_title(f"{title} ({len(g)} genes, {g.number_of_edges()} edges)", fontsize=13)
    ax.set_axis_off()
    return save_figure(fig, path, dpi=150)


def centrality_labels(table: pd.DataFrame, by: str = "pagerank", quantile: float = 0.2,
                      labels: Sequence[str] = ("central", "peripheral")) -> dict[str, str]:
    """Central vs peripheral gene labels from a centrality table, for the gene classifier.

    Genes are ranked by ``by`` (one of :data:`CENTRALITIES`; ties broken by gene id); the top
    ``ceil(quantile * n)`` are labelled ``labels[0]`` (central), the bottom as many ``labels[1]``
    (peripheral); the genes in between are left out. Returns ``{gene id: label}``, the mapping
    :class:`netformer.classify.GeneClassifier` and :func:`netformer.classify.cross_validate_genes` take
    (Ensembl ids for networks built by this package).

    Raises
    ------
    ConfigError
        ``by`` not a centrality column, ``quantile`` outside (0, 0.5], or two equal labels.
    InputDataError
        Fewer than two genes, or a table without ``gene`` / ``by`` columns.
    """
    if by not in CENTRALITIES:
        raise ConfigError(f"by must be one of {', '.join(CENTRALITIES)}; got {by!r}")
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"quantile must be in (0, 0.5] (the top and the bottom fraction); got {quantile}")
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ConfigError(f"labels must be two different names (central, peripheral); got {labels!r}")
    absent = [c for c in ("gene", by) if c not in table.columns]
    if absent:
        raise InputDataError(f"the centrality table lacks column(s) {absent}; make it with centrality()")
    if len(table) < 2:
        raise InputDataError("a central/peripheral split needs at least two genes")
    ranked = table.sort_values([by, "gene"], ascending=[False, True], kind="stable")["gene"].astype(str).tolist()
    n = min(int(np.ceil(quantile * len(ranked))), len(ranked) // 2)
    out = {g: labels[0] for g in ranked[:n]}
    out.update({g: labels[1] for g in ranked[len(ranked) - n:]})
    return out
