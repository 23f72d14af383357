"""Cell-type annotation by marker genes: cluster the cells, then name each cluster by its markers.

This is the annotation the demo uses for its colours and its k-nearest-neighbour check. It follows
the workflow of the scanpy PBMC3k tutorial (Wolf et al. 2018, *Genome Biology* 19:15; the clustering
tutorial after Seurat's, Satija et al. 2015), which named Louvain clusters of the 10x pbmc3k data by
eye from known PBMC marker genes. Here the naming step is an explicit rule so that it runs unattended:

1. **Preprocessing** on a copy of the raw counts: drop genes detected in fewer than
   ``min_cells_per_gene`` cells, ``normalize_total`` to ``target_sum`` counts per cell, ``log1p``,
   ``n_top_genes`` highly variable genes (Seurat flavour), scale to unit variance (clipped at
   ``max_scale``), PCA with ``n_comps`` components, a ``n_neighbors``-nearest-neighbour graph on the
   first ``n_pcs`` components, and Leiden clustering (Traag et al. 2019) with the igraph
   implementation at ``resolution``.
2. **Marker scores**: each marker gene's log-normalised expression is z-scored over all cells and
   averaged within each cluster. A cell type's *raw score* in a cluster is the mean of its markers'
   cluster means (the "mean z-scored expression" gene-set score).
3. **Naming**: a cluster's marker means are also min-max scaled per gene across clusters (1 for the
   cluster that expresses the gene most, 0 for the least; scanpy's dotplot ``standard_scale="var"``),
   and a type's *relative score* is the mean of its markers' scaled values. Each cluster gets the
   type with the highest relative score among the types whose raw score is above the average cell
   (> 0); a cluster with no such type is labelled ``unassigned_label``.

The relative score is what makes step 3 robust: markers shared between related types (NKG7 and GNLY
are expressed by NK cells *and* by effector CD8 T cells; CST3 by dendritic cells *and* monocytes)
count against a cluster unless it is the cluster that expresses them most, so an effector CD8 T
cluster is named by CD8A/CD8B and not by its NK-like transcripts. On pbmc3k this raises agreement
with the published tutorial labels from 86% (raw score alone) to about 95% at resolution 1.0 and
keeps it at 93-95% for resolutions 0.8-2.0 and different seeds.

Genes are looked up in ``adata.var_names`` first and then in the symbol column
(``var["gene_symbol"]`` by default), so symbol markers work with an Ensembl var index. Markers not
found are logged and skipped; cell types left with no marker are logged and dropped; if no marker
is found at all :class:`~netformer.errors.InputDataError` is raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

#: Marker genes of the eight PBMC types of the scanpy PBMC3k tutorial, keyed by the label strings
#: of its published annotation (``obs["cell_type"]`` of ``scrna/pbmc3k_raw_labeled.h5ad``). Genes are
#: HGNC symbols; the markers are the tutorial's table (IL7R; CD8A; GNLY, NKG7; MS4A1; CD14, LYZ;
#: FCGR3A, MS4A7; FCER1A, CST3; PPBP) with one more canonical marker per type where the tutorial had
#: a single one (CCR7, CD3E and LDHB for naive/memory CD4 T; CD8B; CD79A for B; PF4 for platelets).
PBMC_MARKERS: dict[str, tuple[str, ...]] = {
    "CD4 T cells": ("IL7R", "CCR7", "CD3E", "LDHB"),
    "CD8 T cells": ("CD8A", "CD8B"),
    "NK cells": ("GNLY", "NKG7"),
    "B cells": ("MS4A1", "CD79A"),
    "CD14+ Monocytes": ("CD14", "LYZ"),
    "FCGR3A+ Monocytes": ("FCGR3A", "MS4A7"),
    "Dendritic cells": ("FCER1A", "CST3"),
    "Megakaryocytes": ("PPBP", "PF4"),
}


@dataclass(frozen=True)
class AnnotationConfig:
    """Settings of :func:`annotate_by_markers` (defaults follow the scanpy PBMC3k tutorial).

    Attributes:
        target_sum: counts per cell after ``normalize_total`` (default 1e4).
        min_cells_per_gene: genes detected in fewer cells are dropped before HVG selection (3).
        n_top_genes: number of highly variable genes (Seurat flavour) used for PCA (2000).
        max_scale: clip of the scaled (z-scored) HVG matrix (10).
        n_comps: PCA components computed (50).
        n_pcs: components used for the neighbour graph (40, as in the tutorial).
        n_neighbors: neighbours per cell in the kNN graph (10, as in the tutorial).
        resolution: Leiden resolution; higher gives more, smaller clusters (1.0).
        n_iterations: Leiden iterations (2, scanpy's default for the igraph flavour).
        random_state: seed of PCA (ARPACK start vector), the neighbour search and Leiden (0).
        symbol_column: ``var`` column of gene symbols searched when a marker is not a var name.
        unassigned_label: label of clusters where no type scores above the average cell.
    """

    target_sum: float = 1e4
    min_cells_per_gene: int = 3
    n_top_genes: int = 2000
    max_scale: float = 10.0
    n_comps: int = 50
    n_pcs: int = 40
    n_neighbors: int = 10
    resolution: float = 1.0
    n_iterations: int = 2
    random_state: int = 0
    symbol_column: str = "gene_symbol"
    unassigned_label: str = "Unassigned"

    def validate(self) -> None:
        """Raise :class:`~netformer.errors.ConfigError` for out-of-range values."""
        checks = {
            "target_sum": self.target_sum > 0,
            "min_cells_per_gene": self.min_cells_per_gene >= 0,
            "n_top_genes": self.n_top_genes >= 2,
            "max_scale": self.max_scale > 0,
            "n_comps": self.n_comps >= 2,
            "n_pcs": 2 <= self.n_pcs <= self.n_comps,
            "n_neighbors": self.n_neighbors >= 2,
            "resolution": self.resolution > 0,
            "n_iterations": self.n_iterations != 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"AnnotationConfig out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}; "
                "use positive values, n_top_genes >= 2, n_comps >= 2 and 2 <= n_pcs <= n_comps."
            )


def resolve_markers(
    adata: ad.AnnData,
    markers: Mapping[str, Sequence[str]],
    symbol_column: str = "gene_symbol",
) -> dict[str, list[int]]:
    """Find each marker gene's column in ``adata``.

    A marker is matched against ``adata.var_names`` (e.g. Ensembl ids) first, then against
    ``adata.var[symbol_column]`` if that column exists (exact, case-sensitive; the first matching
    column is used when a symbol occurs more than once).

    Args:
        adata: cells x genes AnnData.
        markers: cell type -> marker gene ids or symbols.
        symbol_column: ``var`` column holding gene symbols.

    Returns:
        cell type -> column indices of its found markers (types with none found are left out).

    Raises:
        InputDataError: ``markers`` is empty or none of its genes is found.
    """
    if not markers:
        raise InputDataError("no marker genes given; pass a dict cell type -> list of marker genes.")
    by_name = pd.Index(adata.var_names)
    lookups = [by_name]
    if symbol_column in adata.var.columns:
        lookups.append(pd.Index(adata.var[symbol_column].astype(str)))
    first_pos: list[dict[str, int]] = []
    for index in lookups:
        pos: dict[str, int] = {}
        for i, name in enumerate(index):
            pos.setdefault(name, i)
        first_pos.append(pos)

    found: dict[str, list[int]] = {}
    missing: list[str] = []
    for cell_type, genes in markers.items():
        if isinstance(genes, str):
            genes = [genes]
        cols: list[int] = []
        for gene in genes:
            col = next((p[gene] for p in first_pos if gene in p), None)
            if col is None:
                missing.append(gene)
            elif col not in cols:
                cols.append(col)
        if cols:
            found[str(cell_type)] = cols
        else:
            log.warning("cell type %r dropped: none of its markers %s is in the data", cell_type, list(genes))
    if missing:
        log.warning("%d marker gene(s) not found and skipped: %s", len(missing), ", ".join(missing))
    if not found:
        where = f"var_names or var[{symbol_column!r}]" if len(lookups) > 1 else "var_names"
        raise InputDataError(
            f"none of the {sum(len(g) for g in markers.values())} marker genes was found in {where}; "
            f"give markers as the ids of the var index or as symbols in var[{symbol_column!r}] "
            "(set symbol_column to the column that holds gene symbols)."
        )
    return found


def _check_counts(adata: ad.AnnData) -> None:
    """Raw counts check: finite, non-negative, integer-valued, every cell with counts."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputDataError(f"AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    x = adata.X
    values = x.data if sp.issparse(x) else np.asarray(x)
    if not np.all(np.isfinite(values)):
        raise InputDataError("adata.X holds NaN or infinite values; pass raw UMI counts.")
    if values.size and values.min() < 0:
        raise InputDataError("adata.X holds negative values; pass raw UMI counts (not scaled data).")
    if values.size and not np.array_equal(values, np.round(values)):
        raise InputDataError(
            "adata.X is not integer-valued; pass raw UMI counts (e.g. adata.layers['counts'] or "
            "adata.raw), not normalised or log-transformed data."
        )
    totals = np.asarray(x.sum(axis=1)).ravel()
    if np.any(totals == 0):
        raise InputDataError(
            f"{int(np.sum(totals == 0))} cell(s) have no counts; remove them first "
            "(e.g. scanpy.pp.filter_cells(adata, min_counts=1))."
        )


def cluster_cells(adata: ad.AnnData, config: AnnotationConfig | None = None) -> tuple[pd.Series, ad.AnnData]:
    """Preprocess raw counts and Leiden-cluster the cells (step 1 of the module docstring).

    Args:
        adata: cells x genes raw counts (``adata.X``, dense or sparse). Not modified.
        config: settings; defaults to :class:`AnnotationConfig` ().

    Returns:
        ``(clusters, lognorm)``: cluster id per cell (str Series indexed by ``obs_names``, ids "0", "1",
        ... by decreasing size) and the cells x genes log1p-normalised AnnData (genes after the
        ``min_cells_per_gene`` filter, var index as in ``adata``, obs index the row positions "0",
        "1", ... so that repeated cell names are harmless).

    Raises:
        InputDataError: counts are negative, non-integer, NaN, or a cell has none.
        ConfigError: a setting is out of range.
    """
    import scanpy as sc

    config = config or AnnotationConfig()
    config.validate()
    _check_counts(adata)
    x = adata.X.astype(np.float32) if sp.issparse(adata.X) else sp.csr_matrix(np.asarray(adata.X, np.float32))
    # positional cell names inside (obs_names may repeat, e.g. pooled species); restored on return
    work = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(index=pd.RangeIndex(adata.n_obs).astype(str)),
                      var=pd.DataFrame(index=adata.var_names.copy()))
    if config.min_cells_per_gene > 0:
        sc.pp.filter_genes(work, min_cells=config.min_cells_per_gene)
    sc.pp.normalize_total(work, target_sum=config.target_sum)
    sc.pp.log1p(work)
    n_top = min(config.n_top_genes, work.n_vars)
    sc.pp.highly_variable_genes(work, n_top_genes=n_top, flavor="seurat")
    hvg = work[:, work.var["highly_variable"].to_numpy()].copy()
    hvg.X = hvg.X.toarray()  # scaling centres the data, which densifies it anyway (cells x HVGs)
    sc.pp.scale(hvg, max_value=config.max_scale)
    n_comps = min(config.n_comps, hvg.n_obs - 1, hvg.n_vars - 1)
    if n_comps < 2:
        raise InputDataError(
            f"too few cells or variable genes to cluster ({hvg.n_obs} cells, {hvg.n_vars} HVGs); "
            "annotation needs at least a few dozen cells."
        )
    if n_comps < config.n_comps:
        log.info("PCA with %d components (data too small for %d)", n_comps, config.n_comps)
    sc.pp.pca(hvg, n_comps=n_comps, random_state=config.random_state)
    n_neighbors = min(config.n_neighbors, hvg.n_obs - 1)
    sc.pp.neighbors(hvg, n_neighbors=n_neighbors, n_pcs=min(config.n_pcs, n_comps),
                    random_state=config.random_state)
    sc.tl.leiden(hvg, resolution=config.resolution, flavor="igraph", n_iterations=config.n_iterations,
                 directed=False, random_state=config.random_state, key_added="cluster")
    clusters = pd.Series(hvg.obs["cluster"].astype(str).to_numpy(), index=adata.obs_names.copy(), name="cluster")
    log.info("Leiden (resolution %.2f) found %d clusters in %d cells",
             config.resolution, clusters.nunique(), hvg.n_obs)
    return clusters, work


