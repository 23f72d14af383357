"""Monotone submodular selection criteria over the propagation operator, and graph baselines.

Panagopoulos et al. 2025 (arXiv 2503.14571), "Efficient Data Selection for Training Genomic
Perturbation Models": measuring perturbation ``u`` supervises the embeddings of the nodes
``N(u) = {v : P[u, v] > 0}`` reached by the model's graph layers, ``P = A_hat^L``.

- :class:`GraphReachCoverage`: ``f(S) = |union_{u in S} N(u)|`` (set cover; monotone submodular).
- :class:`GraphReachFacility`: ``f(S) = sum_v max_{u in S} P[u, v]`` (facility location; the DESIGN
  notes write ``P_vu`` for a symmetric P; we use the supervision direction ``P[u, v]``).
- :class:`MaxSpec`: ``f(S) = log det(I + beta P_S P_S^T)`` (log-determinant; monotone submodular
  for any PSD kernel). Gains use Schur complements maintained by incremental Cholesky rows, as in
  fast greedy MAP inference for DPPs (Chen, Zhang & Zhou, NeurIPS 2018): with
  ``K = beta P_C P_C^T``, ``gain(j | S) = log(1 + K_jj - ||c_j||^2)`` where ``c_j`` is row ``j`` of
  ``K_{C,S} L^-T`` and ``L L^T = I + K_SS``; adding ``s`` appends
  ``e_j = (K_sj - <c_s, c_j>) / d_s`` to every ``c_j``. No determinant is recomputed.

Every criterion keeps the current selection as state and answers ``gains(idx)`` (marginal gains of
candidate indices ``idx``, shape (k,)) and ``add(j)``. The same code path computes a gain whether one
or all candidates are asked, so lazy and plain greedy see the same numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError


class Criterion(ABC):
    """A monotone submodular set function over ``n`` candidates, with incremental state.

    Subclasses implement :meth:`_gains` and :meth:`_add`. ``value`` is ``f(S)`` of the current
    selection ``selected`` (list of candidate indices, in order).
    """

    name: str = "criterion"

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.reset()

    def reset(self) -> None:
        """Forget the selection: ``S = {}``, ``value = f({}) = 0``."""
        self.selected: list[int] = []
        self.value = 0.0
        self._reset()

    def _reset(self) -> None:  # pragma: no cover - trivial default
        pass

    def gains(self, idx: np.ndarray) -> np.ndarray:
        """Marginal gains ``f(S + j) - f(S)`` for each candidate index in ``idx``; shape (len(idx),)."""
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        return self._gains(idx)

    def add(self, j: int) -> float:
        """Add candidate ``j`` to ``S``; returns its marginal gain and updates ``value``."""
        g = float(self.gains(np.array([j]))[0])
        self._add(int(j))
        self.selected.append(int(j))
        self.value += g
        return g

    def evaluate(self, subset) -> float:
        """``f(subset)`` from scratch (resets the state); used for brute-force checks."""
        self.reset()
        for j in subset:
            self.add(j)
        v = self.value
        self.reset()
        return v

    @abstractmethod
    def _gains(self, idx: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _add(self, j: int) -> None: ...


def _rows(m: sp.csr_matrix, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column indices, data, segment starts) of rows ``idx`` of CSR ``m`` (rows must be non-empty)."""
    if idx.size == 1:
        a, b = m.indptr[idx[0]], m.indptr[idx[0] + 1]
        return m.indices[a:b], m.data[a:b], np.zeros(1, dtype=np.int64)
    sub = m[idx]
    return sub.indices, sub.data, sub.indptr[:-1]


