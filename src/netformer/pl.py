"""Plots, scanpy style. None of them switches the Matplotlib backend.

- :func:`umap`: UMAP of an ``obsm`` embedding through scanpy (``pp.neighbors`` + ``tl.umap`` on
  ``use_rep=basis``, stored under their own keys so the user's neighbours and UMAP stay), coloured
  by obs columns.
- :func:`loss`: the masked-gene pretraining loss.
- :func:`ranked_shifts`: the per-gene in silico perturbation table (from :func:`netformer.tl.perturb`
  or :func:`netformer.perturb.gene_stats`).
- :func:`coverage`: graph coverage of a one-shot selection against the budget.

Each draws on ``ax`` when given, else on a new figure, and writes a PNG when ``save`` names a path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import InputDataError

__all__ = ["coverage", "loss", "ranked_shifts", "umap"]


def umap(adata, basis: str = "X_netformer", color: str | Sequence[str] | None = None, *, n_neighbors: int = 15,
         random_state: int = 0, save: str | Path | None = None, **kwargs):
    """UMAP of ``adata.obsm[basis]`` coloured by ``color`` (obs columns or genes), via scanpy.

    Coordinates are computed once and kept in ``adata.obsm[basis + "_umap"]`` (with a digest of the
    embedding in ``adata.uns[basis + "_umap_source"]``; recomputed when the embedding changed, e.g. after
    another ``tl.embed`` into the same key). Cells with NaN embeddings (no dictionary gene) are left out. ``**kwargs`` go to :func:`scanpy.pl.embedding`.
    Returns the Matplotlib figure.

    Raises :class:`InputDataError` if ``adata.obsm`` has no ``basis``.
    """
    import numpy as np
    import scanpy as sc

    if basis not in adata.obsm:
        raise InputDataError(f"adata.obsm has no {basis!r} (run netformer.tl.embed first); it holds {list(adata.obsm)}")
    import hashlib

    emb = np.asarray(adata.obsm[basis])
    ok = ~np.isnan(emb).any(1)
    key = f"{basis}_umap"
    source = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()[:16] + f"-{n_neighbors}-{random_state}"
    if key not in adata.obsm or adata.uns.get(f"{key}_source") != source:  # new, or made from another embedding
        a = adata if ok.all() else adata[ok].copy()
        sc.pp.neighbors(a, use_rep=basis, n_neighbors=n_neighbors, random_state=random_state,
                        key_added=f"{basis}_neighbors")
        sc.tl.umap(a, neighbors_key=f"{basis}_neighbors", random_state=random_state, key_added=key)
        if a is not adata:
            full = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
            full[ok] = a.obsm[key]
            adata.obsm[key] = full
        adata.uns[f"{key}_source"] = source
    a = adata if ok.all() else adata[ok]
    fig = sc.pl.embedding(a, basis=key, color=color, show=False, return_fig=True, **kwargs)
    if save is not None:
        from ._io import save_figure

        save_figure(fig, save)
    return fig


def loss(history, *, ax=None, save: str | Path | None = None, title: str = "masked gene prediction loss"):
    """Pretraining loss against step. ``history``: ``PretrainResult.loss_history``, or a run folder /
    ``loss_history.json`` written by :func:`netformer.pretrain.pretrain`. Returns the figure."""
    import json

    from .pretrain import plot_loss

    if isinstance(history, (str, Path)):
        path = Path(history)
        path = path / "loss_history.json" if path.is_dir() else path
        if not path.exists():
            raise InputDataError(f"{path} does not exist; pass a pretraining run folder or its loss_history.json")
        history = json.loads(path.read_text())["history"]
    return plot_loss(history, save, title=title, ax=ax)


def ranked_shifts(table, *, key: str = "netformer_perturb", ax=None, save: str | Path | None = None,
                  n_label: int = 10, title: str | None = None):
    """Mean shift of every tested gene against its rank. ``table``: a per-gene table
    (:func:`netformer.perturb.gene_stats`) or an AnnData annotated by :func:`netformer.tl.perturb`
    (``uns[key]["genes"]``). Returns the figure (or the PNG path with ``save``); None when no gene
    was perturbed in enough cells to be tested."""
    from .perturb.stats import plot_ranked_shifts

    if hasattr(table, "uns"):
        if key not in table.uns:
            raise InputDataError(f"adata.uns has no {key!r}; run netformer.tl.perturb first")
        table = table.uns[key]["genes"]
    return plot_ranked_shifts(table, save, n_label=n_label, title=title, ax=ax)


def coverage(result, others: Sequence = (), *, ax=None, save: str | Path | None = None):
    """Fraction of graph nodes reached against the budget for a one-shot selection
    (:class:`netformer.select.SelectionResult`) and optional ``others`` to compare. Returns the figure."""
    return result.plot_coverage(save, others, ax=ax)