def cluster_marker_scores(
    lognorm: ad.AnnData,
    clusters: pd.Series,
    marker_columns: Mapping[str, Sequence[int]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw and relative marker scores of each cluster (steps 2-3 of the module docstring).

    Args:
        lognorm: cells x genes log-normalised expression.
        clusters: cluster id per cell, aligned with ``lognorm`` rows.
        marker_columns: cell type -> column indices of its markers in ``lognorm``.

    Returns:
        ``(raw, relative)``, both clusters x cell types DataFrames. ``raw``: mean over markers of the
        cluster mean of the per-cell z-scored expression (units: standard deviations from the average
        cell). ``relative``: mean over markers of the cluster mean min-max scaled across clusters
        (0-1).
    """
    cols = sorted({c for cs in marker_columns.values() for c in cs})
    m = lognorm.X[:, cols]
    m = m.toarray() if sp.issparse(m) else np.asarray(m)
    m = m.astype(np.float64)
    sd = m.std(axis=0)
    z = (m - m.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    per_gene = pd.DataFrame(z, columns=cols).groupby(np.asarray(clusters), sort=True).mean()
    span = per_gene.max() - per_gene.min()
    scaled = (per_gene - per_gene.min()) / span.where(span > 0, 1.0)
    raw = pd.DataFrame({t: per_gene[list(c)].mean(axis=1) for t, c in marker_columns.items()})
    relative = pd.DataFrame({t: scaled[list(c)].mean(axis=1) for t, c in marker_columns.items()})
    return raw, relative


def name_clusters(raw: pd.DataFrame, relative: pd.DataFrame, unassigned_label: str = "Unassigned") -> pd.Series:
    """Cluster id -> cell type: highest relative score among types with raw score > 0.

    Ties go to the type listed first in the marker table. Clusters where every raw score is <= 0
    get ``unassigned_label``.
    """
    eligible = relative.where(raw > 0)
    out = {}
    for cluster in raw.index:
        row = eligible.loc[cluster]
        out[cluster] = row.idxmax() if row.notna().any() else unassigned_label
    return pd.Series(out, name="cell_type")


def annotate_by_markers(
    adata: ad.AnnData,
    markers: Mapping[str, Sequence[str]],
    *,
    config: AnnotationConfig | None = None,
    resolution: float | None = None,
    random_state: int | None = None,
    key_added: str | None = "cell_type",
) -> pd.Series:
    """Name the cells of ``adata`` by clustering them and scoring clusters on marker genes.

    The method (preprocessing, Leiden clustering, raw and relative marker scores, naming rule) is
    described in the module docstring. Same input and seed give the same labels.

    Args:
        adata: cells x genes **raw counts** in ``adata.X`` (non-negative integers, sparse or dense).
            Only ``obs[key_added]`` (and ``obs[key_added + "_cluster"]``, ``uns[key_added +
            "_marker_scores"]``) are written; the counts are not changed.
        markers: cell type -> marker genes, as var names (e.g. Ensembl ids) or as symbols found in
            ``var[config.symbol_column]``. Missing genes are logged and skipped.
        config: preprocessing and clustering settings (default :class:`AnnotationConfig` ()).
        resolution: overrides ``config.resolution`` when given.
        random_state: overrides ``config.random_state`` when given.
        key_added: ``obs`` column to write the labels to; ``None`` writes nothing.

    Returns:
        Categorical Series (index ``adata.obs_names``) of cell-type labels, the keys of ``markers``
        (plus ``config.unassigned_label`` where no type fits a cluster).

    Raises:
        InputDataError: no marker found, counts not raw counts, a cell with no counts, too few cells.
        ConfigError: a setting is out of range.
    """
    config = config or AnnotationConfig()
    overrides = {}
    if resolution is not None:
        overrides["resolution"] = float(resolution)
    if random_state is not None:
        overrides["random_state"] = int(random_state)
    config = replace(config, **overrides)
    config.validate()

    marker_cols = resolve_markers(adata, markers, symbol_column=config.symbol_column)
    n_found = sum(len(c) for c in marker_cols.values())
    log.info("marker annotation: %d cell types, %d marker genes found", len(marker_cols), n_found)
    clusters, lognorm = cluster_cells(adata, config)
    # the gene filter may have dropped markers that no cell expresses: re-map by var name
    pos = pd.Index(lognorm.var_names).get_indexer(adata.var_names)
    kept: dict[str, list[int]] = {}
    for cell_type, cols in marker_cols.items():
        new = [int(pos[c]) for c in cols if pos[c] >= 0]
        if len(new) < len(cols):
            log.warning("%d marker(s) of %r detected in fewer than %d cells; skipped",
                        len(cols) - len(new), cell_type, config.min_cells_per_gene)
        if new:
            kept[cell_type] = new
        else:
            log.warning("cell type %r dropped: its markers are not expressed", cell_type)
    if not kept:
        raise InputDataError(
            "no marker gene is expressed in enough cells to score; check that the markers fit this "
            "tissue and that adata.X holds counts of those genes."
        )
    raw, relative = cluster_marker_scores(lognorm, clusters, kept)
    names = name_clusters(raw, relative, config.unassigned_label)
    categories = list(kept) + ([config.unassigned_label] if config.unassigned_label in set(names) else [])
    labels = pd.Series(
        pd.Categorical(clusters.map(names).to_numpy(), categories=categories),
        index=adata.obs_names.copy(),
        name=key_added or "cell_type",
    )
    counts = labels.value_counts()
    log.info("annotated %d cells: %s", len(labels), ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    absent = [t for t, v in counts.items() if v == 0]
    if absent:
        log.info("no cluster named %s", ", ".join(absent))
    if key_added is not None:
        adata.obs[key_added] = labels
        adata.obs[f"{key_added}_cluster"] = pd.Categorical(clusters.to_numpy())
        scores = raw.copy()
        scores.columns = [f"raw: {c}" for c in raw.columns]
        rel = relative.copy()
        rel.columns = [f"relative: {c}" for c in relative.columns]
        table = pd.concat([scores, rel], axis=1)
        table.index = table.index.astype(str)
        table.insert(0, "cell_type", names.reindex(table.index).astype(str))
        adata.uns[f"{key_added}_marker_scores"] = table
    return labels


def annotate_pbmc(
    adata: ad.AnnData,
    *,
    resolution: float = 1.0,
    random_state: int = 0,
    key_added: str | None = "cell_type",
    config: AnnotationConfig | None = None,
) -> pd.Series:
    """Annotate peripheral blood mononuclear cells with :data:`PBMC_MARKERS` (the demo's labels).

    :func:`annotate_by_markers` with the PBMC marker table. Labels are the strings of the scanpy
    PBMC3k tutorial's annotation ("CD4 T cells", "CD14+ Monocytes", "B cells", "CD8 T cells",
    "NK cells", "FCGR3A+ Monocytes", "Dendritic cells", "Megakaryocytes"). On the 10x pbmc3k counts
    (:func:`netformer.datasets.pbmc3k`) they agree with the published labels on about 95% of the
    2,638 labelled cells; it takes about 10 s on 2 CPU cores.

    Args:
        adata: cells x genes raw counts; var index Ensembl ids with ``var["gene_symbol"]``, or symbols.
        resolution: Leiden resolution (default 1.0; 0.8-2.0 give 93-95% agreement on pbmc3k).
        random_state: seed of PCA, neighbours and Leiden (default 0).
        key_added: ``obs`` column for the labels (``None``: write nothing).
        config: other settings (default :class:`AnnotationConfig` ()).

    Returns:
        Categorical Series of labels indexed by ``adata.obs_names``.

    Raises:
        InputDataError, ConfigError: as :func:`annotate_by_markers`.
    """
    return annotate_by_markers(adata, PBMC_MARKERS, config=config, resolution=resolution,
                               random_state=random_state, key_added=key_added)


def load_markers(path: str | Path) -> dict[str, list[str]]:
    """Read a marker table from JSON: ``{"cell type": ["GENE1", "GENE2"], ...}``.

    Raises:
        InputDataError: the file is missing, not JSON, or not a mapping of names to gene lists.
    """
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read marker table {path}: {exc}; give a JSON file "
                             '{"cell type": ["GENE1", "GENE2"], ...}.') from exc
    if not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(g, str) for g in v) for v in table.values()
    ):
        raise InputDataError(f"marker table {path} must map each cell type to a list of gene names.")
    return {str(k): list(v) for k, v in table.items()}


def annotate_file(
    input_path: str | Path,
    output_csv: str | Path,
    *,
    markers: Mapping[str, Sequence[str]] | None = None,
    config: AnnotationConfig | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Annotate the raw counts of an ``.h5ad`` file and write ``barcode,cell_type,cluster`` as CSV.

    Args:
        input_path: h5ad with raw counts in ``X``.
        output_csv: CSV written atomically (temp file + rename).
        markers: marker table (default :data:`PBMC_MARKERS`).
        config: settings (default :class:`AnnotationConfig` ()).
        overwrite: replace an existing ``output_csv``.

    Returns:
        The table written (index: barcodes).

    Raises:
        OutputExistsError: ``output_csv`` exists and ``overwrite`` is False (checked before any work).
        CorruptFileError: the input cannot be read as h5ad.
        InputDataError, ConfigError: as :func:`annotate_by_markers`.
    """
    from ._io import atomic_file, check_output
    from .errors import CorruptFileError

    check_output(output_csv, overwrite)
    try:
        adata = ad.read_h5ad(input_path)
    except FileNotFoundError as exc:
        raise InputDataError(f"input file {input_path} does not exist; check the path.") from exc
    except Exception as exc:  # h5py / anndata raise various types on truncated or foreign files
        raise CorruptFileError(f"cannot read {input_path} as h5ad ({exc}); check that the file is a "
                               "complete AnnData .h5ad file.") from exc
    labels = annotate_by_markers(adata, markers or PBMC_MARKERS, config=config, key_added="cell_type")
    table = pd.DataFrame({"cell_type": labels.astype(str), "cluster": adata.obs["cell_type_cluster"].astype(str)})
    table.index.name = "barcode"
    with atomic_file(output_csv, overwrite=overwrite) as tmp:
        table.to_csv(tmp)
    return table
