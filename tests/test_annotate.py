"""Marker-gene annotation on the real 10x pbmc3k counts, checked against the published labels."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from netformer.annotate import (
    PBMC_MARKERS,
    AnnotationConfig,
    annotate_by_markers,
    annotate_pbmc,
    resolve_markers,
)
from netformer.errors import ConfigError, InputDataError


@pytest.fixture(scope="module")
def pbmc_labeled(scrna) -> ad.AnnData:
    return ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")


@pytest.fixture(scope="module")
def annotated(pbmc_labeled):
    adata = pbmc_labeled.copy()
    published = adata.obs["cell_type"].copy()
    labels = annotate_pbmc(adata, random_state=0)
    return adata, labels, published


def test_agrees_with_published_pbmc3k_labels(annotated):
    adata, labels, published = annotated
    labelled = published.notna().to_numpy()
    assert labelled.sum() == 2638
    agree = (labels.astype(str).to_numpy()[labelled] == published.astype(str).to_numpy()[labelled]).mean()
    assert agree >= 0.85, f"agreement with the published annotation {agree:.3f} < 0.85"
    # every published type is recovered for the majority of its cells (no type swallowed by another)
    table = pd.crosstab(published[labelled], labels[labelled].astype(str))
    recall = {t: table.loc[t, t] / table.loc[t].sum() if t in table.columns else 0.0 for t in table.index}
    assert min(recall.values()) > 0.5, recall


def test_all_published_types_produced_and_written(annotated):
    adata, labels, published = annotated
    published_types = set(published.dropna().astype(str))
    assert published_types == set(PBMC_MARKERS)  # the marker table uses the published spellings
    assert set(labels.astype(str)) == published_types
    assert labels.index.equals(adata.obs_names)
    assert adata.obs["cell_type"].astype(str).equals(labels.astype(str))
    scores = adata.uns["cell_type_marker_scores"]
    assert set(scores["cell_type"]) == published_types
    assert scores.shape[0] == adata.obs["cell_type_cluster"].nunique()
    # the counts are left untouched
    assert adata.X.dtype == np.int32


def test_deterministic_and_bundled_data_same_result(annotated):
    from netformer.datasets import pbmc3k

    _, labels, _ = annotated
    bundled = pbmc3k()  # the same counts as the shared labelled file
    again = annotate_pbmc(bundled, random_state=0, key_added=None)
    assert "cell_type" not in bundled.obs
    assert again.index.equals(labels.index)
    assert (again.astype(str) == labels.astype(str)).all()


def test_markers_by_symbol_and_by_var_name(pbmc_labeled, scrna, caplog):
    # Ensembl var index: symbols are found through var["gene_symbol"], ids directly
    cd14_id = pbmc_labeled.var_names[pbmc_labeled.var["gene_symbol"] == "CD14"][0]
    with caplog.at_level(logging.WARNING, logger="netformer.annotate"):
        found = resolve_markers(pbmc_labeled, {"mono": ["CD14", "NOT_A_GENE"], "mono_id": [cd14_id],
                                               "ghost": ["NOT_A_GENE_EITHER"]})
    assert found["mono"] == found["mono_id"] == [pbmc_labeled.var_names.get_loc(cd14_id)]
    assert "ghost" not in found
    assert "NOT_A_GENE" in caplog.text and "ghost" in caplog.text
    # symbol var index (Kang 2018): found in var_names
    kang = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", backed="r")
    found = resolve_markers(kang, PBMC_MARKERS)
    assert set(found) == set(PBMC_MARKERS)
    assert kang.var_names[found["B cells"][0]] == "MS4A1"


def test_no_marker_found_raises(pbmc_labeled):
    small = pbmc_labeled[:50].copy()
    with pytest.raises(InputDataError, match="none of the 3 marker genes"):
        annotate_by_markers(small, {"x": ["NOPE1", "NOPE2"], "y": ["NOPE3"]})
    with pytest.raises(InputDataError, match="no marker genes given"):
        annotate_by_markers(small, {})
    assert "cell_type_cluster" not in small.obs  # nothing written on failure


def test_not_raw_counts_raises(pbmc_labeled):
    small = pbmc_labeled[:200].copy()
    lognorm = small.copy()
    lognorm.X = sp.csr_matrix(np.log1p(small.X.astype(np.float32).toarray()))
    with pytest.raises(InputDataError, match="not integer-valued"):
        annotate_pbmc(lognorm)
    negative = small.copy()
    negative.X = -small.X
    with pytest.raises(InputDataError, match="negative"):
        annotate_pbmc(negative)
    nan = small.copy()
    nan.X = small.X.astype(np.float32)
    nan.X.data[0] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        annotate_pbmc(nan)
    empty_cell = small.copy()
    x = small.X.tolil()
    x[3, :] = 0
    empty_cell.X = sp.csr_matrix(x)
    with pytest.raises(InputDataError, match="no counts"):
        annotate_pbmc(empty_cell)


def test_bad_config_raises(pbmc_labeled):
    with pytest.raises(ConfigError, match="resolution"):
        annotate_pbmc(pbmc_labeled[:50].copy(), resolution=0)
    with pytest.raises(ConfigError, match="n_pcs"):
        AnnotationConfig(n_pcs=60, n_comps=50).validate()


def test_cli_on_symbol_indexed_pbmcs(scrna, tmp_path):
    """Kang 2018 PBMCs (symbol var index): CLI writes a CSV whose labels follow their markers."""
    from typer.testing import CliRunner

    from netformer.cli import app
    from netformer.errors import OutputExistsError

    src = scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
    out = tmp_path / "labels.csv"
    result = CliRunner().invoke(app, ["annotate", str(src), "--out", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, index_col="barcode")
    kang = ad.read_h5ad(src)
    assert table.index.equals(kang.obs_names)
    assert {"CD4 T cells", "B cells", "NK cells", "CD14+ Monocytes"} <= set(table["cell_type"])
    # each of these types is the label with the highest mean expression of its lead marker
    expr = pd.DataFrame({g: np.asarray(kang[:, g].X.todense()).ravel() for g in ["MS4A1", "LYZ", "GNLY"]},
                        index=kang.obs_names)
    by_label = expr.groupby(table["cell_type"]).mean()
    assert by_label["MS4A1"].idxmax() == "B cells"
    assert by_label["GNLY"].idxmax() == "NK cells"
    assert by_label.loc[["CD4 T cells", "B cells", "NK cells"], "LYZ"].max() < by_label.loc[
        "CD14+ Monocytes", "LYZ"]
    before = out.read_bytes()
    again = CliRunner().invoke(app, ["annotate", str(src), "-o", str(out)])
    assert isinstance(again.exception, OutputExistsError)
    assert out.read_bytes() == before


def test_other_tissue_pancreas(scrna):
    """The general entry point on another tissue: Baron 2016 pancreas (human + mouse cells)."""
    adata = ad.read_h5ad(scrna / "cider_baron_pancreas_350cells_raw.h5ad")
    markers = {
        "beta": ["INS", "IAPP", "INS1"],  # INS1 is the mouse gene, upper-cased symbols here
        "alpha": ["GCG", "IRX2"],
        "delta": ["SST", "HHEX"],
        "ductal": ["KRT19", "SOX9"],
        "activated_stellate": ["COL1A1", "PDGFRB"],
        "macrophage": ["CD68", "C1QB"],
    }
    labels = annotate_by_markers(adata, markers, key_added=None).astype(str).to_numpy()
    published = adata.obs["cell_type"].astype(str).to_numpy()
    assert (labels == published).mean() > 0.8
    for t in ["alpha", "beta", "delta", "macrophage"]:  # endocrine and immune types are clean
        assert (labels[published == t] == t).mean() > 0.9, t
