"""A network's edge table, centrality and scores together, and the output folder the CLI writes.

Output folder (written atomically: a temporary folder renamed into place when complete):

- ``edges.csv``: the edge table ``source, target, source_symbol, target_symbol, score, n_cells``
  (top-k per source and/or threshold, :meth:`GeneNetwork.edges`);
- ``pairs.parquet``: every scored pair (what the scores are computed on);
- ``centrality.csv``: :func:`~netformer.network.centrality` of the edge table;
- ``network.png``: the top subnetwork by PageRank (:func:`~netformer.network.plot_top_subnetwork`);
- ``scores.json``: GO AUPRC of all scored pairs and of the edge table (beside shuffled scores, the base
  rate and the co-expression baseline when counts were given), and the interferon-stimulated-gene
  module score of the edge table; GO scores are skipped, with one log line, when the GO graph file is
  not available;
- ``config.json``: the :class:`NetworkConfig`, the network kind and its ``info``, the inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import InputDataError
from .centrality import centrality, plot_top_subnetwork
from .config import NetworkConfig
from .edges import GeneNetwork
from .scoring import go_scores, module_score

log = logging.getLogger(__name__)


@dataclass
class NetworkReport:
    """Edge table, centrality table and scores of one network (:func:`network_report`)."""

    network: GeneNetwork
    edges: pd.DataFrame
    centrality: pd.DataFrame
    scores: dict = field(default_factory=dict)
    config: NetworkConfig = field(default_factory=NetworkConfig)


def _go_edges():
    """The shared GO graph, or None (with one log line) when it is not available here."""
    from ..graphs import default_go_graph_path, load_edges

    try:
        path = default_go_graph_path()
    except InputDataError as exc:
        log.info("GO scores skipped: %s", exc)
        return None
    if not path.exists():
        log.info("GO scores skipped: %s is not available", path)
        return None
    return load_edges(path)


def network_report(network: GeneNetwork, config: NetworkConfig | None = None, baseline: GeneNetwork | None = None,
                   gene_sets: dict | None = None, go: bool = True, species: str = "human") -> NetworkReport:
    """The edge table (``config.top_k`` / ``config.threshold``), its centrality, and the scores.

    ``baseline``: e.g. :func:`~netformer.network.coexpression_network` of the same cells, scored on the
    same pairs. ``gene_sets``: ``{name: genes}`` scored with :func:`module_score` on the edge table
    (default: the interferon-stimulated genes). ``go=False`` skips the GO scores. Scores that cannot
    be computed (no GO edge among the pairs, fewer than two genes of a set) are recorded as
    ``{"skipped": reason}``.
    """
    from ..classify.genesets import INTERFERON_STIMULATED_GENES

    cfg = config or NetworkConfig()
    edges = network.edges(cfg.top_k, cfg.threshold)
    if edges.empty:
        raise InputDataError(f"no edge has score >= threshold={cfg.threshold}; lower the threshold")
    table = centrality(edges, species=species)
    names = dict(zip(table["gene"], table["symbol"]))
    edges.insert(2, "source_symbol", edges["source"].map(names))
    edges.insert(3, "target_symbol", edges["target"].map(names))
    scores: dict = {"kind": network.kind, "n_edges": int(len(edges)), "n_genes": int(len(table))}
    go_edges = _go_edges() if go else None
    if go_edges is not None:
        base = baseline.pairs if baseline is not None else None
        for name, pairs in (("go_all_pairs", network.pairs), ("go_edges", edges)):
            scores[name] = _attempt(go_scores, pairs, go_edges, base, seed=cfg.seed, species=species)
    sets = {"interferon_stimulated_genes": INTERFERON_STIMULATED_GENES} if gene_sets is None else gene_sets
    for name, genes in sets.items():
        scores[f"module_{name}"] = _attempt(module_score, edges, table, genes, seed=cfg.seed)
    return NetworkReport(network, edges, table, scores, cfg)


def _attempt(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except InputDataError as exc:
        return {"skipped": str(exc)}


def write_network(report: NetworkReport, out_dir: str | Path, overwrite: bool = False, inputs: dict | None = None,
                  top_n: int = 30) -> Path:
    """Write ``report`` into the folder ``out_dir`` (files: the module docstring), atomically.

    Raises :class:`~netformer.errors.OutputExistsError` if ``out_dir`` exists and not ``overwrite``.
    """
    from .._io import atomic_dir

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        report.edges.to_csv(tmp / "edges.csv", index=False)
        report.network.pairs.to_parquet(tmp / "pairs.parquet", index=False)
        report.centrality.to_csv(tmp / "centrality.csv", index=False)
        plot_top_subnetwork(report.edges, report.centrality, tmp / "network.png", top_n=top_n,
                            title=f"{report.network.kind} network: top {top_n} genes by PageRank")
        (tmp / "scores.json").write_text(json.dumps(report.scores, indent=2))
        (tmp / "config.json").write_text(json.dumps({"kind": report.network.kind, "config": report.config.to_dict(),
                                                     "info": report.network.info, "inputs": inputs or {}},
                                                    indent=2, default=str))
    return Path(out_dir)
