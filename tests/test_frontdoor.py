"""The scanpy-style front door: ``nf.pp`` / ``nf.tl`` / ``nf.pl`` on real cells with the tiny pretrained model."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pytest
import scipy.sparse as sp

import netformer as nf


@pytest.fixture(scope="module")
def pbmc_small(scrna):
    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")[:120].copy()
    a.X = sp.csr_matrix(a.X)
    return a


def test_import_exports_the_front_door():
    assert {"pp", "tl", "pl", "integration", "genes"} <= set(nf.__all__)
    assert nf.integration.integration_table  # lazily imported submodule, no AttributeError
    with pytest.raises(AttributeError):
        nf.no_such_module  # noqa: B018


def test_tl_embed_writes_obsm_and_provenance(tiny_pretrained, pbmc_small):
    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.model import load_model

    a = pbmc_small.copy()
    assert nf.tl.embed(a, tiny_pretrained.model_dir) is None  # in place, scanpy style
    emb = a.obsm["X_netformer"]
    assert emb.shape == (a.n_obs, 64) and emb.dtype == np.float32
    info = a.uns["X_netformer"]
    assert info["vocab_digest"] == tiny_pretrained.vocab.digest and info["hidden_layer"] == -2
    assert info["model_input_size"] == 256 and info["n_cells_embedded"] == int((~np.isnan(emb).any(1)).sum())
    # same numbers as the library path on the same cells
    ds = nf.pp.tokenize(pbmc_small, tiny_pretrained.vocab, model_input_size=256)
    ref = embed_cells(load_model(tiny_pretrained.model_dir), ds, EmbeddingConfig())
    rows = a.obs_names.get_indexer(ds["cell_id"])
    np.testing.assert_allclose(emb[rows], ref, atol=1e-5)
    # copy=True leaves the input alone
    b = pbmc_small.copy()
    c = nf.tl.embed(b, tiny_pretrained.model_dir, key_added="X_other", copy=True)
    assert "X_other" not in b.obsm and "X_other" in c.obsm


def test_layer_option_reads_counts_from_layers(tiny_pretrained, pbmc_small):
    a = pbmc_small.copy()
    nf.tl.embed(a, tiny_pretrained.model_dir)
    b = pbmc_small.copy()
    b.layers["counts"] = b.X.copy()
    b.X = sp.csr_matrix(np.log1p(b.X.toarray().astype(np.float32)))  # processed X, raw counts in a layer
    with pytest.raises(nf.errors.InputDataError, match="layer"):
        nf.tl.embed(b, tiny_pretrained.model_dir)  # the error points at layer=, not at check_counts
    nf.tl.embed(b, tiny_pretrained.model_dir, layer="counts")
    np.testing.assert_array_equal(a.obsm["X_netformer"], b.obsm["X_netformer"])
    with pytest.raises(nf.errors.InputDataError, match="no layer 'nope'"):
        nf.tl.embed(b, tiny_pretrained.model_dir, layer="nope")


def test_tl_embed_genes_into_varm(tiny_pretrained, pbmc_small):
    a = pbmc_small.copy()
    nf.tl.embed_genes(a, tiny_pretrained.model_dir)
    g = a.varm["X_netformer"]
    seen = a.var["X_netformer_n_cells"].to_numpy() > 0
    assert g.shape == (a.n_vars, 64) and seen.sum() > 500
    assert np.isfinite(g[seen]).all() and np.isnan(g[~seen]).all()


def test_plots_never_switch_the_backend(tiny_pretrained, pbmc_small, tmp_path):
    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the user chose; our plots must leave it alone
    try:
        a = pbmc_small.copy()
        nf.tl.embed(a, tiny_pretrained.model_dir)
        fig = nf.pl.umap(a, color="cell_type", save=tmp_path / "umap.png")
        assert (tmp_path / "umap.png").stat().st_size > 10_000 and "X_netformer_umap" in a.obsm
        nf.pl.loss(tiny_pretrained.result.loss_history, save=tmp_path / "loss.png")
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg"
        assert fig is not None
    finally:
        matplotlib.use(previous)


def test_tl_perturb_and_pl_ranked_shifts(tiny_pretrained, tmp_path):
    from netformer.perturb import CellStates, PerturbConfig

    from netformer.datasets import shared_data_dir

    a = ad.read_h5ad(shared_data_dir() / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")
    a = a[np.r_[0:40, 1000:1040]].copy()
    res = nf.tl.perturb(a, tiny_pretrained.model_dir, PerturbConfig(max_cells=4, mode="screen", top_k=5),
                        states=CellStates("condition", start="stim", goal="ctrl"))
    table = a.uns["netformer_perturb"]["genes"]
    assert len(res.results) > 0 and set(table["ensembl_id"]) <= set(res.results["perturbed"])
    assert a.uns["netformer_perturb"]["vocab_digest"] == tiny_pretrained.vocab.digest
    out = nf.pl.ranked_shifts(a, save=tmp_path / "ranked.png")
    assert out is None or (tmp_path / "ranked.png").exists()
