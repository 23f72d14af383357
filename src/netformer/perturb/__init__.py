"""In silico perturbation and in silico treatment (Geneformer ``InSilicoPerturber`` /
``InSilicoPerturberStats``), exact and screened, with statistics.

Quick start::

    from netformer.perturb import CellStates, PerturbConfig, perturb, gene_stats
    res = perturb("model_dir", dataset, PerturbConfig(genes="all", mode="screen", max_cells=200),
                  states=CellStates("condition", start="stim", goal="ctrl"), out_dir="isp_out")
    table = gene_stats(res.results, vocab)
"""

from .engine import CellEffects, ExactEvaluator
from .ops import PERTURBATIONS, perturb_cell, shift_size
from .reference import reference_embeddings
from .run import PerturbConfig, PerturbResult, load_results, perturb, state_embeddings
from .screen import gated_forward, rank_agreement, screen_cell
from .select_cells import CellStates, resolve_genes, select_cells
from .stats import StatsConfig, gene_stats, plot_ranked_shifts, plot_top_genes, write_stats

__all__ = [
    "PERTURBATIONS", "CellEffects", "CellStates", "ExactEvaluator", "PerturbConfig", "PerturbResult",
    "StatsConfig", "gated_forward", "gene_stats", "load_results", "perturb", "perturb_cell",
    "plot_ranked_shifts", "plot_top_genes", "rank_agreement", "reference_embeddings", "resolve_genes",
    "screen_cell", "select_cells", "shift_size", "state_embeddings", "write_stats",
]
