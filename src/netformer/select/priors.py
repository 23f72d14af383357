"""The selection graph by name: gene knowledge from GO, from a foundation model, or both.

``prior`` names the gene graph that one-shot selection (GraphReach, MaxSpec) runs on:

* ``go``: the GEARS-style GO graph (:func:`netformer.graphs.go_graph`).
* ``fm``: the foundation model's gene graph, :func:`netformer.graphs.embedding_graph` of the
  checkpoint's static gene embeddings (:func:`netformer.embed.static_gene_embeddings`; or of any
  embedding table given, e.g. contextual ones), ``k`` nearest genes by cosine similarity plus a self
  loop, in gene symbols like the GO graph.
* ``fm+go``: the union of the two edge sets; an edge in both gets the larger importance
  (``max(cosine, Jaccard)``; both lie in [0, 1] and both graphs give self loops weight 1, so the
  maximum keeps that scale, while a mean would halve every edge that one graph lacks).

Uses (``prior_uses`` of :class:`~netformer.select.benchmark.BenchmarkConfig`, CLI ``--prior-use``):
where in experiment design the prior's graph replaces GO. Each use takes the same graph (the one
:func:`selection_edges` returns for ``prior``); a use not named keeps GO.

* ``selection``: the graph GraphReach / MaxSpec select on (default).
* ``kernel``: IterPert's graph prior kernel, :func:`~netformer.select.active.graph_kernel` (cosine of
  the candidates' rows of ``A_hat^L``) on the prior's graph instead of GO's.
* ``model``: the gene graph of the outcome models: the perturbation embedding of
  :class:`~netformer.perturbseq.models.RidgeModel` (rows of ``A_hat^L`` restricted to the measured
  genes), the propagated one-hot features of :class:`~netformer.perturbseq.models.SGCModel`, and the
  gene graph of the GEARS-style GNN (:class:`~netformer.perturbseq.gears.GEARSModel`).

Coverage: a checkpoint's dictionary may hold few of the candidate genes (a model pretrained on other
tissue, another species' ids, a small dictionary). :func:`selection_edges` logs how many candidates the
FM graph covers; with ``prior="fm"`` the uncovered candidates keep their GO edges (every GO edge with
an uncovered candidate at either end is added, weighted as in GO), so every candidate the GO graph
knows can still be chosen. With ``min_coverage`` set, a coverage below it raises
:class:`CoverageError` instead (the CLI exits with status 2).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, GeneIdError
from ..graphs import EDGE_COLUMNS, embedding_graph, go_graph, restrict_edges

log = logging.getLogger(__name__)

PRIORS = ("go", "fm", "fm+go")
PRIOR_USES = ("selection", "kernel", "model")


def check_prior_uses(uses) -> tuple[str, ...]:
    """``uses`` as a sorted-by-:data:`PRIOR_USES` tuple; :class:`ConfigError` when empty or unknown."""
    uses = tuple(dict.fromkeys(map(str, (uses,) if isinstance(uses, str) else uses)))
    bad = [u for u in uses if u not in PRIOR_USES]
    if bad or not uses:
        raise ConfigError(f"prior uses must be a non-empty subset of {PRIOR_USES}, got {list(uses)}.")
    return tuple(u for u in PRIOR_USES if u in uses)


class CoverageError(GeneIdError):
    """The foundation model's dictionary covers fewer candidate genes than ``min_coverage`` asks."""


@dataclass
class Coverage:
    """How many candidate genes the FM graph covers: ``n_covered`` of ``n_candidates`` (``fraction``);
    ``missing``: the uncovered candidates, sorted."""

    n_covered: int
    n_candidates: int
    missing: list

    @property
    def fraction(self) -> float:
        return self.n_covered / self.n_candidates if self.n_candidates else float("nan")


def fm_embeddings(model, vocab=None) -> pd.DataFrame:
    """The static gene embeddings of ``model`` (a model directory or a loaded Bert model; ``vocab`` for
    a checkpoint without its dictionary): :func:`netformer.embed.static_gene_embeddings`, indexed by
    Ensembl id with a ``symbol`` column. For a table by symbol (e.g. RidgeModel's ``pert_embedding``)
    pass it to :func:`netformer.graphs.embedding_table`. Raises :class:`ConfigError` for ``model=None``,
    and the errors of :func:`netformer.model.load_model` / :func:`~netformer.embed.static_gene_embeddings`."""
    if model is None:
        raise ConfigError("the fm prior needs a model (--model-dir DIR) or a gene embedding table.")
    from ..embed import static_gene_embeddings

    if isinstance(model, (str, os.PathLike)):
        from ..model import load_model

        model = load_model(model, kind="base", device="cpu")
    return static_gene_embeddings(model, vocab)


