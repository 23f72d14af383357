"""GraphReach on the foundation model's gene graph (prior fm, fm+go) vs on GO, on the REAL Norman 2019
devel set (issue 15 part 3, the selection-graph use).

On the norman19 cells of devel.h5ad, for every test split (``--splits`` data seeds; 20% of the singles plus every double held out, the rest
the pool) and prior, :func:`netformer.select.benchmark.benchmark_file` selects with GraphReach and with
random (``--seeds`` draws) at budgets 2, 4, 6, 8, 10, fits the ridge model (on GO) on the chosen
singles and scores the test set. A split is one paired observation of FM vs GO (GraphReach is
deterministic given the graph).

    OMP_NUM_THREADS=1 python benchmarks/select_fm_prior.py --model-dir netformer_demo/cells/pretrain/model \
        --out benchmarks/results/select_fm_prior [--splits 10] [--seeds 5]

Writes results.csv (every row of every run) and table.md (mean mse_top20_de over splits, paired
difference of each prior's GraphReach to GO's GraphReach with its Wilcoxon p-value).

SEMI-SYNTHETIC counterpart: run ``netformer select benchmark --prior P --model-dir DIR --model ridge --model sgc
--oneshot graphreach --oneshot random --strategy random --seeds 10 --no-positive-control --out RUNS/P`` for P in
go, fm, fm+go (same seeds = same test splits and noise), then

    python benchmarks/select_fm_prior.py --compare RUNS --out OUT

writes OUT/semisynthetic_table.md: per model and budget, GraphReach's mse_top20_de on each prior, and the
paired difference (over seeds) of fm / fm+go to go with Wilcoxon p and BH q over the table. With
``--method iterpert`` (runs made with ``--prior-use kernel --strategy iterpert``) the compared method is
IterPert and the table OUT/semisynthetic_kernel_table.md; with ``--use model`` (runs made with
``--prior-use model``) GraphReach's error under each model graph, OUT/semisynthetic_model_table.md.

The other uses of the prior (issue 15 part 3) on the REAL devel set:

* ``--use kernel``: IterPert with the prior's graph kernel (``prior_uses=("kernel",)``) against IterPert
  with the GO kernel, and active random, at the same budgets and splits; table_kernel.md.
* ``--use model``: the outcome models' gene graph, leave-one-perturbation-out: for each of the 18 norman19
  singles, ridge / SGC / GEARS fitted on the other 17 singles with the GO, FM or FM+GO graph
  (:func:`netformer.select.benchmark.prior_edges`) predict the held-out one; fitted on all 18 they
  predict the 15 doubles; ridge also with the FM static embeddings themselves as its perturbation
  embedding (``RidgeModel(pert_embedding=embedding_table(fm_embeddings(DIR)))``, "fm embedding").
  Paired over perturbations (each against GO), Wilcoxon p, BH q over the table;
  table_model.md and results_model.csv. ``--gears-epochs`` (default 5) keeps GEARS on a CPU budget.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd


def _prior_name(labels: pd.Series) -> pd.Series:
    """The prior of a row's ``prior`` label without its uses: ``fm[kernel]`` -> ``fm``."""
    return labels.str.replace(r"\[.*\]$", "", regex=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir")
    ap.add_argument("--compare", type=Path, help="folder of go/, fm/, fm+go/ semi-synthetic runs")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=None, help="default: <shared data>/perturbseq/devel.h5ad")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="2,4,6,8,10")
    ap.add_argument("--use", choices=("selection", "kernel", "model"), default="selection")
    ap.add_argument("--method", choices=("graphreach", "iterpert"), default="graphreach",
                    help="--compare: the method whose error is compared across priors")
    ap.add_argument("--gears-epochs", type=int, default=5)
    args = ap.parse_args()
    if args.compare is not None:
        return compare(args.compare, args.out, args.method, args.use)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.use == "model":
        return leave_one_out(args)
    from scipy.stats import wilcoxon

    from netformer.datasets import shared_data_dir
    from netformer.select.benchmark import BenchmarkConfig, benchmark_file

    data = args.data or shared_data_dir() / "perturbseq" / "devel.h5ad"
    budgets = tuple(int(b) for b in args.budgets.split(","))
    kernel = args.use == "kernel"
    main_method, methods = ("iterpert", ("iterpert", "random")) if kernel else ("graphreach", ("graphreach", "random"))
    frames = []
    for prior in ("go", "fm", "fm+go"):
        cfg = BenchmarkConfig(budgets=budgets, seeds=tuple(range(args.seeds)),
                              oneshot=() if kernel else ("graphreach", "random"),
                              strategies=("iterpert", "random") if kernel else (), positive_control=False,
                              prior=prior, model_dir=None if prior == "go" else args.model_dir,
                              prior_uses=(args.use,))
        for split in range(args.splits):
            res = benchmark_file(data, cfg, seed=split, subset={"dataset": "norman19"})
            res["split"] = split
            frames.append(res)
    res = pd.concat(frames, ignore_index=True)
    res["prior"] = _prior_name(res["prior"])
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_kernel" if kernel else ""
    res.to_csv(args.out / f"results{suffix}.csv", index=False)
    per = res.groupby(["prior", "method", "budget", "split"])["mse_top20_de"].mean().unstack("split")
    lines = ["| budget | " + " | ".join(f"{p} {m}" for p in ("go", "fm", "fm+go") for m in methods)
             + f" | fm - go ({main_method}), p | fm+go - go ({main_method}), p |",
             "|---" * 9 + "|"]
    for b in budgets:
        cells = [f"{per.loc[(p, m, b)].mean():.4f}" for p in ("go", "fm", "fm+go") for m in methods]
        go = per.loc[("go", main_method, b)]
        for p in ("fm", "fm+go"):
            d = per.loc[(p, main_method, b)] - go
            pval = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
            cells.append(f"{d.mean():+.4f}, p={pval:.3f}")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / f"table{suffix}.md").write_text(table + "\n")
    print(table)


