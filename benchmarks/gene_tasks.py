"""The paper's gene tasks, run through the CLI recipe on real cells, beside the baseline and the publication.

    python benchmarks/gene_tasks.py [--model DIR] [--tasks dosage-sensitivity ...] [--n-cells 3000]

The cells: the five human PBMC files of ../shared/data/scrna (pbmc3k, Kang 2018 ctrl + stim, the three
10x PBMC batches; 7,602 cells) pooled into one raw-count h5ad on Ensembl ids (written once to
benchmarks/results/tmp/pbmc_pooled.h5ad; genes absent from a file count as not detected there). Each
task runs ``netformer finetune gene POOLED MODEL --task NAME ...`` as a subprocess (the CLI a user
runs), then the table of OUT/gene_task.csv and the gene counts of OUT/gene_task.json are appended to
benchmarks/results/gene_tasks.md with the command line.

The encoder: ``--model DIR``, default the benchmark encoder of benchmarks/finetune_pbmc.py
(``python benchmarks/finetune_pbmc.py pretrain --pretrain-steps 3000``: the small preset pretrained on
the pooled human cells, cached in benchmarks/results/tmp/pretrained_small).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "tmp"
SCRNA = ROOT.parent / "shared" / "data" / "scrna"
FILES = ["pbmc3k_raw_labeled.h5ad", "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad",
         "pbmc_10x_3batches/1k_PBMC_v2_raw.h5ad", "pbmc_10x_3batches/1k_PBMC_v3_filt.h5ad",
         "pbmc_10x_3batches/5prime_PBMC_filt_1kcells.h5ad"]


def pooled_cells() -> Path:
    """The five human PBMC files as one raw-count AnnData on Ensembl ids (cached)."""
    out = CACHE / "pbmc_pooled.h5ad"
    if out.exists():
        return out
    import anndata as ad

    from netformer.genes import looks_like_ensembl

    parts = []
    for f in FILES:
        a = ad.read_h5ad(SCRNA / f)
        if not looks_like_ensembl(a.var_names):
            col = next(c for c in ("ensembl_id", "gene_ids", "gene_id") if c in a.var.columns)
            a = a[:, a.var[col].notna().to_numpy()].copy()
            a.var_names = a.var[col].astype(str).to_numpy()
        a = a[:, ~a.var_names.duplicated()].copy()
        a.var = a.var.iloc[:, :0]
        a.obs = pd.DataFrame({"source": f}, index=[f"{Path(f).stem}:{i}" for i in a.obs_names])
        parts.append(a)
    pooled = ad.concat(parts, join="outer", fill_value=0)
    CACHE.mkdir(parents=True, exist_ok=True)
    pooled.write_h5ad(out)
    print(f"pooled {pooled.n_obs} cells x {pooled.n_vars} genes -> {out}")
    return out


def run_task(task: str, cells: Path, model: Path, args) -> None:
    out = CACHE / f"gene_task_{task}"
    cmd = [sys.executable, "-m", "netformer", "finetune", "gene", str(cells), str(model), "--task", task,
           "--out", str(out), "--folds", "5", "--n-cells", str(args.n_cells), "--epochs", str(args.epochs),
           "--lr", str(args.lr), "--freeze-layers", str(args.freeze), "--class-weights", "balanced",
           "--max-length", str(args.max_length), "--seed", "0"]
    shown = " ".join(["netformer", *cmd[3:]]).replace(str(ROOT) + "/", "")
    if (out / "gene_task.csv").exists() and not args.rerun:  # a finished run: tabulated again, not recomputed
        print(f"{out} holds a finished run of {task}: tabulated again (--rerun recomputes it)")
        seconds = None
    else:
        t0 = time.perf_counter()
        subprocess.run(cmd + (["--overwrite"] if out.exists() else []), check=True)
        seconds = time.perf_counter() - t0
    table = pd.read_csv(out / "gene_task.csv", index_col=0)
    info = json.loads((out / "gene_task.json").read_text())
    text = table.drop(columns="what").round(3).to_string()
    what = "\n".join(f"- {k}: {v}" for k, v in table["what"].items())
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    took = "time not measured: a finished run tabulated again" if seconds is None else f"{seconds:.0f} s"
    block = (f"\n### {task}: {info['description']}\n\n`{shown}` ({stamp}, {os.cpu_count()} CPU cores shared, "
             f"{took})\n\n```\n{text}\n```\n\n{what}\n\ngenes: {json.dumps(info['counts'])}\n")
    print(block)
    with open(RESULTS / "gene_tasks.md", "a") as fh:
        fh.write(block)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=CACHE / "pretrained_small" / "model")
    p.add_argument("--tasks", nargs="+", default=["dosage-sensitivity", "bivalent-vs-nonmethylated",
                                                  "bivalent-vs-lys4"])
    p.add_argument("--n-cells", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--freeze", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rerun", action="store_true", help="recompute tasks whose folder holds a finished run")
    args = p.parse_args(argv)
    if not (args.model / "config.json").exists():
        sys.exit(f"no encoder at {args.model}: run python benchmarks/finetune_pbmc.py pretrain --pretrain-steps 3000 "
                 "first, or pass --model DIR")
    cells = pooled_cells()
    for t in args.tasks:
        run_task(t, cells, args.model, args)


if __name__ == "__main__":
    main()
