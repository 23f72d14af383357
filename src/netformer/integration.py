"""Batch integration metrics for cell embeddings, scib-style, with the PCA baseline beside ours.

Metrics follow the definitions of scib (Luecken et al. 2022, *Nat Methods* 19:41, "Benchmarking
atlas-level data integration in single-cell genomics"; package ``scib``), implemented here with
scikit-learn, scanpy and igraph/leidenalg (scib-metrics is not used: it pulls JAX). All scores are
scaled to [0, 1], higher is better:

- **batch ASW** (batch mixing): for each cell type, the silhouette width of the batch labels on
  that type's cells, ``s``, is turned into ``1 - |s|`` per cell and averaged; the score is the
  mean over cell types (scib ``silhouette_batch``; types present in a single batch are skipped).
- **iLISI** (batch mixing): the local inverse Simpson's index of batch labels (Korsunsky et al.
  2019, *Nat Methods* 16:1289, Harmony): per cell, a Gaussian kernel over its ``3 * perplexity``
  nearest neighbours with bandwidth calibrated to the given perplexity (binary search on the
  entropy, as in the LISI reference code), then ``1 / sum_b p_b^2``; the median over cells is
  scaled as ``(LISI - 1) / (n_batches - 1)`` (scib).
- **cLISI** (cell-type conservation): the same index of cell-type labels, scaled as
  ``(n_types - LISI) / (n_types - 1)`` (1 = neighbourhoods pure in cell type).
- **label ASW**: silhouette width of the cell-type labels, ``(s + 1) / 2`` (scib ``silhouette``).
- **NMI / ARI**: Leiden clusters of the embedding's kNN graph (15 neighbours) against the cell-type
  labels; the resolution is chosen from 0.1 .. 2.0 in steps of 0.1 to maximise NMI (scib's
  ``cluster_optimal_resolution``), then NMI (arithmetic normalisation) and ARI are reported.

Silhouettes use Euclidean distance, as scib. The aggregate scores follow scib: batch correction =
mean(batch ASW, iLISI), bio conservation = mean(cLISI, label ASW, NMI, ARI), overall = 0.4 batch +
0.6 bio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ._io import atomic_file, new_figure, save_figure
from .errors import ConfigError, InputDataError

log = logging.getLogger(__name__)


@dataclass
class IntegrationConfig:
    """Settings of :func:`integration_metrics`.

    Attributes
    ----------
    perplexity
        LISI perplexity (30, the LISI default); ``3 * perplexity`` neighbours are used.
    n_neighbors
        kNN graph size for Leiden clustering (15, scanpy's default).
    resolutions
        Leiden resolutions tried for NMI/ARI.
    seed
        Seed of the Leiden runs.
    """

    perplexity: float = 30.0
    n_neighbors: int = 15
    resolutions: tuple[float, ...] = tuple(np.round(np.arange(0.1, 2.01, 0.1), 2))
    seed: int = 0


def _check(emb, batch, labels):
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise InputDataError("the embedding must be a (n_cells, n_dims) array")
    batch = pd.Series(list(batch), dtype=object)
    labels = pd.Series(list(labels), dtype=object)
    if len(batch) != len(emb) or len(labels) != len(emb):
        raise InputDataError(f"{len(emb)} cells but {len(batch)} batch labels and {len(labels)} cell-type labels")
    if batch.isna().any() or labels.isna().any():
        raise InputDataError("batch and cell-type labels must be given for every cell; drop unlabelled cells")
    if batch.nunique() < 2:
        raise InputDataError("integration metrics need at least two batches")
    if labels.nunique() < 2:
        raise InputDataError("integration metrics need at least two cell types")
    return emb, batch.astype(str).to_numpy(), labels.astype(str).to_numpy()


def lisi(emb: np.ndarray, labels: Sequence, perplexity: float = 30.0) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` per cell (Korsunsky et al. 2019).

    For each cell, distances to its ``k = min(3 * perplexity, n - 1)`` nearest neighbours (Euclidean)
    give Gaussian weights ``exp(-beta d^2)`` normalised to probabilities, with ``beta`` found by
    binary search so that the entropy equals ``log(perplexity)``; the index is
    ``1 / sum_label (sum of the probabilities of the neighbours with that label)^2``. Values range
    from 1 (neighbourhood of one label) to the number of labels. Returns shape (n_cells,).
    """
    from sklearn.neighbors import NearestNeighbors

    emb = np.asarray(emb, dtype=np.float64)
    codes, uniq = pd.factorize(np.asarray(labels).astype(str))
    n = len(emb)
    k = int(min(3 * perplexity, n - 1))
    if k < 2:
        raise InputDataError("too few cells for LISI")
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb)
    d2 = dist[:, 1:] ** 2
    nb = codes[idx[:, 1:]]
    target = np.log(min(perplexity, k))
    beta = np.ones(n)
    lo = np.full(n, -np.inf)
    hi = np.full(n, np.inf)
    d2n = d2 - d2[:, :1]  # shift for numerical stability (cancels in the normalisation)
    for _ in range(50):
        P = np.exp(-d2n * beta[:, None])
        s = P.sum(1)
        H = np.log(s) + beta * (d2n * P).sum(1) / s
        diff = H - target
        if np.all(np.abs(diff) < 1e-5):
            break
        up = diff > 0  # entropy too high -> sharper kernel
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(up, np.where(np.isinf(hi), beta * 2, (beta + hi) / 2),
                        np.where(np.isinf(lo), beta / 2, (beta + lo) / 2))
    P = np.exp(-d2n * beta[:, None])
    P /= P.sum(1, keepdims=True)
    simpson = np.zeros(n)
    for c in range(len(uniq)):
        simpson += ((nb == c) * P).sum(1) ** 2
    return 1.0 / simpson