def _segment_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-row sums by ``np.add.reduceat``: a row's sum depends only on its own values, so asking one
    candidate or all of them gives bit-identical gains."""
    return np.add.reduceat(values, starts) if values.size else np.zeros(len(starts))


class GraphReachCoverage(Criterion):
    """GraphReach coverage ``f(S) = |union_{u in S} N(u)|``, ``N(u) = {v : P[u, v] > 0}``.

    Parameters
    ----------
    reach : sparse (c, n)
        Rows of P for the ``c`` candidates (``P[pool.node_index]``); only the pattern is used.
    Gains are integers (counts of newly reached nodes), computed as one sparse mat-vec
    ``B[idx] @ uncovered``.
    """

    name = "graphreach"

    def __init__(self, reach: sp.spmatrix) -> None:
        b = sp.csr_matrix(reach, copy=True)
        b.eliminate_zeros()
        b.data = np.ones_like(b.data)
        if np.any(np.diff(b.indptr) == 0):
            raise ConfigError("every candidate must reach at least itself (P has a unit-weight self loop)")
        self._b = b
        self.n_nodes = b.shape[1]
        super().__init__(b.shape[0])

    def _reset(self) -> None:
        self._uncovered = np.ones(self.n_nodes, dtype=np.float64)

    def _gains(self, idx):
        ind, _, starts = _rows(self._b, idx)
        return _segment_sums(self._uncovered[ind], starts)

    def _add(self, j):
        self._uncovered[self._b.indices[self._b.indptr[j]:self._b.indptr[j + 1]]] = 0.0


class GraphReachFacility(Criterion):
    """GraphReach facility location ``f(S) = sum_v max_{u in S} P[u, v]`` (0 for S empty).

    ``reach`` : sparse (c, n), rows of P for the candidates (weights used). Gain of ``j``:
    ``sum_v max(P[j, v] - m_v, 0)`` with ``m_v`` the current best weight at node ``v``.
    """

    name = "graphreach_fl"

    def __init__(self, reach: sp.spmatrix) -> None:
        self._p = sp.csr_matrix(reach, dtype=np.float64, copy=True)
        self._p.sort_indices()
        if np.any(np.diff(self._p.indptr) == 0):
            raise ConfigError("every candidate must reach at least itself (P has a unit-weight self loop)")
        self.n_nodes = self._p.shape[1]
        super().__init__(self._p.shape[0])

    def _reset(self) -> None:
        self._best = np.zeros(self.n_nodes)

    def _gains(self, idx):
        ind, data, starts = _rows(self._p, idx)
        return _segment_sums(np.maximum(data - self._best[ind], 0.0), starts)

    def _add(self, j):
        row = self._p[j]
        self._best[row.indices] = np.maximum(self._best[row.indices], row.data)


class MaxSpec(Criterion):
    """MaxSpec log-determinant ``f(S) = log det(I + beta P_S P_S^T)`` (natural log).

    Parameters
    ----------
    reach : sparse (c, n)
        Rows of P for the candidates.
    beta : float, optional
        Kernel scale (> 0). Default: ``1 / median_j ||P_j||^2``, so a typical candidate alone has
        gain ``log 2``; smaller beta makes the criterion nearly modular (sum of row norms), larger
        beta rewards spectral diversity more.
    Memory: ``c x |S|`` float64 Cholesky rows (greedy reserves ``c x budget``).

    Raises :class:`ConfigError` for ``beta <= 0``.
    """

    name = "maxspec"

    def __init__(self, reach: sp.spmatrix, beta: float | None = None) -> None:
        self._p = sp.csr_matrix(reach, dtype=np.float64)
        sq = np.asarray(self._p.multiply(self._p).sum(axis=1)).ravel()
        if beta is None:
            med = float(np.median(sq[sq > 0])) if np.any(sq > 0) else 1.0
            beta = 1.0 / med
        if not beta > 0:
            raise ConfigError(f"MaxSpec beta must be > 0, got {beta!r}.")
        self.beta = float(beta)
        self._kdiag = self.beta * sq
        super().__init__(self._p.shape[0])

    def _reset(self) -> None:
        self._c = np.zeros((self.n, 16))
        self._d2 = 1.0 + self._kdiag.copy()   # Schur complements 1 + K_jj - ||c_j||^2
        self._done = np.zeros(self.n, dtype=np.int64)  # Cholesky columns applied to each row
        self._krows: list[np.ndarray] = []    # K[s, :] of each selected s (dense, length c)
        self._dsel: list[float] = []

    def reserve(self, size: int) -> None:
        """Pre-allocate Cholesky rows for a selection of ``size`` candidates."""
        if size > self._c.shape[1]:
            grow = np.zeros((self.n, int(size)))
            grow[:, : self._c.shape[1]] = self._c
            self._c = grow

    def _kernel_row(self, j: int) -> np.ndarray:
        a, b = self._p.indptr[j], self._p.indptr[j + 1]
        pj = np.zeros(self._p.shape[1])
        pj[self._p.indices[a:b]] = self._p.data[a:b]
        return self.beta * (self._p @ pj)   # one sparse mat-vec: K[j, :] = beta <P_i, P_j>

    def _catch_up(self, idx: np.ndarray) -> None:
        t = len(self._krows)
        if idx.size == 0 or t == 0:
            return
        if idx.size == 1:  # lazy path: same arithmetic as below, without the per-step masks
            j = int(idx[0])
            cj = self._c[j : j + 1]
            for step in range(int(self._done[j]), t):
                s = self.selected[step]
                dot = (cj[:, :step] * self._c[s, :step]).sum(axis=1)
                e = (self._krows[step][j] - dot[0]) / self._dsel[step]
                cj[0, step] = e
                self._d2[j] -= e * e
            self._done[j] = t
            return
        for step in range(int(self._done[idx].min()), t):
            rows = idx[self._done[idx] == step]
            if rows.size == 0:
                continue
            s = self.selected[step]
            # row-wise sum (not BLAS gemv) so a row's value does not depend on which other rows are asked
            dot = (self._c[rows, :step] * self._c[s, :step]).sum(axis=1)
            e = (self._krows[step][rows] - dot) / self._dsel[step]
            self._c[rows, step] = e
            self._d2[rows] -= e * e
            self._done[rows] = step + 1

    def _gains(self, idx):
        self._catch_up(idx)
        return np.log(np.maximum(self._d2[idx], 1e-300))

    def _add(self, j):
        t = len(self._krows)
        if t + 1 > self._c.shape[1]:
            self.reserve(max(2 * self._c.shape[1], t + 1))
        self._catch_up(np.array([j]))
        self._krows.append(self._kernel_row(j))
        self._dsel.append(float(np.sqrt(self._d2[j])))


# ----------------------------------------------------------------------------- graph baselines
def degree_scores(adjacency: sp.spmatrix, node_index: np.ndarray) -> np.ndarray:
    """Weighted degree (in + out, self loops excluded) of each candidate node; shape (c,)."""
    a = sp.csr_matrix(adjacency, copy=True)
    a.setdiag(0.0)
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=0)).ravel() + np.asarray(a.sum(axis=1)).ravel()
    return deg[node_index]


def pagerank_scores(adjacency: sp.spmatrix, node_index: np.ndarray, damping: float = 0.85,
                    tol: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """PageRank (Brin & Page 1998) of each candidate node by scipy power iteration; shape (c,).

    Edges follow the message direction ``source -> target`` (``adjacency[target, source]``), edge
    weights are used, dangling nodes are teleported uniformly (the networkx ``pagerank`` defaults,
    which this matches to ``tol``). Self loops are dropped.
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64, copy=True)
    a.setdiag(0.0)
    a.eliminate_zeros()
    n = a.shape[0]
    out = np.asarray(a.sum(axis=0)).ravel()          # out-weight of each source (column sums)
    inv = np.where(out > 0, 1.0 / np.where(out > 0, out, 1), 0.0)
    m = (a @ sp.diags(inv)).tocsr()                 # column-stochastic on non-dangling columns
    dangling = out == 0
    x = np.full(n, 1.0 / n)
    for _ in range(max_iter):
        x_new = damping * (m @ x + x[dangling].sum() / n) + (1 - damping) / n
        if np.abs(x_new - x).sum() < n * tol:
            x = x_new
            break
        x = x_new
    return x[node_index]


