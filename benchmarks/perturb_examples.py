"""Real-data in silico treatment examples (results under benchmarks/results/).

1. ``kang``: Kang 2018 PBMCs, 6 h interferon-beta stimulated (``stim``) vs control (``ctrl``).
   In silico treatment of stimulated cells toward the control state: every expressed gene of
   ``--cells`` stimulated cells is deleted one at a time (``--mode exact``: every perturbation
   evaluated exactly; ``--mode screen``: first-order estimate for all genes, exact evaluation of the
   top ``--top-k`` per cell), genes ranked by the mean shift toward ctrl. A subset of
   ``--exact-cells`` cells is run in both modes over all genes to measure rank agreement.
2. ``mono``: pbmc3k, CD14+ monocytes toward FCGR3A+ monocytes (alternative state: dendritic cells).

Model: the ``small`` preset pretrained on pooled real PBMCs by ``perturb_model.py``
(``--model`` to use another model directory or a checkpoint).

Run: ``python benchmarks/perturb_examples.py kang`` and ``python benchmarks/perturb_examples.py mono``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from netformer.classify.genesets import INTERFERON_STIMULATED_GENES
from netformer.datasets import shared_data_dir

HERE = Path(__file__).parent
RESULTS = HERE / "results"
TMP = RESULTS / "tmp"

# Interferon-stimulated genes (Schoggins et al. 2011; Kang et al. 2018 stim-up genes; source in
# netformer.classify.genesets); used only to count how many of the top-ranked genes are known ISGs, never in the
# ranking itself.
KNOWN_ISGS = INTERFERON_STIMULATED_GENES


TABLE_COLUMNS = ["symbol", "ensembl_id", "n_cells", "mean_shift", "fdr_vs_pooled", "fdr_vs_null"]


def markdown_table(part, isg_column: bool) -> list[str]:
    """Markdown rows for a slice of a :func:`netformer.perturb.gene_stats` table (rank = row index + 1)."""
    cols = TABLE_COLUMNS
    lines = ["| rank | " + " | ".join(cols) + (" | known ISG |" if isg_column else " |"),
             "|---" * (len(cols) + 1 + isg_column) + "|"]
    for i, r in part.iterrows():
        vals = [str(r[c]) if c in ("symbol", "ensembl_id", "n_cells") else f"{r[c]:.3g}" for c in cols]
        isg = f" | {'yes' if r['symbol'] in KNOWN_ISGS else ''} |" if isg_column else " |"
        lines.append(f"| {i + 1} | " + " | ".join(vals) + isg)
    return lines


def prepare_model(model_arg: str | None) -> Path:
    """The pretrained model directory (a Trainer checkpoint gets the vocabulary copied in)."""
    from netformer.tokenize import build_vocab

    sys_path = Path(__file__).parent
    import sys

    sys.path.insert(0, str(sys_path))
    from perturb_model import OUT, pbmc_files

    src = Path(model_arg) if model_arg else OUT / "model"
    if (src / "token_dictionary.json").exists():
        return src
    dst = TMP / f"perturb_model_{src.name}"
    if not (dst / "token_dictionary.json").exists():
        vocab = build_vocab(pbmc_files(), min_cells=10, name="pbmc-pooled")
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(src / f, dst / f)
        for f in ("token_dictionary.json", "gene_median_dictionary.json"):
            pass
        vocab_dir = TMP / "vocab_tmp"
        if vocab_dir.exists():
            shutil.rmtree(vocab_dir)
        vocab.save(vocab_dir)
        for f in vocab_dir.iterdir():
            shutil.copy(f, dst / f.name)
    return dst


def run_example(name: str, model_dir: Path, n_cells: int, top_k: int, n_exact: int, mode: str) -> None:
    from netformer.genes import model_vocab
    from netformer.perturb import CellStates, PerturbConfig, StatsConfig, gene_stats, perturb, rank_agreement, write_stats
    from netformer.tokenize import TranscriptomeTokenizer

    scrna = shared_data_dir() / "scrna"
    vocab = model_vocab(model_dir)
    if name == "kang":
        path, col = scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", "condition"
        states = CellStates(col, start="stim", goal="ctrl")
        title = "Kang 2018: delete each gene in IFN-beta stimulated cells, shift toward ctrl"
    else:
        path, col = scrna / "pbmc3k_raw_labeled.h5ad", "cell_type"
        states = CellStates(col, start="CD14+ Monocytes", goal="FCGR3A+ Monocytes", alternatives=("Dendritic cells",))
        title = "pbmc3k: delete each gene in CD14+ monocytes, shift toward FCGR3A+ monocytes"
    ds = TranscriptomeTokenizer(vocab, model_input_size=256, obs_columns=[col]).tokenize(path)
    out = TMP / f"isp_{name}_{mode}"
    cfg = PerturbConfig(genes="all", mode=mode, top_k=top_k, max_cells=n_cells, seed=0, chunk_cells=20,
                        max_state_cells=1000, device="cpu")
    t0 = time.perf_counter()
    res = perturb(model_dir, ds, cfg, states=states, out_dir=out, overwrite=False)
    t_screen = time.perf_counter() - t0
    table = gene_stats(res.results, StatsConfig(seed=0, min_cells=5))
    write_stats(table, RESULTS / f"perturb_{name}", res.results, title=title)
    # exact mode over all genes on a subset, for rank agreement
    ex_cfg = PerturbConfig(genes="all", mode="exact", max_cells=n_exact, seed=1, chunk_cells=4, device="cpu")
    t0 = time.perf_counter()
    ex = perturb(model_dir, ds, ex_cfg, states=states, out_dir=TMP / f"isp_{name}_agree_exact")
    t_exact = time.perf_counter() - t0
    scr_cfg = PerturbConfig(genes="all", mode="screen", top_k=top_k, max_cells=n_exact, seed=1, chunk_cells=4,
                            device="cpu")
    scr = perturb(model_dir, ds, scr_cfg, states=states, out_dir=TMP / f"isp_{name}_agree_screen")
    rows = []
    for cell, g in scr.results.groupby("cell_index"):
        e = ex.results[ex.results["cell_index"] == cell].set_index("perturbed").loc[g["perturbed"], "shift_goal"]
        rows.append({"cell_index": cell, **rank_agreement(g["shift_estimate"].to_numpy(), e.to_numpy(), top=20)})
    agree = pd.DataFrame(rows)
    agree.to_csv(RESULTS / f"perturb_{name}" / "rank_agreement.csv", index=False)
    top = table.head(20)
    isg = [s in KNOWN_ISGS for s in top["symbol"]]
    tested = table[table["n_cells"] >= 5].reset_index(drop=True)
    isg_rank = tested.index[tested["symbol"].isin(KNOWN_ISGS)].to_numpy() + 1
    summary = {
        "example": name, "model": str(model_dir), "cells_screened": int(res.results["cell_index"].nunique()),
        "mode": mode, "perturbations": int(len(res.results)),
        "exact_evaluations": int(res.results["exact"].sum()) if "exact" in res.results else int(len(res.results)),
        "screen_seconds": round(t_screen, 1), "exact_subset_cells": int(ex.results["cell_index"].nunique()),
        "exact_subset_seconds": round(t_exact, 1),
        "spearman_mean": float(agree["spearman"].mean()), "top20_overlap_mean": float(agree["top_overlap"].mean()),
        "genes_tested": int(len(tested)), "skipped": res.skipped,
    }
    if name == "kang":
        summary["known_isgs_in_top20"] = int(sum(isg))
        summary["known_isgs_tested"] = int(len(isg_rank))
        summary["known_isg_median_rank"] = float(np.median(isg_rank)) if len(isg_rank) else None
    (RESULTS / f"perturb_{name}" / "summary.json").write_text(json.dumps(summary, indent=1))
    md = [f"# {title}", "", "```", json.dumps(summary, indent=1), "```", ""] + markdown_table(top, name == "kang")
    (RESULTS / f"perturb_{name}" / "top20.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("example", choices=["kang", "mono"])
    ap.add_argument("--model", default=None, help="model directory or Trainer checkpoint")
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--top-k", type=int, default=30)
    ap.add_argument("--exact-cells", type=int, default=12)
    ap.add_argument("--mode", default="exact", choices=["exact", "screen"], help="mode of the main run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    model_dir = prepare_model(args.model)
    run_example(args.example, model_dir, args.cells, args.top_k, args.exact_cells, args.mode)


if __name__ == "__main__":
    main()
