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


def markdown_tables(summ: pd.DataFrame) -> str:
    """The docs tables: per model and graph noise, mse_top20_de mean [95% CI] per method and budget,
    with the paired verdict against random (and against IterPert for one-shot methods)."""
    lines = []
    for (setting, model, noise), g in summ.groupby(["setting", "model", "graph_noise"], sort=False):
        lines.append(f"\n#### {setting[:40]}... model `{model}`, selection graph {100 * noise:.0f}% rewired\n")
        budgets = sorted(g["budget"].unique())
        lines.append("| method | kind | " + " | ".join(f"B={b}" for b in budgets) + " |")
        lines.append("|---|---|" + "---|" * len(budgets))
        for (kind, meth), h in g.groupby(["kind", "method"], sort=False):
            h = h.set_index("budget")
            cells = []
            for b in budgets:
                if b not in h.index:
                    cells.append("")
                    continue
                r = h.loc[b]
                mark = {"better": " **+**", "worse": " **-**"}.get(r["verdict_vs_random"], "")
                q = r["mse_top20_de_q_vs_random"]
                qs = f" q={q:.2g}" if pd.notna(q) else ""
                cells.append(f"{r['mse_top20_de_mean']:.4f} [{r['mse_top20_de_ci_low']:.4f}, "
                             f"{r['mse_top20_de_ci_high']:.4f}]{qs}{mark}")
            lines.append(f"| {meth} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--gears-seeds", type=int, default=5)
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
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
