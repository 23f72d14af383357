"""Perturbation outcome models: one interface, and the baselines every deep model must beat.

Every model follows :class:`PerturbationModel`::

    model.fit(data, train_conditions)      # data: PerturbData; conditions: 'A', 'A+B' (any convention)
    Y = model.predict(conditions)          # (n_conditions, n_genes) predicted mean expression
    Z = model.embed(conditions)            # (n_conditions, d) perturbation embedding

``predict`` accepts any one- or two-gene condition, measured or not: that is the point of the
models. Control cells are always used (they are not a "training perturbation"); ``'ctrl'`` in
``train_conditions`` is ignored.

Baselines follow Ahlmann-Eltze, Huber and Anders, "Deep-learning-based gene perturbation effect
prediction does not yet outperform simple linear baselines", Nat Methods 2025:

* :class:`NoChange` - the control mean.
* :class:`TrainMean` - control plus the mean training effect.
* :class:`Additive` - control plus the sum of the single-gene effects (doubles); the mean training
  single effect stands in for genes without a measured single.
* :class:`RidgeModel` - the paper's linear model ``Y ~ G W P^T + b`` with gene embeddings ``G``
  (PCA of the training effects) and perturbation embeddings ``P`` from the GO graph.

A linear graph model: :class:`SGCModel`, Simple Graph Convolution (Wu et al., ICML 2019) fitted in
closed form on the propagated one-hot of the perturbed gene.

The GEARS-style GNN is :class:`netformer.perturbseq.gears.GEARSModel`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ConfigError, InputDataError
from .data import CONTROL, PerturbData, canonical_condition, condition_genes

log = logging.getLogger(__name__)

__all__ = ["Additive", "NoChange", "PerturbationModel", "RidgeModel", "SGCModel", "TrainMean"]


class PerturbationModel(abc.ABC):
    """Interface of every perturbation outcome model (baselines, GEARS).

    Subclasses implement :meth:`_fit` and :meth:`_predict_delta`; this class handles condition
    canonicalisation, checks and the control mean. After :meth:`fit`, ``self.data_`` is the
    training :class:`PerturbData`, ``self.train_conditions_`` the canonical training
    perturbations (control excluded) and ``self.control_`` the control mean (n_genes,).
    """

    name: str = "model"

    # ---- public API ------------------------------------------------------------------------
    def fit(self, data: PerturbData, train_conditions: Sequence[str]) -> "PerturbationModel":
        """Fit on the cells / means of ``train_conditions`` (plus control) of ``data``; returns self.

        Raises :class:`InputDataError` if a training condition is not in ``data``.
        """
        if not isinstance(data, PerturbData):
            raise InputDataError(f"fit expects a PerturbData, got {type(data).__name__}.")
        train = [c for c in data.check_conditions(list(train_conditions)) if c != CONTROL]
        self.data_ = data
        self.train_conditions_ = list(dict.fromkeys(train))
        self.control_ = data.control_mean()
        self._fit(data, self.train_conditions_)
        return self

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Predicted mean log-normalised expression, float64 array (n_conditions, n_genes)."""
        self._check_fitted()
        conds = self._canon(conditions)
        if not conds:
            return np.zeros((0, self.data_.n_genes))
        return self.control_[None, :] + self._predict_delta(conds)

    def predict_delta(self, conditions: Sequence[str]) -> np.ndarray:
        """Predicted change from the control mean, (n_conditions, n_genes)."""
        return self.predict(conditions) - self.control_[None, :]

    def embed(self, conditions: Sequence[str]) -> np.ndarray:
        """Perturbation embedding (n_conditions, d), for k-center / kernel active learning.

        Default (baselines without a learned embedding): the predicted change from control,
        d = n_genes. :class:`RidgeModel` and :class:`~netformer.perturbseq.gears.GEARSModel`
        return their perturbation embeddings.
        """
        return self.predict_delta(conditions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ---- for subclasses --------------------------------------------------------------------
    @abc.abstractmethod
    def _fit(self, data: PerturbData, train: list[str]) -> None: ...

    @abc.abstractmethod
    def _predict_delta(self, conditions: list[str]) -> np.ndarray: ...

    def _canon(self, conditions: Sequence[str]) -> list[str]:
        if isinstance(conditions, str):
            raise InputDataError("conditions must be a list of names, not a single string.")
        return [canonical_condition(c) for c in conditions]

    def _check_fitted(self) -> None:
        if not hasattr(self, "control_"):
            raise InputDataError(f"{type(self).__name__} is not fitted; call fit(data, train_conditions) first.")

    def _train_deltas(self) -> np.ndarray:
        if not self.train_conditions_:
            return np.zeros((0, self.data_.n_genes))
        return self.data_.delta(self.train_conditions_)


class NoChange(PerturbationModel):
    """Predicts the control mean for every perturbation (no effect).

    ``embed`` returns one zero column (n, 1): the model carries no information about perturbations.
    """

    name = "no_change"

    def _fit(self, data, train):
        pass

    def _predict_delta(self, conditions):
        return np.zeros((len(conditions), self.data_.n_genes))

    def embed(self, conditions):
        self._check_fitted()
        return np.zeros((len(self._canon(conditions)), 1))


class TrainMean(PerturbationModel):
    """Control plus the mean change of all training perturbations (singles and doubles alike).

    With no training perturbation it equals :class:`NoChange` (logged).
    """

    name = "train_mean"

    def _fit(self, data, train):
        D = self._train_deltas()
        if len(D) == 0:
            log.warning("TrainMean fitted without training perturbations: predicts control.")
        self.mean_delta_ = D.mean(0) if len(D) else np.zeros(data.n_genes)

    def _predict_delta(self, conditions):
        return np.tile(self.mean_delta_, (len(conditions), 1))


class Additive(PerturbationModel):
    """Additive model: effect(A+B) = effect(A) + effect(B), each from its measured single.

    Single effects are the training singles' mean changes. A gene without a training single
    contributes the mean training single effect (or, without training singles, the mean of all
    training effects, else zero). A single condition is predicted by its own measured effect
    when it was trained, else by that fallback. Training doubles are not used (this is the
    baseline of Norman et al. 2019 and Ahlmann-Eltze et al. 2025 for combinatorial perturbations).
    """

    name = "additive"

    def _fit(self, data, train):
        singles = [c for c in train if "+" not in c]
        D = self._train_deltas()
        self.single_effects_ = dict(zip(singles, data.delta(singles))) if singles else {}
        if singles:
            self.fallback_ = np.mean(list(self.single_effects_.values()), axis=0)
        elif len(D):
            self.fallback_ = D.mean(0)
        else:
            self.fallback_ = np.zeros(data.n_genes)

    def _predict_delta(self, conditions):
        out = np.zeros((len(conditions), self.data_.n_genes))
        for i, c in enumerate(conditions):
            for g in condition_genes(c):
                out[i] += self.single_effects_.get(g, self.fallback_)
        return out

    def seen_genes(self, condition: str) -> int:
        """Number of the condition's genes with a training single (0, 1 or 2)."""
        return sum(g in self.single_effects_ for g in condition_genes(canonical_condition(condition)))


_OPERATOR_CACHE: dict = {}
_OPERATOR_CACHE_SIZE = 4


def symmetric_gcn_operator(go_graph: pd.DataFrame | str | None,
                           nodes: Sequence[str] | None = None) -> tuple[pd.Index, "sp.csr_matrix"]:
    """Node index and ``S = (A_hat + A_hat^T) / 2`` of a gene graph, ``A_hat`` from
    :func:`~netformer.graphs.gcn_normalize` (self loops added); shape (n_nodes, n_nodes).

    ``go_graph``: edge DataFrame ``source,target,importance`` or path (default: the GO graph of the
    shared data folder, :func:`~netformer.graphs.go_graph`). ``nodes``: node order (edges with an
    end outside it are dropped); default every gene of the edges in order of appearance. Used by
    :class:`RidgeModel`, :class:`SGCModel` and the semi-synthetic generator of
    :mod:`netformer.select.synthetic`.

    The last few results are cached (key: the path, or the identity of the DataFrame, which the cache
    keeps alive, and ``nodes``), since benchmarks fit hundreds of models on one graph (the full GO
    graph takes seconds to normalise). Do not modify a DataFrame after passing it, nor the returned
    matrix.
    """
    from ..graphs import GeneGraph, gcn_normalize
    from ..graphs import go_graph as load_go

    key = (("df", id(go_graph)) if isinstance(go_graph, pd.DataFrame) else ("path", str(go_graph)),
           None if nodes is None else tuple(str(g) for g in nodes))
    hit = _OPERATOR_CACHE.get(key)
    if hit is not None and (not isinstance(go_graph, pd.DataFrame) or hit[0] is go_graph):
        return hit[1], hit[2]
    edges = go_graph if isinstance(go_graph, pd.DataFrame) else load_go(go_graph)
    if nodes is None:
        nodes = pd.unique(np.concatenate([edges["source"].to_numpy(str), edges["target"].to_numpy(str)]))
    A = gcn_normalize(GeneGraph.from_edges(edges, nodes).adjacency)
    out = pd.Index([str(g) for g in nodes]), ((A + A.T) * 0.5).tocsr()
    if len(_OPERATOR_CACHE) >= _OPERATOR_CACHE_SIZE:
        _OPERATOR_CACHE.pop(next(iter(_OPERATOR_CACHE)))
    _OPERATOR_CACHE[key] = (go_graph, *out)
    return out


class RidgeModel(PerturbationModel):
    """Linear model of Ahlmann-Eltze, Huber and Anders (2025): ``Y ~ G W P^T + b``.

    ``Y`` (n_genes x n_train) holds the training changes from control, ``b`` its row means,
    ``G`` (n_genes x K) the top ``n_components`` principal directions of ``Y - b`` over genes
    (gene embedding), ``P`` (n_train x d) the perturbation embeddings. ``W`` (K x d) solves the
    doubly ridge-regularised least squares problem in closed form,
    ``W = (G^T G + λI)^-1 G^T (Y - b) P (P^T P + λI)^-1``, and a perturbation with embedding ``p``
    is predicted as ``control + b + G W p``.

    Perturbation embedding (``pert_embedding``):

    * ``'go'`` (default): the gene's GO-graph neighbourhood: row ``u`` of ``A_hat^hops`` restricted
      to the training genes (``A_hat`` the GCN-normalised GO graph,
      :func:`~netformer.graphs.gcn_normalize`), so a held-out gene is
      described by its GO similarity to the measured ones. The paper uses PCA of the data for
      measured genes and external embeddings for others; the GO graph is the external source here.
    * ``'pca'``: the gene's row of ``G`` (only for perturbed genes that are measured; others get 0).
    * a DataFrame (genes x d) of user embeddings.

    A double's embedding is the sum of its genes' embeddings. ``go_graph``: edge DataFrame or
    path (default: the GO graph of the shared data folder, :func:`~netformer.graphs.go_graph`).

    ``embed`` returns ``P`` rows.
    """

    name = "ridge"

    def __init__(
        self,
        n_components: int = 10,
        ridge: float = 0.1,
        pert_embedding: str | pd.DataFrame = "go",
        go_graph: pd.DataFrame | str | None = None,
        hops: int = 1,
    ):
        if n_components < 1 or ridge < 0 or hops < 1:
            raise ConfigError("RidgeModel needs n_components >= 1, ridge >= 0 and hops >= 1.")
        if isinstance(pert_embedding, str) and pert_embedding not in ("go", "pca"):
            raise ConfigError(f"pert_embedding must be 'go', 'pca' or a DataFrame, not {pert_embedding!r}.")
        self.n_components = n_components
        self.ridge = ridge
        self.pert_embedding = pert_embedding
        self.go_graph = go_graph
        self.hops = hops

    def __repr__(self) -> str:
        pe = self.pert_embedding if isinstance(self.pert_embedding, str) else "custom"
        return f"RidgeModel(n_components={self.n_components}, ridge={self.ridge}, pert_embedding={pe!r})"

    def _fit(self, data, train):
        self.fallback_ = None
        if not train:
            log.warning("RidgeModel fitted without training perturbations: predicts control.")
            self.b_ = np.zeros(data.n_genes)
            self.W_ = None
            return
        Y = self._train_deltas().T  # genes x n_train
        self.b_ = Y.mean(1)
        Yc = Y - self.b_[:, None]
        K = int(min(self.n_components, max(1, min(Yc.shape) - 1)))
        U, _, _ = np.linalg.svd(Yc, full_matrices=False)
        self.G_ = U[:, :K]
        self._setup_embedding(data, train)
        P = self._embed_conditions(train)
        lam = self.ridge
        GtG = self.G_.T @ self.G_ + lam * np.eye(K)
        PtP = P.T @ P + lam * np.eye(P.shape[1])
        self.W_ = np.linalg.solve(GtG, self.G_.T @ Yc @ P) @ np.linalg.inv(PtP)

    def _setup_embedding(self, data, train):
        if isinstance(self.pert_embedding, pd.DataFrame):
            self._table = self.pert_embedding.astype(np.float64)
            return
        if self.pert_embedding == "pca":
            self._table = pd.DataFrame(self.G_, index=data.genes)
            return
        self._node_index, self._A = symmetric_gcn_operator(self.go_graph)
        anchors = sorted({g for c in train for g in condition_genes(c)})
        acols = self._node_index.get_indexer(anchors)
        self._anchor_cols = acols[acols >= 0]
        missing = [g for g in anchors if g not in self._node_index]
        if missing:
            log.warning("%d training genes are not in the gene graph (no graph embedding): %s", len(missing), missing[:10])
        M = self._A[:, self._anchor_cols]
        for _ in range(self.hops - 1):
            M = self._A @ M
        self._anchor_op = M.tocsr()  # n_nodes x n_anchors

    def _gene_embedding(self, genes: list[str]) -> np.ndarray:
        if isinstance(self.pert_embedding, str) and self.pert_embedding == "go":
            d = self._anchor_op.shape[1]
            rows = self._node_index.get_indexer(genes)
            out = np.zeros((len(genes), d))
            ok = rows >= 0
            if ok.any():
                out[ok] = self._anchor_op[rows[ok]].toarray()
            return out
        tab = self._table
        out = np.zeros((len(genes), tab.shape[1]))
        rows = tab.index.get_indexer(genes)
        ok = rows >= 0
        out[ok] = tab.to_numpy()[rows[ok]]
        return out

    def _embed_conditions(self, conditions: list[str]) -> np.ndarray:
        genes = sorted({g for c in conditions for g in condition_genes(c)})
        E = self._gene_embedding(genes)
        pos = {g: i for i, g in enumerate(genes)}
        d = E.shape[1] if E.ndim == 2 else 0
        out = np.zeros((len(conditions), d))
        for i, c in enumerate(conditions):
            for g in condition_genes(c):
                out[i] += E[pos[g]]
        return out

    def _predict_delta(self, conditions):
        if self.W_ is None:
            return np.zeros((len(conditions), self.data_.n_genes))
        P = self._embed_conditions(conditions)
        return self.b_[None, :] + P @ (self.G_ @ self.W_).T

    def embed(self, conditions):
        self._check_fitted()
        if self.W_ is None:
            return np.zeros((len(self._canon(conditions)), 1))
        return self._embed_conditions(self._canon(conditions))


class SGCModel(PerturbationModel):
    """Simple Graph Convolution (Wu et al., "Simplifying Graph Convolutional Networks", ICML 2019)
    as a perturbation outcome model, fitted in closed form.

    A perturbation of gene ``u`` has the feature vector ``x_u = e_u^T S^K`` (n_nodes,): the one-hot
    of ``u`` propagated ``K = hops`` times by ``S``, the symmetrised GCN-normalised gene graph
    (:func:`symmetric_gcn_operator`; a double's feature is the sum of its genes'). The change from
    control is linear in it, ``delta_u = x_u W + b`` (``W`` n_nodes x n_genes, ``b`` n_genes), fitted
    by ridge regression with an unpenalised intercept::

        min_{W, b}  || X W + 1 b^T - Y ||_F^2 + lambda ||W||_F^2

    over the training perturbations (``X`` their features, ``Y`` their measured changes). The
    solution is computed in the dual (kernel) form, exact for any n_nodes: with ``Xc = X - 1 xbar``,
    ``Yc = Y - 1 ybar``, ``W = Xc^T (Xc Xc^T + lambda I)^-1 Yc`` and ``b = ybar - xbar W``.
    ``x_u Xc^T`` is non-zero only when ``u`` shares a node within ``2K`` hops with a training gene,
    so the prediction for an unmeasured gene comes only from measured graph neighbours (and the
    mean training change ``ybar`` otherwise, up to the centring term) - the mechanism of
    GraphReach's theory (Panagopoulos et al. 2025, arXiv 2503.14571).

    Parameters
    ----------
    hops : int, default 1
        K, propagation steps (SGC's K; GEARS uses one GO layer).
    ridge : float, default 0.1
        Penalty. With ``relative_ridge`` (default) ``lambda = ridge * trace(Xc Xc^T) / n_train``
        (scale-free: the mean squared centred feature norm); else ``lambda = ridge``. The value used
        is ``lambda_`` after :meth:`fit`. ``ridge = 0`` is allowed (pseudo-inverse solution).
    go_graph : edge DataFrame ``source,target,importance`` or path, default the shared GO graph.
    relative_ridge : bool, default True.

    Genes absent from the graph have a zero feature (logged): they are predicted as ``b``.
    ``embed`` returns ``x_u Xc^T`` (n, n_train): the centred feature similarity to each training
    perturbation. After fitting, ``coef_`` is ``W`` (n_nodes x n_genes, dense) and ``intercept_``
    is ``b``. Raises :class:`ConfigError` for ``hops < 1`` or
    ``ridge < 0``.
    """

    name = "sgc"

    def __init__(self, hops: int = 1, ridge: float = 0.1, go_graph: pd.DataFrame | str | None = None,
                 relative_ridge: bool = True):
        if hops < 1 or ridge < 0:
            raise ConfigError("SGCModel needs hops >= 1 and ridge >= 0.")
        self.hops = hops
        self.ridge = ridge
        self.go_graph = go_graph
        self.relative_ridge = relative_ridge

    def __repr__(self) -> str:
        return f"SGCModel(hops={self.hops}, ridge={self.ridge}, relative_ridge={self.relative_ridge})"

    def features(self, conditions: Sequence[str]) -> "sp.csr_matrix":
        """Sparse SGC features (n_conditions, n_nodes): the propagated one-hot of each condition's genes.

        Needs only the graph (no fit); node order ``self.node_index_``.
        """
        if not hasattr(self, "_S"):
            self._prepare()
        return self._features(self._canon(conditions))

    def _prepare(self) -> None:
        self.node_index_, self._S = symmetric_gcn_operator(self.go_graph)
        self._pos = {g: i for i, g in enumerate(self.node_index_)}

    def _features(self, conditions: list[str]) -> "sp.csr_matrix":
        rows, cols = [], []
        for i, c in enumerate(conditions):
            for g in condition_genes(c):
                k = self._pos.get(g, -1)
                if k >= 0:
                    rows.append(i)
                    cols.append(k)
        n = len(self.node_index_)
        E = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(conditions), n))
        for _ in range(self.hops):
            E = (E @ self._S).tocsr()
        return E

    def _fit(self, data, train):
        self._prepare()
        missing = sorted({g for c in train for g in condition_genes(c)} - set(self._pos))
        if missing:
            log.warning("%d training genes are not in the graph (zero SGC feature): %s", len(missing), missing[:10])
        Y = self._train_deltas()                             # n_train x n_genes
        self.ybar_ = Y.mean(0) if len(Y) else np.zeros(data.n_genes)
        if not train:
            log.warning("SGCModel fitted without training perturbations: predicts control.")
            self.X_, self.alpha_, self.lambda_ = None, None, 0.0
            return
        X = self._features(train)
        K = np.asarray((X @ X.T).todense(), dtype=np.float64)
        self._kmean_rows = K.mean(0)
        self._kmean = K.mean()
        Kc = K - K.mean(0)[None, :] - K.mean(1)[:, None] + K.mean()
        n = len(train)
        lam = self.ridge * (np.trace(Kc) / n if self.relative_ridge else 1.0)
        self.lambda_ = float(lam)
        Yc = Y - self.ybar_[None, :]
        if lam > 0:
            self.alpha_ = np.linalg.solve(Kc + lam * np.eye(n), Yc)
        else:
            self.alpha_ = np.linalg.pinv(Kc, hermitian=True) @ Yc
        self.X_ = X

    def _centred_kernel(self, conditions: list[str]) -> np.ndarray:
        kx = np.asarray((self._features(conditions) @ self.X_.T).todense(), dtype=np.float64)
        return kx - kx.mean(1, keepdims=True) - self._kmean_rows[None, :] + self._kmean

    def _predict_delta(self, conditions):
        if self.alpha_ is None:
            return np.zeros((len(conditions), self.data_.n_genes))
        return self.ybar_[None, :] + self._centred_kernel(conditions) @ self.alpha_

    @property
    def coef_(self) -> np.ndarray:
        """``W`` (n_nodes, n_genes) of the primal problem (dense; for small graphs and tests)."""
        self._check_fitted()
        xbar = np.asarray(self.X_.mean(0)).ravel()
        Xc = self.X_.toarray() - xbar[None, :]
        return Xc.T @ self.alpha_

    @property
    def intercept_(self) -> np.ndarray:
        """``b = ybar - xbar W`` (n_genes,)."""
        xbar = np.asarray(self.X_.mean(0)).ravel()
        return self.ybar_ - xbar @ self.coef_

    def embed(self, conditions):
        self._check_fitted()
        if self.alpha_ is None:
            return np.zeros((len(self._canon(conditions)), 1))
        return self._centred_kernel(self._canon(conditions))
