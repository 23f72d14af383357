"""One-shot selection vs active learning: the benchmark table and curves.

Runs (1) the SEMI-SYNTHETIC benchmark (simulated responses on the real GO graph and real K562 control
cells; 2,500 pool / 500 test genes; budgets 100..600 = 100 initial + 5 rounds x 100) and (2) the REAL
Norman 2019 singles of devel.h5ad (tiny: budgets 2..6), each over 3 seeds with the ridge baseline
model, and prints the per-method, per-budget summary beside the published IterPert figures.

    python benchmarks/select_benchmark.py --out select_benchmark_out [--seeds 3] [--model ridge]

With a full GEARS file (e.g. Norman 2019 perturb_processed.h5ad) use the CLI instead:
    netformer select benchmark --data perturb_processed.h5ad --out norman_bench
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--model", default="ridge")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = tuple(range(args.seeds))
    t0 = time.perf_counter()
    synth = benchmark_semisynthetic(BenchmarkConfig(seeds=seeds, model=args.model))
    t1 = time.perf_counter()
    real = benchmark_file(shared_data_dir() / "perturbseq" / "devel.h5ad",
                          BenchmarkConfig(initial=2, rounds=2, batch=2, seeds=seeds, model=args.model),
                          subset={"dataset": "norman19"}, test_fraction=0.3)
    t2 = time.perf_counter()
    res = pd.concat([synth, real], ignore_index=True)
    out = write_report(res, args.out, overwrite=args.overwrite)
    pd.set_option("display.width", 220)
    cols = ["kind", "method", "budget", "mse_top20_de_mean", "mse_top20_de_std", "pearson_delta_mean",
            "pearson_delta_std", "jaccard_across_seeds", "lab_rounds", "compute_seconds"]
    summ = summarize(res)
    for setting, g in summ.groupby("setting", sort=False):
        print(f"\n=== {setting}")
        print(g[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    pub = published_iterpert()
    print("\n=== " + pub["source"].iloc[0] + " (mse_top20_de_non_dropout, mean over 10 runs)")
    print(pub.pivot_table(index="strategy", columns="budget", values="mean").round(4).to_string())
    print(f"\nsemi-synthetic {t1 - t0:.0f}s, real {t2 - t1:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
