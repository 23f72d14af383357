"""Greedy maximisation (plain and lazy) and the one-shot selection entry point.

Greedy (Nemhauser, Wolsey & Fisher 1978) adds, ``budget`` times, the candidate of largest marginal
gain; for a monotone submodular ``f`` it returns ``f(S_b) >= (1 - 1/e) max_{|S| <= b} f(S)`` for
every prefix ``b``. Lazy greedy (Minoux 1978; "lazy forward" / CELF, Leskovec et al. 2007) keeps a
max-heap of stale gains, which are upper bounds of the current gains by submodularity, and only
re-evaluates the top until a fresh gain beats every remaining bound.

Deterministic tie-break (both variants): among candidates of equal largest gain, the one of smallest
index, i.e. alphabetically first gene (pools are sorted by name). Every criterion computes a
candidate's gain with the same per-candidate floating-point arithmetic whether it is asked alone
(lazy) or with all others (plain), and gains never increase in floating point either, so the two
variants return bit-identical ordered lists. Nothing is random,
so the selection is identical across seeds; the ordering is nested (its first b picks are the greedy
answer for budget b).
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from .._io import new_figure, save_figure
from ..errors import ConfigError
from ..graphs import GeneGraph, propagation_operator
from .candidates import CandidatePool, check_budget, resolve_candidates
from .criteria import (
    Criterion,
    GraphReachCoverage,
    GraphReachFacility,
    MaxSpec,
    degree_scores,
    pagerank_scores,
    ranking_order,
)

log = logging.getLogger(__name__)

SUBMODULAR_METHODS = ("graphreach", "graphreach_fl", "maxspec")
RANKING_METHODS = ("degree", "pagerank", "random")
METHODS = SUBMODULAR_METHODS + RANKING_METHODS

BOUND = 1.0 - 1.0 / np.e


@dataclass
class GreedyTrace:
    """Raw greedy output: ordered candidate indices, marginal gains, cumulative ``f`` and evaluations."""

    order: np.ndarray
    gains: np.ndarray
    objective: np.ndarray
    n_evaluations: int


def plain_greedy(criterion: Criterion, budget: int) -> GreedyTrace:
    """Plain greedy: every step evaluates the gains of all remaining candidates (vectorised).

    ``n_evaluations`` counts candidate gain evaluations (sum over steps of the remaining pool).
    """
    budget = check_budget(budget, criterion.n)
    criterion.reset()
    if hasattr(criterion, "reserve"):
        criterion.reserve(budget)
    remaining = np.arange(criterion.n)
    order, gains, obj = [], [], []
    n_eval = 0
    for _ in range(budget):
        g = criterion.gains(remaining)
        n_eval += remaining.size
        pos = int(np.argmax(g))   # first maximum = smallest candidate index among exact ties
        j = int(remaining[pos])
        gains.append(criterion.add(j))
        order.append(j)
        obj.append(criterion.value)
        remaining = np.delete(remaining, pos)
    return GreedyTrace(np.array(order), np.array(gains), np.array(obj), n_eval)


def lazy_greedy(criterion: Criterion, budget: int) -> GreedyTrace:
    """Lazy greedy (Minoux / CELF) with a max-heap of stale upper bounds; same output as plain greedy.

    Heap keys are ``(-gain, index)``. The first step evaluates all candidates (counted in
    ``n_evaluations``); afterwards the top entry is re-evaluated while stale. A fresh top has the
    largest current gain (stale keys bound their gains from above by submodularity) and, among equal
    gains, the smallest index: exactly plain greedy's pick.
    """
    budget = check_budget(budget, criterion.n)
    criterion.reset()
    if hasattr(criterion, "reserve"):
        criterion.reserve(budget)
    g0 = criterion.gains(np.arange(criterion.n))
    n_eval = criterion.n
    heap = [(-float(g), j) for j, g in enumerate(g0)]
    heapq.heapify(heap)
    fresh_at = np.zeros(criterion.n, dtype=np.int64)   # step at which the heap key was computed
    order, gains, obj = [], [], []
    for t in range(budget):
        while True:
            _, j = heap[0]
            if fresh_at[j] == t:
                heapq.heappop(heap)
                break
            g = float(criterion.gains(np.array([j]))[0])
            n_eval += 1
            fresh_at[j] = t
            heapq.heapreplace(heap, (-g, j))
        gains.append(criterion.add(j))
        order.append(j)
        obj.append(criterion.value)
    return GreedyTrace(np.array(order), np.array(gains), np.array(obj), n_eval)


@dataclass
class SelectionResult:
    """An ordered one-shot selection.

    Attributes
    ----------
    method : str
        ``graphreach`` | ``graphreach_fl`` | ``maxspec`` | ``degree`` | ``pagerank`` | ``random``.
    genes : list of str, length B
        Selected perturbations in pick order; ``genes[:b]`` answers budget ``b``.
    gains : np.ndarray (B,)
        Marginal gain of each pick under ``method``'s objective (for ranking baselines: the
        GraphReach coverage gain, i.e. newly reached nodes).
    objective : np.ndarray (B,)
        Cumulative objective after each pick (ranking baselines: GraphReach coverage).
    coverage : np.ndarray (B,)
        Fraction of the graph's nodes reached, ``|union N(u)| / n_nodes``, after each pick.
    scores : np.ndarray (B,) or None
        Ranking score (degree, PageRank) for baselines.
    n_evaluations : int
        Candidate gain evaluations (0 for ranking baselines).
    seconds : float
        Wall time of the optimisation (excluding graph loading and operator construction).
    algorithm : str
        ``lazy`` | ``plain`` | ``ranking``.
    n_candidates, n_nodes, n_layers : int
    missing : list of str
        Requested candidates absent from the graph.
    """

    method: str
    genes: list
    gains: np.ndarray
    objective: np.ndarray
    coverage: np.ndarray
    n_evaluations: int
    seconds: float
    algorithm: str
    n_candidates: int
    n_nodes: int
    n_layers: int
    scores: np.ndarray | None = None
    missing: list = field(default_factory=list)

    @property
    def budget(self) -> int:
        return len(self.genes)

    @property
    def bound(self) -> str:
        """The approximation guarantee that applies to this selection, as a sentence."""
        if self.method in SUBMODULAR_METHODS:
            return (f"{self.method} is monotone submodular, so for every prefix b the greedy value "
                    f"satisfies f(S_b) >= (1 - 1/e) * max_(|S|<=b) f(S) ~= {BOUND:.4f} * OPT_b; at "
                    f"b = {self.budget}, OPT_b <= {self.objective[-1] / BOUND:.6g}.")
        return f"{self.method} is a ranking heuristic; no approximation guarantee."

    def prefix(self, b: int) -> list:
        """The selection for a smaller budget ``b`` (the first ``b`` picks)."""
        check_budget(b, self.budget)
        return list(self.genes[:b])

    def to_frame(self) -> pd.DataFrame:
        """Ranked table: rank (1-based), gene, marginal_gain, cumulative_objective, coverage_fraction[, score]."""
        df = pd.DataFrame({
            "rank": np.arange(1, self.budget + 1),
            "gene": self.genes,
            "marginal_gain": self.gains,
            "cumulative_objective": self.objective,
            "coverage_fraction": self.coverage,
        })
        if self.scores is not None:
            df["score"] = self.scores
        return df

    def plot_coverage(self, path: str | os.PathLike | None = None, others: Sequence["SelectionResult"] = (),
                      ax=None):
        """Graph coverage fraction vs budget (this result and optional ``others``), drawn on ``ax`` or a
        new figure (no pyplot); written as a PNG to ``path`` when given. Returns the figure."""
        fig, ax = new_figure(figsize=(6, 4)) if ax is None else (ax.figure, ax)
        for r in (self, *others):
            ax.plot(np.arange(1, r.budget + 1), r.coverage, label=f"{r.method} ({r.algorithm})")
        ax.set_xlabel("budget (perturbations measured)")
        ax.set_ylabel(f"fraction of graph nodes reached (L={self.n_layers})")
        ax.set_title(f"Coverage vs budget ({self.n_candidates} candidates, {self.n_nodes} nodes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if path is not None:
            save_figure(fig, path)
        return fig


@dataclass
class SelectConfig:
    """Configuration of :func:`select`.

    method : one of ``METHODS`` (default ``graphreach``).
    n_layers : graph layers L of the model (P = A_hat^L); GEARS: 1.
    lazy : lazy (True, default) or plain greedy; same output.
    beta : MaxSpec kernel scale (None: 1 / median squared row norm of P).
    missing : ``drop`` or ``error`` for candidates absent from the graph.
    seed : used only by ``random``.
    """

    method: str = "graphreach"
    n_layers: int = 1
    lazy: bool = True
    beta: float | None = None
    missing: Literal["drop", "error"] = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown selection method {self.method!r}; choose one of {METHODS}.")


class Selector:
    """One-shot selector over a gene graph: builds ``P = A_hat^L`` once, answers many selections.

    Parameters
    ----------
    graph : GeneGraph
    candidates : iterable of str, optional (default: all graph nodes)
    n_layers : int, default 1
    missing : ``drop`` | ``error``
    """

    def __init__(self, graph: GeneGraph, candidates: Iterable[str] | None = None, *, n_layers: int = 1,
                 missing: Literal["drop", "error"] = "drop") -> None:
        self.graph = graph
        self.pool: CandidatePool = resolve_candidates(graph, candidates, missing=missing)
        self.n_layers = n_layers
        self.P = propagation_operator(graph, n_layers)
        self.reach = self.P[self.pool.node_index].tocsr()

    def criterion(self, method: str, beta: float | None = None) -> Criterion:
        """A fresh criterion object for ``method`` over the candidate rows of P."""
        if method == "graphreach":
            return GraphReachCoverage(self.reach)
        if method == "graphreach_fl":
            return GraphReachFacility(self.reach)
        if method == "maxspec":
            return MaxSpec(self.reach, beta=beta)
        raise ConfigError(f"{method!r} is not a submodular criterion; choose one of {SUBMODULAR_METHODS}.")

    def coverage_curve(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(newly reached nodes per pick, cumulative coverage fraction) of an ordering of candidates."""
        cov = GraphReachCoverage(self.reach)
        new = np.array([cov.add(int(j)) for j in order])
        return new, np.cumsum(new) / self.graph.n_genes

    def select(self, budget: int, config: SelectConfig | None = None, **kwargs) -> SelectionResult:
        """Select ``budget`` candidates; keyword arguments override ``config`` fields.

        Raises :class:`BudgetError` if ``budget`` exceeds the pool, :class:`ConfigError` for unknown
        methods or an ``n_layers`` other than the one this Selector's operator was built for.
        """
        cfg = config or SelectConfig(n_layers=self.n_layers)
        if kwargs:
            cfg = SelectConfig(**{**cfg.__dict__, **kwargs})
        if cfg.n_layers != self.n_layers:
            raise ConfigError(f"this Selector was built for n_layers={self.n_layers}; got n_layers={cfg.n_layers}. "
                              "Build a Selector with the model's number of graph layers.")
        budget = check_budget(budget, len(self.pool))
        t0 = time.perf_counter()
        scores = None
        if cfg.method in SUBMODULAR_METHODS:
            crit = self.criterion(cfg.method, cfg.beta)
            trace = (lazy_greedy if cfg.lazy else plain_greedy)(crit, budget)
            order, gains, obj, n_eval = trace.order, trace.gains, trace.objective, trace.n_evaluations
            algorithm = "lazy" if cfg.lazy else "plain"
        else:
            if cfg.method == "degree":
                s = degree_scores(self.graph.adjacency, self.pool.node_index)
                order = ranking_order(s)[:budget]
            elif cfg.method == "pagerank":
                s = pagerank_scores(self.graph.adjacency, self.pool.node_index)
                order = ranking_order(s)[:budget]
            else:
                s = None
                order = np.random.default_rng(cfg.seed).permutation(len(self.pool))[:budget]
            scores = None if s is None else s[order]
            n_eval, algorithm = 0, "ranking"
        seconds = time.perf_counter() - t0
        new, coverage = self.coverage_curve(order)
        if cfg.method not in SUBMODULAR_METHODS:
            gains, obj = new.astype(float), np.cumsum(new).astype(float)
        log.info("%s (%s): %d picks from %d candidates in %.3fs, %d gain evaluations, coverage %.3f",
                 cfg.method, algorithm, budget, len(self.pool), seconds, n_eval, coverage[-1])
        return SelectionResult(
            method=cfg.method, genes=[str(g) for g in self.pool.genes[order]], gains=np.asarray(gains),
            objective=np.asarray(obj), coverage=coverage, n_evaluations=int(n_eval), seconds=seconds,
            algorithm=algorithm, n_candidates=len(self.pool), n_nodes=self.graph.n_genes,
            n_layers=self.n_layers, scores=scores, missing=list(self.pool.missing))


def select(graph: GeneGraph, budget: int, candidates: Iterable[str] | None = None,
           config: SelectConfig | None = None, **kwargs) -> SelectionResult:
    """One-shot selection of ``budget`` perturbations from ``candidates`` over ``graph``.

    Convenience wrapper: ``Selector(graph, candidates, n_layers=..., missing=...).select(budget, ...)``.
    Keyword arguments are :class:`SelectConfig` fields (``method``, ``n_layers``, ``lazy``, ``beta``,
    ``missing``, ``seed``).

    Example
    -------
    >>> from netformer.graphs import load_edge_list
    >>> g = load_edge_list()                       # GO graph of the shared data folder
    >>> res = select(g, 100, method="graphreach")  # GraphReach coverage, lazy greedy, L = 1
    >>> res.to_frame().head()
    """
    cfg = config or SelectConfig()
    if kwargs:
        cfg = SelectConfig(**{**cfg.__dict__, **kwargs})
    sel = Selector(graph, candidates, n_layers=cfg.n_layers, missing=cfg.missing)
    return sel.select(budget, cfg)
