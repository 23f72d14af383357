"""Active learning over perturbation outcome models: the multi-round competitors of one-shot selection.

The loop (IterPert protocol, Huang et al. 2024, "Sequential optimal experimental design of
perturbation screens guided by multi-modal priors"): measure an initial random set, then for each
round retrain the model on everything measured so far and let a strategy choose the next batch from
the unmeasured pool. Strategies:

- ``random``: uniform without replacement (seeded).
- ``coreset``: k-center greedy (Sener & Savarese, ICLR 2018) on the model's perturbation embeddings
  ``model.embed``: repeatedly take the pool point farthest (Euclidean) from everything labeled.
- ``typiclust``: TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): k-means of the embeddings into
  ``|labeled| + batch`` clusters; for each pick, the cluster with fewest labeled points (ties: the
  largest), and in it the most typical unlabeled point (inverse mean distance to its k = 20 nearest
  neighbours within the cluster).
- ``bald``: BALD-style ensemble disagreement (Houlsby et al. 2011, as used by IterPert): an ensemble
  of models fit on bootstrap resamples of the labeled set; score = mean over genes of the variance
  of the members' predicted changes; the top ``batch`` scores.
- ``iterpert``: k-center greedy in the feature space of the kernel ``K = mean(prior kernels) +
  model kernel`` (each kernel cosine-normalised to unit diagonal), distance
  ``d(i, j)^2 = K_ii + K_jj - 2 K_ij``. Priors here: GO graph kernel (:func:`go_kernel`; on any
  gene graph, e.g. a foundation model's, :func:`graph_kernel`) and an
  expression-similarity kernel (:func:`expression_kernel`); the model kernel is the cosine of the
  model's predicted changes (IterPert's "diff_effect" kernel).

All ties are broken by the lowest pool index (the pool is sorted by name); randomness comes only
from ``seed`` (initial set, random strategy, k-means, bootstrap).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("random", "coreset", "typiclust", "bald", "iterpert")


@dataclass
class ActiveConfig:
    """Active-learning schedule. ``initial`` random picks, then ``rounds`` batches of ``batch``.

    strategy : one of ``STRATEGIES``. n_ensemble : BALD ensemble size (default 5).
    typical_k : neighbours for TypiClust typicality (default 20). seed : all randomness.
    schedule : optional increasing cumulative budgets, e.g. ``(25, 50, 100, 200, 400, 600)``: the
    initial random set is ``schedule[0]`` and round r adds ``schedule[r] - schedule[r - 1]``; it
    overrides ``initial``, ``rounds`` and ``batch``.
    """

    strategy: str = "random"
    initial: int = 100
    rounds: int = 5
    batch: int = 100
    seed: int = 0
    n_ensemble: int = 5
    typical_k: int = 20
    schedule: tuple | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown active-learning strategy {self.strategy!r}; choose one of {STRATEGIES}.")
        if self.schedule is not None:
            sch = tuple(int(b) for b in self.schedule)
            if not sch or sch[0] < 1 or any(b <= a for a, b in zip(sch, sch[1:])):
                raise ConfigError(f"schedule must be increasing budgets >= 1, got {self.schedule}.")
            self.schedule = sch
            self.initial, self.rounds = sch[0], len(sch) - 1
        if self.initial < 1 or self.rounds < 0 or self.batch < 1:
            raise ConfigError("active learning needs initial >= 1, rounds >= 0 and batch >= 1.")

    @property
    def budgets(self) -> list[int]:
        """Cumulative labeled-set size after each round (round 0 = the initial set)."""
        if self.schedule is not None:
            return list(self.schedule)
        return [self.initial + r * self.batch for r in range(self.rounds + 1)]

    @property
    def total(self) -> int:
        return self.budgets[-1]


@dataclass
class RoundRecord:
    """One lab round: the batch chosen, the cumulative labeled set, the times (seconds) and metrics."""

    round: int
    chosen: list
    labeled: list
    fit_seconds: float
    select_seconds: float
    metrics: dict = field(default_factory=dict)


@dataclass
class ActiveResult:
    """All rounds of an active-learning run (round 0 = the initial random set)."""

    config: ActiveConfig
    rounds: list

    def to_frame(self) -> pd.DataFrame:
        """One row per round: round, n_labeled, fit_seconds, select_seconds, metrics..., chosen (';'-joined)."""
        rows = []
        for r in self.rounds:
            rows.append({"round": r.round, "n_labeled": len(r.labeled), "fit_seconds": r.fit_seconds,
                         "select_seconds": r.select_seconds, **r.metrics, "chosen": ";".join(r.chosen)})
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- kernels
def _cosine(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1)
    xn = x / np.where(norm > 0, norm, 1.0)[:, None]
    k = xn @ xn.T
    np.fill_diagonal(k, 1.0)     # zero vectors: similar only to themselves
    return k


def go_kernel(reach: sp.spmatrix) -> np.ndarray:
    """GO graph kernel: cosine similarity of the candidates' rows of ``P = A_hat^L``; (c, c)."""
    r = sp.csr_matrix(reach, dtype=np.float64)
    norm = np.sqrt(np.asarray(r.multiply(r).sum(axis=1)).ravel())
    rn = sp.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ r
    k = np.asarray((rn @ rn.T).todense())
    np.fill_diagonal(k, 1.0)
    return k


