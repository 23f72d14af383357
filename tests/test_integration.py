"""Batch integration metrics on the four real 10x PBMC batches (pbmc3k + pbmc_10x_3batches)."""

from __future__ import annotations

import numpy as np
import pytest

from netformer.errors import InputDataError
from netformer.integration import integrate_batches, integration_metrics, lisi


def test_lisi_bounds_on_real_pca(scrna):
    """LISI of cell types lies in [1, n_types]; shuffling the labels mixes them (higher LISI)."""
    import anndata as ad

    from netformer.embed import pca_baseline

    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")
    a = a[a.obs["cell_type"].notna().to_numpy()][:800].copy()
    pcs = pca_baseline(a)
    y = a.obs["cell_type"].astype(str).to_numpy()
    true = lisi(pcs, y)
    shuffled = lisi(pcs, np.random.default_rng(0).permutation(y))
    assert true.min() >= 1 - 1e-9 and true.max() <= len(set(y)) + 1e-9
    assert np.median(true) < 1.3 < np.median(shuffled)


def test_integration_table_four_pbmc_batches(tiny_pretrained, scrna, tmp_path):
    batches = {"pbmc3k": scrna / "pbmc3k_raw_labeled.h5ad"}
    for name in ("1k_PBMC_v2_raw", "1k_PBMC_v3_filt", "5prime_PBMC_filt_1kcells"):
        batches[name] = scrna / "pbmc_10x_3batches" / f"{name}.h5ad"
    res = integrate_batches(tiny_pretrained.model_dir, batches, n_cells_per_batch=150, output_dir=tmp_path)
    print(res.table.round(3).to_string())
    assert list(res.table.index) == ["netformer", "PCA"]
    cols = ["batch_asw", "ilisi", "clisi", "label_asw", "nmi", "ari"]
    vals = res.table[cols].to_numpy(dtype=float)
    assert np.all(np.isfinite(vals)) and np.all(vals >= -1e-9) and np.all(vals <= 1 + 1e-9)
    assert res.obs["batch"].nunique() == 4
    assert set(res.obs.loc[res.obs["batch"] != "pbmc3k", "label_source"]) == {"marker annotation"}
    # Cell types are recovered far above chance by the PCA baseline on real PBMCs.
    assert res.table.loc["PCA", "nmi"] > 0.4
    # Permuted labels destroy cell-type conservation: the metric is not constant.
    perm = integration_metrics(res.embeddings["PCA"], res.obs["batch"],
                               np.random.default_rng(0).permutation(res.obs["cell_type"].to_numpy()))
    assert perm["nmi"] < res.table.loc["PCA", "nmi"] - 0.2
    assert (tmp_path / "integration_umap.png").stat().st_size > 10_000
    assert (tmp_path / "integration_metrics.csv").exists()


def test_integration_bad_input():
    emb = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(InputDataError, match="two batches"):
        integration_metrics(emb, ["a"] * 20, ["x", "y"] * 10)
    with pytest.raises(InputDataError, match="every cell"):
        integration_metrics(emb, ["a", "b"] * 10, ["x", None] * 10)
