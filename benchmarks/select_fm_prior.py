"""GraphReach on the foundation model's gene graph (prior fm, fm+go) vs on GO, on the REAL Norman 2019
devel set (issue 15 part 3, the selection-graph use).

On the norman19 cells of devel.h5ad, for every test split (``--splits`` data seeds; 20% of the singles plus every double held out, the rest
the pool) and prior, :func:`netformer.select.benchmark.benchmark_file` selects with GraphReach and with
random (``--seeds`` draws) at budgets 2, 4, 6, 8, 10, fits the ridge model (on GO) on the chosen
singles and scores the test set. A split is one paired observation of FM vs GO (GraphReach is
deterministic given the graph).

    OMP_NUM_THREADS=1 python benchmarks/select_fm_prior.py --model-dir benchmarks/results/tmp/encoder_1200 \
        --out benchmarks/results/select_fm_prior [--splits 10] [--seeds 5]

Writes results.csv (every row of every run) and table.md (mean mse_top20_de over splits, paired
difference of each prior's GraphReach to GO's GraphReach with its Wilcoxon p-value).

SEMI-SYNTHETIC counterpart: run ``netformer select benchmark --prior P --model-dir DIR --model ridge --model sgc
--oneshot graphreach --oneshot random --strategy random --seeds 10 --no-positive-control --out RUNS/P`` for P in
go, fm, fm+go (same seeds = same test splits and noise), then

    python benchmarks/select_fm_prior.py --compare RUNS --out OUT

writes OUT/semisynthetic_table.md: per model and budget, GraphReach's mse_top20_de on each prior, and the
paired difference (over seeds) of fm / fm+go to go with Wilcoxon p and BH q over the table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--compare", type=Path, help="folder of go/, fm/, fm+go/ semi-synthetic runs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=None, help="default: <shared data>/perturbseq/devel.h5ad")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="2,4,6,8,10")
    args = ap.parse_args()
    if args.compare is not None:
        return compare(args.compare, args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from scipy.stats import wilcoxon

    from netformer.datasets import shared_data_dir
    from netformer.select.benchmark import BenchmarkConfig, benchmark_file

    data = args.data or shared_data_dir() / "perturbseq" / "devel.h5ad"
    budgets = tuple(int(b) for b in args.budgets.split(","))
    frames = []
    for prior in ("go", "fm", "fm+go"):
        cfg = BenchmarkConfig(budgets=budgets, seeds=tuple(range(args.seeds)), oneshot=("graphreach", "random"),
                              strategies=(), positive_control=False, prior=prior,
                              model_dir=None if prior == "go" else args.model_dir)
        for split in range(args.splits):
            res = benchmark_file(data, cfg, seed=split, subset={"dataset": "norman19"})
            res["split"] = split
            frames.append(res)
    res = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    res.to_csv(args.out / "results.csv", index=False)
    per = res.groupby(["prior", "method", "budget", "split"])["mse_top20_de"].mean().unstack("split")
    lines = ["| budget | " + " | ".join(f"{p} {m}" for p in ("go", "fm", "fm+go") for m in ("graphreach", "random"))
             + " | fm - go (GraphReach), p | fm+go - go (GraphReach), p |",
             "|---" * 9 + "|"]
    for b in budgets:
        cells = [f"{per.loc[(p, m, b)].mean():.4f}" for p in ("go", "fm", "fm+go") for m in ("graphreach", "random")]
        go = per.loc[("go", "graphreach", b)]
        for p in ("fm", "fm+go"):
            d = per.loc[(p, "graphreach", b)] - go
            pval = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
            cells.append(f"{d.mean():+.4f}, p={pval:.3f}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


def compare(runs: Path, out: Path) -> None:
    from netformer.select.benchmark import bh_qvalues, paired_test

    def read(d: Path) -> pd.DataFrame:   # results.csv as written, or gzipped as kept in the repository
        return pd.read_csv(d / "results.csv" if (d / "results.csv").exists() else d / "results.csv.gz")

    res = pd.concat([read(runs / p) for p in ("go", "fm", "fm+go")], ignore_index=True)
    res = res[(res["method"] == "graphreach") & (res["kind"] == "one-shot")]
    per = res.set_index(["model", "budget", "prior", "seed"])["mse_top20_de"].sort_index()
    rows = []
    for (model, budget), _ in res.groupby(["model", "budget"]):
        go = per.loc[(model, budget, "go")]
        row = {"model": model, "budget": budget, "go": go.mean()}
        for p in ("fm", "fm+go"):
            x = per.loc[(model, budget, p)]
            row[p], row[f"{p}-go"], row[f"p_{p}"] = x.mean(), (x - go).mean(), paired_test(x.to_numpy(), go.to_numpy())
        rows.append(row)
    t = pd.DataFrame(rows)
    q = bh_qvalues(np.concatenate([t["p_fm"], t["p_fm+go"]]))
    t["q_fm"], t["q_fm+go"] = q[: len(t)], q[len(t):]
    lines = ["| model | budget | GO | FM | FM+GO | FM - GO (q) | FM+GO - GO (q) |", "|---" * 7 + "|"]
    for _, d in t.iterrows():
        lines.append(f"| {d['model']} | {d['budget']} | {d['go']:.4f} | {d['fm']:.4f} | {d['fm+go']:.4f} | "
                     f"{d['fm-go']:+.4f} ({d['q_fm']:.3f}) | {d['fm+go-go']:+.4f} ({d['q_fm+go']:.3f}) |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "semisynthetic_table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
