"""Perturb-seq outcome modelling: data, splits, gene graphs, GEARS-style GNN, baselines, metrics.

Modules: :mod:`.data` (PerturbData, readers), :mod:`.splits`, :mod:`.graphs` (GO and
co-expression graphs), :mod:`.models` (interface + baselines), :mod:`.gears` (GEARS-style GNN),
:mod:`.metrics`. See docs/perturbseq.md.
"""

from .data import CONTROL, PerturbData, canonical_condition, read_gears, read_perturbseq, read_scperturb

__all__ = ["CONTROL", "PerturbData", "canonical_condition", "read_gears", "read_perturbseq", "read_scperturb"]
