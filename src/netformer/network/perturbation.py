"""Perturbation-based gene network: deleting gene A shifts gene B's contextual embedding.

From the gene effects of an in silico deletion screen (:func:`netformer.perturb.perturb` with
``gene_effects=True``; ``netformer perturb --gene-effects`` writes them to ``gene_effects.parquet``:
one row per cell, deleted gene and other gene of the cell, ``cos_sim`` = cosine between the other
gene's original and perturbed contextual embeddings, upstream ``emb_mode="cell_and_gene"``)::

    score(A -> B) = mean over cells of (1 - cos_sim(B | A deleted)),   n_cells(A -> B) = those cells

Pairs measured in fewer than ``min_cells`` cells are left out (counted in ``info``). Scores are not
row-normalised: a score is the size of a shift (0 = no change, up to 2).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, InputDataError
from .config import NetworkConfig
from .edges import GeneNetwork, sort_pairs

log = logging.getLogger(__name__)

GENE_EFFECT_COLUMNS = ["cell_index", "perturbed", "gene", "cos_sim"]


def read_gene_effects(source) -> pd.DataFrame:
    """The gene-effect table of a perturbation run: a DataFrame, a ``gene_effects.parquet`` file or the
    run's output folder. Raises :class:`InputDataError` when it is absent or lacks the columns
    ``cell_index, perturbed, gene, cos_sim``."""
    if isinstance(source, pd.DataFrame):
        df = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "gene_effects.parquet"
        if not path.exists():
            raise InputDataError(f"{path} does not exist: run netformer perturb --gene-effects (every expressed gene "
                                 "deleted) into that folder first")
        df = pd.read_parquet(path)
    absent = [c for c in GENE_EFFECT_COLUMNS if c not in df.columns]
    if absent:
        raise InputDataError(f"the gene-effect table lacks column(s) {absent}; found {list(df.columns)} "
                             "(expected the gene_effects.parquet of netformer perturb --gene-effects)")
    return df


def perturbation_network(gene_effects, min_cells: int = 10) -> GeneNetwork:
    """The perturbation network of a gene-effect table (definition: the module docstring).

    Parameters
    ----------
    gene_effects
        DataFrame, ``gene_effects.parquet`` or the perturbation output folder (:func:`read_gene_effects`).
    min_cells
        Pairs measured in fewer cells are left out.

    Returns
    -------
    GeneNetwork
        ``kind="perturbation"``; ``info``: cells, source genes, pairs kept and left out, source genes
        left without any pair.

    Raises
    ------
    InputDataError
        Missing columns or rows; joint perturbations (``A+B``), which are no single-gene deletions; no
        pair in ``min_cells`` cells.
    """
    if min_cells < 1:
        raise ConfigError(f"min_cells must be >= 1, got {min_cells}")
    df = read_gene_effects(gene_effects)
    if df.empty:
        raise InputDataError("the gene-effect table holds no row")
    joint = df["perturbed"].astype(str).str.contains("+", regex=False)
    if joint.any():
        raise InputDataError(f"{int(joint.sum())} gene-effect rows are of joint perturbations "
                             f"(e.g. {df.loc[joint, 'perturbed'].iloc[0]}); a network needs single-gene deletions "
                             "(netformer perturb without --gene or --anchor)")
    grouped = (df.assign(shift=1.0 - df["cos_sim"].astype("float64"))
               .groupby(["perturbed", "gene"], sort=True)
               .agg(score=("shift", "mean"), n_cells=("cell_index", "nunique")).reset_index())
    grouped = grouped[grouped["perturbed"] != grouped["gene"]]
    keep = grouped["n_cells"] >= min_cells
    pairs = grouped[keep].rename(columns={"perturbed": "source", "gene": "target"})
    sources = grouped["perturbed"].nunique()
    info = {"n_cells": int(df["cell_index"].nunique()), "n_sources": int(sources), "min_cells": min_cells,
            "pairs_measured": int(len(grouped)), "pairs_left_out": int((~keep).sum()),
            "sources_left_out": int(sources - pairs["source"].nunique())}
    if pairs.empty:
        raise InputDataError(f"no pair was measured in at least min_cells={min_cells} of the {info['n_cells']} cells; "
                             "lower min_cells or perturb more cells")
    pairs = sort_pairs(pairs[["source", "target", "score", "n_cells"]].astype({"n_cells": "int64"}))
    info["n_genes"] = len(set(pairs["source"]) | set(pairs["target"]))
    info["n_pairs"] = int(len(pairs))
    log.info("perturbation network: %d cells, %d pairs in >= %d cells (%d left out), %d source genes (%d left "
             "without a pair)", info["n_cells"], len(pairs), min_cells, info["pairs_left_out"], sources,
             info["sources_left_out"])
    return GeneNetwork(pairs, "perturbation", info)


def perturbation_network_from_model(model, dataset, config: NetworkConfig | None = None, perturb_config=None,
                                    vocab=None, out_dir=None, overwrite: bool = False) -> GeneNetwork:
    """Run the deletion screen (:func:`netformer.perturb.perturb`: every expressed gene of each cell
    deleted, one at a time, ``gene_effects=True``) and aggregate it with :func:`perturbation_network`.

    ``perturb_config``: a :class:`~netformer.perturb.PerturbConfig` for the screen's layer, batch size,
    device, ...; default one with ``config``'s ``max_cells``, ``seed``, ``max_length``, ``cell_filter``,
    ``device`` and ``precision``. ``gene_effects`` is set on. ``out_dir``: the screen's resumable
    folder (``gene_effects.parquet`` lands there). Raises :class:`ConfigError` for a screen that is not
    an exact single-gene deletion of every expressed gene, and the errors of ``perturb`` and
    :func:`perturbation_network`.
    """
    from ..perturb import PerturbConfig, perturb

    cfg = config or NetworkConfig()
    pcfg = perturb_config or PerturbConfig(max_cells=cfg.max_cells, seed=cfg.seed, max_length=cfg.max_length,
                                           cell_filter=cfg.cell_filter, device=cfg.device, precision=cfg.precision)
    if pcfg.perturbation != "delete" or pcfg.genes != "all" or pcfg.anchor is not None or pcfg.mode != "exact":
        raise ConfigError("a perturbation network deletes every expressed gene alone and evaluates each exactly: "
                          "use PerturbConfig(perturbation='delete', genes='all', anchor=None, mode='exact')")
    res = perturb(model, dataset, replace(pcfg, gene_effects=True), vocab=vocab, out_dir=out_dir, overwrite=overwrite)
    if not res.complete:
        raise InputDataError("the deletion screen stopped before every cell was done (max_chunks); run it again to "
                             "finish, then build the network")
    net = perturbation_network(res.gene_effects, cfg.min_cells)
    net.info["perturb_layer"] = pcfg.layer
    return net
