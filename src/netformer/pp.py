"""Preprocessing, scanpy style: AnnData in, a token dictionary or tokenized cells out.

``nf.pp`` is the front door to :mod:`netformer.tokenize`; the science (rank value encoding, gene
medians) lives there. Counts are read from ``adata.X`` or, with ``layer=``, from ``adata.layers``.

Examples
--------
>>> import netformer as nf                                          # doctest: +SKIP
>>> vocab = nf.pp.build_vocab(adata, layer="counts")                 # doctest: +SKIP
>>> cells = nf.pp.tokenize(adata, vocab, model_input_size=2048)      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

from .genes import GeneVocab

__all__ = ["build_vocab", "tokenize"]


def build_vocab(adata, *, layer: str | None = None, min_cells: int = 10, name: str = "custom",
                gene_id_column: str | None = "auto", medians: str = "auto") -> GeneVocab:
    """Token dictionary and gene median dictionary of the cells of ``adata`` (or of count files).

    Parameters
    ----------
    adata
        :class:`anndata.AnnData` of raw counts (cells x genes), or a list of AnnData / file paths.
    layer
        Counts from ``adata.layers[layer]`` instead of ``X``.
    min_cells
        Genes detected in fewer cells are left out (default 10).
    medians
        ``"exact"``, ``"tdigest"`` (mergeable sketches, bounded memory) or ``"auto"`` (default: exact up
        to 200,000 cells), as :func:`netformer.tokenize.build_vocab`.

    Returns
    -------
    GeneVocab
        ``<pad>``, ``<mask>``, ``<cls>``, ``<eos>`` then genes in sorted id order; medians as
        Geneformer's gene median dictionary (non-zero median of ``count / n_counts * 10,000``).

    Raises
    ------
    InputDataError
        No gene detected in ``min_cells`` cells, bad counts, missing layer.
    """
    from .tokenize import build_vocab as _build

    sources = adata if isinstance(adata, (list, tuple)) else [adata]
    return _build(sources, gene_id_column=gene_id_column, min_cells=min_cells, name=name, layer=layer, medians=medians)


def tokenize(adata, vocab: GeneVocab, *, model_input_size: int = 2048, layer: str | None = None,
             obs_columns: Sequence[str] = (), gene_id_column: str | None = "auto", **config):
    """Rank value encoding of the cells of ``adata``: a :class:`datasets.Dataset` with ``input_ids``.

    Parameters
    ----------
    adata
        :class:`anndata.AnnData` of raw counts, or a path (.h5ad, .zarr, .loom).
    vocab
        The token dictionary (e.g. ``GeneVocab.load("geneformer_gc104M/")``, or the model's:
        :func:`netformer.genes.model_vocab`).
    model_input_size
        Tokens per cell, special tokens included (V1 2,048; V2 4,096).
    layer
        Counts from ``adata.layers[layer]`` instead of ``X``.
    obs_columns
        obs columns kept beside the tokens (``cell_id`` is always kept).
    **config
        Other :class:`netformer.tokenize.TokenizerConfig` fields.

    Returns
    -------
    datasets.Dataset
        ``input_ids`` (int32 lists), ``length``, ``cell_id`` and ``obs_columns``, one row per cell that
        has at least one dictionary gene (others are skipped and logged); it records its
        dictionary's digest (see :func:`netformer.genes.resolve_vocab`).

    Raises
    ------
    InputDataError, GeneIdError, ConfigError
        As :class:`netformer.tokenize.TranscriptomeTokenizer`.
    """
    from .tokenize import TranscriptomeTokenizer

    tok = TranscriptomeTokenizer(vocab, model_input_size=model_input_size, layer=layer,
                                 obs_columns=list(obs_columns), gene_id_column=gene_id_column, **config)
    return tok.tokenize(adata)
