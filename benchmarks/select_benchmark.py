"""One-shot selection vs active learning, with a positive control, graph noise and statistics (issue 15).

Runs, in one process:

1. SEMI-SYNTHETIC (simulated responses on the real GO graph and real K562 control cells; defaults of
   :class:`netformer.select.synthetic.SyntheticConfig`: 2,500 pool / 500 test genes), models ridge and
   SGC, every one-shot method plus the ``oracle`` positive control, every active-learning strategy,
   budgets 25..600, seeds 0..S-1 (a seed = test split + measurement noise), selection graph rewired
   0 / 10 / 30 / 50% (degree-preserving swaps; truth and models keep the true graph).
2. The same with the GEARS-style GNN at CPU size (pseudobulk means, hidden 32, 10 epochs, constant
   learning rate), fewer seeds, graph noise 0, one-shot graphreach / random / oracle only.
3. The REAL Norman 2019 singles of devel.h5ad (tiny: budgets 2, 4, 6), ridge and SGC, for continuity.

    OMP_NUM_THREADS=1 python benchmarks/select_benchmark.py --out select_benchmark_out [--seeds 10] \
        [--gears-seeds 5] [--no-real]
    python benchmarks/select_benchmark.py --from-results OUT/results.csv --out OUT2   # tables again

Writes results.csv, summary.csv, published_iterpert.csv, benchmark.png, benchmark_vs_random.png and
config.json (:func:`netformer.select.benchmark.write_report`) and prints the tables of docs/select.md.
The CLI equivalent of part 1: ``netformer select benchmark --out DIR --model ridge --model sgc --seeds 10
--graph-noise 0 --graph-noise 0.1 --graph-noise 0.3 --graph-noise 0.5``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import pandas as pd

from netformer.datasets import shared_data_dir
from netformer.select.benchmark import (
    BenchmarkConfig,
    benchmark_file,
    benchmark_semisynthetic,
    published_iterpert,
    summarize,
    write_report,
)

BUDGETS = (25, 50, 100, 200, 400, 600)
GEARS_OPTIONS = {"hidden": 32, "epochs": 10, "lr_decay": 1.0, "seed": 0, "device": "cpu"}


def _cell(r, tag: str = "random", ci: bool = True) -> str:
    mark = {"better": " **+**", "worse": " **-**"}.get(r.get(f"verdict_vs_{tag}", ""), "")
    q = r.get(f"mse_top20_de_q_vs_{tag}", float("nan"))
    qs = f" q={q:.2g}" if pd.notna(q) else ""
    ci_s = f" [{r['mse_top20_de_ci_low']:.4f}, {r['mse_top20_de_ci_high']:.4f}]" if ci else ""
    return f"{r['mse_top20_de_mean']:.4f}{ci_s}{qs}{mark}"


def _diff_cells(h: pd.DataFrame, budgets, ref: str) -> list[str]:
    """Per budget: paired mse_top20_de difference to ``ref`` and its q, **+** / **-** when significant."""
    cells = []
    for b in budgets:
        if b not in h.index:
            cells.append("")
            continue
        r = h.loc[b]
        mark = {"better": " **+**", "worse": " **-**"}.get(r[f"verdict_vs_{ref}"], "")
        cells.append(f"{r[f'mse_top20_de_diff_vs_{ref}']:+.4f} q={r[f'mse_top20_de_q_vs_{ref}']:.2g}{mark}")
    return cells


def markdown_tables(summ: pd.DataFrame) -> str:
    """The docs tables, all from ``summarize(results)``.

    1. Per setting and model at graph noise 0: mse_top20_de mean [95% t-interval] per method and
       budget, BH q-value of the paired Wilcoxon test against one-shot random, **+** / **-** = better /
       worse than random at q < 0.05.
    2. Graph noise: paired difference to random (and q) of the graph-based one-shot methods per noise level.
    3. One-shot vs active: paired difference of each one-shot method to IterPert (and q).
    """
    lines = []
    for (setting, model), g in summ[summ.graph_noise == 0].groupby(["setting", "model"], sort=False):
        lines.append(f"\n#### {setting.split(' on ')[0]}; model `{model}`; selection graph = true graph\n")
        budgets = sorted(g["budget"].unique())
        lines.append("| method | kind | " + " | ".join(f"B={b}" for b in budgets) + " |")
        lines.append("|---|---|" + "---|" * len(budgets))
        for (kind, meth), h in g.groupby(["kind", "method"], sort=False):
            h = h.set_index("budget")
            lines.append(f"| {meth} | {kind} | " + " | ".join(_cell(h.loc[b]) if b in h.index else ""
                                                              for b in budgets) + " |")
    synth = summ[summ.setting.str.startswith("SEMI-SYNTHETIC")]
    noisy = synth[(synth.kind == "one-shot") & ~synth.method.isin(["random", "oracle"])]
    if noisy["graph_noise"].nunique() > 1:
        lines.append("\n#### Graph noise: mse_top20_de difference to random (paired mean, q), selection graph "
                     "rewired (degree-preserving); truth and models keep the true graph\n")
        budgets = sorted(noisy["budget"].unique())
        lines.append("| model | method | rewired | " + " | ".join(f"B={b}" for b in budgets) + " |")
        lines.append("|---|---|---|" + "---|" * len(budgets))
        for (model, meth, x), h in noisy.groupby(["model", "method", "graph_noise"], sort=True):
            if synth[(synth.model == model)]["graph_noise"].nunique() < 2:
                continue
            cells = _diff_cells(h.set_index("budget"), budgets, "random")
            lines.append(f"| {model} | {meth} | {100 * x:.0f}% | " + " | ".join(cells) + " |")
    vs = synth[(synth.kind == "one-shot") & (synth.graph_noise == 0)]
    if "mse_top20_de_diff_vs_active_iterpert" in vs and vs["mse_top20_de_diff_vs_active_iterpert"].notna().any():
        lines.append("\n#### One-shot vs active learning: mse_top20_de difference to IterPert (paired mean, q; "
                     "**+** = one-shot better, **-** = worse at q < 0.05)\n")
        budgets = sorted(vs["budget"].unique())
        lines.append("| model | method | " + " | ".join(f"B={b}" for b in budgets) + " |")
        lines.append("|---|---|" + "---|" * len(budgets))
        for (model, meth), h in vs.groupby(["model", "method"], sort=False):
            h = h.set_index("budget")
            if h["mse_top20_de_diff_vs_active_iterpert"].isna().all():
                continue
            cells = _diff_cells(h, budgets, "active_iterpert")
            lines.append(f"| {model} | {meth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--gears-seeds", type=int, default=5)
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--from-results", help="Only rewrite the report and tables from an existing results.csv "
                                           "(the summary is a function of it).")
    args = ap.parse_args()
    if args.from_results:
        res = pd.read_csv(args.from_results)
        write_report(res, args.out, overwrite=args.overwrite)
        print(markdown_tables(summarize(res)))
        return
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("netformer.select.benchmark").setLevel(logging.INFO)
    t0 = time.perf_counter()
    cfg = BenchmarkConfig(budgets=BUDGETS, seeds=tuple(range(args.seeds)), models=("ridge", "sgc"),
                          graph_noise=(0.0, 0.1, 0.3, 0.5), rewire="degree")
    parts = [benchmark_semisynthetic(cfg)]
    t1 = time.perf_counter()
    times = {"semi-synthetic ridge+sgc": t1 - t0}
    if args.gears_seeds:
        gcfg = dataclasses.replace(cfg, models=("gears",), seeds=tuple(range(args.gears_seeds)), graph_noise=(0.0,),
                                   oneshot=("graphreach", "random"), strategies=(),
                                   options_by_model={"gears": GEARS_OPTIONS})
        parts.append(benchmark_semisynthetic(gcfg))
        times["semi-synthetic gears"] = time.perf_counter() - t1
    if not args.no_real:
        t2 = time.perf_counter()
        rcfg = BenchmarkConfig(initial=2, rounds=2, batch=2, seeds=tuple(range(3)), models=("ridge", "sgc"))
        parts.append(benchmark_file(shared_data_dir() / "perturbseq" / "devel.h5ad", rcfg,
                                    subset={"dataset": "norman19"}, test_fraction=0.3))
        times["real devel.h5ad"] = time.perf_counter() - t2
    res = pd.concat(parts, ignore_index=True)
    out = write_report(res, args.out, overwrite=args.overwrite, config=cfg)
    summ = summarize(res)
    print(markdown_tables(summ))
    pub = published_iterpert()
    print("\n=== " + pub["source"].iloc[0] + " (mse_top20_de_non_dropout, mean over 10 runs)")
    print(pub.pivot_table(index="strategy", columns="budget", values="mean").round(4).to_string())
    print("\n" + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; wrote {out}")


if __name__ == "__main__":
    main()
