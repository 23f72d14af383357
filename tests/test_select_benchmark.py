"""The selection benchmark of issue 15: statistics reproducible from results.csv, graph rewiring, the
oracle positive control's criterion, budget schedules and the CLI (SEMI-SYNTHETIC data, small sizes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from netformer.errors import ConfigError
from netformer.select.active import ActiveConfig
from netformer.select.benchmark import (
    BenchmarkConfig,
    bh_qvalues,
    paired_test,
    summarize,
    t_interval,
)
from netformer.select.criteria import OracleVariance
from netformer.select.synthetic import SyntheticConfig, make_semisynthetic, rewire_edges

threadpoolctl = pytest.importorskip("threadpoolctl")

SMALL = SyntheticConfig(n_candidates=300, n_test=60, seed=0)


@pytest.fixture(autouse=True)
def _single_blas_thread():
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def small():
    return make_semisynthetic(SMALL)


@pytest.fixture(scope="module")
def report(tmp_path_factory, small):
    """One ``netformer select benchmark`` run on a 300-gene universe (its GO graph as --graph: no GO reload)."""
    from netformer.cli import main

    tmp = tmp_path_factory.mktemp("bench")
    edges = tmp / "edges.csv"
    small.edges.to_csv(edges, index=False)
    base = ["select", "benchmark", "--graph", str(edges), "--n-candidates", "300", "--n-test", "60", "--seeds", "4",
            "--oneshot", "graphreach", "--oneshot", "random", "--strategy", "random", "--model", "sgc", "--model",
            "train_mean", "--graph-noise", "0", "--graph-noise", "0.3"]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--out", str(tmp / "out"), "--budget", "8", "--budget", "16", "--budget", "32"])
    assert exc.value.code == 0
    return base, pd.read_csv(tmp / "out" / "results.csv"), tmp / "out"


def test_summary_is_reproducible_from_results_csv(report):
    _, res, out = report
    assert {p.name for p in out.iterdir()} == {"results.csv", "summary.csv", "published_iterpert.csv",
                                               "benchmark.png", "benchmark_vs_random.png", "config.json"}
    cfg = BenchmarkConfig.from_json((out / "config.json").read_text())
    assert cfg.models == ("sgc", "train_mean") and cfg.graph_noise == (0.0, 0.3) and cfg.schedule == [8, 16, 32]
    assert BenchmarkConfig.from_json(cfg.to_json()) == cfg
    again = summarize(pd.read_csv(out / "results.csv"))
    saved = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    again = again.astype({c: object for c in again.columns if again[c].dtype == object}).fillna("")
    saved = saved.astype({c: object for c in saved.columns if saved[c].dtype == object}).fillna("")
    pd.testing.assert_frame_equal(again, saved, check_dtype=False, rtol=1e-9, atol=1e-12)
    # every row is labelled, one row per method, model, seed, budget, prior and graph noise
    assert res["setting"].str.startswith("SEMI-SYNTHETIC").all()
    key = ["setting", "prior", "graph_noise", "model", "kind", "method", "seed", "budget"]
    assert not res.duplicated(key).any()
    assert set(res.loc[res.kind == "one-shot", "method"]) == {"graphreach", "random", "oracle"}
    assert set(res.loc[res.kind == "active", "graph_noise"]) == {0.0}      # active learning at noise 0 only
    assert set(res["model"]) == {"sgc", "train_mean"} and set(res["prior"]) == {"go"}


def test_summary_statistics_by_hand(report):
    from scipy import stats

    _, res, _ = report
    res = res[res.model == "sgc"]
    summ = summarize(res)
    row = summ[(summ.method == "graphreach") & (summ.budget == 16) & (summ.graph_noise == 0)].iloc[0]
    sel = lambda m, k="one-shot": res[(res.method == m) & (res.kind == k) & (res.budget == 16)
                                      & (res.graph_noise == 0)].sort_values("seed")["mse_top20_de"].to_numpy()
    a, r = sel("graphreach"), sel("random")
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
    assert row["mse_top20_de_ci_low"] == pytest.approx(a.mean() - half)
    assert row["mse_top20_de_diff_vs_random"] == pytest.approx((a - r).mean())
    assert row["mse_top20_de_p_vs_random"] == pytest.approx(stats.wilcoxon(a - r).pvalue)
    p = summ["mse_top20_de_p_vs_random"].to_numpy()
    ok = np.isfinite(p)
    order = np.argsort(p[ok])
    m = ok.sum()
    q = np.minimum.accumulate((p[ok][order] * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(np.sort(summ["mse_top20_de_q_vs_random"].to_numpy()[ok]), np.sort(np.minimum(q, 1)))
    assert (summ.loc[(summ.kind == "one-shot") & (summ.method == "random"), "verdict_vs_random"] == "reference").all()
    assert paired_test(np.ones(4), np.ones(4)) == 1.0 and np.isnan(paired_test([1.0], [2.0]))
    assert np.isnan(t_interval([1.0])[0]) and np.isnan(bh_qvalues(np.array([np.nan]))[0])


def test_rewiring_preserves_degrees_and_is_seeded(small):
    e = small.edges
    deg = lambda df: df[df.source != df.target].groupby("source").size().sort_index()
    und = lambda df: {tuple(sorted(p)) for p in zip(df.source, df.target) if p[0] != p[1]}
    for x in (0.1, 0.5):
        r = rewire_edges(e, x, seed=3)
        pd.testing.assert_series_equal(deg(r), deg(e))
        changed = len(und(e) - und(r)) / len(und(e))
        assert 0.6 * x <= changed <= x + 1e-9
        assert len(r) == len(e) and not r.duplicated(["source", "target"]).any()
        pd.testing.assert_frame_equal(r, rewire_edges(e, x, seed=3))
    assert und(rewire_edges(e, 0.0)) == und(e)
    rnd = rewire_edges(e, 0.3, seed=1, method="random")
    assert len(und(rnd)) == len(und(e)) and und(rnd) != und(e)
    with pytest.raises(ConfigError):
        rewire_edges(e, 1.5)


def test_draws_share_the_truth_and_differ_in_noise_and_split(small):
    d1, d1b, d2 = small.draw(1), small.draw(1), small.draw(2)
    assert d1.test == d1b.test and d1.test != d2.test
    np.testing.assert_array_equal(d1.data.means.to_numpy(), d1b.data.means.to_numpy())
    assert not np.allclose(d1.data.means.to_numpy(), d2.data.means.to_numpy())
    np.testing.assert_array_equal(d1.delta_true.to_numpy(), d2.delta_true.to_numpy())


def test_oracle_criterion_equals_posterior_variance_reduction():
    rng = np.random.default_rng(0)
    fp, ft = rng.normal(size=(12, 5)), rng.normal(size=(4, 5))
    crit = OracleVariance(fp, ft, lam=0.3)

    def reduction(S):
        k_ts = ft @ fp[S].T
        return float(np.trace(k_ts @ np.linalg.solve(fp[S] @ fp[S].T + 0.3 * np.eye(len(S)), k_ts.T)))

    S = [3, 7, 1]
    assert crit.evaluate(S) == pytest.approx(reduction(S))
    for j in S:
        crit.add(j)
    g = crit.gains(np.arange(12))
    assert g[5] == pytest.approx(reduction(S + [5]) - reduction(S))


def test_active_learning_follows_a_budget_schedule(small):
    from netformer.perturbseq.models import TrainMean
    from netformer.select.active import run_active_learning

    cfg = ActiveConfig(strategy="random", schedule=(5, 10, 20), seed=0)
    res = run_active_learning(small.data, small.pool, TrainMean, cfg)
    assert [len(r.labeled) for r in res.rounds] == [5, 10, 20] and len(res.rounds[2].chosen) == 10
    with pytest.raises(ConfigError):
        ActiveConfig(schedule=(10, 5))
    with pytest.raises(ConfigError):
        BenchmarkConfig(budgets=(5, 5))
    with pytest.raises(ConfigError):
        BenchmarkConfig(graph_noise=(1.5,))


def test_cli_refuses_budgets_larger_than_the_pool(report, tmp_path, capsys):
    from netformer.cli import main

    base, _, _ = report
    with pytest.raises(SystemExit) as exc:
        main(base + ["--out", str(tmp_path / "big"), "--budget", "5", "--budget", "500"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert exc.value.code == 2 and len(err) == 1 and "exceeds the candidate pool" in err[0]
    assert not (tmp_path / "big").exists()
