"""Tutorial 5: which perturbations to measure, chosen in one shot from the gene graph.

    python docs/tutorials/05_experiment_design.py

GraphReach (Panagopoulos et al. 2025) picks a budget of perturbations by lazy greedy maximisation of the GO
graph's coverage; then a small benchmark on the real Norman 2019 singles trains the ridge outcome model on
the chosen perturbations and compares GraphReach with random over seeds (paired Wilcoxon).
CLI: ``netformer select run --budget 100 --out sel/`` and ``netformer select benchmark ...``.
"""

from _common import arguments

from netformer.datasets import shared_data_dir
from netformer.graphs import load_edge_list
from netformer.select import Selector
from netformer.select.benchmark import BenchmarkConfig, benchmark_file, summarize

args = arguments(__doc__, cells=0)
go = load_edge_list()                                   # the GO graph of the shared data folder
sel = Selector(go)                                      # candidates: every gene of the graph
picks = sel.select(50, method="graphreach")
print(picks.to_frame().head(10))
picks.plot_coverage(args.out / "coverage.png", others=[sel.select(50, method="random")])

config = BenchmarkConfig(budgets=(2, 4, 6), oneshot=("graphreach", "random"), strategies=(), seeds=(0, 1, 2),
                         positive_control=False)
results = benchmark_file(shared_data_dir() / "perturbseq" / "devel.h5ad", config, subset={"dataset": "norman19"})
print(summarize(results)[["method", "budget", "mse_top20_de_mean", "verdict_vs_random"]])
