"""Benchmark: one-shot selection vs active learning at equal cumulative budgets.

For every method and seed, perturbations are chosen from the pool, a fresh outcome model is trained
on the chosen ones at each budget ``initial + r * batch`` (r = 0..rounds), and scored on the fixed
held-out test perturbations (``mse_top20_de``, ``pearson_delta`` from
:func:`netformer.perturbseq.metrics.evaluate`). One-shot methods need 1 lab round (all budgets are
prefixes of one ordering); active learning needs ``rounds + 1``. Reported per method and budget:
mean and standard deviation over seeds of each metric, stability of the chosen set across seeds
(mean pairwise Jaccard index), lab rounds, and compute time (selection + model training). The
published IterPert figures (Huang et al. 2024; Replogle K562 essential, GEARS) are shown beside
ours, labelled as published; they are not comparable numerically (other data and model).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .._io import new_figure, save_figure
from ..errors import ConfigError
from ..graphs import GeneGraph
from .active import STRATEGIES, ActiveConfig, go_kernel, run_active_learning
from .greedy import METHODS, Selector

log = logging.getLogger(__name__)

MODELS = ("ridge", "additive", "train_mean", "gears")  # outcome models of model_factory
PUBLISHED_LABEL = "published: IterPert (Huang et al. 2024), Replogle K562 essential, GEARS"


@dataclass
class BenchmarkConfig:
    """Schedule and methods. Budgets are ``initial + r * batch`` for r = 0..rounds.

    oneshot : one-shot methods (default all of ``METHODS``). strategies : active-learning strategies
    (default all of ``STRATEGIES``). seeds : default (0, 1, 2). n_layers : L of P = A_hat^L (1).
    model : ``ridge`` (default, netformer.perturbseq RidgeModel on the GO graph), ``additive``,
    ``train_mean`` or ``gears`` (slow). model_options : keyword arguments of the model's constructor
    (e.g. ``{"epochs": 5}`` for GEARS, ``{"n_components": 20}`` for ridge). n_ensemble : BALD ensemble size.
    blas_threads : BLAS threads during the run (default 1: the many small matrix products here are
    fastest single-threaded, and multi-threaded OpenBLAS slows down by ~40x on a loaded 2-core machine);
    None leaves the library default.
    """

    initial: int = 100
    rounds: int = 5
    batch: int = 100
    seeds: Sequence[int] = (0, 1, 2)
    oneshot: Sequence[str] = METHODS
    strategies: Sequence[str] = STRATEGIES
    n_layers: int = 1
    model: str = "ridge"
    n_ensemble: int = 5
    blas_threads: int | None = 1
    model_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [m for m in self.oneshot if m not in METHODS] + [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ConfigError(f"unknown methods {bad}; one-shot: {METHODS}, active: {STRATEGIES}.")
        if not self.seeds:
            raise ConfigError("need at least one seed.")

    @property
    def budgets(self) -> list[int]:
        return [self.initial + r * self.batch for r in range(self.rounds + 1)]


def model_factory(name: str, edges: pd.DataFrame | None = None, n_layers: int = 1,
                  options: dict | None = None) -> Callable[[], object]:
    """Factory of fresh outcome models from netformer.perturbseq by name (see :class:`BenchmarkConfig`).

    ``options`` are passed to the model's constructor. Raises :class:`ConfigError` for unknown names.
    """
    from ..perturbseq import models as M

    kw = dict(options or {})
    if name == "ridge":
        return lambda: M.RidgeModel(**{"go_graph": edges, "hops": n_layers, **kw})
    if name == "additive":
        return lambda: M.Additive(**kw)
    if name == "train_mean":
        return lambda: M.TrainMean(**kw)
    if name == "gears":
        from ..perturbseq.gears import GEARSModel

        return lambda: GEARSModel(**{"go_graph": edges, "num_go_layers": n_layers, **kw})
    raise ConfigError(f"unknown model {name!r}; choose one of {MODELS}.")


def _jaccard(sets: list[set]) -> float:
    if len(sets) < 2:
        return float("nan")
    return float(np.mean([len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]))


def run_benchmark(data, graph: GeneGraph, pool: Sequence[str], test: Sequence[str], config: BenchmarkConfig,
                  *, edges: pd.DataFrame | None = None, prior_kernels: dict | None = None,
                  setting: str = "real") -> pd.DataFrame:
    """Run every method x seed x budget; return the long results table.

    Parameters
    ----------
    data : PerturbData holding the pool and test perturbations.
    graph : GeneGraph used for one-shot selection (and the GO prior kernel).
    pool, test : condition names; pool genes absent from the graph are dropped (logged).
    edges : edge DataFrame passed to graph-based models (default: the GO graph of the shared data folder).
    prior_kernels : extra IterPert priors {name: (c, c)} in sorted pool order (the GO kernel is added).
    setting : label written in every row (e.g. ``SEMI-SYNTHETIC ...`` or ``real: devel.h5ad``).

    Returns
    -------
    DataFrame with columns setting, kind (one-shot | active), method, seed, budget, round, lab_rounds,
    mse_top20_de, pearson_delta, select_seconds, fit_seconds, compute_seconds, chosen.
    ``compute_seconds`` is what reaching that budget costs: one-shot = selection + one model fit;
    active = every round's selection and retraining so far (BALD: including its ensemble).
    One-shot fits with identical training sets are cached (deterministic models), so their
    ``fit_seconds`` repeat the first measurement.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.blas_threads, user_api="blas"):
        return _run_benchmark(data, graph, pool, test, config, edges, prior_kernels, setting)