def graph_kernel(graph, genes: Sequence[str], n_layers: int = 1) -> np.ndarray:
    """:func:`go_kernel` of any gene graph in the order of ``genes``: cosine similarity of their rows of
    ``P = A_hat^L`` (:class:`~netformer.select.greedy.Selector`); a gene absent from ``graph`` has
    similarity 0 to every other gene and 1 to itself. ``graph``: a GeneGraph. Shape
    (len(genes), len(genes)). Used for IterPert's graph prior on GO or on a foundation model's gene graph
    (:mod:`netformer.select.priors`)."""
    from .greedy import Selector

    genes = [str(g) for g in genes]
    k = np.zeros((len(genes), len(genes)))
    if any(g in graph for g in genes):
        sel = Selector(graph, genes, n_layers=n_layers, missing="drop")
        rows = pd.Index(genes).get_indexer([str(g) for g in sel.pool.genes])
        k[np.ix_(rows, rows)] = go_kernel(sel.reach)
    np.fill_diagonal(k, 1.0)
    return k


def expression_kernel(gene_embedding: pd.DataFrame, genes: Sequence[str]) -> np.ndarray:
    """Expression-similarity kernel: cosine of gene embeddings (genes x d, e.g. PCA loadings of a
    single-cell expression matrix) for ``genes``; genes without an embedding get similarity 0 to all
    others. Shape (len(genes), len(genes))."""
    x = np.zeros((len(genes), gene_embedding.shape[1]))
    rows = gene_embedding.index.get_indexer(list(genes))
    ok = rows >= 0
    x[ok] = gene_embedding.to_numpy(dtype=np.float64)[rows[ok]]
    return _cosine(x)


def expression_gene_embedding(adata, n_comps: int = 50, seed: int = 0) -> pd.DataFrame:
    """Gene embedding from a single-cell count matrix: PCA loadings of log1p(CP10k) expression.

    ``adata``: AnnData with raw counts, gene symbols in ``var['gene_symbol']`` if present, else the var
    index. Returns a DataFrame (genes x n_comps) of loadings scaled by singular values, duplicates
    summed by first occurrence. Used for IterPert's expression prior.
    """
    import scanpy as sc

    a = adata.copy()
    if "gene_symbol" in a.var:
        a.var_names = a.var["gene_symbol"].astype(str).to_numpy()
    a.var_names_make_unique()
    sc.pp.filter_genes(a, min_cells=3)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    n_comps = int(min(n_comps, min(a.shape) - 1))
    sc.tl.pca(a, n_comps=n_comps, random_state=seed)
    load = a.varm["PCs"] * np.sqrt(a.uns["pca"]["variance"])[None, :]
    return pd.DataFrame(load, index=a.var_names.astype(str))


