"""Demo step ``cells``: bundled PBMC counts -> tokens -> pretrained model -> embeddings.

Writes into ``cells/``:

========================  ===================================================================
``vocab/``                our token dictionary and gene medians, built from the bundled cells
``tokenized/``            the rank value encodings (Hugging Face ``datasets`` directory)
``pretrain/model/``       the pretrained model (plain Hugging Face directory, safetensors)
``pretrain/checkpoints/`` resumable checkpoints (an interrupted demo resumes from them)
``cells.h5ad``            the cells with ``obsm["X_netformer"]``, ``obsm["X_pca"]``, cell types
``cell_embeddings.parquet``  cell embeddings with cell id and cell type
``umap_cell_type.png``    UMAP of the cell embeddings coloured by cell type
``umap_pca_baseline.png`` the same for the PCA baseline
``training_loss.png``     masked gene prediction loss against step, with the uniform-guess loss
========================  ===================================================================

Cell types come from the project's marker-gene annotation (:mod:`netformer.annotate`), and the
embedding is scored by cross-validated k-nearest-neighbour accuracy of those labels, beside the same
measure on 50 PCA components of log-normalised counts (the standard scanpy baseline). The PCA
baseline has a head start here: the annotation itself was made by clustering those PCA components.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from .._io import atomic_file

log = logging.getLogger("netformer.demo")


def run(ctx) -> tuple[dict, list]:
    """Run the step in ``ctx.dir``; returns ``(metrics, files)``."""
    from .. import annotate
    from ..datasets import pbmc3k
    from ..embed import EmbeddingConfig, embed_cells, knn_accuracy, pca_baseline, umap_plot
    from ..genes import GeneVocab
    from ..model import load_model
    from ..pretrain import PretrainConfig, initial_mlm_loss, plot_loss, pretrain
    from ..tokenize import TranscriptomeTokenizer, build_vocab, load_tokenized

    cfg, out = ctx.config, ctx.dir
    log.info("cells: the bundled 10x pbmc3k raw counts, cell types by marker genes")
    adata = pbmc3k()
    annotate.annotate_pbmc(adata, random_state=cfg.seed)
    if cfg.max_cells is not None and cfg.max_cells < adata.n_obs:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(adata.n_obs, cfg.max_cells, replace=False))
        adata = adata[keep].copy()

    log.info("cells: token dictionary and gene medians from the bundled cells")
    if (out / "vocab").exists():
        vocab = GeneVocab.load(out / "vocab")
    else:
        vocab = build_vocab([adata], name="pbmc3k-demo")
        vocab.save(out / "vocab")

    log.info("cells: rank value encoding")
    tokenizer = TranscriptomeTokenizer(vocab, model_input_size=cfg.max_length, obs_columns=["cell_type"])
    if not (out / "tokenized").exists():
        tokenizer.write([adata], out / "tokenized")
    summary = json.loads((out / "tokenized" / "netformer_tokenizer.json").read_text())["summary"]
    dataset = load_tokenized(out / "tokenized")

    log.info("cells: pretraining the '%s' model by masked gene prediction (%g epochs)", cfg.preset, cfg.epochs)
    pcfg = PretrainConfig(preset=cfg.preset, max_length=cfg.max_length, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                          warmup_steps=cfg.warmup_steps, save_steps=100, logging_steps=10,
                          seed=cfg.seed, device=cfg.device)
    if (out / "pretrain" / "model").exists():
        history = json.loads((out / "pretrain" / "loss_history.json").read_text())["history"]
    else:
        history = pretrain(dataset.select_columns(["input_ids", "length"]), vocab, out / "pretrain", pcfg).loss_history
    uniform = float(initial_mlm_loss(vocab.vocab_size))
    plot_loss(history, out / "training_loss.png", uniform_loss=uniform,
              title=f"masked gene prediction loss ({cfg.preset} model, pbmc3k)")

    log.info("cells: cell embeddings (mean over gene tokens, second to last layer)")
    model = load_model(out / "pretrain" / "model", device=cfg.device)
    emb = embed_cells(model, dataset, EmbeddingConfig(layer=-2, batch_size=64, device=cfg.device), vocab=vocab)

    log.info("cells: k-NN accuracy against the PCA baseline, UMAP plots")
    cells = adata[np.asarray(dataset["cell_id"])].copy() if len(dataset) != adata.n_obs else adata
    n_pcs = min(50, cells.n_obs - 1)
    pca = pca_baseline(cells, n_comps=n_pcs, seed=cfg.seed)
    y = cells.obs["cell_type"].astype(str).to_numpy()
    majority = float(pd.Series(y).value_counts(normalize=True).iloc[0])
    acc_model = knn_accuracy(emb, y, k=cfg.knn_k, seed=cfg.seed)
    acc_pca = knn_accuracy(pca, y, k=cfg.knn_k, seed=cfg.seed)
    umap_plot(emb, y, out / "umap_cell_type.png", title=f"netformer cell embeddings ({cfg.preset}), pbmc3k", seed=cfg.seed)
    umap_plot(pca, y, out / "umap_pca_baseline.png", title="baseline: 50 PCs of log-normalised counts", seed=cfg.seed)
    cells.obsm["X_netformer"] = emb
    cells.obsm["X_pca"] = pca
    with atomic_file(out / "cells.h5ad") as tmp:
        cells.write_h5ad(tmp)
    frame = pd.DataFrame(emb, columns=[f"dim_{i}" for i in range(emb.shape[1])])
    frame.insert(0, "cell_type", y)
    frame.insert(0, "cell_id", cells.obs_names.astype(str))
    with atomic_file(out / "cell_embeddings.parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    metrics = {
        "n_cells": int(summary["n_cells_out"]),
        "n_genes_in_file": int(adata.n_vars),
        "n_genes_in_vocab": len(vocab.genes),
        "mean_tokens_per_cell": round(float(summary["mean_length"]), 1),
        "n_tokens": int(np.sum(dataset["length"])),
        "mapped_count_fraction": round(float(summary["mapped_count_fraction"]), 4),
        "max_length": cfg.max_length,
        "preset": cfg.preset,
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "epochs": cfg.epochs,
        "steps": int(history[-1]["step"]) if history else 0,
        "loss_first": round(float(history[0]["loss"]), 3) if history else None,
        "loss_last": round(float(history[-1]["loss"]), 3) if history else None,
        "uniform_loss": round(uniform, 3),
        "knn_k": cfg.knn_k,
        "knn_accuracy_netformer": round(acc_model, 4),
        "knn_accuracy_pca_baseline": round(acc_pca, 4),
        "majority_class_rate": round(majority, 4),
        "cell_type_counts": pd.Series(y).value_counts().to_dict(),
        "device": str(model.device),
    }
    log.info("cells: k-NN accuracy %.3f (PCA baseline %.3f, majority %.3f)", acc_model, acc_pca, majority)
    files = [out / f for f in ("umap_cell_type.png", "umap_pca_baseline.png", "training_loss.png", "cells.h5ad",
                               "cell_embeddings.parquet", "pretrain/model", "tokenized", "vocab")]
    return metrics, files
