"""Fine-tuning figures of issue 3, measured on the real data of ../shared/data.

Every figure is printed beside its baseline measured in the same run on the same split:

- ``pbmc``: 5-fold CV macro-F1 of the fine-tuned encoder vs logistic regression on 50 PCs
  (PCA fitted on the training cells of each fold) - pbmc3k published cell types;
- ``kang``: the same for interferon-beta stimulated vs control PBMCs (Kang 2018);
- ``pancreas``: human+mouse pancreas (Baron 2016 subset) with folds grouped by donor;
- ``tf``: transcription factors (GO:0003700) vs other GO-annotated expressed genes, 5-fold CV over
  genes, AUC vs logistic regression on per-gene expression statistics;
- ``integration``: scib-style metrics of our embedding and the PCA baseline on the four 10x PBMC
  batches;
- ``speed``: seconds per training epoch on CPU of a 6-layer encoder of the ``geneformer-v1-10m``
  shape on 2,000 pbmc3k cells (input 2,048), our loop beside the Hugging Face ``Trainer`` (upstream
  Geneformer's path) on the same cells, ratio printed;
- ``search``: a small Optuna search (cell types), its best trial.

The encoder: ``--model DIR`` reuses a pretrained model directory; otherwise the ``small`` preset is
pretrained by masked gene prediction on the pooled human cells of ../shared/data/scrna and cached
in ``benchmarks/results/tmp/pretrained_small`` (git-ignored). Results are written to
``benchmarks/results/finetune_<task>*.csv`` and appended to ``benchmarks/results/finetune.md``.

Usage::

    python benchmarks/finetune_pbmc.py pretrain
    python benchmarks/finetune_pbmc.py pbmc kang pancreas tf integration search speed
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "tmp"
SCRNA = ROOT.parent / "shared" / "data" / "scrna"
log = logging.getLogger("finetune_bench")

PRETRAIN_FILES = ["pbmc3k_raw_labeled.h5ad", "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad",
                  "pbmc_10x_3batches/1k_PBMC_v2_raw.h5ad", "pbmc_10x_3batches/1k_PBMC_v3_filt.h5ad",
                  "pbmc_10x_3batches/5prime_PBMC_filt_1kcells.h5ad", "cider_baron_pancreas_350cells_raw.h5ad"]


def report(title: str, df: pd.DataFrame, cmd: str) -> None:
    text = df.to_string() if not isinstance(df, str) else df
    print(f"\n== {title} ==\n{text}\n")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(RESULTS / "finetune.md", "a") as fh:
        fh.write(f"\n### {title}\n\n`{cmd}` ({stamp}, {os.cpu_count()} CPU cores shared)\n\n```\n{text}\n```\n")


def pretrained(args) -> Path:
    """The encoder directory: --model, or the cached small model (pretrained here if absent)."""
    if args.model:
        return Path(args.model)
    out = CACHE / "pretrained_small"
    if (out / "model" / "config.json").exists():
        return out / "model"
    import datasets

    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import TranscriptomeTokenizer, build_vocab

    paths = [SCRNA / f for f in PRETRAIN_FILES]
    vocab = build_vocab(paths, min_cells=10, name="netformer-bench-human")
    tok = TranscriptomeTokenizer(vocab, model_input_size=args.max_length)
    parts = [tok.tokenize(p).select_columns(["input_ids", "length"]) for p in paths]
    ds = datasets.concatenate_datasets(parts).shuffle(seed=0)
    cfg = PretrainConfig(preset="small", max_length=args.max_length, epochs=args.pretrain_epochs,
                         max_steps=args.pretrain_steps, batch_size=16,
                         learning_rate=1e-3, warmup_steps=100, weight_decay=0.001, save_steps=200, seed=0)
    t0 = time.perf_counter()
    res = pretrain(ds, vocab, out, cfg)
    hist = pd.DataFrame(res.loss_history)
    report("pretraining of the benchmark encoder (small preset)",
           pd.DataFrame({"cells": [len(ds)], "genes_in_vocab": [len(vocab.genes)], "steps": [res.n_steps],
                         "first_loss": [hist["loss"].iloc[0]], "last_loss": [hist["loss"].iloc[-1]],
                         "seconds": [time.perf_counter() - t0]}),
           f"python benchmarks/finetune_pbmc.py pretrain --pretrain-steps {args.pretrain_steps}")
    return res.model_dir


def _cfg(args, **kw):
    from netformer.classify import FinetuneConfig

    base = dict(epochs=args.epochs, batch_size=16, learning_rate=args.lr, warmup_ratio=0.1, weight_decay=0.01,
                freeze_layers=args.freeze, max_length=args.max_length, class_weights=args.class_weights, seed=0)
    base.update(kw)
    return FinetuneConfig(**base)


def _cv_report(name, cv, cmd):
    folds = cv.folds
    folds.to_csv(RESULTS / f"finetune_{name}_folds.csv", index=False)
    s = cv.summary()
    table = pd.DataFrame({
        "model": [s.loc["model_macro_f1", "mean"], s.loc["model_accuracy", "mean"], s.loc["model_auc", "mean"]],
        "baseline": [s.loc["baseline_macro_f1", "mean"], s.loc["baseline_accuracy", "mean"],
                     s.loc["baseline_auc", "mean"]],
        "model_sd": [s.loc["model_macro_f1", "std"], s.loc["model_accuracy", "std"], s.loc["model_auc", "std"]],
        "baseline_sd": [s.loc["baseline_macro_f1", "std"], s.loc["baseline_accuracy", "std"],
                        s.loc["baseline_auc", "std"]],
    }, index=["macro_f1", "accuracy", "auc"]).round(4)
    table.to_csv(RESULTS / f"finetune_{name}.csv")
    report(f"{name}: {len(folds)}-fold CV, fine-tuned model vs baseline ({cv.pooled.baseline_name}); "
           f"{folds['seconds_per_epoch'].mean():.1f} s/epoch", table, cmd)
    cv.pooled.save(CACHE / f"eval_{name}")


def task_cells(args, name, path, label, n_splits, group=None, n_cells=None, cmd=""):
    from netformer.classify import cross_validate_cells, tokenize_cells
    from netformer.genes import model_vocab

    mdir = pretrained(args)
    cols = [label] + ([group] if group else [])
    data = tokenize_cells(SCRNA / path, model_vocab(mdir), max_length=args.max_length, obs_columns=cols,
                          n_cells=n_cells, seed=0)
    y = pd.Series(data.dataset[label])
    counts = y.value_counts()
    rare = counts[counts < n_splits]
    if len(rare):  # a class must have a member in every fold
        log.warning("dropping classes with fewer than %d cells: %s", n_splits, rare.to_dict())
        data = data.subset(np.flatnonzero((~y.isin(rare.index)).to_numpy()))
    cv = cross_validate_cells(mdir, data, label, n_splits=n_splits, group_column=group, config=_cfg(args),
                              drop_missing=True)
    _cv_report(name + ("_balanced" if args.class_weights else ""), cv, cmd)


def task_tf(args, cmd):
    from netformer.classify import cross_validate_genes, tf_gene_labels, tokenize_cells
    from netformer.genes import model_vocab

    mdir = pretrained(args)
    vocab = model_vocab(mdir)
    data = tokenize_cells(SCRNA / "pbmc3k_raw_labeled.h5ad", vocab, max_length=args.max_length,
                          n_cells=args.tf_cells, seed=0)
    labels = tf_gene_labels(vocab)
    cv = cross_validate_genes(mdir, data, labels, n_splits=5, config=_cfg(args, class_weights="balanced"))
    counts = cv.pooled.predictions["true"].value_counts().to_dict()
    log.info("genes: %s", counts)
    _cv_report("tf_genes", cv, cmd)


def task_integration(args, cmd):
    from netformer.integration import integrate_batches

    mdir = pretrained(args)
    batches = {"pbmc3k": SCRNA / "pbmc3k_raw_labeled.h5ad"}
    for n in ("1k_PBMC_v2_raw", "1k_PBMC_v3_filt", "5prime_PBMC_filt_1kcells"):
        batches[n] = SCRNA / "pbmc_10x_3batches" / f"{n}.h5ad"
    res = integrate_batches(mdir, batches, n_cells_per_batch=args.integration_cells, output_dir=CACHE / "integration",
                            max_length=args.max_length)
    res.table.round(4).to_csv(RESULTS / "finetune_integration.csv")
    import shutil

    shutil.copy(CACHE / "integration" / "integration_umap.png", RESULTS / "integration_umap.png")
    report(f"integration: 4 PBMC batches x {args.integration_cells} cells, scib-style metrics (higher = better)",
           res.table.round(4), cmd)


def task_search(args, cmd):
    from netformer.classify import SearchSpace, search_cells, tokenize_cells
    from netformer.genes import model_vocab

    mdir = pretrained(args)
    data = tokenize_cells(SCRNA / "pbmc3k_raw_labeled.h5ad", model_vocab(mdir), max_length=args.max_length,
                          obs_columns=["cell_type"], n_cells=args.cells or 1200, seed=0)
    data = data.subset([i for i, v in enumerate(data.dataset["cell_type"]) if v is not None])
    space = SearchSpace(learning_rate=(1e-4, 3e-3), epochs=(2, 6), batch_size=(16, 32), freeze_layers=(0, 2))
    res = search_cells(mdir, data, "cell_type", n_trials=args.trials, space=space, base_config=_cfg(args))
    res.trials.round(5).to_csv(RESULTS / "finetune_search_trials.csv", index=False)
    best = res.trials.loc[res.trials["val_macro_f1"].idxmax()]
    report(f"Optuna search ({args.trials} trials, pbmc3k {len(data)} labelled cells, 80/20 split); baseline validation macro-F1 "
           f"{res.baseline['macro_f1']:.4f}", res.trials.round(4).to_string(index=False) + f"\n\nbest trial:\n{best.to_string()}",
           cmd)


def task_speed(args, cmd):
    """Seconds per epoch: our loop vs the Hugging Face Trainer, 6-layer V1-10M-shaped encoder."""
    import torch
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    from netformer.classify import CellClassifier, FinetuneConfig, tokenize_cells
    from netformer.model import model_config, new_model, save_model
    from netformer.tokenize import build_vocab

    vocab = build_vocab([SCRNA / "pbmc3k_raw_labeled.h5ad"], min_cells=10, name="pbmc3k")
    mdir = CACHE / "v1shape_random"
    if not (mdir / "config.json").exists():
        cfg = model_config("geneformer-v1-10m", vocab=vocab, vocab_size=vocab.vocab_size)
        save_model(new_model(cfg, seed=0), mdir, vocab=vocab, overwrite=True)
    data = tokenize_cells(SCRNA / "pbmc3k_raw_labeled.h5ad", vocab, max_length=2048, obs_columns=["cell_type"])
    data = data.subset([i for i, v in enumerate(data.dataset["cell_type"]) if v is not None][: args.speed_cells])
    ds = data.dataset
    n_tok = int(np.sum(ds["length"]))
    fc = FinetuneConfig(epochs=1, batch_size=16, learning_rate=5e-5, max_length=2048, device="cpu")
    ours = CellClassifier(mdir, fc).fit(ds, "cell_type").history_[0]["seconds"]
    # the same loop with the model's own attention dropout (upstream keeps it): the unfused attention path
    drop_n = min(args.speed_ref_cells, len(ds))
    fc_drop = FinetuneConfig(**{**fc.to_dict(), "attention_dropout": None})
    ours_drop = CellClassifier(mdir, fc_drop).fit(ds.select(range(drop_n)), "cell_type").history_[0]["seconds"]
    ours_drop *= len(ds) / drop_n
    # Reference: upstream's path, HF Trainer with length-grouped sampling and dynamic padding.
    classes = sorted(set(ds["cell_type"]))
    ref_n = min(args.speed_ref_cells, len(ds))
    sub = ds.select(range(ref_n)).map(lambda r: {"labels": classes.index(r["cell_type"])})
    sub = sub.select_columns(["input_ids", "labels", "length"])
    model = BertForSequenceClassification.from_pretrained(str(mdir), num_labels=len(classes), attn_implementation="sdpa")

    def collate(feats):
        from netformer.encoder import pad_batch

        ids, mask = pad_batch([f["input_ids"] for f in feats], vocab.pad_id, 2048)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in feats])}

    targs = TrainingArguments(output_dir=str(CACHE / "speed_trainer"), per_device_train_batch_size=16,
                              num_train_epochs=1, learning_rate=5e-5, report_to="none", save_strategy="no",
                              logging_steps=1000, use_cpu=True, remove_unused_columns=False,
                              train_sampling_strategy="group_by_length", length_column_name="length", seed=0)
    t0 = time.perf_counter()
    Trainer(model=model, args=targs, train_dataset=sub, data_collator=collate).train()
    ref = (time.perf_counter() - t0) * len(ds) / ref_n
    times = [ours, ours_drop, ref]  # seconds for all len(ds) cells
    table = pd.DataFrame({
        "cells_timed": [len(ds), drop_n, ref_n], "mean_tokens_per_cell": [n_tok / len(ds)] * 3,
        "cells_per_second": [len(ds) / t for t in times],
        "seconds_per_epoch_2000_cells": [t * 2000 / len(ds) for t in times],
    }, index=["netformer loop", "netformer loop, attention dropout 0.02 (model's)", "HF Trainer (upstream path)"]).round(2)
    table.to_csv(RESULTS / "finetune_speed.csv")
    report(f"speed: fine-tuning epoch of a 6-layer geneformer-v1-10m-shaped encoder on pbmc3k cells (input 2,048), "
           f"CPU, torch threads={torch.get_num_threads()}; epoch time for 2,000 cells = measured time per cell x 2,000; "
           f"Trainer/ours = {ref / ours:.2f}; ours with attention dropout/ours = {ours_drop / ours:.2f}", table, cmd)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tasks", nargs="+", choices=["pretrain", "pbmc", "kang", "pancreas", "tf", "integration",
                                                "search", "speed"])
    p.add_argument("--model", help="reuse this pretrained model directory")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--pretrain-epochs", type=float, default=2.0)
    p.add_argument("--pretrain-steps", type=int, default=600, help="cap on pretraining steps (-1: epochs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--class-weights", choices=["balanced"], default=None,
                   help="weight the cross-entropy by inverse class frequency (cell tasks; the TF task always does)")
    p.add_argument("--freeze", type=int, default=0, help="freeze the embeddings and the first N encoder layers")
    p.add_argument("--cells", type=int, default=None, help="random subsample of cells for pbmc / kang")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    p.add_argument("--tf-cells", type=int, default=800)
    p.add_argument("--integration-cells", type=int, default=500)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--speed-cells", type=int, default=2000)
    p.add_argument("--speed-ref-cells", type=int, default=400)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/finetune_pbmc.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for t in args.tasks:
        t0 = time.perf_counter()
        if t == "pretrain":
            pretrained(args)
        elif t == "pbmc":
            task_cells(args, "pbmc3k_cell_types", "pbmc3k_raw_labeled.h5ad", "cell_type", 5, n_cells=args.cells,
                       cmd=cmd)
        elif t == "kang":
            task_cells(args, "kang_ctrl_stim", "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", "condition", 5,
                       n_cells=args.cells, cmd=cmd)
        elif t == "pancreas":
            task_cells(args, "pancreas_by_donor", "cider_baron_pancreas_350cells_raw.h5ad", "cell_type", 3,
                       group="donor", cmd=cmd)
        elif t == "tf":
            task_tf(args, cmd)
        elif t == "integration":
            task_integration(args, cmd)
        elif t == "search":
            task_search(args, cmd)
        elif t == "speed":
            task_speed(args, cmd)
        log.info("task %s took %.0f s", t, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