def leave_one_out(args) -> None:
    """The ``--use model`` benchmark (module docstring)."""
    import time

    from netformer.datasets import shared_data_dir
    from netformer.graphs import embedding_table, go_graph
    from netformer.perturbseq.data import read_perturbseq
    from netformer.perturbseq.metrics import evaluate
    from netformer.perturbseq.models import RidgeModel
    from netformer.select.benchmark import BenchmarkConfig, bh_qvalues, model_factory, paired_test, prior_edges
    from netformer.select.priors import fm_embeddings

    data = read_perturbseq(args.data or shared_data_dir() / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
    go_e = go_graph(None)
    singles = sorted(data.singles)
    graphs = {"go": go_e}
    for prior in ("fm", "fm+go"):
        graphs[prior] = prior_edges(BenchmarkConfig(prior=prior, model_dir=args.model_dir), singles, go_e)
    table = embedding_table(fm_embeddings(args.model_dir))
    covered = [g for g in singles if g in table.index]
    logging.info("FM embeddings as ridge features: %d of %d singles have one (the others get P = 0)",
                 len(covered), len(singles))
    options = {"gears": {"epochs": args.gears_epochs}}
    runs = [(m, p, model_factory(m, e, 1, options.get(m))) for m in ("ridge", "sgc", "gears") for p, e in graphs.items()]
    runs.insert(3, ("ridge", "fm embedding", lambda: RidgeModel(pert_embedding=table)))
    rows = []
    for model, prior, factory in runs:
        t0 = time.perf_counter()
        folds = [([s for s in singles if s != held], [held], "single") for held in singles]
        folds.append((singles, sorted(data.doubles), "double"))
        for train, test, kind in folds:
            scores = evaluate(factory().fit(data, train), data, test).drop(index="mean")
            for cond, r in scores.iterrows():
                rows.append(dict(model=model, prior=prior, kind=kind, condition=cond,
                                 mse_top20_de=r["mse_top20_de"], pearson_delta=r["pearson_delta"]))
        logging.info("%s on %s: %d fits in %.0f s", model, prior, len(folds), time.perf_counter() - t0)
    res = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    res.to_csv(args.out / "results_model.csv", index=False)
    per = res.set_index(["model", "kind", "prior", "condition"]).sort_index()
    t = []
    for (model, kind, prior), _ in res.groupby(["model", "kind", "prior"], sort=False):
        if prior == "go":
            continue
        go = per.loc[(model, kind, "go")]
        for metric in ("mse_top20_de", "pearson_delta"):
            x = per.loc[(model, kind, prior)][metric]
            t.append(dict(model=model, kind=kind, n=len(go), metric=metric, prior=prior, go=go[metric].mean(),
                          value=x.mean(), diff=(x - go[metric]).mean(),
                          p=paired_test(x.to_numpy(), go[metric].to_numpy())))
    t = pd.DataFrame(t)
    t["q"] = bh_qvalues(t["p"].to_numpy())
    lines = ["| model | held out | n | metric | gene knowledge | GO | it | it - GO (q) |", "|---" * 8 + "|"]
    for d in t.itertuples():
        lines.append(f"| {d.model} | {d.kind}s | {d.n} | {d.metric} | {d.prior} | {d.go:.4f} | {d.value:.4f} | "
                     f"{d.diff:+.4f} ({d.q:.3f}) |")
    text = "\n".join(lines)
    (args.out / "table_model.md").write_text(text + "\n")
    print(text)


def compare(runs: Path, out: Path, method: str = "graphreach", use: str = "selection") -> None:
    from netformer.select.benchmark import bh_qvalues, paired_test

    def read(d: Path) -> pd.DataFrame:   # results.csv as written, or gzipped as kept in the repository
        return pd.read_csv(d / "results.csv" if (d / "results.csv").exists() else d / "results.csv.gz")

    res = pd.concat([read(runs / p) for p in ("go", "fm", "fm+go")], ignore_index=True)
    res["prior"] = _prior_name(res["prior"])
    res = res[(res["method"] == method) & (res["kind"] == ("one-shot" if method == "graphreach" else "active"))]
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
    name = {"selection": "", "kernel": "_kernel", "model": "_model"}[use]
    (out / f"semisynthetic{name}_table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
