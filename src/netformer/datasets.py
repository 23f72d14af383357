"""Loaders of real data: the demo data bundled with the package and the shared test data.

The bundled file ``data/pbmc3k_raw.h5ad`` holds the 10x Genomics "3k PBMCs from a healthy donor"
raw UMI counts (CC BY 4.0, 10x Genomics), as shipped in the PyPI wheel ``desc==2.1.1``
(``desc/datasets/pbmc.h5ad``), stored as an int32 CSR matrix in a gzip-compressed h5ad with
Ensembl ids as the var index and ``var["gene_symbol"]``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import anndata as ad

from .errors import InputDataError


def pbmc3k_path() -> Path:
    """Path of the bundled pbmc3k raw counts (2,700 cells x 32,738 genes, h5ad)."""
    return Path(str(resources.files("netformer") / "data" / "pbmc3k_raw.h5ad"))


def pbmc3k() -> ad.AnnData:
    """The bundled 10x pbmc3k raw counts as AnnData (int32 CSR; var index Ensembl ids).

    ``obs["n_counts"]`` holds each cell's total count over all genes. Cell types are not bundled:
    :func:`netformer.annotate.annotate_pbmc` names clusters by marker genes.
    """
    adata = ad.read_h5ad(pbmc3k_path())
    adata.obs["n_counts"] = adata.X.sum(axis=1).A1.astype("int64")
    return adata


def shared_data_dir() -> Path:
    """Directory of the shared real data (``$NETFORMER_SHARED_DATA`` or ``../shared/data``).

    Raises :class:`InputDataError` if it cannot be found.
    """
    env = os.environ.get("NETFORMER_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [Path.cwd() / ".." / "shared" / "data"] + [
        p / "shared" / "data" for p in here.parents
    ]
    for c in candidates:
        if (c / "README.md").exists() and (c / "scrna").is_dir():
            return c.resolve()
    raise InputDataError(
        "shared data directory not found; set NETFORMER_SHARED_DATA to the folder that holds "
        "scrna/, genes/, graphs/ and perturbseq/ (normally ../shared/data beside the repository)."
    )
