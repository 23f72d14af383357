"""Demo step ``states``: a ctrl/stim classifier on Kang 2018, then in silico treatment toward control.

Kang et al. 2018 (Nature Biotechnology 36:89-94) stimulated PBMCs with interferon-beta. The step
reads the 2,000-cell subset in ``../shared/data/scrna`` (not bundled: GEO data without a stated
licence; the step is skipped with one line when the file is absent), and:

1. fine-tunes a :class:`~netformer.classify.CellClassifier` (ctrl vs stim) on the cells step's encoder,
   on 80% of the cells, and scores it on the held-out 20% beside the PCA baseline (logistic regression
   on 50 PCs of log-normalised counts, fitted on the training cells);
2. deletes every expressed gene, one at a time, in ``treat_cells`` stimulated cells
   (:func:`netformer.perturb.perturb`, exact mode, the fine-tuned encoder's last layer as upstream reads
   fine-tuned models) and measures the shift toward the control state;
3. tests each gene deleted in at least ``min_cells_stats`` cells (:func:`netformer.perturb.gene_stats`,
   Mann-Whitney against all perturbations and a random-gene null, Benjamini-Hochberg), and marks the
   known interferon-stimulated genes (:data:`netformer.classify.genesets.INTERFERON_STIMULATED_GENES`)
   among the significant genes. They are used only to read the table, never in the ranking.

Writes into ``states/``: ``classifier/`` (the fine-tuned model), ``isp/`` (the resumable perturbation
run), ``gene_stats.csv`` and its two PNGs, ``top20_significant.csv``.
"""

from __future__ import annotations

import logging

import numpy as np

from .._io import atomic_file

log = logging.getLogger("netformer.demo")

KANG = "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"


def run(ctx) -> tuple[dict, list]:
    """Run the step in ``ctx.dir``; returns ``(metrics, files)``."""
    from ..classify import CellClassifier, FinetuneConfig
    from ..classify.data import load_cells
    from ..classify.genesets import INTERFERON_STIMULATED_GENES
    from ..classify.splits import train_val_test_split
    from ..genes import model_vocab
    from ..perturb import CellStates, PerturbConfig, StatsConfig, gene_stats, perturb, write_stats

    cfg, out = ctx.config, ctx.dir
    from . import shared_file

    path = shared_file("scrna", KANG)
    vocab = model_vocab(ctx.model_dir)
    data = load_cells(path, vocab, max_length=cfg.max_length, obs_columns=["condition"], n_cells=cfg.finetune_cells,
                      seed=cfg.seed)
    y = np.asarray(data.dataset["condition"]).astype(str)
    split = train_val_test_split(y, test_size=0.2, val_size=0.0, seed=cfg.seed)
    tr, te = data.subset(split["train"]), data.subset(split["test"])
    clf_dir = out / "classifier"
    log.info("states: fine-tuning a ctrl/stim classifier on %d Kang 2018 cells (%d held out)", len(tr), len(te))
    if (clf_dir / "config.json").exists():
        clf = CellClassifier.load(clf_dir)
    else:
        fcfg = FinetuneConfig(epochs=cfg.finetune_epochs, learning_rate=5e-4, max_length=cfg.max_length,
                              seed=cfg.seed, device=cfg.device)
        clf = CellClassifier(ctx.model_dir, fcfg).fit(tr.dataset, "condition")
        clf.save(clf_dir, overwrite=True)
    ev = clf.evaluate(te.dataset, "condition", te.adata, train_adata=tr.adata)

    log.info("states: in silico treatment: every expressed gene deleted in %d stimulated cells, shift toward ctrl",
             cfg.treat_cells)
    states = CellStates("condition", start="stim", goal="ctrl")
    pcfg = PerturbConfig(genes="all", mode="exact", layer=-1, max_cells=cfg.treat_cells, seed=cfg.seed,
                         chunk_cells=10, max_length=cfg.max_length, device=cfg.device)
    res = perturb(clf_dir, data.dataset, pcfg, states=states, out_dir=out / "isp")
    table = gene_stats(res.results, StatsConfig(seed=cfg.seed, min_cells=cfg.min_cells_stats))
    table["known_isg"] = table["symbol"].isin(INTERFERON_STIMULATED_GENES)
    paths = write_stats(table, out, res.results, title="Kang 2018: each gene deleted in stimulated cells, shift "
                                                       "toward control")
    tested = table[table["n_cells"] >= cfg.min_cells_stats].reset_index(drop=True)
    sig = tested[(tested["fdr_vs_pooled"] < 0.05) & (tested["mean_shift"] > 0)].reset_index(drop=True)
    top = sig.head(20)
    with atomic_file(out / "top20_significant.csv") as tmp:
        top.to_csv(tmp, index=False)
    isg_rank = tested.index[tested["known_isg"]].to_numpy() + 1
    metrics = {
        "n_cells": len(data), "n_train": len(tr), "n_test": len(te),
        "classifier_macro_f1": round(ev.model.macro_f1, 4), "baseline_macro_f1": round(ev.baseline.macro_f1, 4),
        "classifier_auc": round(ev.model.auc, 4), "baseline_auc": round(ev.baseline.auc, 4),
        "treated_cells": int(res.results["cell_index"].nunique()), "perturbations": int(len(res.results)),
        "genes_tested": int(len(tested)), "significant_toward_goal": int(len(sig)),
        "known_isgs_in_top20_significant": int(top["known_isg"].sum()),
        "known_isgs_tested": int(len(isg_rank)),
        "known_isg_median_rank": float(np.median(isg_rank)) if len(isg_rank) else None,
        "top20_significant": [{"symbol": r.symbol, "n_cells": int(r.n_cells), "mean_shift": float(r.mean_shift),
                               "fdr": float(r.fdr_vs_pooled), "known_isg": bool(r.known_isg)}
                              for r in top.itertuples()],
    }
    log.info("states: classifier macro-F1 %.3f (PCA baseline %.3f); %d of the top 20 significant genes are known "
             "interferon-stimulated genes", ev.model.macro_f1, ev.baseline.macro_f1,
             metrics["known_isgs_in_top20_significant"])
    files = [clf_dir, out / "top20_significant.csv", *[p for p in paths.values()]]
    return metrics, files