def _run_benchmark(data, graph, pool, test, config, edges, prior_kernels, setting) -> pd.DataFrame:
    from ..perturbseq.metrics import evaluate

    sel = Selector(graph, pool, n_layers=config.n_layers, missing="drop")
    pool = [str(g) for g in sel.pool.genes]        # sorted, in graph
    budgets = config.budgets
    if budgets[-1] > len(pool):
        raise ConfigError(f"largest budget {budgets[-1]} exceeds the pool of {len(pool)} perturbations in "
                          "the graph; lower --initial/--rounds/--batch.")
    factory = model_factory(config.model, edges, config.n_layers, config.model_options)
    cache: dict = {}

    def score(train: list[str]) -> tuple[dict, float]:
        key = frozenset(train)
        if key not in cache:
            t0 = time.perf_counter()
            m = factory().fit(data, train)
            fit_s = time.perf_counter() - t0
            res = evaluate(m, data, list(test)).loc["mean"]
            cache[key] = ({"mse_top20_de": float(res["mse_top20_de"]),
                           "pearson_delta": float(res["pearson_delta"])}, fit_s)
        return cache[key]

    rows = []
    for method in config.oneshot:
        for seed in config.seeds:
            t0 = time.perf_counter()
            res = sel.select(budgets[-1], method=method, seed=seed)
            sel_s = time.perf_counter() - t0
            for r, b in enumerate(budgets):
                metrics, fit_s = score(res.genes[:b])
                # one selection + one model fit serve budget b (smaller budgets' fits are evaluation only)
                rows.append(dict(setting=setting, kind="one-shot", method=method, seed=seed, budget=b, round=r,
                                 lab_rounds=1, **metrics, select_seconds=sel_s, fit_seconds=fit_s,
                                 compute_seconds=sel_s + fit_s, chosen=";".join(res.genes[:b])))
            log.info("one-shot %s seed %d done", method, seed)
    priors = None
    if "iterpert" in config.strategies:
        priors = {"go": go_kernel(sel.reach), **(prior_kernels or {})}
    for strategy in config.strategies:
        for seed in config.seeds:
            acfg = ActiveConfig(strategy=strategy, initial=config.initial, rounds=config.rounds,
                                batch=config.batch, seed=seed, n_ensemble=config.n_ensemble)
            out = run_active_learning(data, pool, factory, acfg, prior_kernels=priors,
                                      evaluate_fn=lambda m: _eval_mean(evaluate, m, data, test))
            total = 0.0
            for rec in out.rounds:
                total += rec.fit_seconds + rec.select_seconds
                rows.append(dict(setting=setting, kind="active", method=strategy, seed=seed,
                                 budget=len(rec.labeled), round=rec.round, lab_rounds=rec.round + 1,
                                 **rec.metrics, select_seconds=rec.select_seconds, fit_seconds=rec.fit_seconds,
                                 compute_seconds=total, chosen=";".join(sorted(rec.labeled))))
            log.info("active %s seed %d done", strategy, seed)
    return pd.DataFrame(rows)


