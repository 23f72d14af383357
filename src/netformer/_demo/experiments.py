"""Demo step ``experiments``: which perturbations to measure, chosen in one shot from the gene graph.

1. GraphReach (Panagopoulos et al. 2025, arXiv 2503.14571): lazy greedy maximisation of the coverage of
   the GO graph's propagation operator (:func:`netformer.select.select`) picks ``budget`` perturbations
   from every gene of the graph; its coverage curve is drawn beside a seeded random choice.
2. A panel on the real Norman 2019 K562 CRISPRa singles of ``devel.h5ad`` (18 perturbations, a fixed
   20% held out with the doubles): GraphReach vs random at small budgets, the ridge outcome model trained
   on the chosen perturbations, ``mse_top20_de`` on the held-out ones, over ``panel_seeds`` seeds with a
   paired Wilcoxon test (:func:`netformer.select.benchmark.benchmark_file` and ``summarize``). The pool is
   tiny, so this shows the workflow, not a verdict; docs/select.md has the benchmark that can tell
   methods apart.

The GO graph and devel.h5ad are read from ``../shared/data`` (not bundled); the step is skipped with one
line when they are absent. Writes into ``experiments/``: ``graphreach_selection.csv``, ``coverage.png``,
``norman_panel_results.csv``, ``norman_panel_summary.csv``, ``norman_panel.png``.
"""

from __future__ import annotations

import logging

import numpy as np

from .._io import atomic_file

log = logging.getLogger("netformer.demo")


def run(ctx) -> tuple[dict, list]:
    """Run the step in ``ctx.dir``; returns ``(metrics, files)``."""
    from ..graphs import load_edge_list
    from ..select import Selector
    from ..select.benchmark import BenchmarkConfig, benchmark_file, plot_benchmark, summarize

    cfg, out = ctx.config, ctx.dir
    from . import shared_file

    go_path = shared_file("graphs", "go_top20_jaccard_orgHsEgDb_3.16.csv.gz")
    devel = shared_file("perturbseq", "devel.h5ad")
    log.info("experiments: GraphReach selection of %d perturbations on the GO graph", cfg.budget)
    graph = load_edge_list(go_path)
    sel = Selector(graph)
    gr = sel.select(cfg.budget, method="graphreach", seed=cfg.seed)
    rnd = sel.select(cfg.budget, method="random", seed=cfg.seed)
    with atomic_file(out / "graphreach_selection.csv") as tmp:
        gr.to_frame().to_csv(tmp, index=False)
    gr.plot_coverage(out / "coverage.png", others=[rnd])

    log.info("experiments: GraphReach vs random on the Norman 2019 singles of devel.h5ad (%d seeds)", cfg.panel_seeds)
    bcfg = BenchmarkConfig(budgets=(2, 4, 6, 8, 10), oneshot=("graphreach", "random"), strategies=(),
                           seeds=tuple(range(cfg.panel_seeds)), model="ridge", positive_control=False)
    results = benchmark_file(devel, bcfg, graph_path=go_path, subset={"dataset": "norman19"}, seed=cfg.seed)
    summary = summarize(results)
    with atomic_file(out / "norman_panel_results.csv") as tmp:
        results.to_csv(tmp, index=False)
    with atomic_file(out / "norman_panel_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    plot_benchmark(summary, out / "norman_panel.png")
    panel = []
    for r in summary.itertuples():
        row = {"method": r.method, "budget": int(r.budget), "mse_top20_de": round(float(r.mse_top20_de_mean), 5),
               "ci": [round(float(r.mse_top20_de_ci_low), 5), round(float(r.mse_top20_de_ci_high), 5)]}
        if r.method != "random":
            row["p_vs_random"] = None if np.isnan(r.mse_top20_de_p_vs_random) else round(float(r.mse_top20_de_p_vs_random), 4)
            row["verdict_vs_random"] = r.verdict_vs_random
        panel.append(row)
    metrics = {
        "budget": cfg.budget, "graph_genes": int(len(sel.pool.genes)),
        "coverage_graphreach": round(float(gr.coverage[-1]), 4), "coverage_random": round(float(rnd.coverage[-1]), 4),
        "first_picks": gr.to_frame()["gene"].head(10).tolist(),
        "panel": panel, "panel_seeds": cfg.panel_seeds, "panel_setting": str(results["setting"].iloc[0]),
    }
    log.info("experiments: GraphReach covers %.1f%% of the GO graph with %d perturbations (random %.1f%%)",
             100 * metrics["coverage_graphreach"], cfg.budget, 100 * metrics["coverage_random"])
    files = [out / f for f in ("graphreach_selection.csv", "coverage.png", "norman_panel_results.csv",
                               "norman_panel_summary.csv", "norman_panel.png")]
    return metrics, files