# ----------------------------------------------------------------------------- strategies
def k_center_greedy(dist_fn: Callable[[int], np.ndarray], n: int, labeled: np.ndarray, k: int) -> list[int]:
    """k-center greedy: ``k`` indices (not in ``labeled``) each farthest from the current centres.

    ``dist_fn(i)`` returns the distances from point ``i`` to all ``n`` points. With no labeled point
    the first centre is index 0. Ties: lowest index (``np.argmax``).
    """
    mind = np.full(n, np.inf)
    for i in labeled:
        mind = np.minimum(mind, dist_fn(int(i)))
    taken = np.zeros(n, dtype=bool)
    taken[labeled] = True
    out = []
    for _ in range(k):
        cand = np.where(taken, -np.inf, mind)
        j = int(np.argmax(cand))
        out.append(j)
        taken[j] = True
        mind = np.minimum(mind, dist_fn(j))
    return out


def _euclid_fn(x: np.ndarray) -> Callable[[int], np.ndarray]:
    sq = (x * x).sum(1)
    return lambda i: np.sqrt(np.maximum(sq + sq[i] - 2 * x @ x[i], 0.0))


def _kernel_fn(k: np.ndarray) -> Callable[[int], np.ndarray]:
    d = np.diag(k)
    return lambda i: np.sqrt(np.maximum(d + d[i] - 2 * k[i], 0.0))


