"""Streaming readers of count matrices: .h5ad (backed), .zarr, .loom and in-memory AnnData.

:func:`open_counts` returns a :class:`CountSource` whose :meth:`~CountSource.chunks` yields the
count matrix in row chunks as CSR matrices, so peak memory depends on the chunk size and not on the
number of cells in the file. ``obs`` and ``var`` are read whole (they are small).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import CorruptFileError, InputDataError, MissingFileError

log = logging.getLogger(__name__)


@dataclass
class CountSource:
    """A cells x genes count matrix that can be read in row chunks.

    Attributes
    ----------
    obs, var
        Cell and gene annotations (``obs.index`` = cell ids, ``var.index`` = gene ids as stored).
    n_obs, n_vars
        Shape of the count matrix.
    name
        File name (or ``"<AnnData>"``) used in messages.
    """

    obs: pd.DataFrame
    var: pd.DataFrame
    n_obs: int
    n_vars: int
    name: str
    _read_rows: Callable[[int, int], sp.csr_matrix]

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as a CSR matrix (float or int dtype as stored)."""
        try:
            return sp.csr_matrix(self._read_rows(start, stop))
        except (OSError, KeyError, ValueError) as exc:
            raise CorruptFileError(f"could not read rows {start}:{stop} of {self.name}: {exc}") from exc

    def chunks(self, chunk_size: int = 1024, mask: np.ndarray | None = None, start: int = 0,
               stop: int | None = None) -> Iterator[tuple[np.ndarray, sp.csr_matrix]]:
        """Yield ``(row_indices, csr_chunk)`` over rows ``start:stop`` (default: the whole file) in order,
        ``chunk_size`` rows at a time.

        With a boolean ``mask`` (n_obs,), only rows where it is True are returned (the chunk
        is read contiguously and subset, so memory stays bounded by ``chunk_size``). A row range that
        starts on a multiple of ``chunk_size`` is cut into the same chunks as the whole file is.
        """
        if chunk_size < 1:
            raise InputDataError("chunk_size must be a positive number of cells")
        stop = self.n_obs if stop is None else min(int(stop), self.n_obs)
        for a in range(int(start), stop, chunk_size):
            b = min(a + chunk_size, stop)
            rows = np.arange(a, b)
            if mask is not None:
                keep = mask[a:b]
                if not keep.any():
                    continue
                rows = rows[keep]
                block = self.read_rows(a, b)[keep]
            else:
                block = self.read_rows(a, b)
            yield rows, block


def _h5_like(group, name: str, close: Callable[[], None] | None, layer: str | None = None) -> CountSource:
    from anndata.io import read_elem, sparse_dataset

    try:
        obs = read_elem(group["obs"])
        var = read_elem(group["var"])
    except KeyError as exc:
        raise CorruptFileError(f"{name} lacks {exc}; it is not a complete AnnData file") from exc
    if layer is None:
        if "X" not in group:
            raise CorruptFileError(f"{name} has no X; it is not a complete AnnData file (or pass layer=)")
        x = group["X"]
    else:
        layers = list(group["layers"].keys()) if "layers" in group else []
        if layer not in layers:
            raise InputDataError(f"{name} has no layer {layer!r}; its layers are {layers}")
        x = group["layers"][layer]
    if hasattr(x, "attrs") and x.attrs.get("encoding-type", "") in ("csr_matrix", "csc_matrix"):
        ds = sparse_dataset(x)
        if ds.format == "csc":
            log.warning("%s stores X as CSC; row chunks of CSC are slow. Rewrite it as CSR for large files.", name)
        reader = lambda i, j: ds[i:j]  # noqa: E731
        shape = ds.shape
    elif hasattr(x, "shape") and len(x.shape) == 2:
        reader = lambda i, j: sp.csr_matrix(np.asarray(x[i:j]))  # noqa: E731
        shape = x.shape
    else:
        raise CorruptFileError(f"{name}: X is neither a sparse matrix group nor a 2-D array")
    return CountSource(obs, var, int(shape[0]), int(shape[1]), name, reader)


def _from_anndata(adata: ad.AnnData, layer: str | None = None) -> CountSource:
    if layer is not None:
        if layer not in adata.layers:
            raise InputDataError(f"the AnnData has no layer {layer!r}; its layers are {list(adata.layers)}")
        x = adata.layers[layer]
    else:
        x = adata.X
    if x is None:
        raise InputDataError("AnnData has no X; put raw counts in X or name the counts layer (layer=...)")
    return CountSource(
        adata.obs, adata.var, adata.n_obs, adata.n_vars, "<AnnData>", lambda i, j: x[i:j]
    )


def _loom(path: Path, stack: contextlib.ExitStack) -> CountSource:
    try:
        import loompy
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise InputDataError("reading .loom needs loompy: pip install 'netformer[loom]'") from exc
    ds = stack.enter_context(loompy.connect(str(path), mode="r", validate=False))
    ra = {k: np.asarray(ds.ra[k]) for k in ds.ra.keys()}
    ca = {k: np.asarray(ds.ca[k]) for k in ds.ca.keys()}
    gene_key = next((k for k in ("ensembl_id", "Accession", "Gene", "gene_ids") if k in ra), None)
    var = pd.DataFrame(ra, index=ra[gene_key].astype(str) if gene_key else None)
    cell_key = next((k for k in ("CellID", "cell_id", "obs_names") if k in ca), None)
    obs = pd.DataFrame(ca, index=ca[cell_key].astype(str) if cell_key else None)
    return CountSource(
        obs, var, ds.shape[1], ds.shape[0], path.name, lambda i, j: sp.csr_matrix(ds[:, i:j].T)
    )


@contextlib.contextmanager
def open_counts(source: str | Path | ad.AnnData, layer: str | None = None) -> Iterator[CountSource]:
    """Open a count matrix for chunked reading.

    Parameters
    ----------
    source
        Path to ``.h5ad`` (read backed through h5py), ``.zarr`` (a directory), ``.loom``, or an
        in-memory :class:`anndata.AnnData`.
    layer
        Read counts from ``layers[layer]`` instead of ``X`` (h5ad, zarr, AnnData; e.g. ``"counts"``).

    Raises
    ------
    MissingFileError
        If the path does not exist.
    CorruptFileError
        If the file is truncated or not a valid AnnData / loom file.
    InputDataError
        For an unsupported extension.
    """
    if isinstance(source, ad.AnnData):
        yield _from_anndata(source, layer)
        return
    path = Path(source)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist; check the path of the count file")
    suffix = path.suffix.lower()
    with contextlib.ExitStack() as stack:
        if suffix == ".h5ad":
            import h5py

            try:
                f = stack.enter_context(h5py.File(path, "r"))
            except OSError as exc:
                raise CorruptFileError(
                    f"{path} cannot be opened as HDF5 ({exc}); the file is truncated or not an .h5ad. "
                    "Re-download or re-write it."
                ) from exc
            src = _h5_like(f, path.name, None, layer)
        elif suffix == ".zarr":
            import zarr

            try:
                g = zarr.open_group(str(path), mode="r")
            except Exception as exc:
                raise CorruptFileError(f"{path} cannot be opened as a zarr AnnData store ({exc})") from exc
            src = _h5_like(g, path.name, None, layer)
        elif suffix == ".loom":
            if layer is not None:
                raise InputDataError("layer= is supported for .h5ad, .zarr and AnnData, not .loom")
            src = _loom(path, stack)
        else:
            raise InputDataError(f"unsupported file type {suffix!r} for {path}; use .h5ad, .zarr or .loom")
        yield src