def _eval_mean(evaluate, model, data, test) -> dict:
    res = evaluate(model, data, list(test)).loc["mean"]
    return {"mse_top20_de": float(res["mse_top20_de"]), "pearson_delta": float(res["pearson_delta"])}


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per setting, kind, method and budget: mean and std over seeds of mse_top20_de and
    pearson_delta, Jaccard stability of the chosen sets across seeds, lab rounds, mean compute seconds."""
    out = []
    for key, g in results.groupby(["setting", "kind", "method", "budget"], sort=False):
        out.append(dict(zip(["setting", "kind", "method", "budget"], key),
                        n_seeds=g["seed"].nunique(),
                        mse_top20_de_mean=g["mse_top20_de"].mean(), mse_top20_de_std=g["mse_top20_de"].std(ddof=0),
                        pearson_delta_mean=g["pearson_delta"].mean(), pearson_delta_std=g["pearson_delta"].std(ddof=0),
                        jaccard_across_seeds=_jaccard([set(c.split(";")) for c in g["chosen"]]),
                        lab_rounds=int(g["lab_rounds"].max()), compute_seconds=g["compute_seconds"].mean()))
    return pd.DataFrame(out)


def published_iterpert(path: str | Path | None = None, metric: str = "mse_top20_de_non_dropout") -> pd.DataFrame:
    """The published IterPert summary (mean, std over 10 runs per strategy and round), labelled.

    Columns: source (``published: ...``), strategy, budget, metric, mean, std.
    """
    if path is None:
        from ..datasets import shared_data_dir

        path = shared_data_dir() / "perturbseq" / "iterpert_benchmark" / "summary_by_strategy.csv"
    df = pd.read_csv(path)
    df = df[df["metric"] == metric]
    return pd.DataFrame({"source": PUBLISHED_LABEL, "strategy": df["strategy"],
                         "budget": df["n_labeled_perturbations"], "metric": metric,
                         "mean": df["mean"], "std": df["std"]}).reset_index(drop=True)


def plot_benchmark(summary: pd.DataFrame, path: str | Path, published: pd.DataFrame | None = None) -> None:
    """PNG: mse_top20_de and pearson_delta vs budget per method (mean +- std over seeds), one row of
    panels per setting, plus a panel of the published IterPert curves (labelled published)."""
    import matplotlib

    settings = list(dict.fromkeys(summary["setting"]))
    ncol = 3 if published is not None else 2
    fig, axes = new_figure(len(settings), ncol, figsize=(5.2 * ncol, 4.2 * len(settings)), squeeze=False)
    for i, s in enumerate(settings):
        sub = summary[summary["setting"] == s]
        for j, m in enumerate(["mse_top20_de", "pearson_delta"]):
            ax = axes[i, j]
            names = list(dict.fromkeys(summary["method"]))
            colors = dict(zip(names, matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"].colors))
            for (kind, meth), g in sub.groupby(["kind", "method"], sort=False):
                ax.errorbar(g["budget"], g[f"{m}_mean"], yerr=g[f"{m}_std"], marker="o" if kind == "one-shot" else "s",
                            ms=3, capsize=2, ls="-" if kind == "one-shot" else "--", color=colors[meth],
                            label=f"{meth} ({kind})")
            ax.set_xlabel("perturbations measured (cumulative budget)")
            ax.set_ylabel(f"test {m}")
            ax.set_title(f"{s[:60]}", fontsize=8)
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=6)
        if published is not None:
            ax = axes[i, 2]
            pcolors = matplotlib.colormaps["tab20"].colors
            for k, (st, g) in enumerate(published.groupby("strategy", sort=False)):
                ax.errorbar(g["budget"], g["mean"], yerr=g["std"], marker="o", ms=3, capsize=2,
                            color=pcolors[k % 20], label=st[:40])
            ax.set_title("PUBLISHED (Huang et al. 2024, K562 essential, GEARS)", fontsize=8)
            ax.set_xlabel("perturbations measured")
            ax.set_ylabel(published["metric"].iloc[0])
            ax.legend(fontsize=5)
            ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=110)


def _expression_prior(pool: list[str]) -> dict:
    """IterPert expression prior from the bundled pbmc3k counts (real scRNA-seq, 2,700 cells)."""
    from ..datasets import pbmc3k
    from .active import expression_gene_embedding, expression_kernel

    return {"expression": expression_kernel(expression_gene_embedding(pbmc3k()), pool)}


def benchmark_semisynthetic(config: BenchmarkConfig, synth_config=None, *, graph: GeneGraph | None = None,
                            expression_prior: bool = True) -> pd.DataFrame:
    """Run :func:`run_benchmark` on the SEMI-SYNTHETIC set of :func:`~netformer.select.synthetic.make_semisynthetic`.

    Every row's ``setting`` says SEMI-SYNTHETIC. Returns the long results table.
    """
    from .synthetic import make_semisynthetic

    ss = make_semisynthetic(synth_config, graph=graph)
    sel_pool = [g for g in ss.pool if g in ss.graph]
    priors = _expression_prior(sorted(sel_pool)) if expression_prior and "iterpert" in config.strategies else None
    c = ss.config
    setting = (f"SEMI-SYNTHETIC: {len(ss.pool)} pool / {len(ss.test)} test genes on the real GO graph, "
               f"tau={c.tau}, own={c.own}, n_cells={c.n_cells}, seed={c.seed}")
    return run_benchmark(ss.data, ss.graph, ss.pool, ss.test, config, edges=ss.edges, prior_kernels=priors,
                         setting=setting)


def benchmark_file(path: str | Path, config: BenchmarkConfig, *, graph_path: str | Path | None = None,
                   subset: dict | None = None, test_fraction: float = 0.2, seed: int = 0,
                   expression_prior: bool = False) -> pd.DataFrame:
    """Run :func:`run_benchmark` on a REAL Perturb-seq file (GEARS ``perturb_processed.h5ad`` or
    scPerturb/perturbench h5ad, read by :func:`netformer.perturbseq.data.read_perturbseq`).

    Pool = single-gene perturbations present in the graph; a seeded ``test_fraction`` of them plus
    every double perturbation form the fixed test set. Raises :class:`ConfigError` if the schedule
    does not fit the pool.
    """
    from ..perturbseq.data import read_perturbseq
    from ..graphs import go_graph, load_edge_list

    data = read_perturbseq(path, subset=subset) if subset else read_perturbseq(path)
    graph = load_edge_list(graph_path)
    singles = sorted(c for c in data.singles if c in graph)
    if len(singles) < 2:
        raise ConfigError(f"{path}: fewer than 2 single perturbations are in the graph.")
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(singles))))
    test_s = sorted(rng.choice(singles, size=n_test, replace=False).tolist())
    pool = sorted(set(singles) - set(test_s))
    test = test_s + sorted(data.doubles)
    priors = _expression_prior(pool) if expression_prior and "iterpert" in config.strategies else None
    edges = go_graph(graph_path) if graph_path is not None else None
    setting = f"real: {Path(path).name}{' ' + str(subset) if subset else ''} ({len(pool)} pool / {len(test)} test)"
    return run_benchmark(data, graph, pool, test, config, edges=edges, prior_kernels=priors, setting=setting)


def write_report(results: pd.DataFrame, out: str | Path, *, overwrite: bool = False,
                 published: pd.DataFrame | None = None) -> Path:
    """Write ``results.csv`` (long), ``summary.csv``, ``published_iterpert.csv`` and ``benchmark.png``
    into the directory ``out`` atomically; returns the path."""
    from .._io import atomic_dir

    summary = summarize(results)
    if published is None:
        try:
            published = published_iterpert()
        except Exception as exc:  # the shared data may be absent for users; the report still works
            log.warning("published IterPert figures unavailable: %s", exc)
    with atomic_dir(out, overwrite) as tmp:
        results.to_csv(tmp / "results.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        if published is not None:
            published.to_csv(tmp / "published_iterpert.csv", index=False)
        plot_benchmark(summary, tmp / "benchmark.png", published)
    return Path(out)