def ranking_order(scores: np.ndarray) -> np.ndarray:
    """Candidate indices by decreasing score, ties by increasing index (stable)."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))


class OracleVariance(Criterion):
    """Oracle positive control: reduction of the summed posterior variance of the TEST perturbations'
    predictions under a Bayesian linear model on features ``F`` (transductive / V-optimal experimental
    design, Yu, Bi & Tresp, ICML 2006).

    With kernel ``K = F F^T`` and noise ``lam``, ``f(S) = sum_t [K_tt - K_tS (K_SS + lam I)^-1 K_St]``
    reduced, i.e. ``f(S) = sum_t (K_tt - Kres_tt(S))``. Adding ``j``: ``gain = ||Kres_{T,j}||^2 /
    (Kres_jj + lam)`` and ``Kres <- Kres - Kres_{:,j} Kres_{j,:} / (Kres_jj + lam)``, with the candidate
    residual columns rebuilt from the rank-1 factors (no inverse is formed). It knows the test set
    (and, in the benchmark, the TRUE graph), so it is a positive control, not a usable method; it is
    not submodular in general, so run it with :func:`~netformer.select.greedy.plain_greedy`.

    Parameters
    ----------
    pool_features : (c, d) sparse or dense, candidate features.  test_features : (t, d).
    lam : float, optional. Default ``0.1 * mean_j K_jj`` (the SGC model's default relative ridge).
    """

    name = "oracle_variance"

    def __init__(self, pool_features, test_features, lam: float | None = None) -> None:
        fp = sp.csr_matrix(pool_features, dtype=np.float64)
        ft = sp.csr_matrix(test_features, dtype=np.float64)
        if fp.shape[1] != ft.shape[1]:
            raise ConfigError(f"pool features have {fp.shape[1]} columns, test features {ft.shape[1]}.")
        self._fp = fp
        self._kpt0 = np.asarray((fp @ ft.T).todense())
        self._diag0 = np.asarray(fp.multiply(fp).sum(1)).ravel()
        self.lam = float(0.1 * self._diag0.mean() if lam is None else lam)
        super().__init__(fp.shape[0])

    def _reset(self) -> None:
        self._kpt = self._kpt0.copy()
        self._diag = self._diag0.copy()
        self._e: list[np.ndarray] = []

    def _gains(self, idx):
        r = self._kpt[idx]
        return (r * r).sum(1) / (self._diag[idx] + self.lam)

    def _add(self, j):
        col = np.asarray((self._fp @ self._fp[j].T).todense()).ravel()
        for e in self._e:
            col -= e * e[j]
        e = col / np.sqrt(self._diag[j] + self.lam)
        et = self._kpt[j] / np.sqrt(self._diag[j] + self.lam)
        self._kpt -= np.outer(e, et)
        self._diag -= e * e
        self._e.append(e)
