"""PerturbData readers, canonical condition names and bad input, on the real Norman 2019 data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from netformer.errors import InputDataError
from netformer.perturbseq.data import (
    PerturbData,
    canonical_condition,
    detect_condition_format,
    read_gears,
    read_perturbseq,
    read_scperturb,
)


@pytest.fixture(scope="module")
def devel_path(shared_data):
    return shared_data / "perturbseq" / "devel.h5ad"


@pytest.fixture(scope="module")
def norman(devel_path):
    return read_perturbseq(devel_path, subset={"dataset": "norman19"})


def test_canonical_names():
    assert canonical_condition("KLF1+ctrl") == "KLF1"
    assert canonical_condition("ctrl+KLF1") == "KLF1"
    assert canonical_condition("SET+KLF1") == "KLF1+SET"
    assert canonical_condition("control") == "ctrl"
    assert canonical_condition("ctrl") == "ctrl"
    assert canonical_condition("Non-Targeting") == "ctrl"
    # CTRL is a human gene (chymotrypsin-like protease), not the control label
    assert canonical_condition("CTRL+ctrl") == "CTRL"
    assert canonical_condition("KLF1+CTRL") == "CTRL+KLF1"
    for bad in ("A549_KLF1+ctrl_1+1", "KLF1+", "A+A", "A B", "A+B+C"):
        with pytest.raises(InputDataError):
            canonical_condition(bad)
    assert detect_condition_format(["ctrl", "KLF1+ctrl", "A+B"]) == "gears"
    assert detect_condition_format(["control", "KLF1", "A+B"]) == "scperturb"
    with pytest.raises(InputDataError, match="mix"):
        detect_condition_format(["ctrl", "KLF1+ctrl", "SGK1"])
    with pytest.raises(InputDataError, match="no control"):
        detect_condition_format(["KLF1", "SGK1"])


def test_read_scperturb_norman(norman, devel_path):
    assert norman.n_genes == 500 and norman.adata.n_obs == 3375
    assert len(norman.singles) == 18 and len(norman.doubles) == 15
    assert "KLF1+SET" in norman.doubles  # 'SET+KLF1' in the file, sorted here
    assert norman.n_cells["ctrl"] == 100
    # means equal a direct computation from the file
    raw = ad.read_h5ad(devel_path)
    raw = raw[(raw.obs["dataset"] == "norman19") & (raw.obs["condition"] == "KLF1")]
    np.testing.assert_allclose(norman.mean(["KLF1"])[0], np.asarray(raw.X.mean(0)).ravel(), rtol=1e-5, atol=1e-6)
    # one glioblastoma line of the CRISPRi set
    gbm = read_scperturb(devel_path, subset={"dataset": "mcfaline23", "cell_type": "A172"})
    assert gbm.n_cells["ctrl"] == 100 and len(gbm.singles) == 9 and not gbm.doubles


def test_several_contexts_need_subset(devel_path):
    with pytest.raises(InputDataError, match="subset="):
        read_perturbseq(devel_path)
    with pytest.raises(InputDataError, match="several 'cell_type'"):
        read_perturbseq(devel_path, subset={"dataset": "mcfaline23"})


def test_read_gears_format(shared_data):
    data = read_gears(shared_data / "perturbseq" / "norman_subset.h5ad")
    assert data.conditions[0] == "ctrl" and data.n_cells["ctrl"] == 6
    assert "COL1A1" in data.singles and "CEBPE+ZC3HAV1" in data.doubles  # 'ZC3HAV1+CEBPE' in the file
    assert data.n_cells["ETS2"] == 2  # 'ctrl+ETS2' twice
    assert data.adata.var["gene_id"].str.startswith("ENSG").all()  # symbols from var.feature_name
    with pytest.raises(InputDataError, match="convention"):
        read_scperturb(shared_data / "perturbseq" / "norman_subset.h5ad")


def test_target_gene_and_de_genes(norman):
    # CRISPRa of TMSB4X raises TMSB4X itself, the one perturbed gene among the 500 measured
    assert norman.measured_genes_of("TMSB4X") == ["TMSB4X"] and norman.measured_genes_of("KLF1") == []
    i = norman.gene_index["TMSB4X"]
    assert norman.delta(["TMSB4X"])[0, i] > 0.5
    de = norman.top_de_genes(20)
    assert set(de) == set(norman.perturbations) and all(len(v) == 20 for v in de.values())
    # KLF1 activation in K562 switches on erythroid globin genes (Norman et al. 2019)
    assert {"HBZ", "HBG2"} & set(de["KLF1"][:5])
    assert "TMSB4X" in de["TMSB4X"][:3]
    idx = norman.de_indices(["KLF1", "TMSB4X"])
    assert idx.shape == (2, 20) and norman.genes[idx[1][0]] == de["TMSB4X"][0]


def test_pseudobulk_and_arrays_agree(norman):
    table = norman.means.rename(index={"ctrl": "control"})
    pb = PerturbData.from_pseudobulk(table, n_cells=norman.n_cells.to_numpy())
    assert pb.pseudobulk and pb.conditions == norman.conditions
    np.testing.assert_allclose(pb.delta(norman.perturbations), norman.delta(norman.perturbations), atol=1e-6)
    # DE genes without cells: ranked by absolute mean change
    top = pb.top_de_genes(5)["KLF1"]
    d = np.abs(norman.delta(["KLF1"])[0])
    assert d[norman.gene_index[top[0]]] == pytest.approx(d.max(), rel=1e-5)
    X, labels = norman.cells()
    arr = PerturbData.from_arrays(X, [lab if lab != "ctrl" else "control" for lab in labels], norman.genes)
    assert not arr.pseudobulk
    np.testing.assert_allclose(arr.means.to_numpy(), norman.means.to_numpy(), atol=1e-5)


def test_bad_inputs(norman):
    means = norman.means
    dup = pd.concat([means.iloc[:3], means.iloc[[2]]])
    with pytest.raises(InputDataError, match="duplicate"):
        PerturbData.from_pseudobulk(dup)
    swapped = means.loc[["ctrl", "KLF1+MAP2K6"]].copy()
    swapped.index = ["ctrl", "MAP2K6+KLF1"]
    both = pd.concat([means.loc[["KLF1+MAP2K6"]], swapped])
    with pytest.raises(InputDataError, match="denote the condition"):
        PerturbData.from_pseudobulk(both)
    assert "KLF1+MAP2K6" in PerturbData.from_pseudobulk(both, on_duplicate="merge").conditions
    with pytest.raises(InputDataError, match="no control"):
        PerturbData.from_pseudobulk(means.drop(index="ctrl"))
    X, labels = norman.cells(["ctrl", "KLF1"])
    cells = [f"c{i}" for i in range(len(labels))]
    with pytest.raises(InputDataError, match="raw counts"):
        PerturbData.from_anndata(ad.AnnData(np.round(np.expm1(X) * 30), obs=pd.DataFrame({"condition": labels}, index=cells)))
    bad = ad.AnnData(X, obs=pd.DataFrame({"condition": ["ctrl"] + ["A549_KLF1+ctrl_1+1"] * (len(labels) - 1)}, index=cells))
    with pytest.raises(InputDataError, match="not in a known format"):
        PerturbData.from_anndata(bad)
    with pytest.raises(InputDataError, match="not in the data"):
        norman.mean(["NOTAGENE"])
