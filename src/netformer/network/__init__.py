"""Gene networks from the model, their centrality, and how good they are.

- :func:`attention_network`: gene-to-gene attention of chosen layers and heads, aggregated over cells
  and row-normalised (:mod:`netformer.network.attention`).
- :func:`perturbation_network`: deleting gene A shifts gene B's contextual embedding, from the gene
  effects of an in silico deletion screen (:mod:`netformer.network.perturbation`);
  :func:`perturbation_network_from_model` runs the screen first.
- :func:`coexpression_network`: the baseline, Pearson ``|r|`` of log-normalised counts.
- :func:`centrality`, :func:`plot_top_subnetwork`, :func:`centrality_labels` (central vs peripheral
  genes for the gene classifier) (:mod:`netformer.network.centrality`).
- :func:`go_scores`, :func:`module_score`: scores against GO and a gene set
  (:mod:`netformer.network.scoring`).
- :func:`network_report`, :func:`write_network`: all of it into one output folder.

Every network is a :class:`GeneNetwork`: all scored pairs ``source, target, score, n_cells``, and edge
tables cut from them (:meth:`GeneNetwork.edges`). See docs/network.md.
"""

from .attention import (
    attention_network,
    iter_attention,
    network_cells,
    resolve_layers_heads,
)
from .centrality import (
    CENTRALITIES,
    centrality,
    centrality_labels,
    plot_top_subnetwork,
    to_digraph,
)
from .coexpression import coexpression_network
from .config import NetworkConfig
from .edges import EDGE_COLUMNS, GeneNetwork, top_edges
from .perturbation import (
    perturbation_network,
    perturbation_network_from_model,
    read_gene_effects,
)
from .report import NetworkReport, network_report, write_network
from .scoring import go_scores, module_score

__all__ = [
    "CENTRALITIES", "EDGE_COLUMNS", "GeneNetwork", "NetworkConfig", "NetworkReport", "attention_network",
    "centrality", "centrality_labels", "coexpression_network", "go_scores", "iter_attention", "module_score",
    "network_cells", "network_report", "perturbation_network", "perturbation_network_from_model", "plot_top_subnetwork",
    "read_gene_effects", "resolve_layers_heads", "to_digraph", "top_edges", "write_network",
]
