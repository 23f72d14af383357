"""Tutorial 4: the gene level: a paper gene task, and the model's gene network.

    python docs/tutorials/04_gene_tasks.py --model netformer_demo/cells/pretrain/model

1. The dosage-sensitivity recipe (Theodoris et al. 2023): dosage-sensitive vs -insensitive transcription
   factors, cross-validated over genes beside the per-gene-statistics baseline and the published figure.
   CLI: ``netformer finetune gene cells.h5ad MODEL --task dosage-sensitivity --out ds/``.
2. The attention gene network of the same cells, its most central genes, and its score against GO.
   CLI: ``netformer network attention MODEL cells.h5ad --out network/``.
"""

from _common import arguments

import netformer as nf
from netformer.classify import FinetuneConfig
from netformer.classify.data import load_cells
from netformer.classify.gene_tasks import run_gene_task
from netformer.genes import model_vocab
from netformer.network import NetworkConfig, attention_network, network_report, write_network

args = arguments(__doc__, cells=600)
cells = load_cells(nf.datasets.pbmc3k_path(), model_vocab(args.model), max_length=256, n_cells=args.cells)
res = run_gene_task("dosage-sensitivity", args.model, cells, n_splits=2,
                    config=FinetuneConfig(epochs=args.epochs, class_weights="balanced"))
print(res.table.drop(columns="what").round(3))         # model / baseline / published ROC-AUC
print(res.counts)                                       # genes listed, in the dictionary, in the cells, used

net = attention_network(args.model, cells.dataset, NetworkConfig(max_cells=args.cells))
report = network_report(net, gene_sets={})              # edges, centrality, AUPRC against GO
print(report.centrality.head(10)[["symbol", "pagerank", "degree"]])
write_network(report, args.out / "network", overwrite=True)
