"""Demo step ``genes``: gene embeddings and the attention gene network of the cells step's model.

On ``network_cells`` pbmc3k cells (the cells step's rank value encodings):

1. contextual gene embeddings (:func:`netformer.embed.embed_genes`: each gene token's hidden state at
   the second to last layer, averaged over the cells), with the nearest genes (cosine) of a few marker
   genes to read;
2. the attention gene network (:func:`netformer.network.attention_network`: last layer, all heads,
   row-normalised), its centrality and top subnetwork, scored against GO (AUPRC of GO-Jaccard > 0.1
   pairs) beside the co-expression network of the same cells and genes
   (:func:`netformer.network.network_report`; GO from ``../shared/data/graphs``, skipped with a line
   when absent).

Writes into ``genes/``: ``gene_embeddings.parquet``, ``marker_neighbours.csv``, ``network/`` (edges,
centrality, ``network.png``, ``scores.json``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .._io import atomic_file

log = logging.getLogger("netformer.demo")

MARKERS = ("CD3E", "MS4A1", "LYZ", "NKG7", "PPBP")


def marker_neighbours(emb: pd.DataFrame, markers=MARKERS, k: int = 5) -> pd.DataFrame:
    """For each marker symbol in ``emb`` (gene embeddings indexed by Ensembl id): its ``k`` nearest genes by
    cosine similarity, as symbols. Columns ``marker, rank, neighbour, cosine``."""
    from ..genes import ensembl_to_symbol

    X = emb.filter(like="dim_").to_numpy(dtype=np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)
    sym = ensembl_to_symbol(emb.index).fillna(pd.Series(emb.index, index=emb.index)).to_numpy()
    rows = []
    for m in markers:
        hit = np.flatnonzero(sym == m)
        if not len(hit):
            continue
        sim = X @ X[hit[0]]
        sim[hit[0]] = -np.inf
        for r, j in enumerate(np.argsort(-sim, kind="stable")[:k], 1):
            rows.append({"marker": m, "rank": r, "neighbour": sym[j], "cosine": round(float(sim[j]), 4)})
    return pd.DataFrame(rows, columns=["marker", "rank", "neighbour", "cosine"])


def run(ctx) -> tuple[dict, list]:
    """Run the step in ``ctx.dir``; returns ``(metrics, files)``."""
    import anndata as ad

    from ..embed import EmbeddingConfig, embed_genes
    from ..model import load_model
    from ..network import NetworkConfig, attention_network, coexpression_network, network_report, write_network
    from ..tokenize import load_tokenized

    cfg, out = ctx.config, ctx.dir
    cells_dir = ctx.root / "cells"
    dataset = load_tokenized(cells_dir / "tokenized")
    n = min(cfg.network_cells, len(dataset))
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(dataset), n, replace=False))
    sub = dataset.select(rows.tolist())
    model = load_model(ctx.model_dir, device=cfg.device)

    log.info("genes: gene embeddings over %d pbmc3k cells", n)
    emb = embed_genes(model, sub, EmbeddingConfig(layer=-2, batch_size=64, device=cfg.device))
    with atomic_file(out / "gene_embeddings.parquet") as tmp:
        emb.to_parquet(tmp)
    near = marker_neighbours(emb[emb["n_cells"] >= 5])
    with atomic_file(out / "marker_neighbours.csv") as tmp:
        near.to_csv(tmp, index=False)

    log.info("genes: the attention gene network of the same cells, beside co-expression")
    ncfg = NetworkConfig(max_cells=None, seed=cfg.seed, device=cfg.device)
    net = attention_network(model, sub, ncfg)
    adata = ad.read_h5ad(cells_dir / "cells.h5ad")
    cell_ids = set(sub["cell_id"])
    adata = adata[[c in cell_ids for c in adata.obs_names]].copy()
    base = coexpression_network(adata, genes=net.genes)
    report = network_report(net, ncfg, baseline=base)
    write_network(report, out / "network", overwrite=True,
                  inputs={"cells": f"{n} pbmc3k cells of the demo", "model": "the cells step's model"})
    go = report.scores.get("go_all_pairs", {})
    metrics = {
        "n_cells": n, "n_gene_embeddings": int(len(emb)),
        "marker_neighbours": {m: g["neighbour"].tolist() for m, g in near.groupby("marker", sort=False)},
        "network_genes": report.scores["n_genes"], "network_edges": report.scores["n_edges"],
        "top_central_genes": report.centrality["symbol"].head(10).tolist(),
        "go": go,
    }
    if "auprc" in go:
        log.info("genes: GO AUPRC attention %.4f, co-expression %.4f, shuffled %.4f", go["auprc"],
                 go.get("baseline_auprc", float("nan")), go.get("auprc_shuffled") or float("nan"))
    files = [out / "gene_embeddings.parquet", out / "marker_neighbours.csv", out / "network" / "network.png",
             out / "network" / "edges.csv", out / "network" / "centrality.csv", out / "network" / "scores.json"]
    return metrics, files
