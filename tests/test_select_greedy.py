"""One-shot selection on the real GEARS GO graph: greedy exactness, submodularity, bounds, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from netformer.errors import ConfigError, CorruptFileError, GeneIdError
from netformer.graphs import gcn_normalize, load_edge_list, propagation_operator
from netformer.select import (
    BudgetError,
    GraphReachCoverage,
    GraphReachFacility,
    MaxSpec,
    Selector,
    lazy_greedy,
    pagerank_scores,
    plain_greedy,
    resolve_candidates,
    select,
)
from netformer.select.synthetic import bfs_universe

CRITERIA = {"graphreach": GraphReachCoverage, "graphreach_fl": GraphReachFacility, "maxspec": MaxSpec}


@pytest.fixture(scope="module")
def go(shared_data):
    return load_edge_list(shared_data / "graphs" / "go_top20_jaccard_orgHsEgDb_3.16.csv.gz")


@pytest.fixture(scope="module")
def region(go):
    """1,500 GO genes around TP53 and KLF1 (BFS), with the selector over the full graph."""
    genes = bfs_universe(go, ["TP53", "KLF1"], 1500)
    return Selector(go, genes)


def test_go_graph_loads_with_gears_direction(go, shared_data):
    assert go.n_genes == 20728 and go.n_edges == 429942
    df = pd.read_csv(shared_data / "graphs" / "go_top20_jaccard_orgHsEgDb_3.16.csv.gz", nrows=50)
    r = df.iloc[3]
    i, j = go.index_of([r.target, r.source])
    assert go.adjacency[i, j] == pytest.approx(r.importance)  # A[target, source]
    assert go.n_components() > 1  # the real graph is disconnected (isolated genes)


def test_gcn_normalisation_and_propagation(go):
    sub = go.subgraph(bfs_universe(go, ["MAPK1"], 300))
    a = sub.adjacency.toarray()
    np.fill_diagonal(a, 0.0)
    a += np.eye(len(a))
    d = a.sum(1)
    expect = a / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    np.testing.assert_allclose(gcn_normalize(sub.adjacency).toarray(), expect, rtol=1e-12)
    p2 = propagation_operator(sub, 2).toarray()
    np.testing.assert_allclose(p2, expect @ expect, rtol=1e-10, atol=1e-15)
    with pytest.raises(ConfigError):
        propagation_operator(sub, 0)


@pytest.mark.parametrize("method", list(CRITERIA))
def test_lazy_equals_plain_greedy_with_fewer_evaluations(region, method):
    crit = region.criterion(method)
    lazy = lazy_greedy(crit, 80)
    plain = plain_greedy(region.criterion(method), 80)
    np.testing.assert_array_equal(lazy.order, plain.order)
    np.testing.assert_array_equal(lazy.objective, plain.objective)
    assert lazy.n_evaluations < plain.n_evaluations / 5
    assert np.all(np.diff(plain.gains) <= 1e-12)  # greedy gains of a submodular f never increase


@pytest.mark.parametrize("method", list(CRITERIA))
def test_monotone_submodular_on_real_samples(region, method):
    rng = np.random.default_rng(1)
    n = len(region.pool)
    for _ in range(15):
        b = rng.choice(n, size=25, replace=False)
        a = b[:8]
        x = int(rng.choice(np.setdiff1d(np.arange(n), b)))
        crit = region.criterion(method)
        fa, fb = crit.evaluate(a), crit.evaluate(b)
        fax, fbx = crit.evaluate(list(a) + [x]), crit.evaluate(list(b) + [x])
        assert fb >= fa - 1e-9 and fax >= fa - 1e-9  # monotone
        assert fax - fa >= fbx - fb - 1e-9           # diminishing returns


def test_maxspec_incremental_equals_logdet(region):
    crit = region.criterion("maxspec")
    s = [3, 17, 250, 251, 900, 1200]
    ps = region.reach[s].toarray()
    ref = np.linalg.slogdet(np.eye(len(s)) + crit.beta * ps @ ps.T)[1]
    assert crit.evaluate(s) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("method", list(CRITERIA))
def test_greedy_within_1_minus_1_over_e_of_brute_force(go, method):
    for seed_gene in ["TP53", "KLF1", "CEBPE"]:
        genes = bfs_universe(go, [seed_gene], 12)
        sel = Selector(go, genes)
        budget = 4
        res = sel.select(budget, method=method)
        crit = sel.criterion(method)
        opt = max(crit.evaluate(c) for c in itertools.combinations(range(len(sel.pool)), budget))
        assert res.objective[-1] >= (1 - 1 / np.e) * opt - 1e-9
        assert res.objective[-1] <= opt + 1e-9


def test_selection_deterministic_nested_and_tabulated(region):
    a = region.select(60, method="graphreach_fl", seed=0)
    b = region.select(60, method="graphreach_fl", seed=123)
    assert a.genes == b.genes
    small = region.select(20, method="graphreach_fl")
    assert small.genes == a.prefix(20)
    df = a.to_frame()
    assert list(df.columns) == ["rank", "gene", "marginal_gain", "cumulative_objective", "coverage_fraction"]
    assert df["rank"].tolist() == list(range(1, 61)) and df["coverage_fraction"].is_monotonic_increasing
    assert "(1 - 1/e)" in a.bound
    r0, r1 = region.select(30, method="random", seed=0), region.select(30, method="random", seed=1)
    assert r0.genes == region.select(30, method="random", seed=0).genes and r0.genes != r1.genes


def test_graphreach_beats_baselines_on_coverage(region):
    cov = {m: region.select(100, method=m).coverage[-1] for m in ["graphreach", "degree", "pagerank", "random"]}
    assert cov["graphreach"] >= max(cov["degree"], cov["pagerank"], cov["random"])


def test_pagerank_matches_networkx(go):
    import networkx as nx

    sub = go.subgraph(bfs_universe(go, ["KLF1"], 400))
    a = sub.adjacency.tocsr().copy()
    a.setdiag(0)
    a.eliminate_zeros()
    g = nx.DiGraph()
    g.add_nodes_from(range(sub.n_genes))
    coo = a.tocoo()
    g.add_weighted_edges_from(zip(coo.col, coo.row, coo.data))  # source -> target
    ref = nx.pagerank(g, alpha=0.85, tol=1e-12, max_iter=500)
    ours = pagerank_scores(sub.adjacency, np.arange(sub.n_genes), tol=1e-13)
    np.testing.assert_allclose(ours, [ref[i] for i in range(sub.n_genes)], atol=1e-8)


def test_bad_input_errors(go, tmp_path):
    genes = ["TP53", "KLF1", "NOT_A_GENE_1", "MAPK1"]
    with pytest.raises(GeneIdError, match="NOT_A_GENE_1"):
        resolve_candidates(go, genes, missing="error")
    pool = resolve_candidates(go, genes, missing="drop")
    assert pool.missing == ["NOT_A_GENE_1"] and len(pool) == 3
    with pytest.raises(BudgetError, match="exceeds the candidate pool of 3"):
        select(go, 4, genes)
    with pytest.raises(BudgetError):
        select(go, 0, genes)
    with pytest.raises(ConfigError, match="unknown selection method"):
        select(go, 2, genes, method="bogus")
    with pytest.raises(GeneIdError):
        resolve_candidates(go, ["NOPE1", "NOPE2"])
    bad = tmp_path / "edges.csv"
    bad.write_text("a,b\nX,Y\n")
    with pytest.raises(CorruptFileError, match="lacks column"):
        load_edge_list(bad)


def test_disconnected_graph_is_handled(go):
    comp1 = bfs_universe(go, ["TP53"], 30)
    comp2 = [g for g in bfs_universe(go, ["OR2B11", "OR1A1"], 60) if g not in comp1][:20]
    sub = go.subgraph(comp1 + comp2)
    sel = Selector(sub)
    assert sel.pool.n_components >= 2
    res = sel.select(10, method="graphreach")
    assert len(set(res.genes)) == 10 and res.coverage[-1] <= 1.0


def test_cli_writes_ranked_csv_and_png(tmp_path, go):
    from typer.testing import CliRunner

    from netformer.cli import app

    cands = tmp_path / "cands.txt"
    cands.write_text("\n".join(bfs_universe(go, ["KLF1"], 200) + ["NOT_A_GENE"]))
    out = tmp_path / "sel"
    r = CliRunner().invoke(app, ["select", "run", "--out", str(out), "--budget", "25", "--candidates", str(cands),
                                 "--method", "graphreach_fl"])
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "selection.csv")
    assert len(df) == 25 and (out / "coverage.png").stat().st_size > 1000
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp leftovers
    r = CliRunner().invoke(app, ["select", "run", "--out", str(out), "--budget", "25", "--candidates", str(cands)])
    assert r.exit_code != 0  # refuses to overwrite
