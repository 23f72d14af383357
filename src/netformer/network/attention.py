"""Attention-based gene network: gene-to-gene attention of chosen layers and heads, aggregated over cells.

Method (Theodoris et al. 2023 read gene-gene relations from the attention weights of Geneformer; the
aggregation here is ours, stated exactly):

1. The chosen cells run through the encoder one layer at a time
   (:func:`netformer.encoder.layer_forward` on the model's own weights), in length-sorted batches with
   the padding masked (an additive ``finfo.min`` bias on padded keys). A chosen layer's attention
   probabilities ``softmax(q k^T / sqrt(d_head))`` are computed from its input hidden state: the
   SDPA kernel the model runs with returns none, and only one layer's (batch, heads, L, L)
   probabilities are ever held. The layers after the last chosen one are not run.
2. Per cell, the probabilities are averaged over the chosen heads and layers, giving ``a(p -> q)``
   over positions (query ``p`` attends to key ``q``).
3. Special tokens (``<cls>``, ``<eos>``, ``<pad>``; every special id of the dictionary) leave the gene
   network: their rows are dropped, and their columns are dropped and each row renormalised to sum
   1 over the cell's gene tokens, so attention a gene pays to ``<cls>`` (often large) does not
   dilute its gene-to-gene weights. Self attention (``p = q``) is kept in this renormalisation
   but is no edge.
4. Over cells, for the kept genes (at least ``min_cells`` cells, :class:`NetworkConfig`):
   ``S[i, j] = sum over cells holding both of a(i -> j)`` and ``n_cells[i, j]`` = the number of those
   cells. The score is the mean ``S / n_cells``, then row-normalised so every source row sums to 1
   over its targets (pairs with ``n_cells >= min_pair_cells``). Edge tables (top-k per source or a
   threshold, :meth:`GeneNetwork.edges`) are cut after this normalisation.

Memory: two dense (G, G) float64 / int64 accumulators on the CPU for G kept genes (G = 5,000: 400 MB),
plus one layer's probabilities for a batch on the model's device. Deterministic: the same cells, model
and settings give the same network (accumulation runs on the CPU in batch order).
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch

from ..encoder import base_model, layer_forward, length_sorted_batches, pad_batch
from ..errors import InputDataError
from ..genes import GeneVocab
from .config import NetworkConfig, resolve_indices
from .edges import GeneNetwork, pairs_from_dense

log = logging.getLogger(__name__)


def resolve_layers_heads(model, config: NetworkConfig) -> tuple[list[int], list[int]]:
    """The 0-based encoder layers and heads of ``config`` for ``model``; :class:`ConfigError` naming the
    valid range for a layer or head that does not exist."""
    base = base_model(model)
    layers = resolve_indices(config.layers, len(base.encoder.layer), "layer", "encoder layers")
    heads = resolve_indices(config.heads, base.config.num_attention_heads, "head", "attention heads per layer")
    return layers, heads


def iter_attention(model, seqs: Sequence[Sequence[int]], layers: Sequence[int], heads: Sequence[int],
                   batch_size: int = 8, max_length: int | None = None
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Attention probabilities of many cells, averaged over ``layers`` and ``heads`` (0-based, valid).

    Yields ``(indices, attention, input_ids, attention_mask)`` per length-sorted batch: ``attention`` is
    (batch, L, L) float32 on the model's device (query x key; rows of real tokens sum to 1 over the
    real keys, padded keys get 0); ``indices`` the positions of the batch's cells in ``seqs``. Runs
    without gradients, one encoder layer at a time, up to the last chosen layer.
    """
    base = base_model(model)
    dev = next(base.parameters()).device
    max_len = min(max_length or base.config.max_position_embeddings, base.config.max_position_embeddings)
    pad = base.config.pad_token_id or 0
    chosen, last = set(layers), max(layers)
    head_idx = torch.as_tensor(list(heads), device=dev)
    weight = 1.0 / (len(chosen) * len(heads))
    base.eval()
    for idx in length_sorted_batches([len(s) for s in seqs], batch_size):
        ids, mask = pad_batch([seqs[i] for i in idx], pad, max_len)
        ids, mask = ids.to(dev), mask.to(dev)
        with torch.no_grad():
            h = base.embeddings(input_ids=ids)
            bias = torch.zeros(mask.shape, dtype=h.dtype, device=dev).masked_fill(mask == 0, torch.finfo(h.dtype).min)
            att = torch.zeros((len(idx), ids.shape[1], ids.shape[1]), dtype=torch.float32, device=dev)
            for li in range(last + 1):
                layer = base.encoder.layer[li]
                if li in chosen:
                    h, probs = layer_forward(layer, h, bias, return_attention=True)
                    att += probs.index_select(1, head_idx).float().sum(1) * weight
                    del probs
                else:
                    h = layer_forward(layer, h, bias)
        yield idx, att, ids, mask


