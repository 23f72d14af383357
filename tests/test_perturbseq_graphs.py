"""GO graph built from gene2go vs the precomputed GEARS-style graph of the shared data folder; co-expression graph."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from netformer.errors import InputDataError
from netformer.graphs import (
    GeneGraph,
    coexpression_graph,
    gcn_normalize,
    go_graph,
    go_graph_from_annotations,
    load_edges,
    read_gene2go,
    restrict_edges,
)


@pytest.fixture(scope="module")
def annotations(shared_data):
    return read_gene2go(shared_data / "graphs" / "gene2go_orgHsEgDb_3.16.tsv.gz")


@pytest.fixture(scope="module")
def shipped():
    return load_edges(None)


def test_go_graph_matches_shipped(annotations, shipped):
    rng = np.random.default_rng(0)
    targets = sorted(rng.choice(sorted(shipped["target"].unique()), 250, replace=False)) + ["KLF1", "MAPK1", "SGK1"]
    ours = go_graph_from_annotations(annotations, targets=targets)
    ref = restrict_edges(shipped, targets, how="target")
    assert list(ours.columns) == ["source", "target", "importance"]
    assert set(ours["target"]) == set(ref["target"])
    for t, grp in ref.groupby("target"):
        mine = ours[ours["target"] == t]
        # same number of edges and the same Jaccard values (self loop 1, then the top 20 > 0.1)
        np.testing.assert_allclose(np.sort(mine["importance"])[::-1], np.sort(grp["importance"])[::-1], atol=1e-5)
        cut = grp["importance"].min()
        # edges strictly above the k-th value are identical; only exact ties at the cut may differ
        assert set(mine.loc[mine["importance"] > cut + 1e-6, "source"]) == set(grp.loc[grp["importance"] > cut + 1e-6, "source"])
    a, b = set(zip(ours["source"], ours["target"])), set(zip(ref["source"], ref["target"]))
    assert len(a & b) / len(b) > 0.8
    assert ((ours["importance"] > 0.1) | (ours["source"] == ours["target"])).all()
    assert (ours.groupby("target").size() <= 21).all()


def test_gaf_and_edge_list_inputs(annotations, tmp_path):
    sub = annotations[annotations["gene"].isin(["KLF1", "GATA1", "TAL1", "MAPK1", "MAPK3"])]
    gaf = tmp_path / "mini.gaf.gz"
    with gzip.open(gaf, "wt") as fh:
        fh.write("!gaf-version: 2.2\n")
        for g, go in zip(sub["gene"], sub["go_id"]):
            fh.write(f"UniProtKB\tX\t{g}\t\t{go}\tPMID:1\tIDA\t\tP\t\t\tprotein\ttaxon:9606\t20200101\tUniProt\n")
    from_gaf = go_graph(gaf)
    direct = go_graph_from_annotations(sub)
    pd.testing.assert_frame_equal(from_gaf.reset_index(drop=True), direct.reset_index(drop=True))
    assert {"MAPK1", "MAPK3"} <= set(direct.loc[direct["target"] == "MAPK3", "source"])
    edge_file = tmp_path / "edges.csv"
    direct.to_csv(edge_file, index=False)
    pd.testing.assert_frame_equal(go_graph(edge_file), direct.reset_index(drop=True))
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(InputDataError, match="symbol"):
        read_gene2go(bad)


def test_coexpression_graph(shared_data):
    from netformer.perturbseq.data import read_perturbseq

    data = read_perturbseq(shared_data / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
    X, _ = data.cells(["ctrl"] + data.singles)
    edges = coexpression_graph(X, data.genes)
    assert (edges["importance"] > 0.4).all() and (edges.groupby("target").size() <= 21).all()
    # reference: numpy's Pearson matrix, top 21 |r| per gene, then |r| > 0.4
    with np.errstate(invalid="ignore", divide="ignore"):
        R = np.abs(np.nan_to_num(np.corrcoef(X.T)))
    varying = X.std(0) > 0
    assert set(edges.loc[edges["source"] == edges["target"], "source"]) == set(np.asarray(data.genes)[varying])
    by_target = edges.groupby("target")["source"].apply(set).to_dict()
    for j in np.flatnonzero(varying)[:100]:
        order = np.argsort(-R[j], kind="stable")[:21]
        expect = {data.genes[i] for i in order if R[j, i] > 0.4}
        assert by_target.get(data.genes[j], set()) == expect
    # HBZ and HBG2 (globins, co-induced in K562) are co-expression neighbours
    assert "HBG2" in by_target["HBZ"]
    A = gcn_normalize(GeneGraph.from_edges(edges, data.genes).adjacency)
    assert A.shape == (500, 500) and (A.diagonal() > 0).all()  # self loops added where missing
    deg = np.asarray(A.sum(1)).ravel()
    assert np.all(deg > 0)
