"""The co-expression baseline network: Pearson correlation of log-normalised counts.

``score(A -> B) = |r(A, B)|`` over the cells, ``r`` the Pearson correlation of
``log1p(count / total * 10^4)`` (:func:`netformer.classify.baselines.log_normalise`,
:func:`netformer.graphs.pearson_matrix`; GEARS's co-expression graph uses the same ``|r|``,
:func:`netformer.graphs.coexpression_graph`). Symmetric; ``n_cells`` = cells in which both genes are
detected. Every model network is reported beside it on the same genes, cells and pairs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import GeneIdError
from ..genes import GeneVocab
from .edges import GeneNetwork, pairs_from_dense


def coexpression_network(adata, vocab: GeneVocab | None = None, genes: Sequence[str] | None = None, min_cells: int = 1) -> GeneNetwork:
    """The co-expression network of the raw counts in ``adata`` (cells x genes).

    Parameters
    ----------
    adata
        AnnData of raw counts; genes are matched to ``vocab``'s Ensembl ids as the tokenizer matches
        them (:func:`netformer.classify.baselines.var_gene_ids`; a duplicated id keeps its first column).
    vocab
        The model's dictionary; None takes the gene ids of ``adata.var`` as they are
        (:func:`netformer.tokenize.select_gene_ids`: the Ensembl index or id column).
    genes
        Ensembl ids to include (e.g. a model network's :attr:`GeneNetwork.genes`); default every gene of
        ``adata`` (in the dictionary) detected in ``min_cells`` cells (``info["genes_left_out"]`` counts the
        others). Genes absent from ``adata`` are left out (``info["genes_absent"]``).
    min_cells
        Pairs detected together in fewer cells are left out (and, with ``genes=None``, genes detected in
        fewer). Memory and time grow with the square of the genes kept: every ordered pair is a row
        (pbmc3k, ``min_cells=300``: 1,892 genes, 0.9 M pairs co-detected in >= 300 cells, about 10 s).

    Returns a :class:`GeneNetwork` (``kind="coexpression"``, score ``|r|``, every ordered pair).
    Raises :class:`GeneIdError` when fewer than two of the genes are in ``adata``, and
    :class:`~netformer.errors.InputDataError` for cells without counts or fewer than 3 cells.
    """
    from ..classify.baselines import log_normalise, var_gene_ids
    from ..graphs import pearson_matrix
    from ..tokenize import select_gene_ids

    ids = var_gene_ids(adata, vocab) if vocab is not None else select_gene_ids(adata.var, "auto", notes=False)
    first: dict[str, int] = {}
    for col, g in enumerate(ids):
        if g is not None:
            first.setdefault(str(g), col)
    wanted = list(dict.fromkeys(genes)) if genes is not None else sorted(first)
    present = [g for g in wanted if g in first]
    n_absent = len(wanted) - len(present)
    if len(present) < 2:
        raise GeneIdError(f"{len(present)} of the {len(wanted)} genes are in the count matrix; a co-expression "
                          "network needs two (check that the counts are the cells the network was built from)")
    X = log_normalise(adata)[:, [first[g] for g in present]]
    if genes is None:  # genes detected in fewer than min_cells cells cannot reach it in a pair
        keep = np.flatnonzero(np.diff(sp.csc_matrix(X).indptr) >= min_cells)
        present, X = [present[i] for i in keep], X[:, keep]
    detected = sp.csc_matrix(X > 0, dtype=np.float64)
    together = np.asarray((detected.T @ detected).todense()).astype(np.int64)
    score = np.abs(pearson_matrix(X, len(present)))
    pairs = pairs_from_dense(present, score, together, min_cells)
    info = {"n_cells": int(adata.n_obs), "n_genes": len(present), "genes_absent": n_absent,
            "genes_left_out": len(wanted) - n_absent - len(present), "min_cells": min_cells, "n_pairs": int(len(pairs))}
    return GeneNetwork(pairs, "coexpression", info)