def batch_asw(emb: np.ndarray, batch: Sequence, labels: Sequence) -> float:
    """scib ``silhouette_batch``: mean over cell types of mean(1 - |silhouette of batch|)."""
    from sklearn.metrics import silhouette_samples

    batch, labels = np.asarray(batch), np.asarray(labels)
    scores = []
    for t in np.unique(labels):
        m = labels == t
        if len(np.unique(batch[m])) < 2 or m.sum() < 3:
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(emb[m], batch[m]))))
    return float(np.mean(scores)) if scores else float("nan")


def leiden_nmi_ari(emb: np.ndarray, labels: Sequence, config: IntegrationConfig | None = None) -> dict:
    """NMI and ARI of Leiden clusters vs ``labels`` at the NMI-optimal resolution (scib)."""
    import anndata as ad
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    cfg = config or IntegrationConfig()
    a = ad.AnnData(np.zeros((len(emb), 1), dtype=np.float32))
    a.obsm["X_emb"] = np.asarray(emb, dtype=np.float32)
    sc.pp.neighbors(a, n_neighbors=cfg.n_neighbors, use_rep="X_emb", random_state=cfg.seed)
    best = {"nmi": -1.0}
    for r in cfg.resolutions:
        sc.tl.leiden(a, resolution=float(r), random_state=cfg.seed, key_added="cl", flavor="igraph",
                     n_iterations=2, directed=False)
        nmi = normalized_mutual_info_score(labels, a.obs["cl"], average_method="arithmetic")
        if nmi > best["nmi"]:
            best = {"nmi": float(nmi), "ari": float(adjusted_rand_score(labels, a.obs["cl"])), "resolution": float(r),
                    "n_clusters": int(a.obs["cl"].nunique())}
    return best


