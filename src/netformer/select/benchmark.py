"""Benchmark: one-shot selection vs active learning at equal cumulative budgets, with statistics.

For every method, model and seed, perturbations are chosen from the pool, a fresh outcome model is
trained on the chosen ones at each budget, and scored on the held-out test perturbations
(``mse_top20_de``, ``pearson_delta`` from :func:`netformer.perturbseq.metrics.evaluate`). One-shot
methods need 1 lab round (all budgets are prefixes of one ordering); active learning needs one per
budget. On the SEMI-SYNTHETIC set (:mod:`.synthetic`) a seed is one draw of the test split and the
measurement noise; one-shot selection can run on a graph with a fraction of its edges rewired
(``graph_noise``) while the ground truth and the models keep the true graph (unless the models take a
foundation model's graph, ``prior_uses``), and a positive control
(``oracle``: test-aware V-optimal design on the SGC features of the TRUE graph,
:class:`~netformer.select.criteria.OracleVariance`) shows whether the benchmark can separate methods.

:func:`summarize` reports, per setting, prior, graph noise, model, kind, method and budget: mean, std
and 95% t-interval over seeds; stability of the chosen set across seeds (mean pairwise Jaccard);
lab rounds; compute time; and paired statistics against reference methods (one-shot ``random``, and
active ``iterpert``): mean paired difference with its 95% t-interval, the Wilcoxon signed-rank test
across seeds (two-sided, :func:`scipy.stats.wilcoxon`) and Benjamini-Hochberg q-values over every test
of the table (statsmodels ``multipletests(method="fdr_bh")``). The summary is a pure function of
``results.csv`` (:func:`summarize` recomputes it). The published IterPert figures (Huang et al. 2024;
Replogle K562 essential, GEARS) are shown beside ours, labelled as published; they are not comparable
numerically (other data and model).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
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
from .active import STRATEGIES, ActiveConfig, go_kernel, graph_kernel, run_active_learning
from .greedy import METHODS, Selector

log = logging.getLogger(__name__)

MODELS = ("ridge", "sgc", "additive", "train_mean", "gears")  # outcome models of model_factory
PUBLISHED_LABEL = "published: IterPert (Huang et al. 2024), Replogle K562 essential, GEARS"
ORACLE = "oracle"          # positive control (semi-synthetic only)
REFERENCES = (("one-shot", "random"), ("active", "iterpert"))   # paired comparisons in summarize
GROUP = ["setting", "prior", "graph_noise", "model", "kind", "method", "budget"]
METRIC_NAMES = ("mse_top20_de", "pearson_delta")


@dataclass
class BenchmarkConfig:
    """Schedule, methods and models of a benchmark run; round-trips to JSON (:meth:`to_json`).

    budgets : cumulative budgets, e.g. ``(25, 50, 100, 200, 400, 600)``; default (None)
    ``initial + r * batch`` for r = 0..rounds. oneshot : one-shot methods (default all of ``METHODS``).
    strategies : active-learning strategies (default all of ``STRATEGIES``). seeds : default (0, 1, 2).
    n_layers : L of P = A_hat^L (1). model : ``ridge`` (default, RidgeModel on the graph), ``sgc``
    (SGCModel), ``additive``, ``train_mean`` or ``gears`` (slow); models : several models in one run
    (default ``(model,)``). model_options : constructor keyword arguments of ``model`` (e.g.
    ``{"epochs": 5}`` for GEARS); options_by_model : ``{model: options}`` for several models.
    n_ensemble : BALD ensemble size. graph_noise : fractions of the selection graph's edges rewired
    (semi-synthetic; default (0.0,)); rewire : ``degree`` (degree-preserving swaps, default) or
    ``random``. Active learning runs at graph noise 0 only (random, coreset, TypiClust and BALD do not
    use the graph; IterPert's graph prior kernel does). positive_control : add the
    ``oracle`` one-shot method (semi-synthetic, default True). prior : name of the gene knowledge
    (``go``, ``fm``, ``fm+go``): the foundation model's gene graph alone or united with GO
    (:mod:`netformer.select.priors`), built from the checkpoint ``model_dir`` with ``fm_k`` neighbours;
    ``min_coverage``: fail (:class:`~netformer.select.priors.CoverageError`) when its dictionary covers
    fewer candidates, instead of falling back to GO for them. prior_uses : where the prior's graph
    replaces GO (default ``("selection",)``; any of ``selection`` = the one-shot selection graph,
    ``kernel`` = IterPert's graph prior kernel, ``model`` = the gene graph of ridge / SGC / GEARS;
    :data:`~netformer.select.priors.PRIOR_USES`); every use not named keeps GO (semi-synthetic: the
    true graph). Rows carry :attr:`prior_label`: the prior, with its uses in brackets unless they are
    the default (``fm``, ``fm[kernel]``, ``fm+go[model]``). blas_threads : BLAS threads during the
    run (default 1: the many small matrix products here are fastest single-threaded, and multi-threaded OpenBLAS slows down by ~40x on a loaded
    2-core machine); None leaves the library default.
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
    budgets: Sequence[int] | None = None
    models: Sequence[str] = ()
    options_by_model: dict = field(default_factory=dict)
    graph_noise: Sequence[float] = (0.0,)
    rewire: str = "degree"
    positive_control: bool = True
    prior: str = "go"
    model_dir: str | None = None
    fm_k: int = 20
    min_coverage: float | None = None
    prior_uses: Sequence[str] = ("selection",)

    def __post_init__(self) -> None:
        from .priors import PRIORS, check_prior_uses

        if self.prior not in PRIORS:
            raise ConfigError(f"prior must be one of {PRIORS}, got {self.prior!r}.")
        self.prior_uses = check_prior_uses(self.prior_uses)
        if self.prior in ("fm", "fm+go") and self.model_dir is None:
            raise ConfigError(f"prior {self.prior!r} needs model_dir (the checkpoint whose gene embeddings "
                              "give the graph; CLI --model-dir).")
        bad = [m for m in self.oneshot if m not in METHODS] + [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ConfigError(f"unknown methods {bad}; one-shot: {METHODS}, active: {STRATEGIES}.")
        if not self.seeds:
            raise ConfigError("need at least one seed.")
        unknown = [m for m in self.model_names if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown models {unknown}; choose from {MODELS}.")
        if self.budgets is not None:
            b = [int(x) for x in self.budgets]
            if not b or b[0] < 1 or any(y <= x for x, y in zip(b, b[1:])):
                raise ConfigError(f"budgets must be increasing and >= 1, got {list(self.budgets)}.")
        if any(not 0 <= x <= 1 for x in self.graph_noise) or not self.graph_noise:
            raise ConfigError(f"graph_noise fractions must be in [0, 1], got {list(self.graph_noise)}.")
        if self.rewire not in ("degree", "random"):
            raise ConfigError(f"rewire must be 'degree' or 'random', not {self.rewire!r}.")

    @property
    def prior_label(self) -> str:
        """The ``prior`` column of the results: ``go``, or the prior with its uses unless only selection."""
        if self.prior == "go" or self.prior_uses == ("selection",):
            return self.prior
        return f"{self.prior}[{','.join(self.prior_uses)}]"

    def warn_idle_uses(self) -> None:
        """Log a warning for each named prior use that has nothing to act on in this run (``kernel`` without
        the iterpert strategy, ``model`` without a graph model); called once per benchmark run."""
        if self.prior == "go":
            return
        idle = [u for u, needs in (("kernel", "iterpert" in self.strategies),
                                   ("model", bool({"ridge", "sgc", "gears"} & set(self.model_names))))
                if u in self.prior_uses and not needs]
        if idle:
            log.warning("prior use(s) %s change nothing here (kernel needs the iterpert strategy, model a "
                        "graph model: ridge, sgc or gears)", idle)

    def graphs_by_use(self, prior, go) -> dict:
        """``{use: prior if self.uses(use) else go}`` for every use of
        :data:`~netformer.select.priors.PRIOR_USES` (``prior`` / ``go``: the two graphs, in any form)."""
        from .priors import PRIOR_USES

        return {use: prior if self.uses(use) else go for use in PRIOR_USES}

    def uses(self, use: str) -> bool:
        """Whether the prior's graph replaces GO for ``use`` (always False for prior ``go``)."""
        return self.prior != "go" and use in self.prior_uses

    @property
    def model_names(self) -> list[str]:
        return list(self.models) or [self.model]

    def options_for(self, model: str) -> dict:
        if model in self.options_by_model:
            return dict(self.options_by_model[model])
        return dict(self.model_options) if model == self.model and not self.models else {}

    @property
    def schedule(self) -> list[int]:
        if self.budgets is not None:
            return [int(b) for b in self.budgets]
        return [self.initial + r * self.batch for r in range(self.rounds + 1)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BenchmarkConfig":
        d = json.loads(text)
        for k in ("seeds", "oneshot", "strategies", "models", "graph_noise", "budgets", "prior_uses"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def model_factory(name: str, edges: pd.DataFrame | None = None, n_layers: int = 1,
                  options: dict | None = None) -> Callable[[], object]:
    """Factory of fresh outcome models from netformer.perturbseq by name (see :class:`BenchmarkConfig`).

    ``options`` are passed to the model's constructor. Raises :class:`ConfigError` for unknown names.
    """
    from ..perturbseq import models as M

    kw = dict(options or {})
    if name == "ridge":
        return lambda: M.RidgeModel(**{"go_graph": edges, "hops": n_layers, **kw})
    if name == "sgc":
        return lambda: M.SGCModel(**{"go_graph": edges, "hops": n_layers, **kw})
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
                  setting: str = "real", orders: dict | None = None, cache: dict | None = None,
                  graph_noise: float = 0.0, kernel_graph: GeneGraph | None = None) -> pd.DataFrame:
    """Run every model x method x seed x budget on one data set; return the long results table.

    Parameters
    ----------
    data : PerturbData holding the pool and test perturbations.
    graph : GeneGraph used for one-shot selection (the *selection* graph; it may differ from the graph
        of ``edges``) and, unless ``kernel_graph`` is given, IterPert's graph prior kernel.
    pool, test : condition names; pool genes absent from the graph are dropped (logged).
    edges : edge DataFrame or path passed to graph-based models (default: the GO graph of the shared data folder).
    prior_kernels : extra IterPert priors {name: (c, c)} in sorted pool order (the graph kernel of
        ``kernel_graph`` is added).
    setting : label written in every row (e.g. ``SEMI-SYNTHETIC ...`` or ``real: devel.h5ad``).
    orders : extra one-shot orderings {method: [genes]} (e.g. the ``oracle`` positive control), each
        at least as long as the largest budget.
    cache : dict shared between calls on the same ``data`` and ``test`` (model fits keyed by model
        and training set); default a fresh one.
    graph_noise : fraction of rewired edges of ``graph`` (written in every row).
    kernel_graph : GeneGraph of IterPert's graph prior kernel (:func:`~netformer.select.active.graph_kernel`
        on the pool; named ``config.prior`` when ``config.uses("kernel")``, else ``go``).

    Returns
    -------
    DataFrame with columns setting, prior, graph_noise, rewire, model, kind (one-shot | active), method,
    seed, budget, round, lab_rounds, mse_top20_de, pearson_delta, select_seconds, fit_seconds,
    compute_seconds, chosen. ``compute_seconds`` is what reaching that budget costs: one-shot =
    selection + one model fit; active = every round's selection and retraining so far (BALD: including
    its ensemble). Fits with identical training sets are cached (deterministic models), so their
    ``fit_seconds`` repeat the first measurement.

    Raises
    ------
    BudgetError / ConfigError
        The largest budget exceeds the pool in the graph.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.blas_threads, user_api="blas"):
        return _run_benchmark(data, graph, pool, test, config, edges, prior_kernels, setting, orders or {},
                              {} if cache is None else cache, graph_noise, kernel_graph)


def _run_benchmark(data, graph, pool, test, config, edges, prior_kernels, setting, orders, cache,
                   graph_noise, kernel_graph) -> pd.DataFrame:
    from ..perturbseq.metrics import evaluate
    from .candidates import BudgetError

    sel = Selector(graph, pool, n_layers=config.n_layers, missing="drop")
    pool = [str(g) for g in sel.pool.genes]        # sorted, in graph
    budgets = config.schedule
    if budgets[-1] > len(pool):
        raise BudgetError(f"largest budget {budgets[-1]} exceeds the pool of {len(pool)} perturbations in "
                          "the graph; lower the budgets (--initial/--rounds/--batch).")
    test = list(test)
    base = dict(setting=setting, prior=config.prior_label, graph_noise=float(graph_noise), rewire=config.rewire)
    rows = []
    selections = {}
    for method in config.oneshot:
        for seed in config.seeds:
            t0 = time.perf_counter()
            res = sel.select(budgets[-1], method=method, seed=seed)
            selections[method, seed] = (res.genes, time.perf_counter() - t0)
    for method, genes in orders.items():
        for seed in config.seeds:
            selections[method, seed] = (list(genes), 0.0)
    for model_name in config.model_names:
        factory = model_factory(model_name, edges, config.n_layers, config.options_for(model_name))

        def score(train: list[str]) -> tuple[dict, float]:
            key = (model_name, frozenset(train))
            if key not in cache:
                t0 = time.perf_counter()
                m = factory().fit(data, train)
                fit_s = time.perf_counter() - t0
                cache[key] = (_eval_mean(evaluate, m, data, test), fit_s)
            return cache[key]

        for (method, seed), (genes, sel_s) in selections.items():
            for r, b in enumerate(budgets):
                metrics, fit_s = score(genes[:b])
                # one selection + one model fit serve budget b (smaller budgets' fits are evaluation only)
                rows.append(dict(base, model=model_name, kind="one-shot", method=method, seed=seed, budget=b,
                                 round=r, lab_rounds=1, **metrics, select_seconds=sel_s, fit_seconds=fit_s,
                                 compute_seconds=sel_s + fit_s, chosen=";".join(genes[:b])))
            log.info("%s one-shot %s seed %d done", model_name, method, seed)
        priors = None
        if "iterpert" in config.strategies:
            name = config.prior if config.uses("kernel") else "go"
            same = kernel_graph is None or kernel_graph is graph   # the selector's operator serves
            kern = go_kernel(sel.reach) if same else graph_kernel(kernel_graph, pool, config.n_layers)
            priors = {name: kern, **(prior_kernels or {})}
        for strategy in config.strategies:
            for seed in config.seeds:
                acfg = ActiveConfig(strategy=strategy, schedule=tuple(budgets), seed=seed,
                                    n_ensemble=config.n_ensemble)
                out = run_active_learning(data, pool, factory, acfg, prior_kernels=priors,
                                          evaluate_fn=lambda m: _eval_mean(evaluate, m, data, test))
                total = 0.0
                for rec in out.rounds:
                    total += rec.fit_seconds + rec.select_seconds
                    rows.append(dict(base, model=model_name, kind="active", method=strategy, seed=seed,
                                     budget=len(rec.labeled), round=rec.round, lab_rounds=rec.round + 1,
                                     **rec.metrics, select_seconds=rec.select_seconds, fit_seconds=rec.fit_seconds,
                                     compute_seconds=total, chosen=";".join(sorted(rec.labeled))))
                log.info("%s active %s seed %d done", model_name, strategy, seed)
    return pd.DataFrame(rows)


def _eval_mean(evaluate, model, data, test) -> dict:
    res = evaluate(model, data, list(test)).loc["mean"]
    return {m: float(res[m]) for m in METRIC_NAMES}


# ----------------------------------------------------------------------------- statistics
def t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval of the mean of ``x`` (NaN for fewer than 2 values; the mean if sd = 0)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def paired_test(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``x - y`` (scipy default
    method: exact for small samples without ties). 1.0 when every difference is 0, NaN for < 2 pairs."""
    from scipy.stats import wilcoxon

    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    if len(d) < 2:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (statsmodels ``multipletests(method="fdr_bh")``); NaNs stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return q


def _ref_tag(kind: str, method: str) -> str:
    return method if kind == "one-shot" else f"active_{method}"


def summarize(results: pd.DataFrame, references: Sequence[tuple[str, str]] = REFERENCES,
              alpha: float = 0.05) -> pd.DataFrame:
    """Statistics per setting, prior, graph noise, model, kind, method and budget (a pure function of
    ``results``: reading results.csv back and calling this reproduces summary.csv).

    Columns: n_seeds; for each metric ``M`` of mse_top20_de, pearson_delta: ``M_mean``, ``M_std``
    (ddof 0), ``M_ci_low``, ``M_ci_high`` (95% t-interval over seeds); jaccard_across_seeds,
    lab_rounds, compute_seconds; and for each reference ``(kind, method)`` (tag ``random`` for the
    one-shot random baseline, ``active_iterpert`` for IterPert) at the same setting, prior, graph noise,
    model and budget, on the seeds both have: ``M_diff_vs_TAG`` (mean of method - reference),
    ``M_diff_ci_low/high_vs_TAG``, ``M_p_vs_TAG`` (paired Wilcoxon), ``M_q_vs_TAG`` (BH over every
    p-value of that column), and ``verdict_vs_TAG`` from mse_top20_de: ``better`` / ``worse`` (q <
    ``alpha``, lower error = better), ``no difference`` otherwise, ``reference`` for the reference
    itself, empty when the reference is absent. Missing columns prior, graph_noise, model (older
    tables) default to ``go``, 0.0 and ``ridge``.
    """
    res = results.copy()
    for col, default in (("prior", "go"), ("graph_noise", 0.0), ("model", "ridge")):
        if col not in res:
            res[col] = default
    res["graph_noise"] = res["graph_noise"].astype(float)
    out = []
    groups = res.groupby(GROUP, sort=False)
    for key, g in groups:
        g = g.sort_values("seed")
        row = dict(zip(GROUP, key), n_seeds=int(g["seed"].nunique()))
        for m in METRIC_NAMES:
            x = g[m].to_numpy(np.float64)
            lo, hi = t_interval(x)
            row.update({f"{m}_mean": x.mean(), f"{m}_std": x.std(ddof=0), f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        row.update(jaccard_across_seeds=_jaccard([set(str(c).split(";")) for c in g["chosen"]]),
                   lab_rounds=int(g["lab_rounds"].max()), compute_seconds=g["compute_seconds"].mean())
        out.append(row)
    summ = pd.DataFrame(out)
    index = {k: g.sort_values("seed") for k, g in groups}
    for kind_r, meth_r in references:
        tag = _ref_tag(kind_r, meth_r)
        for m in METRIC_NAMES:
            diffs, lows, highs, ps = [], [], [], []
            for _, row in summ.iterrows():
                ref_key = (row.setting, row.prior, row.graph_noise, row.model, kind_r, meth_r, row.budget)
                own_key = tuple(row[c] for c in GROUP)
                if ref_key not in index or ref_key == own_key:
                    diffs.append(np.nan), lows.append(np.nan), highs.append(np.nan), ps.append(np.nan)
                    continue
                a = index[own_key].set_index("seed")[m]
                r = index[ref_key].set_index("seed")[m]
                common = a.index.intersection(r.index)
                d = (a.loc[common] - r.loc[common]).to_numpy(np.float64)
                lo, hi = t_interval(d)
                diffs.append(d.mean() if len(d) else np.nan), lows.append(lo), highs.append(hi)
                ps.append(paired_test(a.loc[common].to_numpy(), r.loc[common].to_numpy()))
            summ[f"{m}_diff_vs_{tag}"] = diffs
            summ[f"{m}_diff_ci_low_vs_{tag}"] = lows
            summ[f"{m}_diff_ci_high_vs_{tag}"] = highs
            summ[f"{m}_p_vs_{tag}"] = ps
            summ[f"{m}_q_vs_{tag}"] = bh_qvalues(np.array(ps))
        verdict = []
        for _, row in summ.iterrows():
            if row["kind"] == kind_r and row["method"] == meth_r:
                verdict.append("reference")
            elif not np.isfinite(row[f"mse_top20_de_q_vs_{tag}"]):
                verdict.append("")
            elif row[f"mse_top20_de_q_vs_{tag}"] < alpha:
                verdict.append("better" if row[f"mse_top20_de_diff_vs_{tag}"] < 0 else "worse")
            else:
                verdict.append("no difference")
        summ[f"verdict_vs_{tag}"] = verdict
    return summ


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


def plot_benchmark(summary: pd.DataFrame, path: str | Path, published: pd.DataFrame | None = None,
                   metric: str = "mse_top20_de", relative: bool = False) -> None:
    """PNG of test ``metric`` vs budget (log scale): mean over seeds with its 95% interval (band),
    one row of panels per (setting, prior, model) and one column per graph noise level; one-shot methods
    solid, active learning dashed, the ``oracle`` positive control black. A last column shows the
    published IterPert curves (mean +- std over their 10 runs), labelled published.

    ``relative=True``: the paired difference to one-shot random (``{metric}_diff_vs_random``, mean and
    95% t-interval over seeds) instead; the per-method intervals are wide because every seed has its
    own test set, the paired differences are what the tests in summary.csv assess."""
    import matplotlib

    summary = summary.copy()
    for col, default in (("prior", "go"), ("graph_noise", 0.0), ("model", "ridge")):
        if col not in summary:
            summary[col] = default
    panels = list(dict.fromkeys(zip(summary["setting"], summary["prior"], summary["model"])))
    noises = sorted(summary["graph_noise"].unique())
    ncol = len(noises) + (published is not None)
    fig, axes = new_figure(len(panels), ncol, figsize=(4.6 * ncol, 3.8 * len(panels)), squeeze=False)
    names = list(dict.fromkeys(summary["method"]))
    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    colors = dict(zip(names, palette))
    colors[ORACLE] = "black"
    has_ci = f"{metric}_ci_low" in summary
    for i, (setting, prior, model) in enumerate(panels):
        sub = summary[(summary["setting"] == setting) & (summary["prior"] == prior) & (summary["model"] == model)]
        for j, x in enumerate(noises):
            ax = axes[i, j]
            cur = sub[sub["graph_noise"] == x]
            if cur.empty:   # e.g. GEARS or a real file, run at graph noise 0 only
                ax.axis("off")
                continue
            if relative:
                mean_c, lo_c, hi_c = (f"{metric}_diff_vs_random", f"{metric}_diff_ci_low_vs_random",
                                      f"{metric}_diff_ci_high_vs_random")
                ax.axhline(0, color="grey", lw=0.8)
            else:
                mean_c, lo_c, hi_c = f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high"
            for (kind, meth), g in cur.groupby(["kind", "method"], sort=False):
                g = g.sort_values("budget")
                if relative and (mean_c not in g or g[mean_c].isna().all()):
                    continue
                ls = "-" if kind == "one-shot" else "--"
                ax.plot(g["budget"], g[mean_c], ls=ls, marker="o" if kind == "one-shot" else "s", ms=3,
                        color=colors[meth], label=f"{meth} ({kind})", lw=1.6 if meth in (ORACLE, "graphreach") else 1)
                if (has_ci or relative) and lo_c in g and g[lo_c].notna().any():
                    ax.fill_between(g["budget"], g[lo_c], g[hi_c], color=colors[meth], alpha=0.12, lw=0)
            ax.set_xscale("log")
            budgets = sorted(cur["budget"].unique())
            ax.set_xticks(budgets, [str(b) for b in budgets], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel("perturbations measured (cumulative budget)")
            ax.set_ylabel(f"{metric}: method - random (paired)" if relative else f"test {metric}")
            ax.set_title(f"{setting.split(' on ')[0][:60]}\nmodel {model}, prior {prior}, selection graph "
                         f"{100 * x:.0f}% rewired", fontsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.legend(fontsize=5.5)
        if published is not None:
            ax = axes[i, -1]
            pcolors = matplotlib.colormaps["tab20"].colors
            for k, (st, g) in enumerate(published.groupby("strategy", sort=False)):
                ax.errorbar(g["budget"], g["mean"], yerr=g["std"], marker="o", ms=3, capsize=2,
                            color=pcolors[k % 20], label=st[:40])
            ax.set_title("PUBLISHED (Huang et al. 2024, K562 essential, GEARS)\nnot our data or model", fontsize=7)
            ax.set_xlabel("perturbations measured")
            ax.set_ylabel(published["metric"].iloc[0])
            ax.legend(fontsize=5)
            ax.grid(alpha=0.3)
    save_figure(fig, path, dpi=100)


_EXPRESSION_EMBEDDING: dict = {}


def _expression_prior(pool: list[str]) -> dict:
    """IterPert expression prior from the bundled pbmc3k counts (real scRNA-seq, 2,700 cells)."""
    from ..datasets import pbmc3k
    from .active import expression_gene_embedding, expression_kernel

    if "pbmc3k" not in _EXPRESSION_EMBEDDING:   # computed once per process (deterministic)
        _EXPRESSION_EMBEDDING["pbmc3k"] = expression_gene_embedding(pbmc3k())
    return {"expression": expression_kernel(_EXPRESSION_EMBEDDING["pbmc3k"], pool)}


def oracle_order(ss, budget: int, hops: int | None = None, ridge: float = 0.1) -> list[str]:
    """The positive control: plain greedy on :class:`~netformer.select.criteria.OracleVariance` with the
    SGC features (``hops`` = the ground truth's K) of the TRUE graph of the semi-synthetic set ``ss``
    and its test genes; ``lam = ridge * mean K_jj``. Returns ``budget`` pool genes in pick order."""
    from ..perturbseq.models import SGCModel
    from .criteria import OracleVariance
    from .greedy import plain_greedy

    sgc = SGCModel(hops=hops or ss.config.hops, go_graph=ss.edges)
    crit = OracleVariance(sgc.features(ss.pool), sgc.features(ss.test))
    crit.lam = ridge * float(crit._diag0.mean())
    trace = plain_greedy(crit, budget)
    return [ss.pool[i] for i in trace.order]


def semisynthetic_setting(ss) -> str:
    """The SEMI-SYNTHETIC label of every row of :func:`benchmark_semisynthetic`."""
    c = ss.config
    return (f"SEMI-SYNTHETIC: {c.n_candidates - c.n_test} pool / {c.n_test} test genes on the real GO graph, "
            f"tau={c.tau}, own={c.own}, hops={c.hops}, n_cells={c.n_cells}, truth seed={c.seed}")


def benchmark_semisynthetic(config: BenchmarkConfig, synth_config=None, *, graph: GeneGraph | None = None,
                            expression_prior: bool = True, selection_edges: pd.DataFrame | None = None
                            ) -> pd.DataFrame:
    """Run the SEMI-SYNTHETIC benchmark of :func:`~netformer.select.synthetic.make_semisynthetic`.

    For every seed of ``config.seeds``: one draw of the test split and the measurement noise
    (:meth:`~netformer.select.synthetic.SemiSynthetic.draw`); for every ``config.graph_noise`` level
    ``x``: one-shot selection on the selection graph with ``x`` of its edges rewired
    (:func:`~netformer.select.synthetic.rewire_edges`, ``config.rewire``, seeded by the seed), while the
    ground truth keeps the true graph; the ``oracle`` positive control (if ``config.positive_control``)
    and active learning (graph noise 0 only) as documented in :class:`BenchmarkConfig`.

    The graph of each use (:attr:`BenchmarkConfig.prior_uses`): the true graph, or for ``config.prior``
    ``fm`` / ``fm+go`` and a named use, that prior's graph on the candidate genes (GO = the true graph),
    made undirected like the true graph; ``selection_edges`` overrides the selection graph before
    rewiring. The ground truth always keeps the true graph. Every row's ``setting`` says
    SEMI-SYNTHETIC. Returns the long results table (:func:`run_benchmark` columns).
    """
    from .candidates import check_budget
    from .synthetic import make_semisynthetic, rewire_edges, undirected_edges

    truth = make_semisynthetic(synth_config, graph=graph)
    check_budget(config.schedule[-1], len(truth.pool))  # BudgetError before any work
    config.warn_idle_uses()
    setting = semisynthetic_setting(truth)
    genes = list(truth.delta_true.index)
    prior_e = None
    if config.prior != "go":   # made undirected on U, like the true graph
        prior_e = undirected_edges(GeneGraph.from_edges(prior_edges(config, genes, truth.edges), genes))
    edges_for = config.graphs_by_use(prior_e, truth.edges)   # every draw keeps the truth's edges
    base_edges = edges_for["selection"] if selection_edges is None else selection_edges

    def graph_of(edges):   # the truth's GeneGraph is built already
        return truth.graph if edges is truth.edges else GeneGraph.from_edges(edges, genes)

    base_graph = graph_of(base_edges)
    kernel_graph = base_graph if edges_for["kernel"] is base_edges else graph_of(edges_for["kernel"])
    frames = []
    for seed in config.seeds:
        t0 = time.perf_counter()
        ss = truth.draw(seed)
        cfg1 = dataclasses.replace(config, seeds=(seed,))
        orders = {ORACLE: oracle_order(ss, config.schedule[-1])} if config.positive_control else {}
        priors = _expression_prior(sorted(ss.pool)) if expression_prior and "iterpert" in config.strategies else None
        cache: dict = {}
        for x in config.graph_noise:
            sel_graph = base_graph if x == 0 else GeneGraph.from_edges(
                rewire_edges(base_edges, x, seed=seed, method=config.rewire), genes)
            cfg = cfg1 if x == 0 else dataclasses.replace(cfg1, strategies=())
            frames.append(run_benchmark(ss.data, sel_graph, ss.pool, ss.test, cfg, edges=edges_for["model"],
                                        prior_kernels=priors, setting=setting, orders=orders, cache=cache,
                                        graph_noise=x, kernel_graph=kernel_graph))
        log.info("semi-synthetic seed %d done in %.0fs", seed, time.perf_counter() - t0)
    return pd.concat(frames, ignore_index=True)


def benchmark_file(path: str | Path, config: BenchmarkConfig, *, graph_path: str | Path | None = None,
                   subset: dict | None = None, test_fraction: float = 0.2, seed: int = 0,
                   expression_prior: bool = False) -> pd.DataFrame:
    """Run :func:`run_benchmark` on a REAL Perturb-seq file (GEARS ``perturb_processed.h5ad`` or
    scPerturb/perturbench h5ad, read by :func:`netformer.perturbseq.data.read_perturbseq`).

    Pool = single-gene perturbations present in the GO graph (``graph_path``, default the shared
    one); a seeded ``test_fraction`` of them plus every double perturbation form the fixed test set.
    Each use named in ``config.prior_uses`` takes the prior's graph (:func:`prior_edges`) on these
    singles; the others keep GO. Raises :class:`ConfigError` if the schedule does not fit the pool.
    """
    from ..graphs import go_graph
    from ..perturbseq.data import read_perturbseq

    config.warn_idle_uses()
    data = read_perturbseq(path, subset=subset) if subset else read_perturbseq(path)
    go_e = go_graph(graph_path)
    graph = GeneGraph.from_edges(go_e)
    singles = sorted(c for c in data.singles if c in graph)
    if len(singles) < 2:
        raise ConfigError(f"{path}: fewer than 2 single perturbations are in the graph.")
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(singles))))
    test_s = sorted(rng.choice(singles, size=n_test, replace=False).tolist())
    pool = sorted(set(singles) - set(test_s))
    test = test_s + sorted(data.doubles)
    priors = _expression_prior(pool) if expression_prior and "iterpert" in config.strategies else None
    setting = f"real: {Path(path).name}{' ' + str(subset) if subset else ''} ({len(pool)} pool / {len(test)} test)"
    prior_e = prior_edges(config, singles, go_e) if config.prior != "go" else None
    graphs = config.graphs_by_use(GeneGraph.from_edges(prior_e) if prior_e is not None else None, graph)
    # the shared default GO graph as None: the models' operator cache then holds across calls
    model_edges = config.graphs_by_use(prior_e, go_e if graph_path is not None else None)["model"]
    return run_benchmark(data, graphs["selection"], pool, test, config, edges=model_edges, prior_kernels=priors,
                         setting=setting, kernel_graph=graphs["kernel"])


def prior_edges(config: BenchmarkConfig, candidates, go_edges: pd.DataFrame) -> pd.DataFrame:
    """The graph of ``config.prior`` for ``candidates`` (:func:`~netformer.select.priors.selection_edges`
    with the config's checkpoint, ``fm_k`` and ``min_coverage``), given the GO edges."""
    from .priors import selection_edges

    return selection_edges(config.prior, candidates, model=config.model_dir, go=go_edges, k=config.fm_k,
                           min_coverage=config.min_coverage)


def write_report(results: pd.DataFrame, out: str | Path, *, overwrite: bool = False,
                 published: pd.DataFrame | None = None, config: BenchmarkConfig | None = None) -> Path:
    """Write into the directory ``out`` atomically: ``results.csv`` (long; one row per method, model,
    seed, budget, prior and graph noise), ``summary.csv`` (:func:`summarize`), ``published_iterpert.csv``,
    ``benchmark.png`` (mse_top20_de vs budget with 95% intervals), ``benchmark_vs_random.png`` (paired mse_top20_de difference to one-shot random, when
    the table has random) and, with ``config``, ``config.json``. Returns the path."""
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
        if config is not None:
            (tmp / "config.json").write_text(config.to_json())
        plot_benchmark(summary, tmp / "benchmark.png", published)
        if "mse_top20_de_diff_vs_random" in summary and summary["mse_top20_de_diff_vs_random"].notna().any():
            plot_benchmark(summary, tmp / "benchmark_vs_random.png", None, relative=True)
    return Path(out)
