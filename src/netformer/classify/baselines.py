"""The standard baselines every fine-tuning result is reported beside.

- Cells: logistic regression on 50 PCA components of log-normalised counts (the scanpy recipe:
  ``normalize_total(1e4)``, ``log1p``, 2,000 highly variable genes (Seurat flavour), scaling to unit
  variance clipped at 10, PCA; Wolf et al. 2018). Only the per-cell normalisation touches the test
  cells before fitting: gene selection, scaling and PCA are fitted on the training cells alone and
  then applied to the test cells, so no information leaks from test to train.
- Genes: logistic regression on per-gene expression statistics over the cells (mean and variance of
  log-normalised expression, fraction of cells expressing the gene), standardised. This is the
  "does the label just track expression level?" control for gene classification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import GeneIdError, InputDataError
from ..genes import GeneVocab, looks_like_ensembl

log = logging.getLogger(__name__)

_ID_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl")


def log_normalise(adata, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(count / total * target_sum)`` per cell, as CSR float32 (cells x genes)."""
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    total = np.asarray(X.sum(axis=1)).ravel()
    if (total <= 0).any():
        raise InputDataError(f"{int((total <= 0).sum())} cells have no counts; filter them out first")
    X = sp.diags((target_sum / total).astype(np.float32)) @ X
    X.data = np.log1p(X.data)
    return sp.csr_matrix(X)


@dataclass
class PCABaseline:
    """Logistic regression on PCA components of log-normalised counts, PCA fitted on training cells.

    Attributes
    ----------
    n_comps
        PCA components (50, the scanpy default; capped by the number of training cells - 1).
    n_top_genes
        Highly variable genes selected on the training cells (scanpy ``flavor="seurat"``).
    class_weight
        ``None`` or ``"balanced"`` (sklearn).
    """

    n_comps: int = 50
    n_top_genes: int = 2000
    class_weight: str | None = None
    C: float = 1.0
    seed: int = 0
    classes_: np.ndarray = field(default=None, init=False)

    def _transform(self, X: sp.csr_matrix) -> np.ndarray:
        Z = np.asarray(X[:, self._genes].todense())
        Z = np.clip((Z - self._mean) / self._std, -10, 10)
        return self._pca.transform(Z)

    def fit(self, adata, labels: Sequence) -> "PCABaseline":
        """Fit on training cells (raw counts in ``adata.X``) and their labels."""
        import scanpy as sc
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        X = log_normalise(adata)
        a = sc.AnnData(X)
        n_top = min(self.n_top_genes, X.shape[1])
        sc.pp.highly_variable_genes(a, n_top_genes=n_top, flavor="seurat")
        self._genes = np.flatnonzero(a.var["highly_variable"].to_numpy())
        Z = np.asarray(X[:, self._genes].todense())
        self._mean = Z.mean(0)
        self._std = Z.std(0, ddof=1) + 1e-8
        Z = np.clip((Z - self._mean) / self._std, -10, 10)
        k = max(1, min(self.n_comps, Z.shape[0] - 1, Z.shape[1] - 1))
        self._pca = PCA(n_components=k, random_state=self.seed, svd_solver="arpack" if k < min(Z.shape) - 1 else "full")
        P = self._pca.fit_transform(Z)
        self._clf = LogisticRegression(C=self.C, max_iter=2000, class_weight=self.class_weight)
        self._clf.fit(P, np.asarray(labels).astype(str))
        self.classes_ = self._clf.classes_
        return self

    def predict_proba(self, adata) -> np.ndarray:
        """(n_cells, n_classes) probabilities, columns in ``classes_`` order."""
        return self._clf.predict_proba(self._transform(log_normalise(adata)))

    def predict(self, adata) -> np.ndarray:
        return self.classes_[self.predict_proba(adata).argmax(1)]


def var_gene_ids(adata, vocab: GeneVocab) -> np.ndarray:
    """Vocabulary gene ids of ``adata.var`` (object array, None where unmapped), chosen as the
    tokenizer does: the var index if it looks like Ensembl ids, else the first of ``ensembl_id``,
    ``gene_ids``, ``gene_id``, ``feature_id`` present, else the index mapped through the vocabulary."""
    var = adata.var
    if looks_like_ensembl(var.index):
        ids = var.index
    else:
        col = next((c for c in _ID_COLUMNS if c in var.columns), None)
        ids = var[col] if col is not None else var.index
    return vocab.map_ids([None if pd.isna(i) else str(i) for i in ids])


def gene_expression_stats(adata, vocab: GeneVocab) -> pd.DataFrame:
    """Per-gene statistics of log-normalised expression over the cells of ``adata``.

    Returns a DataFrame indexed by vocabulary gene id with columns ``mean``, ``fraction_expressing``
    and ``variance`` (duplicate ids: the first column is kept). Raises :class:`GeneIdError` when no
    gene of ``adata`` is in the vocabulary.
    """
    ids = var_gene_ids(adata, vocab)
    ok = np.array([i is not None for i in ids])
    if not ok.any():
        raise GeneIdError("no gene of the count matrix maps to the vocabulary; check the gene ids")
    X = log_normalise(adata)[:, np.flatnonzero(ok)]
    n = X.shape[0]
    mean = np.asarray(X.mean(0)).ravel()
    sq = np.asarray(X.multiply(X).mean(0)).ravel()
    frac = np.diff(sp.csc_matrix(X).indptr) / n
    df = pd.DataFrame({"mean": mean, "fraction_expressing": frac, "variance": sq - mean**2},
                      index=pd.Index(ids[ok].astype(str), name="gene"))
    return df[~df.index.duplicated()]


@dataclass
class GeneStatsBaseline:
    """Logistic regression on standardised per-gene expression statistics (see
    :func:`gene_expression_stats`)."""

    class_weight: str | None = "balanced"
    classes_: np.ndarray = field(default=None, init=False)

    def fit(self, stats: pd.DataFrame, labels: Sequence) -> "GeneStatsBaseline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self._clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight=self.class_weight))
        self._clf.fit(stats.to_numpy(), np.asarray(labels).astype(str))
        self.classes_ = self._clf.classes_
        return self

    def predict_proba(self, stats: pd.DataFrame) -> np.ndarray:
        return self._clf.predict_proba(stats.to_numpy())

    def predict(self, stats: pd.DataFrame) -> np.ndarray:
        return self.classes_[self.predict_proba(stats).argmax(1)]
