"""Tutorial 1: cell embeddings of your cells, beside the PCA baseline.

    python docs/tutorials/01_embeddings.py --model netformer_demo/cells/pretrain/model

Raw counts in (the bundled 10x pbmc3k cells here; any h5ad of raw counts works), cell embeddings into
``adata.obsm["X_netformer"]`` (upstream Geneformer's rule: mean of the second to last layer over the gene
tokens), a k-NN accuracy of cell types beside 50 PCs of log-normalised counts, and a UMAP.
"""

from _common import arguments

import netformer as nf
from netformer.embed import knn_accuracy, pca_baseline, umap_plot

args = arguments(__doc__, cells=500)
adata = nf.datasets.pbmc3k()[: args.cells].copy()      # or: anndata.read_h5ad("my_cells.h5ad")
nf.tl.annotate(adata)                                  # marker-gene cell types into adata.obs["cell_type"]
nf.tl.embed(adata, args.model)                         # adata.obsm["X_netformer"]
labels = adata.obs["cell_type"].astype(str)
print(f"10-NN accuracy: netformer {knn_accuracy(adata.obsm['X_netformer'], labels):.3f}, "
      f"50 PCs {knn_accuracy(pca_baseline(adata, n_comps=min(50, adata.n_obs - 1)), labels):.3f}")
umap_plot(adata.obsm["X_netformer"], labels, args.out / "umap.png", title="netformer cell embeddings")
print(f"UMAP: {args.out / 'umap.png'}")
