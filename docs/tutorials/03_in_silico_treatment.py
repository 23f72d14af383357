"""Tutorial 3: in silico treatment: which gene deletions move stimulated cells toward control?

    python docs/tutorials/03_in_silico_treatment.py --model netformer_demo/cells/pretrain/model

Every expressed gene is deleted, one at a time, in stimulated Kang 2018 cells; the shift of each cell's
embedding toward the control state is measured (upstream Geneformer's in silico treatment) and tested per
gene. Known interferon-stimulated genes are marked to read the table. For the strongest result fine-tune a
ctrl/stim classifier first (tutorial 2, or the demo's states step) and pass its model directory.
CLI: ``netformer perturb MODEL tok/ --state-column condition --start stim --goal ctrl --out isp/``.
"""

import anndata as ad
from _common import arguments

import netformer as nf
from netformer.classify.genesets import INTERFERON_STIMULATED_GENES
from netformer.datasets import shared_data_dir
from netformer.perturb import CellStates, PerturbConfig

args = arguments(__doc__, cells=20)
adata = ad.read_h5ad(shared_data_dir() / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")
states = CellStates("condition", start="stim", goal="ctrl")
nf.tl.perturb(adata, args.model, PerturbConfig(genes="all", max_cells=args.cells, max_length=256), states,
              out_dir=args.out / "isp", overwrite=True)
genes = adata.uns["netformer_perturb"]["genes"]         # one row per gene: mean shift, p-values, FDR
genes["known_isg"] = genes["symbol"].isin(INTERFERON_STIMULATED_GENES)
print(genes.head(20)[["symbol", "n_cells", "mean_shift", "fdr_vs_pooled", "known_isg"]])
