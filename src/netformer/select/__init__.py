"""One-shot selection of perturbation experiments (GraphReach, MaxSpec) and active-learning baselines.

Panagopoulos et al. 2025 (arXiv 2503.14571): choose which B perturbations to measure from the gene
graph alone by greedy maximisation of a monotone submodular criterion over the model's propagation
operator ``P = A_hat^L``; compare with active learning (IterPert, Huang et al. 2024). See docs/select.md.
"""

from .candidates import BudgetError, CandidatePool, check_budget, resolve_candidates
from .criteria import (
    Criterion,
    GraphReachCoverage,
    GraphReachFacility,
    MaxSpec,
    OracleVariance,
    degree_scores,
    pagerank_scores,
)
from .greedy import (
    METHODS,
    GreedyTrace,
    SelectConfig,
    SelectionResult,
    Selector,
    lazy_greedy,
    plain_greedy,
    select,
)

__all__ = [
    "BudgetError", "CandidatePool", "Criterion", "GraphReachCoverage", "GraphReachFacility",
    "GreedyTrace", "METHODS", "MaxSpec", "OracleVariance", "SelectConfig", "SelectionResult", "Selector", "check_budget",
    "degree_scores", "lazy_greedy", "pagerank_scores", "plain_greedy", "resolve_candidates", "select",
]
