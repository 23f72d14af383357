"""In silico treatment over 1 and 2 ranks (torchrun, gloo on the CPU): wall time, speed-up and equality.

Same model, cells and settings in one run: ``geneformer-v1-10m`` (random weights, seed 0, the shared
gc30M dictionary) on real Kang 2018 stimulated PBMCs tokenized at 2,048 tokens, screen mode over every
gene of each cell, shift toward the control state (``--start stim --goal ctrl``), fp32, chunks of
``--chunk-cells``. Each run is the README's command::

    torchrun --standalone --nproc_per_node N -m netformer -- perturb MODEL CELLS --out OUT ...

with ``OMP_NUM_THREADS`` unset, so :func:`netformer.distributed.place` gives each of the N ranks
``cores // N`` threads (1 rank: PyTorch's default, every core); and 1 rank with 1 thread, the per-rank
throughput a projection scales (speed-ups are against that row). The state positions (``--state-cells``
per state) are computed once, on rank 0, before the chunks start (not sharded). Timed: the whole command (Python start,
imports and model load included, which do not shrink with N), and the perturbation itself (from the
first chunk started to the merged tables written, read off the run's files). Equality: the merged
``results.parquet`` and ``genes.csv`` of 2 ranks against the 1-rank, 1-thread run (each of the 2 ranks
runs 1 thread on 2 cores: the same kernels, so bitwise equality is expected; the largest difference is
printed too).

Run: ``python benchmarks/perturb_ranks.py [--cells 16]`` (about 5 minutes on 2 CPU cores); writes
``benchmarks/results/perturb_ranks.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def setup(work: Path) -> tuple[Path, Path]:
    from netformer.genes import GeneVocab
    from netformer.model import model_config, new_model, save_model
    from netformer.tokenize import TranscriptomeTokenizer

    model_dir, cells = work / "model", work / "kang_tok"
    if model_dir.exists() and cells.exists():
        return model_dir, cells
    vocab = GeneVocab.from_geneformer(SHARED / "genes" / "geneformer_gc30M")
    TranscriptomeTokenizer(vocab, model_input_size=2048, obs_columns=["condition"]).write(
        SHARED / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", cells, overwrite=True)
    save_model(new_model(model_config("geneformer-v1-10m", vocab), seed=0), model_dir, vocab=vocab, overwrite=True)
    return model_dir, cells


def run(n: int, model_dir: Path, cells: Path, out: Path, args, threads: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "netformer", "--", "perturb", str(model_dir), str(cells), "--out", str(out), "--mode", "screen",
           "--state-column", "condition", "--start", "stim", "--goal", "ctrl", "--max-cells", str(args.cells),
           "--chunk-cells", str(args.chunk_cells), "--max-state-cells", str(args.state_cells), "--device", "cpu", "--precision", "fp32", "--seed", "0"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{n} ranks failed:\n{r.stderr[-4000:]}")
    first = min(p.stat().st_mtime for p in (out / "shards").iterdir())
    states = (out / "states.parquet").stat().st_mtime
    last = (out / "results.parquet").stat().st_mtime
    return {"ranks": n, "threads_per_rank": threads or max(1, (os.cpu_count() or 1) // n), "wall_s": wall, "perturb_s": last - states, "first_shard_after_states_s": first - states}


def table(df: pd.DataFrame) -> list[str]:
    return ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, default=24)
    p.add_argument("--chunk-cells", type=int, default=2)
    p.add_argument("--state-cells", type=int, default=100, help="cells per state position (computed on rank 0)")
    p.add_argument("--work", type=Path, default=Path("/tmp/netformer_bench/perturb_ranks"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "perturb_ranks.md")
    args = p.parse_args()

    from netformer.precision import describe_hardware

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, cells = setup(args.work)
    rows = []
    for n, threads in ((1, 1), (1, None), (2, None)):
        out = args.work / f"out_{n}_{threads or 'auto'}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        rows.append(run(n, model_dir, cells, out, args, threads))
        print(rows[-1], flush=True)
    # against the 1-rank, 1-thread run: each of 2 ranks also runs 1 thread on 2 cores
    runs = [args.work / "out_1_1", args.work / "out_2_auto"]
    a, b = (pd.read_parquet(r / "results.parquet") for r in runs)
    ga, gb = (pd.read_csv(r / "genes.csv") for r in runs)
    same_rows = a[["cell_index", "perturbed"]].equals(b[["cell_index", "perturbed"]])
    num = [c for c in a.columns if c.startswith(("shift", "cell_effect"))]
    diff = float(np.nanmax(np.abs(a[num].to_numpy(float) - b[num].to_numpy(float)))) if same_rows else float("nan")
    bitwise = same_rows and a.equals(b)
    rank_same = ga["ensembl_id"].head(50).tolist() == gb["ensembl_id"].head(50).tolist()
    t = pd.DataFrame(rows)
    t["speedup_wall"] = t["wall_s"].iloc[0] / t["wall_s"]
    t["speedup_perturb"] = t["perturb_s"].iloc[0] / t["perturb_s"]
    t["cells_per_s_per_rank"] = args.cells / t["perturb_s"] / t["ranks"]
    lines = [
        "# In silico treatment over 1 and 2 ranks (torchrun, gloo, CPU)", "",
        f"`python benchmarks/perturb_ranks.py --cells {args.cells} --chunk-cells {args.chunk_cells} --state-cells {args.state_cells}`, "
        f"{time.strftime('%Y-%m-%d')}; {describe_hardware('cpu')}; {os.cpu_count()} CPUs.", "",
        f"geneformer-v1-10m (random weights), {args.cells} stimulated Kang 2018 cells at 2,048 tokens, screen mode "
        f"over all genes, shift toward ctrl, fp32; {len(a)} perturbations.", "",
        *table(t.round(3)), "",
        f"- same perturbations in the same order: {same_rows}; bitwise equal tables: {bitwise}; "
        f"largest difference in shifts: {diff:.3g}",
        f"- the same top-50 genes in the same order in genes.csv: {rank_same}",
        "- wall_s includes Python start, imports, model load and the state embeddings (done once, on rank 0);"
        " perturb_s is from the state embeddings written to the merged tables written.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