def fm_edges(model=None, *, embeddings: pd.DataFrame | None = None, k: int = 20, vocab=None,
             min_similarity: float = 0.0) -> pd.DataFrame:
    """The foundation model's gene graph in symbols: :func:`~netformer.graphs.embedding_graph` of
    ``embeddings`` (a :func:`netformer.embed.gene_embeddings` table) or, by default, of the static
    gene embeddings of ``model`` (:func:`fm_embeddings`). Raises :class:`ConfigError` when neither is
    given, and the errors of :func:`fm_embeddings`."""
    if embeddings is None:
        embeddings = fm_embeddings(model, vocab)
    return embedding_graph(embeddings, k, names="symbol", min_similarity=min_similarity)


def union_edges(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Union of two edge lists; an edge in both (or repeated) gets the larger importance. Sorted by
    target, then decreasing importance, then source."""
    both = pd.concat([a[EDGE_COLUMNS], b[EDGE_COLUMNS]], ignore_index=True)
    out = both.groupby(["source", "target"], as_index=False, sort=False)["importance"].max()
    return out.sort_values(["target", "importance", "source"], ascending=[True, False, True],
                           kind="stable").reset_index(drop=True)


def coverage(edges: pd.DataFrame, candidates: Iterable[str]) -> Coverage:
    """Candidates that are nodes of ``edges`` (an FM graph)."""
    cands = sorted(set(map(str, candidates)))
    nodes = set(edges["source"]) | set(edges["target"])
    missing = [g for g in cands if g not in nodes]
    return Coverage(len(cands) - len(missing), len(cands), missing)


def selection_edges(
    prior: str = "go",
    candidates: Iterable[str] | None = None,
    *,
    model=None,
    embeddings: pd.DataFrame | None = None,
    go: pd.DataFrame | str | os.PathLike | None = None,
    k: int = 20,
    min_coverage: float | None = None,
    vocab=None,
) -> pd.DataFrame:
    """The selection graph named ``prior`` (``go``, ``fm`` or ``fm+go``; module docstring) as an edge
    DataFrame ``source, target, importance`` in gene symbols.

    Parameters
    ----------
    prior : {"go", "fm", "fm+go"}, default "go"
    candidates : iterable of str, optional
        Genes that may be chosen (symbols). The FM graph's coverage of them is logged (``FM prior:
        the dictionary covers n of m candidate genes``); with ``fm``, the uncovered ones fall back to
        their GO edges. Default: the GO graph's genes.
    model, embeddings, vocab, k
        The FM graph (:func:`fm_edges`); ignored for ``go``.
    go : DataFrame or path, optional
        The GO graph (:func:`netformer.graphs.go_graph`; default the shared data folder's).
    min_coverage : float in [0, 1], optional
        Fail with :class:`CoverageError` when the FM graph covers a smaller fraction of the
        candidates (default: never fail; fall back to GO).

    Raises
    ------
    ConfigError
        Unknown ``prior``, ``min_coverage`` outside [0, 1], or an FM prior without model/embeddings.
    CoverageError
        Coverage below ``min_coverage``.
    """
    if prior not in PRIORS:
        raise ConfigError(f"prior must be one of {PRIORS}, got {prior!r}.")
    if min_coverage is not None and not 0 <= min_coverage <= 1:
        raise ConfigError(f"min_coverage must be in [0, 1], got {min_coverage}.")
    go_e = go_graph(go)
    if prior == "go":
        return go_e
    fm = fm_edges(model, embeddings=embeddings, k=k, vocab=vocab)
    if candidates is None:
        candidates = np.unique(np.concatenate([go_e["source"].to_numpy(str), go_e["target"].to_numpy(str)]))
    cov = coverage(fm, candidates)
    log.info("FM prior: the dictionary covers %d of %d candidate genes (%.1f%%); %d uncovered%s",
             cov.n_covered, cov.n_candidates, 100 * cov.fraction, len(cov.missing),
             " fall back to their GO edges" if prior == "fm" and cov.missing else "")
    if min_coverage is not None and not cov.fraction >= min_coverage:
        raise CoverageError(
            f"the foundation model's dictionary covers {cov.n_covered} of {cov.n_candidates} candidate genes "
            f"({100 * cov.fraction:.1f}%), below min_coverage {100 * min_coverage:.1f}% (uncovered e.g. "
            f"{cov.missing[:5]}); use a checkpoint whose dictionary holds these genes, or drop min_coverage to "
            "fall back to GO for the rest.")
    if prior == "fm+go":
        return union_edges(fm, go_e)
    if not cov.missing:
        return fm
    fallback = pd.concat([restrict_edges(go_e, cov.missing, how="target"),
                          restrict_edges(go_e, cov.missing, how="source")], ignore_index=True)
    return union_edges(fm, fallback)