def gene_cell_counts(seqs: Sequence[Sequence[int]], special_ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """(vocab_size,) number of cells whose tokens hold each token id (special ids counted 0)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in seqs:
        counts[np.unique(np.asarray(s, dtype=np.int64))] += 1
    counts[list(special_ids)] = 0
    return counts


def network_cells(dataset, config: NetworkConfig) -> np.ndarray:
    """Sorted indices of the cells of ``dataset`` a network uses: those passing ``config.cell_filter``, of
    which at most ``config.max_cells`` drawn with ``config.seed`` (:func:`netformer.perturb.select_cells`).
    Raises :class:`InputDataError` for an unknown filter column or no cell left."""
    from ..perturb.select_cells import select_cells

    return select_cells(dataset, config.cell_filter, None, config.max_cells, config.seed)


def attention_network(model, dataset, config: NetworkConfig | None = None, vocab: GeneVocab | None = None) -> GeneNetwork:
    """The attention-based gene network of the cells of ``dataset`` (method: the module docstring).

    Parameters
    ----------
    model
        A model directory or a loaded Bert model (its encoder is used; SDPA or eager attention alike).
    dataset
        Tokenized :class:`datasets.Dataset` (``input_ids``; columns of ``config.cell_filter``).
    config
        :class:`NetworkConfig` (layers, heads, ``min_cells``, ``max_cells``, ...).
    vocab
        The model's dictionary (default: the one policy, :func:`netformer.genes.resolve_vocab`).

    Returns
    -------
    GeneNetwork
        ``kind="attention"``; ``pairs.score`` row-normalised (each source's scores over all its
        targets sum to 1). ``info``: cells used, genes kept / left out (fewer than ``min_cells``
        cells), layers and heads (0-based), ``pairs_left_out`` (below ``min_pair_cells``).

    Raises
    ------
    ConfigError
        A layer or head that does not exist (the message names the valid range).
    InputDataError
        No gene in at least ``min_cells`` cells; no cell passes ``cell_filter``.
    DictionaryError
        Model and cells disagree.
    """
    from ..encoder import load_encoder
    from ..precision import inference_model, resolve_precision

    cfg = config or NetworkConfig()
    base, vocab, dev = load_encoder(model, dataset, vocab, cfg.device)
    layers, heads = resolve_layers_heads(base, cfg)
    cells = network_cells(dataset, cfg)
    max_len = min(cfg.max_length or base.config.max_position_embeddings, base.config.max_position_embeddings)
    seqs = [list(s[:max_len]) for s in dataset.select(cells.tolist())["input_ids"]]
    counts = gene_cell_counts(seqs, vocab.special_ids, base.config.vocab_size)
    kept = np.flatnonzero(counts >= cfg.min_cells)
    n_present = int((counts > 0).sum())
    if kept.size < 2:
        raise InputDataError(f"{kept.size} gene(s) occur in at least min_cells={cfg.min_cells} of the {len(cells)} "
                             "cells; a network needs two: lower min_cells or use more cells (max_cells)")
    log.info("attention network: %d cells, %d of %d genes in >= %d cells (%d left out), layers %s, heads %s",
             len(cells), kept.size, n_present, cfg.min_cells, n_present - kept.size, layers, heads)
    lut = torch.full((base.config.vocab_size,), -1, dtype=torch.long)
    lut[torch.as_tensor(kept)] = torch.arange(kept.size)
    G = kept.size
    total = torch.zeros(G * G, dtype=torch.float64)
    together = torch.zeros(G * G, dtype=torch.int64)
    special = torch.tensor(sorted(vocab.special_ids), dtype=torch.long)
    run = inference_model(base, resolve_precision(cfg.precision, dev))
    for _, att, ids, mask in iter_attention(run, seqs, layers, heads, cfg.batch_size, max_len):
        att, ids, mask = att.cpu(), ids.cpu(), mask.cpu()
        gene_tok = mask.bool() & ~torch.isin(ids, special)  # (B, L) gene tokens
        att = att * gene_tok[:, None, :]  # special and padded keys leave; rows renormalised over genes
        att = att / att.sum(-1, keepdim=True).clamp_min(torch.finfo(att.dtype).tiny)
        g = lut[ids].masked_fill(~gene_tok, -1)  # (B, L) kept-gene index or -1
        ok = (g[:, :, None] >= 0) & (g[:, None, :] >= 0)
        ok &= ~torch.eye(ids.shape[1], dtype=torch.bool)[None]
        flat = (g[:, :, None] * G + g[:, None, :])[ok]
        total.index_add_(0, flat, att[ok].double())
        together.index_add_(0, flat, torch.ones_like(flat))
    total, together = total.view(G, G).numpy(), together.view(G, G).numpy()
    mean = np.divide(total, together, out=np.zeros_like(total), where=together > 0)
    mean[together < cfg.min_pair_cells] = 0.0
    rows = mean.sum(1, keepdims=True)
    score = np.divide(mean, rows, out=np.zeros_like(mean), where=rows > 0)
    genes = np.array([vocab.token_to_gene(t) for t in kept], dtype=object)
    pairs = pairs_from_dense(genes, score, together, cfg.min_pair_cells)
    info = {"n_cells": int(len(cells)), "n_genes": int(G), "n_genes_present": n_present,
            "genes_left_out": n_present - int(G), "min_cells": cfg.min_cells, "layers": layers, "heads": heads,
            "pairs_co_occurring": int((together > 0).sum()), "pairs_left_out": int(((together > 0) &
                                                                                   (together < cfg.min_pair_cells)).sum()),
            "n_pairs": int(len(pairs))}
    return GeneNetwork(pairs, "attention", info)
