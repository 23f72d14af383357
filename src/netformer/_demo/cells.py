"""The end-to-end demo: bundled PBMC counts -> tokens -> pretrained model -> embeddings -> report.

``netformer demo`` (or :func:`netformer.demo`) runs the whole foundation-model pipeline on the 10x
pbmc3k raw counts bundled with the package and writes into one output folder:

========================  ===================================================================
``vocab/``                our token dictionary and gene medians, built from the bundled cells
``tokenized/``            the rank value encodings (Hugging Face ``datasets`` directory)
``pretrain/model/``       the pretrained model (plain Hugging Face directory, safetensors)
``pretrain/checkpoints/`` resumable checkpoints (an interrupted demo resumes from them)
``cells.h5ad``            the cells with ``obsm["X_netformer"]``, ``obsm["X_pca"]``, cell types
``cell_embeddings.parquet``  cell embeddings with cell id and cell type
``umap_cell_type.png``    UMAP of the cell embeddings coloured by cell type
``umap_pca_baseline.png`` the same for the PCA baseline
``training_loss.png``     masked gene prediction loss against step
``metrics.json``          the key figures
``report.html``           all of the above on one page
========================  ===================================================================

Cell types come from the project's marker-gene annotation (:mod:`netformer.annotate`), and the
embedding is scored by cross-validated k-nearest-neighbour accuracy of those labels, beside the same
measure on 50 PCA components of log-normalised counts (the standard scanpy baseline). The PCA
baseline has a head start here: the annotation itself was made by clustering those PCA components.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_file
from .errors import OutputExistsError

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Settings of the demo (defaults finish in about 5 minutes on an idle 2-core CPU).

    Attributes
    ----------
    preset
        Model preset (``small``: 4 layers, hidden 128).
    max_length
        Input size: each cell's top ``max_length - 2`` genes between ``<cls>`` and ``<eos>``.
    epochs, batch_size, learning_rate, warmup_steps
        Pretraining schedule (linear decay after warm-up).
    knn_k
        Neighbours of the k-nearest-neighbour accuracy.
    max_cells
        Use a random subset of this many cells (seeded) after annotation; None = all 2,700.
    """

    preset: str = "small"
    max_length: int = 256
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    knn_k: int = 10
    max_cells: int | None = None
    seed: int = 0
    device: str | None = None


@dataclass
class DemoResult:
    """Paths and figures of a demo run."""

    output_dir: Path
    metrics: dict

    @property
    def report(self) -> Path:
        return self.output_dir / "report.html"


def _step(msg: str, i: int, n: int = 7) -> None:
    log.info("[%d/%d] %s", i, n, msg)


def run_demo(output_dir: str | Path = "netformer_demo", config: DemoConfig | None = None,
             overwrite: bool = False, **overrides) -> DemoResult:
    """Run the demo and return its figures (see the module docstring for what is written).

    Parameters
    ----------
    output_dir
        Output folder. A folder holding a finished demo (``report.html``) raises
        :class:`~netformer.errors.OutputExistsError` unless ``overwrite``; a folder left by an
        interrupted run is resumed (pretraining continues from its last checkpoint).
    config
        :class:`DemoConfig`; keyword overrides (e.g. ``epochs=1``) apply on top.
    """
    from . import annotate
    from .datasets import pbmc3k
    from .embed import EmbeddingConfig, embed_cells, knn_accuracy, pca_baseline, umap_plot
    from .genes import GeneVocab
    from .model import load_model
    from .pretrain import PretrainConfig, plot_loss, pretrain
    from .report import write_report
    from .tokenize import TranscriptomeTokenizer, build_vocab, load_tokenized

    cfg = DemoConfig(**{**(asdict(config) if config else {}), **overrides})
    out = Path(output_dir)
    if (out / "report.html").exists():
        if not overwrite:
            raise OutputExistsError(f"{out} already holds a finished demo; pass overwrite=True (CLI: --overwrite) "
                                    "or choose another output folder")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name, t0):
        timings[name] = round(time.perf_counter() - t0, 1)

    _step("loading the bundled 10x pbmc3k raw counts and annotating cell types by marker genes", 1)
    t0 = time.perf_counter()
    adata = pbmc3k()
    annotate.annotate_pbmc(adata, random_state=cfg.seed)
    if cfg.max_cells is not None and cfg.max_cells < adata.n_obs:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(adata.n_obs, cfg.max_cells, replace=False))
        adata = adata[keep].copy()
    timed("annotate", t0)

    _step("building the token dictionary and gene medians from the bundled cells", 2)
    t0 = time.perf_counter()
    if (out / "vocab").exists():
        vocab = GeneVocab.load(out / "vocab")
    else:
        vocab = build_vocab([adata], name="pbmc3k-demo")
        vocab.save(out / "vocab")
    timed("vocab", t0)

    _step("rank value encoding of the cells", 3)
    t0 = time.perf_counter()
    tokenizer = TranscriptomeTokenizer(vocab, model_input_size=cfg.max_length, obs_columns=["cell_type"])
    if not (out / "tokenized").exists():
        tokenizer.write([adata], out / "tokenized")
    summary = json.loads((out / "tokenized" / "netformer_tokenizer.json").read_text())["summary"]
    dataset = load_tokenized(out / "tokenized")
    timed("tokenize", t0)

    _step(f"pretraining the '{cfg.preset}' model by masked gene prediction ({cfg.epochs:g} epochs)", 4)
    t0 = time.perf_counter()
    pcfg = PretrainConfig(preset=cfg.preset, max_length=cfg.max_length, epochs=cfg.epochs,
                          batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                          warmup_steps=cfg.warmup_steps, save_steps=100, logging_steps=10,
                          seed=cfg.seed, device=cfg.device)
    if (out / "pretrain" / "model").exists():
        history = json.loads((out / "pretrain" / "loss_history.json").read_text())["history"]
    else:
        history = pretrain(dataset.select_columns(["input_ids", "length"]), vocab, out / "pretrain", pcfg).loss_history
    plot_loss(history, out / "training_loss.png")
    timed("pretrain", t0)

    _step("cell embeddings (mean over gene tokens, second to last layer)", 5)
    t0 = time.perf_counter()
    model = load_model(out / "pretrain" / "model", device=cfg.device)
    emb = embed_cells(model, dataset, EmbeddingConfig(layer=-2, batch_size=64, device=cfg.device), vocab=vocab)
    timed("embed", t0)

    _step("embedding quality: k-NN accuracy against the PCA baseline, UMAP plots", 6)
    t0 = time.perf_counter()
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
    timed("evaluate", t0)

    _step("writing report.html", 7)
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
        "uniform_loss": round(float(np.log(vocab.vocab_size)), 3),
        "knn_k": cfg.knn_k,
        "knn_accuracy_netformer": round(acc_model, 4),
        "knn_accuracy_pca_baseline": round(acc_pca, 4),
        "majority_class_rate": round(majority, 4),
        "cell_type_counts": pd.Series(y).value_counts().to_dict(),
        "seconds": timings,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "device": str(model.device),
    }
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    write_report(out, metrics, config=asdict(cfg))
    log.info("demo finished in %.0f s: k-NN accuracy %.3f (PCA baseline %.3f, majority %.3f); open %s",
             metrics["total_seconds"], acc_model, acc_pca, majority, out / "report.html")
    return DemoResult(out, metrics)