def typiclust(x: np.ndarray, labeled: np.ndarray, k: int, seed: int, n_neighbors: int = 20) -> list[int]:
    """TypiClust selection of ``k`` unlabeled points from embeddings ``x`` (n, d)."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    n = len(x)
    n_clusters = int(min(n, len(labeled) + k))
    with warnings.catch_warnings():  # duplicate embeddings give fewer distinct clusters: handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        lab = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x)
    taken = np.zeros(n, dtype=bool)
    taken[labeled] = True
    counts = np.bincount(lab[labeled], minlength=n_clusters) if len(labeled) else np.zeros(n_clusters, int)
    sizes = np.bincount(lab, minlength=n_clusters)
    untaken = np.bincount(lab[~taken], minlength=n_clusters)
    typ_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for _ in range(k):
        if not untaken.any():
            break
        key = np.lexsort((np.arange(n_clusters), -sizes, counts))  # fewest labeled, then largest
        c = int(next(cc for cc in key if untaken[cc] > 0))
        if c not in typ_cache:
            members = np.flatnonzero(lab == c)
            xm = x[members]
            sq = (xm * xm).sum(1)
            d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * xm @ xm.T, 0.0))
            kk = int(min(n_neighbors, len(members) - 1))
            typ = 1.0 / (np.sort(d, axis=1)[:, 1 : kk + 1].mean(1) + 1e-12) if kk > 0 else np.ones(len(members))
            typ_cache[c] = (members, typ)
        members, typ = typ_cache[c]
        typ = np.where(taken[members], -np.inf, typ)
        j = int(members[int(np.argmax(typ))])
        out.append(j)
        taken[j] = True
        counts[c] += 1
        untaken[c] -= 1
    return out


# ----------------------------------------------------------------------------- the loop
def run_active_learning(
    data,
    pool: Sequence[str],
    model_factory: Callable[[], object],
    config: ActiveConfig,
    *,
    prior_kernels: Mapping[str, np.ndarray] | None = None,
    evaluate_fn: Callable[[object], Mapping[str, float]] | None = None,
) -> ActiveResult:
    """Run one active-learning campaign.

    Parameters
    ----------
    data : netformer.perturbseq.data.PerturbData
        Measurements of every pool perturbation (revealed only once chosen).
    pool : sequence of str (c,)
        Candidate perturbation conditions; sorted internally (tie-break order).
    model_factory : callable
        Returns a fresh, unfitted :class:`~netformer.perturbseq.models.PerturbationModel`
        (``fit(data, conditions)``, ``predict``, ``predict_delta``, ``embed``).
    config : ActiveConfig
    prior_kernels : mapping name -> (c, c) array, required for ``iterpert`` (rows in sorted pool order).
    evaluate_fn : callable(model) -> dict of metrics, called after each round's fit (test scores).

    Returns
    -------
    ActiveResult with ``config.rounds + 1`` records; ``records[r].labeled`` is the measured set
    after round r (size ``config.budgets[r]``: ``initial + r * batch``, or ``schedule[r]``).

    Raises
    ------
    ConfigError
        The schedule needs more perturbations than the pool holds, or ``iterpert`` lacks priors.
    """
    pool = sorted(dict.fromkeys(map(str, pool)))
    n = len(pool)
    if config.total > n:
        raise ConfigError(f"active learning needs {config.total} perturbations but the pool has {n}; "
                          "lower initial/rounds/batch.")
    if config.strategy == "iterpert" and not prior_kernels:
        raise ConfigError("the iterpert strategy needs prior_kernels (e.g. go_kernel, expression_kernel).")
    rng = np.random.default_rng(config.seed)
    prior = None
    if prior_kernels:
        for name, k in prior_kernels.items():
            if k.shape != (n, n):
                raise ConfigError(f"prior kernel {name!r} has shape {k.shape}, expected {(n, n)}.")
        prior = np.mean([_normalise_kernel(k) for k in prior_kernels.values()], axis=0)
    t0 = time.perf_counter()
    labeled = list(rng.choice(n, size=config.initial, replace=False))
    sel_s = time.perf_counter() - t0
    records = []
    budgets = config.budgets
    for r in range(config.rounds + 1):
        t0 = time.perf_counter()
        model = model_factory().fit(data, [pool[i] for i in labeled])
        fit_s = time.perf_counter() - t0
        metrics = dict(evaluate_fn(model)) if evaluate_fn else {}
        chosen = labeled if r == 0 else labeled[budgets[r - 1]:]
        records.append(RoundRecord(r, [pool[i] for i in chosen], [pool[i] for i in labeled], fit_s, sel_s, metrics))
        log.info("%s round %d: %d labeled, fit %.2fs, select %.2fs %s", config.strategy, r, len(labeled),
                 fit_s, sel_s, {k: round(v, 4) for k, v in metrics.items()})
        if r == config.rounds:
            break
        t0 = time.perf_counter()
        new, extra_fit = _choose(config, budgets[r + 1] - budgets[r], data, pool, labeled, model, model_factory,
                                 prior, rng)
        sel_s = time.perf_counter() - t0 - extra_fit
        records[-1].fit_seconds += extra_fit  # BALD ensemble members are model retraining
        labeled = labeled + [int(j) for j in new]
    return ActiveResult(config, records)


def _normalise_kernel(k: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.clip(np.diag(k), 1e-12, None))
    return k / d[:, None] / d[None, :]


def _choose(cfg, batch, data, pool, labeled, model, model_factory, prior, rng) -> tuple[list[int], float]:
    n = len(pool)
    lab = np.array(labeled, dtype=np.int64)
    if cfg.strategy == "random":
        rest = np.setdiff1d(np.arange(n), lab)
        return list(rng.choice(rest, size=batch, replace=False)), 0.0
    if cfg.strategy == "coreset":
        x = np.asarray(model.embed(pool), dtype=np.float64)
        return k_center_greedy(_euclid_fn(x), n, lab, batch), 0.0
    if cfg.strategy == "typiclust":
        x = np.asarray(model.embed(pool), dtype=np.float64)
        return typiclust(x, lab, batch, int(rng.integers(2**31)), cfg.typical_k), 0.0
    if cfg.strategy == "bald":
        t0 = time.perf_counter()
        preds = []
        for _ in range(cfg.n_ensemble):
            boot = rng.choice(lab, size=len(lab), replace=True)
            m = model_factory().fit(data, [pool[i] for i in np.unique(boot)])
            preds.append(m.predict_delta(pool))
        fit_s = time.perf_counter() - t0
        score = np.var(np.stack(preds), axis=0).mean(1)
        score[lab] = -np.inf
        order = np.lexsort((np.arange(n), -score))
        return list(order[: batch]), fit_s
    # iterpert
    k = prior + _cosine(model.predict_delta(pool))
    return k_center_greedy(_kernel_fn(k), n, lab, batch), 0.0
