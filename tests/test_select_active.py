"""Active learning and the selection benchmark, on real Perturb-seq (devel.h5ad) and the semi-synthetic set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from netformer.errors import ConfigError
from netformer.select.active import (
    STRATEGIES,
    ActiveConfig,
    go_kernel,
    graph_kernel,
    k_center_greedy,
    run_active_learning,
    typiclust,
)
from netformer.select.benchmark import (
    PUBLISHED_LABEL,
    BenchmarkConfig,
    published_iterpert,
    run_benchmark,
    summarize,
    write_report,
)
from netformer.select.synthetic import LABEL, SyntheticConfig, make_semisynthetic

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(autouse=True)
def _single_blas_thread():
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def synth():
    return make_semisynthetic(SyntheticConfig(n_candidates=500, n_test=100, seed=0))


def test_semisynthetic_is_real_where_claimed(synth, shared_data):
    import anndata as ad

    a = ad.read_h5ad(shared_data / "perturbseq" / "devel.h5ad")
    ctrl = a[(a.obs["dataset"] == "norman19") & (a.obs["condition"] == "control")]
    x = ctrl.X.toarray() if hasattr(ctrl.X, "toarray") else np.asarray(ctrl.X)
    np.testing.assert_allclose(synth.data.control_mean(), x.mean(0), rtol=1e-5, atol=1e-6)
    assert synth.data.genes == [str(g) for g in a.var_names]
    assert set(synth.pool).isdisjoint(synth.test) and len(synth.test) == 100
    assert all(g in synth.graph for g in synth.pool + synth.test)
    # responses spread over GO neighbours: GO-adjacent genes respond more alike than random pairs
    d = synth.delta_true
    adj = synth.graph.adjacency.tocoo()
    off = adj.row != adj.col
    pairs = list(zip(synth.graph.genes[adj.row[off]], synth.graph.genes[adj.col[off]]))[:400]
    cor = lambda a_, b_: np.corrcoef(d.loc[a_], d.loc[b_])[0, 1]
    rng = np.random.default_rng(0)
    rnd = [tuple(rng.choice(d.index, 2, replace=False)) for _ in range(400)]
    assert np.mean([cor(*p) for p in pairs]) > np.mean([cor(*p) for p in rnd]) + 0.1
    again = make_semisynthetic(SyntheticConfig(n_candidates=500, n_test=100, seed=0), graph=synth.graph)
    np.testing.assert_array_equal(again.data.means.to_numpy(), synth.data.means.to_numpy())
    assert "SEMI-SYNTHETIC" in LABEL


def test_k_center_greedy_picks_farthest_point():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    picks = k_center_greedy(lambda i: dist[i], 60, np.array([0, 5]), 4)
    centres = [0, 5]
    for p in picks:
        mind = dist[centres].min(0)
        mind[centres] = -1
        assert p == int(np.argmax(mind))
        centres.append(p)


def test_typiclust_returns_new_distinct_points():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(c, 0.1, size=(30, 2)) for c in (0, 3, 6)])
    picks = typiclust(x, np.array([0]), 2, seed=0, n_neighbors=5)
    assert len(set(picks)) == 2 and 0 not in picks
    assert {p // 30 for p in picks} == {1, 2}  # the two clusters without a labeled point


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_active_learning_loop_end_to_end(synth, strategy):
    from netformer.perturbseq.metrics import evaluate
    from netformer.perturbseq.models import RidgeModel
    from netformer.select import Selector

    pool = synth.pool
    priors = {"go": go_kernel(Selector(synth.graph, pool).reach)} if strategy == "iterpert" else None
    cfg = ActiveConfig(strategy=strategy, initial=10, rounds=2, batch=10, seed=3, n_ensemble=3)
    ev = lambda m: {"mse_top20_de": float(evaluate(m, synth.data, synth.test).loc["mean", "mse_top20_de"])}
    res = run_active_learning(synth.data, pool, lambda: RidgeModel(go_graph=synth.edges), cfg,
                              prior_kernels=priors, evaluate_fn=ev)
    assert [len(r.labeled) for r in res.rounds] == [10, 20, 30]
    final = res.rounds[-1].labeled
    assert len(set(final)) == 30 and set(final) <= set(pool)
    assert all(set(res.rounds[i].labeled) < set(res.rounds[i + 1].labeled) for i in range(2))
    assert all(r.fit_seconds > 0 and np.isfinite(r.metrics["mse_top20_de"]) for r in res.rounds)
    df = res.to_frame()
    assert list(df["n_labeled"]) == [10, 20, 30]
    again = run_active_learning(synth.data, pool, lambda: RidgeModel(go_graph=synth.edges), cfg, prior_kernels=priors)
    assert again.rounds[-1].labeled == final  # same seed, same campaign


def test_graph_kernel_follows_the_gene_order_and_leaves_absent_genes_alone(synth):
    from netformer.select import Selector

    pool = sorted(synth.pool)[:60]
    ref = go_kernel(Selector(synth.graph, pool).reach)      # rows in sorted pool order
    order = np.random.default_rng(0).permutation(len(pool))
    genes = [pool[i] for i in order] + ["NOTAGENE"]
    k = graph_kernel(synth.graph, genes)
    assert k.shape == (61, 61)
    np.testing.assert_allclose(k[:60, :60], ref[np.ix_(order, order)], atol=1e-12)
    assert k[60, 60] == 1.0 and not k[60, :60].any() and not k[:60, 60].any()
    assert np.allclose(k, k.T) and np.linalg.eigvalsh(k).min() > -1e-9     # a valid (PSD) kernel
    assert (k[:60, :60][~np.eye(60, dtype=bool)] > 0).any()                   # not the identity


def test_active_learning_errors(synth):
    from netformer.perturbseq.models import TrainMean

    with pytest.raises(ConfigError, match="pool has"):
        run_active_learning(synth.data, synth.pool[:20], TrainMean, ActiveConfig(initial=10, rounds=2, batch=10))
    with pytest.raises(ConfigError, match="prior_kernels"):
        run_active_learning(synth.data, synth.pool, TrainMean, ActiveConfig(strategy="iterpert", initial=5, rounds=1, batch=5))
    with pytest.raises(ConfigError):
        ActiveConfig(strategy="entropy")


def test_semisynthetic_benchmark_end_to_end(synth, tmp_path):
    cfg = BenchmarkConfig(initial=20, rounds=2, batch=20, seeds=(0, 1), oneshot=("graphreach", "random"),
                          strategies=("random", "coreset"), model="ridge")
    res = run_benchmark(synth.data, synth.graph, synth.pool, synth.test, cfg, edges=synth.edges, setting=LABEL)
    summ = summarize(res)
    assert set(summ["budget"]) == {20, 40, 60}
    gr = summ[(summ.method == "graphreach")]
    assert (gr["jaccard_across_seeds"] == 1.0).all() and (gr["mse_top20_de_std"] == 0).all()
    assert (gr["lab_rounds"] == 1).all()
    al = summ[(summ.kind == "active") & (summ.method == "random")]
    assert al["lab_rounds"].tolist() == [1, 2, 3] and (al["jaccard_across_seeds"] < 1).all()
    assert summ["setting"].str.contains("SEMI-SYNTHETIC").all()
    out = write_report(res, tmp_path / "report")
    assert {p.name for p in out.iterdir()} == {"results.csv", "summary.csv", "published_iterpert.csv", "benchmark.png",
                                               "benchmark_vs_random.png"}
    pub = pd.read_csv(out / "published_iterpert.csv")
    assert (pub["source"] == PUBLISHED_LABEL).all()


def test_published_iterpert_reference_points():
    pub = published_iterpert()
    at600 = pub[pub.budget == 600].set_index("strategy")["mean"]
    assert at600[at600.index.str.startswith("IterPert")].iloc[0] == pytest.approx(0.0851, abs=5e-4)
    assert at600[at600.index == "Random"].iloc[0] == pytest.approx(0.0925, abs=5e-4)


def test_real_devel_benchmark_runs_from_cli(shared_data, tmp_path):
    """Real Norman 2019 singles of devel.h5ad through ``netformer select benchmark``: tiny pool, real data."""
    from typer.testing import CliRunner

    from netformer.cli import app

    out = tmp_path / "bench"
    args = ["select", "benchmark", "--out", str(out), "--data", str(shared_data / "perturbseq" / "devel.h5ad"),
            "--subset", "dataset=norman19", "--initial", "2", "--rounds", "2", "--batch", "2", "--seeds", "2",
            "--oneshot", "graphreach", "--oneshot", "degree", "--strategy", "coreset"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = pd.read_csv(out / "results.csv")
    assert res["setting"].str.startswith("real: devel.h5ad").all()
    assert set(res["budget"]) == {2, 4, 6} and set(res["method"]) == {"graphreach", "degree", "coreset"}
    assert res[["mse_top20_de", "pearson_delta"]].notna().all().all() and (res["mse_top20_de"] >= 0).all()
    summ = pd.read_csv(out / "summary.csv")
    assert (summ.loc[summ.kind == "one-shot", "lab_rounds"] == 1).all()
    assert summ.loc[summ.kind == "active", "lab_rounds"].max() == 3