def integration_metrics(emb: np.ndarray, batch: Sequence, labels: Sequence,
                        config: IntegrationConfig | None = None) -> dict:
    """All scib-style scores of one embedding (see the module docstring).

    Parameters
    ----------
    emb
        (n_cells, n_dims) embedding.
    batch, labels
        Batch and cell-type label per cell (no missing values; >= 2 of each).

    Returns
    -------
    dict
        ``batch_asw``, ``ilisi``, ``clisi``, ``label_asw``, ``nmi``, ``ari``, ``batch_correction``,
        ``bio_conservation``, ``overall``, and the Leiden ``resolution`` / ``n_clusters`` used.
    """
    from sklearn.metrics import silhouette_score

    cfg = config or IntegrationConfig()
    emb, batch, labels = _check(emb, batch, labels)
    nb, nl = len(np.unique(batch)), len(np.unique(labels))
    il = float(np.median(lisi(emb, batch, cfg.perplexity)))
    cl = float(np.median(lisi(emb, labels, cfg.perplexity)))
    out = {
        "batch_asw": batch_asw(emb, batch, labels),
        "ilisi": (il - 1) / (nb - 1),
        "clisi": (nl - cl) / (nl - 1),
        "label_asw": float((silhouette_score(emb, labels) + 1) / 2),
    }
    out.update(leiden_nmi_ari(emb, labels, cfg))
    out["batch_correction"] = float(np.nanmean([out["batch_asw"], out["ilisi"]]))
    out["bio_conservation"] = float(np.mean([out["clisi"], out["label_asw"], out["nmi"], out["ari"]]))
    out["overall"] = 0.4 * out["batch_correction"] + 0.6 * out["bio_conservation"]
    return out


def integration_table(embeddings: Mapping[str, np.ndarray], batch: Sequence, labels: Sequence,
                      config: IntegrationConfig | None = None) -> pd.DataFrame:
    """:func:`integration_metrics` for several embeddings of the same cells, one row each."""
    rows = {name: integration_metrics(e, batch, labels, config) for name, e in embeddings.items()}
    return pd.DataFrame(rows).T.rename_axis("embedding")


