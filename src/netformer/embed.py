"""Cell and gene embeddings from a BERT encoder over rank value encodings (Geneformer ``EmbExtractor``).

- Cell embedding: mean of the hidden states over the gene tokens (``<cls>``, ``<eos>`` and padding
  excluded) at a chosen layer, or the ``<cls>`` hidden state.
- Gene embedding: the contextual hidden state of a gene's token, averaged over the cells in which
  the gene occurs.

Layers are counted as in ``output_hidden_states``: ``layer=-1`` is the last encoder layer,
``layer=-2`` (default) the second to last, which is upstream's default (``emb_layer=-1`` there).
Only the layers up to the one requested are run.

Batching, truncation at the layer, pooling and the device rule are those of the one encoder path,
:mod:`netformer.encoder`; the dictionary is the one :func:`netformer.genes.resolve_vocab` resolves.
Attention runs through PyTorch's scaled-dot-product kernels (``attn_implementation="sdpa"``) under
``torch.inference_mode``. ``precision`` (:mod:`netformer.precision`) runs a bfloat16 copy of the model
where the hardware multiplies bf16 natively (CUDA, AMX or AVX512-BF16 CPUs).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ._io import atomic_file, remove_dir
from .distributed import barrier, my_chunks
from .distributed import init as init_world
from .encoder import (
    POOLINGS,
    encoder_and_dictionary,
    input_ids_of,
    iter_hidden,
    n_kept_layers,
    pool,
    special_tensor,
)
from .errors import ConfigError
from .genes import GeneVocab
from .precision import PRECISIONS
from .runs import (
    done_pieces,
    fingerprint,
    mark_done,
    open_shared_run,
    parameters_digest,
    read_manifest,
    tokens_digest,
)

log = logging.getLogger(__name__)


@dataclass
class EmbeddingConfig:
    """Settings of embedding extraction.

    Attributes
    ----------
    layer
        Hidden-state index (``-1`` last layer, ``-2`` second to last (default), ``0`` token
        embeddings).
    pooling
        ``"mean"`` over gene tokens or ``"cls"`` (needs ``<cls>`` at position 0).
    batch_size
        Cells per forward pass.
    max_length
        Truncate cells to this many tokens (default: the model's ``max_position_embeddings``).
    device
        Default: where the model is (see :func:`netformer.encoder.model_device`).
    precision
        ``"auto"`` (default): bf16 where native (:func:`netformer.precision.resolve_precision`), else
        fp32; ``"fp32"``; ``"bf16"`` (a :class:`~netformer.errors.ConfigError` without native bf16).
        Default chosen from measured agreement with fp32 on real cells (cell embedding cosine
        >= 0.99998 for a pretrained encoder and the V1/V2 shapes; 1.6-2.6x faster on an AVX512-BF16
        CPU; docs/precision.md). Pass ``"fp32"`` for upstream's numbers to 1e-5.
    chunk_cells
        Cells per resumable chunk of a run folder (``embed_cells(..., run_dir=...)``, and under torchrun,
        where the ranks share the chunks); default 4,096. The embeddings do not depend on it beyond
        float rounding of batches (cells are batched within a chunk).
    """

    layer: int = -2
    pooling: str = "mean"
    batch_size: int = 32
    max_length: int | None = None
    device: str | None = None
    precision: str = "auto"
    chunk_cells: int = 4096

    def __post_init__(self) -> None:
        if self.chunk_cells < 1:
            raise ConfigError("chunk_cells must be positive")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be positive")


def _encoder_inputs(model, dataset, vocab, cfg: EmbeddingConfig):
    """Resolve the vocabulary (the one policy), check the cells against the model, give the special
    ids excluded from pooling."""
    base, vocab = encoder_and_dictionary(model, dataset, vocab)
    seqs = input_ids_of(dataset)
    n_kept_layers(base, cfg.layer)
    return base, vocab, seqs


def embed_cells(model, dataset, config: EmbeddingConfig | None = None, vocab: GeneVocab | None = None,
                run_dir: str | Path | None = None) -> np.ndarray:
    """Cell embeddings, shape (n_cells, hidden_size), float32, in dataset order.

    Parameters
    ----------
    model
        A ``BertModel`` or any Bert head model (its encoder is used), on any device (used where it is
        unless ``config.device`` says otherwise).
    dataset
        A tokenized :class:`datasets.Dataset` (``input_ids`` column) or a list of token id lists.
    config
        :class:`EmbeddingConfig` (layer -2 and mean pooling by default, as upstream).
    vocab
        The token dictionary; default: resolved by :func:`netformer.genes.resolve_vocab` (the
        model's, else the dataset's). Its special tokens (``<pad>``, ``<mask>``, ``<cls>``,
        ``<eos>``) are excluded from mean pooling, as upstream ``EmbExtractor`` excludes ``<cls>``
        and ``<eos>`` and padding.

    Raises
    ------
    DictionaryError
        No dictionary can be resolved, or model and dataset dictionaries differ, or the dataset holds
        token ids beyond the model's vocabulary.
    InputDataError
        No cell, or empty cells.
    ConfigError
        ``layer`` out of range.
    """
    cfg = config or EmbeddingConfig()
    base, vocab, seqs = _encoder_inputs(model, dataset, vocab, cfg)
    if run_dir is None:  # every process that calls it embeds every cell
        return _embed(base, seqs, vocab, cfg)
    return _embed_chunked(base, dataset, seqs, vocab, cfg, Path(run_dir))


def _embed(base, seqs, vocab: GeneVocab, cfg: EmbeddingConfig) -> np.ndarray:
    out = np.zeros((len(seqs), base.config.hidden_size), dtype=np.float32)
    special = special_tensor(vocab)
    for idx, hidden, tok, mask in iter_hidden(base, seqs, cfg.layer, cfg.batch_size, cfg.max_length, cfg.device,
                                              cfg.precision):
        out[idx] = pool(hidden, tok, special, cfg.pooling, mask).cpu().numpy()
    return out


def _embed_chunked(base, dataset, seqs, vocab: GeneVocab, cfg: EmbeddingConfig, run_dir: Path) -> np.ndarray | None:
    """Embed chunk by chunk into ``run_dir`` (resumable; under torchrun the chunks left are shared out over the
    ranks), then read every chunk back in order on rank 0 (the others return None). A work folder holding
    another run's chunks, or no readable manifest, is started afresh."""
    w = init_world(cfg.device)
    d = asdict(cfg)
    for k in ("device", "batch_size"):
        d.pop(k)
    settings = {"config": d, "model": parameters_digest(base), "cells": tokens_digest(dataset, range(len(seqs)))}
    if w.is_main:
        old = read_manifest(run_dir)
        if run_dir.exists() and (old is None or old.get("fingerprint") != fingerprint(settings)):
            log.info("the embedding work folder holds no run with these settings; starting afresh")
            remove_dir(run_dir)
    run = open_shared_run(run_dir, settings, False, "embeddings.npy", "embedding run")
    starts = list(range(0, len(seqs), cfg.chunk_cells))
    done = done_pieces(run.folder)
    barrier()  # every rank has read the same finished chunks before any writes more
    todo = [ci for ci in range(len(starts)) if ci not in done]
    mine = [todo[i] for i in my_chunks(len(todo), w)]
    if mine:
        log.info("embedding %d of %d chunks of %d cells%s", len(mine), len(starts), cfg.chunk_cells,
                 f" on rank {w.rank} of {w.size}" if w.distributed else "")
    for ci in mine:
        lo = starts[ci]
        emb = _embed(base, seqs[lo: lo + cfg.chunk_cells], vocab, cfg)
        with atomic_file(run.folder / "shards" / f"cells_{ci:05d}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, emb)
        mark_done(run.folder, ci, {"n_cells": len(emb)})
    barrier()
    if not w.is_main:
        return None
    return np.concatenate([np.load(run.folder / "shards" / f"cells_{ci:05d}.npy") for ci in range(len(starts))])


def embed_genes(model, dataset, config: EmbeddingConfig | None = None, vocab: GeneVocab | None = None) -> pd.DataFrame:
    """Gene embeddings: each token's contextual hidden state averaged over cells.

    Returns a DataFrame indexed by gene id (``gene``) with columns ``n_cells`` and
    ``dim_0 .. dim_{hidden-1}``, for every gene token that occurs in the data (special tokens
    excluded). ``vocab`` and the errors raised are as in :func:`embed_cells`.
    """
    cfg = config or EmbeddingConfig()
    base, vocab, seqs = _encoder_inputs(model, dataset, vocab, cfg)
    sums = counts = special = None
    for _, hidden, tok, mask in iter_hidden(base, seqs, cfg.layer, cfg.batch_size, cfg.max_length, cfg.device,
                                            cfg.precision, desc="gene embeddings"):
        if sums is None:
            dev = hidden.device
            sums = torch.zeros((base.config.vocab_size, base.config.hidden_size), dtype=torch.float64, device=dev)
            counts = torch.zeros(base.config.vocab_size, dtype=torch.float64, device=dev)
            special = special_tensor(vocab, dev)
        keep = mask.bool() & ~torch.isin(tok, special)
        sums.index_add_(0, tok[keep], hidden[keep].double())
        counts.index_add_(0, tok[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=dev))
    present = torch.nonzero(counts > 0).flatten()
    emb = (sums[present] / counts[present, None]).float().cpu().numpy()
    index = [vocab.token_to_gene(t) for t in present.cpu().numpy()]
    df = pd.DataFrame(emb, index=pd.Index(index, name="gene"), columns=[f"dim_{i}" for i in range(emb.shape[1])])
    df.insert(0, "n_cells", counts[present].cpu().numpy().astype(int))
    return df


GENE_EMBEDDING_KINDS = ("static", "contextual")


def static_gene_embeddings(model, vocab: GeneVocab | None = None) -> pd.DataFrame:
    """Static gene embeddings: the model's input token embedding rows (``word_embeddings.weight``) for
    every gene of its dictionary (special tokens excluded), in token id order.

    They need no cells: what pretraining stored in the embedding table for each gene token (the input
    of layer 0; with ``tie_word_embeddings`` also the masked-gene output projection).

    Parameters
    ----------
    model
        A ``BertModel`` or Bert head model (its encoder's embedding table is read).
    vocab
        The token dictionary; default: the model's (:func:`netformer.genes.resolve_vocab`).

    Returns
    -------
    DataFrame indexed by gene id (``gene``, the dictionary's ids: Ensembl for Geneformer and netformer
    dictionaries) with columns ``symbol`` (GENCODE, :func:`netformer.genes.ensembl_to_symbol`; None where
    unknown) and ``dim_0 .. dim_{hidden-1}`` (float32); one row per dictionary gene.

    Raises
    ------
    DictionaryError
        No dictionary can be resolved, or its size differs from the model's ``vocab_size``.
    """
    base, vocab = encoder_and_dictionary(model, None, vocab)
    genes = vocab.genes
    ids = torch.as_tensor([vocab.token_dict[g] for g in genes], dtype=torch.long)
    with torch.inference_mode():
        emb = base.get_input_embeddings().weight.detach()[ids.to(base.device)].float().cpu().numpy()
    df = pd.DataFrame(emb, index=pd.Index(genes, name="gene"), columns=[f"dim_{i}" for i in range(emb.shape[1])])
    return _with_symbols(df)


def _with_symbols(df: pd.DataFrame) -> pd.DataFrame:
    from .genes import ensembl_to_symbol

    df.insert(0, "symbol", ensembl_to_symbol(df.index).to_numpy())
    return df


def gene_embeddings(model, dataset=None, kind: str = "static", config: EmbeddingConfig | None = None,
                    vocab: GeneVocab | None = None) -> pd.DataFrame:
    """Gene embeddings of either kind, indexed by gene id (Ensembl) with a ``symbol`` column.

    ``kind="static"`` (default): :func:`static_gene_embeddings` (every dictionary gene; ``dataset`` and
    ``config`` unused). ``kind="contextual"``: :func:`embed_genes` over the cells of ``dataset`` (genes
    that occur in them; with an ``n_cells`` column), layer and batching from ``config``. Columns:
    ``symbol``, [``n_cells``,] ``dim_*``. Raises :class:`ConfigError` for another kind or contextual
    without a dataset; otherwise the errors of the function called.
    """
    if kind not in GENE_EMBEDDING_KINDS:
        raise ConfigError(f"kind must be one of {GENE_EMBEDDING_KINDS}, got {kind!r}")
    if kind == "static":
        return static_gene_embeddings(model, vocab)
    if dataset is None:
        raise ConfigError("contextual gene embeddings average over cells: pass a tokenized dataset")
    return _with_symbols(embed_genes(model, dataset, config, vocab))


def knn_accuracy(emb: np.ndarray, labels: Sequence, k: int = 10, n_splits: int = 5, seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour label accuracy of an embedding (cosine metric).

    A simple measure of how well an embedding separates known labels: 5-fold stratified CV of a
    ``KNeighborsClassifier(k, metric="cosine")``. Cells with missing labels are ignored.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = pd.Series(list(labels))
    ok = labels.notna().to_numpy()
    y = labels[ok].astype(str).to_numpy()
    counts = pd.Series(y).value_counts()
    n_splits = int(min(n_splits, counts.min())) if counts.min() >= 2 else 2
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(cross_val_score(clf, emb[ok], y, cv=cv).mean())


def pca_baseline(adata, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """The standard scanpy baseline embedding: 50 PCA components of log-normalised counts
    (``normalize_total(1e4)``, ``log1p``, top 2,000 highly variable genes, ``scale``, ``pca``)."""
    import scanpy as sc

    a = adata.copy()
    a.X = a.X.astype(np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=n_comps, random_state=seed)
    return a.obsm["X_pca"]


def umap_plot(
    emb: np.ndarray,
    labels: Sequence,
    path: str | Path | None,
    title: str = "cell embeddings",
    seed: int = 0,
    coords: np.ndarray | None = None,
    ax=None,
) -> np.ndarray:
    """UMAP (umap-learn, cosine metric, 15 neighbours, seeded) of an (n_cells, dims) embedding coloured
    by ``labels``, drawn on ``ax`` or a new figure (no pyplot) and written to a PNG at ``path`` when
    given. Legends name each label with its cell count. Returns the (n_cells, 2) coordinates
    (``coords`` skips the UMAP fit)."""
    import matplotlib

    from ._io import new_figure, save_figure

    if coords is None:
        import umap

        coords = umap.UMAP(n_neighbors=15, min_dist=0.3, metric="cosine", random_state=seed).fit_transform(emb)
    labels = pd.Series(list(labels)).astype(str).replace("nan", "unlabelled")
    fig, ax = new_figure(figsize=(7, 5.5)) if ax is None else (ax.figure, ax)
    cats = sorted(labels.unique())
    cmap = matplotlib.colormaps["tab20" if len(cats) > 10 else "tab10"]
    for i, c in enumerate(cats):
        m = (labels == c).to_numpy()
        ax.scatter(coords[m, 0], coords[m, 1], s=4, color=cmap(i % cmap.N), label=f"{c} ({m.sum()})")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if path is not None:
        save_figure(fig, path)
    return coords
