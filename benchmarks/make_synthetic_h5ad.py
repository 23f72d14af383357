"""Write a large synthetic raw-count .h5ad by resampling real pbmc3k cells, in chunks.

Each synthetic cell copies a random real cell of ``pbmc3k_raw_labeled.h5ad`` (same 32,738 genes,
Ensembl ids in the var index) and redraws every non-zero count as ``1 + Poisson((count - 1) * s)``,
where ``s`` is a per-cell log-normal factor (median 1, sd of log 0.3). The detected genes of each
cell are those of its source cell, so genes per cell follow the real distribution exactly, and
library sizes scatter around the real ones (the counts, and so the ranks, are new). ``obs["n_counts"]`` holds each cell's total count.

The count matrix (CSR, int32 data, int32 indices, int64 indptr) is appended chunk by chunk to
resizable HDF5 datasets, so writing needs memory for one chunk only, whatever the number of cells.
The file is a normal AnnData file (``anndata.read_h5ad`` / backed mode).

Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/make_synthetic_h5ad.py --cells 200000 --out /tmp/netformer_bench/synth_200k.h5ad
    OMP_WAIT_POLICY=PASSIVE python benchmarks/make_synthetic_h5ad.py --cells 20000 --out /tmp/netformer_bench/synth_20k.h5ad
    OMP_WAIT_POLICY=PASSIVE python benchmarks/make_synthetic_h5ad.py --cells 1000000 --out /tmp/netformer_bench/synth_1m.h5ad
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anndata as ad  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from anndata.io import write_elem  # noqa: E402

PBMC3K = "/work/shared/data/scrna/pbmc3k_raw_labeled.h5ad"


def synth_chunk(src: sp.csr_matrix, n: int, rng: np.random.Generator, size_sd: float = 0.3) -> sp.csr_matrix:
    """``n`` synthetic cells: rows of ``src`` picked at random, counts redrawn as 1 + Poisson((count - 1) * s)."""
    pick = rng.integers(0, src.shape[0], size=n)
    block = src[pick]
    scale = np.exp(rng.normal(0.0, size_sd, size=n))
    lam = (block.data.astype(np.float64) - 1.0) * np.repeat(scale, np.diff(block.indptr))
    block.data = (1 + rng.poisson(lam)).astype(np.int32)
    block.eliminate_zeros()
    block.indices = block.indices.astype(np.int32)
    return block


def write_synthetic(out: Path, n_cells: int, chunk: int = 5000, seed: int = 0, compression: str | None = None) -> None:
    """Write ``n_cells`` synthetic cells to ``out`` (temp file + rename)."""
    real = ad.read_h5ad(PBMC3K)
    src = sp.csr_matrix(real.X).astype(np.int32)
    var = real.var.copy()
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n_counts = np.zeros(n_cells, dtype=np.int64)
    kw = dict(compression=compression) if compression else {}
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, src.shape[1]], dtype=np.int64)
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,), **kw)
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,), **kw)
        indptr = g.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        nnz = 0
        for start in range(0, n_cells, chunk):
            stop = min(start + chunk, n_cells)
            block = synth_chunk(src, stop - start, rng)
            k = block.nnz
            data.resize((nnz + k,))
            indices.resize((nnz + k,))
            data[nnz:nnz + k] = block.data
            indices[nnz:nnz + k] = block.indices
            indptr[start + 1:stop + 1] = nnz + block.indptr[1:]
            n_counts[start:stop] = np.asarray(block.sum(axis=1)).ravel()
            nnz += k
        obs = pd.DataFrame({"n_counts": n_counts}, index=pd.Index([f"synth_{i:07d}" for i in range(n_cells)], name="cell_id"))
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    tmp.replace(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--out", type=Path, default=Path("/tmp/netformer_bench/synth_200k.h5ad"))
    p.add_argument("--chunk", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", default=None, help="HDF5 compression of X (e.g. gzip); default none")
    a = p.parse_args()
    t = time.perf_counter()
    write_synthetic(a.out, a.cells, a.chunk, a.seed, a.compression)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    b = ad.read_h5ad(a.out, backed="r")
    genes = np.diff(b.X[: min(2000, a.cells)].indptr)
    print(f"wrote {a.out}: {b.n_obs} cells x {b.n_vars} genes, {os.path.getsize(a.out) / 1e9:.2f} GB, "
          f"{time.perf_counter() - t:.0f} s, peak RSS {peak:.0f} MiB; first 2000 cells: median genes/cell "
          f"{np.median(genes):.0f}, median n_counts {np.median(b.obs['n_counts'][:2000]):.0f}")


if __name__ == "__main__":
    main()
