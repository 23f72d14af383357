"""netformer.graphs: one GCN normalisation for selection and the GEARS-style model, checked against
an independent numpy re-derivation of PyG ``gcn_norm`` with ``add_remaining_self_loops``; loaders."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from netformer.errors import ConfigError, CorruptFileError, InputDataError
from netformer.graphs import (
    GeneGraph,
    gcn_normalize,
    load_edge_list,
    load_edges,
    propagation_operator,
    read_gene2go,
)

# Non-unit self loops (A: 0.5, B: 2.0), a unit one (D), none on C and E, a duplicated edge (B -> C).
EDGES = pd.DataFrame(
    [
        ("A", "A", 0.5), ("B", "B", 2.0), ("D", "D", 1.0),
        ("A", "B", 0.3), ("B", "C", 0.4), ("B", "C", 0.3), ("C", "A", 0.2),
        ("D", "C", 0.9), ("C", "D", 0.4), ("E", "D", 0.6), ("A", "E", 0.1),
    ],
    columns=["source", "target", "importance"],
)


def pyg_gcn_operator(edges: pd.DataFrame, nodes: list[str]) -> np.ndarray:
    """Dense message-passing operator of PyG ``GCNConv`` / ``SGConv(K=1)`` normalisation, re-derived.

    Follows ``torch_geometric.utils.add_remaining_self_loops(fill_value=1)`` then ``gcn_norm`` with
    ``flow="source_to_target"``: ``edge_index[0]`` = source (row), ``edge_index[1]`` = target (col);
    ``deg = scatter_add(w, col)``; ``norm = deg^-1/2[row] * w * deg^-1/2[col]``; the layer sums
    ``norm * x[row]`` into ``out[col]``, i.e. ``M[col, row] += norm``.
    """
    pos = {g: i for i, g in enumerate(nodes)}
    row = np.array([pos[s] for s in edges["source"]])
    col = np.array([pos[t] for t in edges["target"]])
    w = edges["importance"].to_numpy(float)
    n = len(nodes)
    # add_remaining_self_loops: drop self loops from the edge list, re-append one per node holding
    # the existing loop weight where there was one and fill_value 1 elsewhere
    mask = row != col
    loop_w = np.ones(n)
    loop_w[row[~mask]] = w[~mask]
    row = np.concatenate([row[mask], np.arange(n)])
    col = np.concatenate([col[mask], np.arange(n)])
    w = np.concatenate([w[mask], loop_w])
    deg = np.zeros(n)
    np.add.at(deg, col, w)
    dis = np.where(deg > 0, deg ** -0.5, 0.0)
    norm = dis[row] * w * dis[col]
    M = np.zeros((n, n))
    np.add.at(M, (col, row), norm)
    return M


def test_gcn_normalize_matches_pyg_rederivation():
    g = GeneGraph.from_edges(EDGES)
    assert list(g.genes) == ["A", "B", "C", "D", "E"]
    assert g.adjacency[2, 1] == pytest.approx(0.7)  # A[target C, source B], duplicates summed
    ref = pyg_gcn_operator(EDGES, list(g.genes))
    a_hat = gcn_normalize(g.adjacency)
    np.testing.assert_allclose(a_hat.toarray(), ref, rtol=0, atol=1e-12)
    # existing loops keep their weight, missing ones get 1: A_hat[B, B] = 2 / d_B, A_hat[C, C] = 1 / d_C
    d = np.asarray((g.adjacency + np.diag([0, 0, 1, 0, 1])).sum(1)).ravel()
    assert a_hat[1, 1] == pytest.approx(2.0 / d[1], abs=1e-15)
    assert a_hat[2, 2] == pytest.approx(1.0 / d[2], abs=1e-15)
    # the replace-by-1 convention (the old selection code) gives a different operator on this graph
    a = g.adjacency.toarray()
    np.fill_diagonal(a, 1.0)
    dr = a.sum(1)
    assert not np.allclose(a / np.sqrt(np.outer(dr, dr)), ref)
    # the input is not modified; L = 2 is the matrix square
    assert g.adjacency[1, 1] == 2.0
    np.testing.assert_allclose(propagation_operator(g, 2).toarray(), ref @ ref, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError):
        propagation_operator(g, 1.5)


def test_selection_operator_equals_gears_operator():
    """What netformer.select measures coverage with (Selector.P, L = 1) is the operator the GEARS-style
    model propagates perturbation embeddings with over the GO graph."""
    from netformer.perturbseq.gears import GEARSConfig, GEARSModel, GEARSNetwork
    from netformer.select import Selector

    graph = GeneGraph.from_edges(EDGES)
    sel = Selector(graph)
    P = sel.P.toarray()
    model = GEARSModel(GEARSConfig(num_go_layers=1))
    nodes, A_go = model._go_nodes(EDGES, ["A", "B", "C", "D", "E"])  # what GEARSModel._build uses
    order = [nodes.index(g) for g in graph.genes]
    A_go = A_go.toarray()[np.ix_(order, order)]
    np.testing.assert_allclose(P, A_go, rtol=0, atol=1e-12)
    np.testing.assert_allclose(P, pyg_gcn_operator(EDGES, list(graph.genes)), rtol=0, atol=1e-12)
    # the network multiplies by exactly that operator (stored in float32)
    net = GEARSNetwork(3, gcn_normalize(GeneGraph.from_edges(EDGES.iloc[:0], ["A", "B", "C"]).adjacency),
                       model._go_nodes(EDGES, list(graph.genes))[1], GEARSConfig())
    np.testing.assert_allclose(net.A_go.to_dense().numpy()[np.ix_(order, order)], P, rtol=0, atol=1e-7)
    # the co-expression operator of an edgeless graph is the identity (weight-1 loops added)
    np.testing.assert_array_equal(net.A_co.to_dense().numpy(), np.eye(3))


def test_from_edges_with_nodes_and_symmetrize():
    g = GeneGraph.from_edges(EDGES, ["D", "C", "X"])  # given order; edges outside dropped; X isolated
    assert list(g.genes) == ["D", "C", "X"]
    np.testing.assert_array_equal(g.adjacency.toarray(), [[1.0, 0.4, 0], [0.9, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(gcn_normalize(g.adjacency)[2, 2], 1.0)
    s = GeneGraph.from_edges(EDGES, symmetrize=True).adjacency
    assert s[0, 2] == s[2, 0] == pytest.approx(0.2) and s[1, 2] == s[2, 1] == pytest.approx(0.7)
    with pytest.raises(InputDataError, match="finite"):
        GeneGraph.from_edges(EDGES.assign(importance=-1.0))


def test_load_edges_and_errors(tmp_path):
    f = tmp_path / "e.tsv.gz"
    EDGES.rename(columns={"source": "from", "target": "to", "importance": "w"}).to_csv(f, sep="\t", index=False)
    df = load_edges(f, source="from", target="to", weight="w")
    pd.testing.assert_frame_equal(df, EDGES)
    df.loc[0, "importance"] = 99.0  # the cache hands out copies
    assert load_edges(f, source="from", target="to", weight="w").loc[0, "importance"] == 0.5
    g = load_edge_list(f, source="from", target="to", weight=None)
    assert set(g.adjacency.data) == {1.0, 2.0}  # unweighted; the duplicated B -> C sums to 2
    with pytest.raises(CorruptFileError, match="lacks column"):
        load_edges(f)
    with pytest.raises(InputDataError, match="does not exist"):
        load_edges(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(CorruptFileError, match="cannot read"):
        load_edges(bad)
    for name, imp in [("neg.csv", "-1"), ("nan.csv", "nan")]:
        (tmp_path / name).write_text(f"source,target,importance\nA,B,{imp}\n")
        with pytest.raises(InputDataError, match="finite"):
            load_edges(tmp_path / name)
    (tmp_path / "empty.csv").write_text("source,target,importance\n")
    with pytest.raises(InputDataError, match="no edges"):
        load_edges(tmp_path / "empty.csv")


def test_read_gene2go_formats(shared_data, tmp_path):
    tab = read_gene2go(shared_data / "graphs" / "gene2go_orgHsEgDb_3.16.tsv.gz", extra=("ontology", "evidence"))
    assert list(tab.columns) == ["gene", "go_id", "ontology", "evidence"]
    assert set(tab["ontology"]) == {"BP", "CC", "MF"}
    assert "GO:0003700" in set(tab.loc[tab["gene"] == "KLF1", "go_id"])
    plain = read_gene2go()  # default: the same table in the shared data folder
    assert list(plain.columns) == ["gene", "go_id"] and not plain.duplicated().any()
    gaf = tmp_path / "mini.gaf.gz"
    with gzip.open(gaf, "wt") as fh:
        fh.write("!gaf-version: 2.2\n")
        fh.write("UniProtKB\tP1\tKLF1\t\tGO:0003700\tPMID:1\tIDA\t\tF\t\t\tprotein\ttaxon:9606\t20200101\tUniProt\n")
        fh.write("UniProtKB\tP1\tKLF1\tNOT|enables\tGO:0000001\tPMID:1\tIDA\t\tF\t\t\tprotein\ttaxon:9606\t20200101\tUniProt\n")
        fh.write("UniProtKB\tP2\tGATA1\t\tGO:0005634\tPMID:2\tIEA\t\tC\t\t\tprotein\ttaxon:9606\t20200101\tUniProt\n")
    g = read_gene2go(gaf, extra=["ontology", "evidence"])
    assert g.values.tolist() == [["KLF1", "GO:0003700", "MF", "IDA"], ["GATA1", "GO:0005634", "CC", "IEA"]]
    with pytest.raises(InputDataError, match="offers extra columns"):
        read_gene2go(gaf, extra=["entrez_id"])
    with pytest.raises(InputDataError, match="symbol"):
        read_gene2go(shared_data / "graphs" / "gene2go_orgHsEgDb_3.16.tsv.gz", extra=["nope"])