def integration_umap(embeddings: Mapping[str, np.ndarray], batch: Sequence, labels: Sequence,
                     path: str | Path, seed: int = 0) -> Path:
    """One PNG: a UMAP per embedding (rows), coloured by batch (left) and by cell type (right)."""
    import matplotlib
    import umap

    batch = np.asarray(batch).astype(str)
    labels = np.asarray(labels).astype(str)
    fig, axes = new_figure(len(embeddings), 2, figsize=(12, 5 * len(embeddings)), squeeze=False)
    for row, (name, emb) in enumerate(embeddings.items()):
        xy = umap.UMAP(n_neighbors=15, min_dist=0.3, random_state=seed).fit_transform(np.asarray(emb))
        for col, (what, lab) in enumerate((("batch", batch), ("cell type", labels))):
            ax = axes[row, col]
            cats = sorted(np.unique(lab))
            cmap = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
            for i, c in enumerate(cats):
                m = lab == c
                ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(i % cmap.N), label=f"{c} ({m.sum()})")
            ax.set_title(f"{name}: coloured by {what}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save_figure(fig, path, dpi=100)


# ------------------------------------------------------------------------------------------------
# End to end: several count files -> our embeddings and the PCA baseline -> table + UMAP
# ------------------------------------------------------------------------------------------------
@dataclass
class IntegrationResult:
    """Output of :func:`integrate_batches`: ``table`` (one row per embedding), the embeddings,
    per-cell ``obs`` (batch, cell_type, label_source) and the UMAP path (if written)."""

    table: pd.DataFrame
    embeddings: dict
    obs: pd.DataFrame
    umap_png: Path | None = None


def _ensembl_counts(adata):
    """Counts with Ensembl var names (index if Ensembl, else ``var['ensembl_id']``), duplicates dropped."""
    from .genes import looks_like_ensembl

    a = adata.copy()
    if not looks_like_ensembl(a.var_names):
        if "ensembl_id" not in a.var.columns:
            raise InputDataError("a batch has neither Ensembl var names nor var['ensembl_id']")
        a = a[:, a.var["ensembl_id"].notna().to_numpy()].copy()
        a.var_names = a.var["ensembl_id"].astype(str).to_numpy()
    a.var_names = [v.split(".")[0].upper() for v in a.var_names]
    return a[:, ~a.var_names.duplicated()].copy()


def integrate_batches(
    model_dir: str | Path,
    batches: Mapping[str, object],
    label_column: str = "cell_type",
    n_cells_per_batch: int | None = None,
    output_dir: str | Path | None = None,
    max_length: int | None = None,
    layer: int = -2,
    config: IntegrationConfig | None = None,
    seed: int = 0,
    vocab=None,
) -> IntegrationResult:
    """Embed cells from several batches with our encoder and the PCA baseline; score both.

    Parameters
    ----------
    model_dir
        Pretrained model directory.
    vocab
        Its dictionary, for a checkpoint without one beside it (:func:`netformer.genes.resolve_vocab`).
    batches
        ``{batch name: .h5ad path or AnnData of raw counts}``. Cells whose batch has
        ``obs[label_column]`` keep those labels (missing ones are dropped); batches without it are
        annotated with :func:`netformer.annotate.annotate_pbmc` (marker genes, on the whole batch
        before subsampling); ``obs['label_source']`` records which.
    n_cells_per_batch
        Random subsample per batch (seeded) for speed.
    output_dir
        If given: ``integration_metrics.csv`` and ``integration_umap.png``.
    layer
        Encoder layer of the cell embeddings (mean over gene tokens; default second to last).

    Returns
    -------
    IntegrationResult
        Table rows: ``netformer`` (our embedding) and ``PCA`` (50 components of log-normalised counts
        of the pooled batches over their shared genes; :func:`netformer.embed.pca_baseline`).
    """
    import anndata as ad

    from .annotate import annotate_pbmc
    from .embed import EmbeddingConfig, embed_cells, pca_baseline
    from .genes import resolve_vocab
    from .model import load_model
    from .tokenize import TranscriptomeTokenizer

    if len(batches) < 2:
        raise ConfigError("give at least two batches")
    vocab = resolve_vocab(model_dir, vocab=vocab)
    model = load_model(model_dir, kind="base")
    max_length = max_length or model.config.max_position_embeddings
    rng = np.random.default_rng(seed)
    parts = []
    for name, src in batches.items():
        a = ad.read_h5ad(src) if isinstance(src, (str, Path)) else src.copy()
        a.obs_names_make_unique()
        if label_column in a.obs.columns:
            a.obs["_label"] = a.obs[label_column].astype(object)
            a.obs["label_source"] = "given"
            a = a[a.obs["_label"].notna().to_numpy()].copy()
        else:
            log.info("batch %s has no %r column: annotating with PBMC marker genes", name, label_column)
            a.obs["_label"] = annotate_pbmc(a, key_added=None, random_state=seed).astype(str).to_numpy()
            a.obs["label_source"] = "marker annotation"
        if n_cells_per_batch is not None and a.n_obs > n_cells_per_batch:
            a = a[np.sort(rng.choice(a.n_obs, n_cells_per_batch, replace=False))].copy()
        a.obs["_batch"] = name
        a.obs_names = [f"{name}:{c}" for c in a.obs_names]
        parts.append(_ensembl_counts(a))
    pooled = ad.concat(parts, join="inner")
    log.info("%d cells from %d batches, %d shared genes", pooled.n_obs, len(parts), pooled.n_vars)
    ds = TranscriptomeTokenizer(vocab, model_input_size=max_length, gene_id_column=None).tokenize(pooled)
    keep = pooled.obs_names.get_indexer(pd.Index(ds["cell_id"]))
    pooled = pooled[keep].copy()
    ours = embed_cells(model, ds, EmbeddingConfig(layer=layer), vocab=vocab)
    pca = pca_baseline(pooled, seed=seed)
    obs = pd.DataFrame({"batch": pooled.obs["_batch"].to_numpy(), "cell_type": pooled.obs["_label"].astype(str).to_numpy(),
                        "label_source": pooled.obs["label_source"].to_numpy()}, index=pooled.obs_names)
    embs = {"netformer": ours, "PCA": pca}
    table = integration_table(embs, obs["batch"], obs["cell_type"], config)
    png = None
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / "integration_metrics.csv") as tmp:
            table.to_csv(tmp)
        png = integration_umap(embs, obs["batch"], obs["cell_type"], out / "integration_umap.png", seed=seed)
    return IntegrationResult(table, embs, obs, png)
