"""Perturb-seq outcome modelling: data, splits, gene graphs, GEARS-style GNN, baselines, metrics.

Modules: :mod:`.data` (PerturbData, readers), :mod:`.splits`, :mod:`.models` (interface + baselines),
:mod:`.gears` (GEARS-style GNN), :mod:`.metrics`. The GO and co-expression graphs live in
:mod:`netformer.graphs`, shared with :mod:`netformer.select`. See docs/perturbseq.md.
"""

from .data import (
    CONTROL,
    PerturbData,
    canonical_condition,
    read_gears,
    read_perturbseq,
    read_scperturb,
)

__all__ = ["CONTROL", "PerturbData", "canonical_condition", "read_gears", "read_perturbseq", "read_scperturb"]
