"""Rank value encoding of transcriptomes (Geneformer's ``TranscriptomeTokenizer``).

For each cell and each gene ``g`` of the token dictionary with a non-zero count::

    x_g = count_g / n_counts * target_sum / median_g

where ``n_counts`` is the cell's total count over all genes of the file (``obs["n_counts"]`` as
upstream, or the row sum when that column is absent) and ``median_g`` is the gene median. Genes
are sorted by ``x_g`` descending and mapped to token ids; the top ``model_input_size`` are kept
(V1 / gc30M: 2,048, no special tokens) or the top ``model_input_size - 2`` are wrapped in
``<cls>`` ... ``<eos>`` (V2 / gc104M: input size 4,096).

Differences from upstream (Theodoris et al. 2023, ``geneformer/tokenizer.py``), all deliberate:

- **Deterministic ties.** Upstream ranks with ``np.argsort(-x)``, an unstable sort, so genes with
  equal ``x_g`` come out in an arbitrary order. We break ties by ascending token id. Output equals
  upstream's wherever a cell has no ties, and is a fixed permutation within tied groups otherwise.
- **Streaming.** The count matrix is read in row chunks straight from disk (h5ad/zarr/loom), the next
  chunk while the current one is encoded, and the output's Arrow shards are written as the chunks are
  done, so peak memory does not grow with the number of cells.
- **Ranking without a general sort** (compiled with numba, which scanpy already requires; a NumPy
  path with one stable argsort per cell gives the same output where numba is missing). Genes are
  numbered once by (median ascending, token id ascending): among the genes of a cell with the same
  count, ``x_g`` descends along that order. Each cell's genes are read off a bitmap over that order,
  split by count (1, 2, ..., 16, other), the count buckets merged by ``x_g``, and equal values put in
  ascending token id: the same result as a sort by (``x_g`` descending, token id ascending), with
  about two passes over the cell's genes instead of ``log2(genes)``. The cells of a chunk are split
  over ``threads`` threads.
- **Duplicate gene ids** (after mapping through the Ensembl mapping dictionary) are summed, as
  upstream's ``sum_ensembl_ids`` does with pandas frames (in the kernel; by a sparse aggregation
  matrix in the NumPy path).
- **Cells with no mapped gene** are skipped and counted in the summary (upstream drops them with a
  warning, or emits empty sequences in older versions); counts are checked (finite, non-negative,
  integer) and bad values raise.

Output: a Hugging Face :class:`datasets.Dataset` with ``input_ids`` (list of int32), ``length``
(int32), ``cell_id`` and the requested obs columns.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from ._io import atomic_dir
from .errors import ConfigError, CorruptFileError, GeneIdError, InputDataError
from .genes import DATASET_INFO_KEY, GeneVocab, looks_like_ensembl, remember_vocab
from .progress import progress
from .readers import CountSource, open_counts

log = logging.getLogger(__name__)

_ID_COLUMNS = ("ensembl_id", "gene_ids", "gene_id", "feature_id", "ensembl")


@dataclass
class TokenizerConfig:
    """Settings of :class:`TranscriptomeTokenizer`.

    Attributes
    ----------
    model_input_size
        Length of the model input, special tokens included (V1: 2,048; V2: 4,096).
    special_tokens
        Wrap cells as ``<cls>`` ... ``<eos>``. ``None`` (default): True if the vocabulary has
        both tokens (Geneformer V2 convention), else False.
    target_sum
        Normalisation total (10,000 as upstream).
    chunk_size
        Cells read and encoded at a time (default 4,096); bounds peak memory (two chunks are held: the one
        encoded and the one read ahead).
    gene_id_column
        var column holding gene ids; ``None`` = var index; ``"auto"`` (default) = the var index
        if it looks like Ensembl ids, else the first of ``ensembl_id``, ``gene_ids``, ``gene_id``,
        ``feature_id`` present, else the index mapped through the vocabulary's mapping dictionary.
    obs_columns
        obs columns to keep: a list, or a mapping ``{obs column: output column}``.
    filter_column
        Optional obs column; only cells where it equals 1/True are tokenized (upstream's
        ``filter_pass``). Ignored (with a log line) when the column is absent.
    n_counts_column
        obs column with each cell's total count; when absent the total is computed from the
        file over all genes (the same definition) and a warning is logged. Values that are not
        positive finite numbers (NaN, zero, negative, text) raise :class:`InputDataError` naming the
        cells, unless ``n_counts_fallback="row_sum"``.
    n_counts_fallback
        ``None`` (default: refuse bad ``n_counts`` values) or ``"row_sum"``: use those cells' total
        count over all genes of the file instead (logged with the number of cells).
    check_counts
        Raise on NaN, infinite, negative or non-integer counts (default True).
    layer
        Read the counts from ``layers[layer]`` (e.g. ``"counts"``) instead of ``X``.
    threads
        Threads that encode the cells of a chunk (and one more reads the next chunk). ``None``
        (default): the CPUs this process may use, at most 4. The output does not depend on it.
    engine
        ``"auto"`` (default): the compiled ranking when numba imports, else NumPy; ``"numba"`` or
        ``"numpy"`` to choose (same output).
    """

    model_input_size: int = 2048
    special_tokens: bool | None = None
    target_sum: float = 10_000.0
    chunk_size: int = 4096
    gene_id_column: str | None = "auto"
    obs_columns: Sequence[str] | Mapping[str, str] = ()
    filter_column: str | None = "filter_pass"
    n_counts_column: str = "n_counts"
    check_counts: bool = True
    layer: str | None = None
    n_counts_fallback: str | None = None
    threads: int | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if self.model_input_size < 3:
            raise ConfigError("model_input_size must be at least 3")
        if self.chunk_size < 1:
            raise ConfigError("chunk_size must be positive")
        if self.target_sum <= 0:
            raise ConfigError("target_sum must be positive")
        if self.threads is not None and self.threads < 1:
            raise ConfigError("threads must be positive (or None for the CPUs available)")
        if self.engine not in ("auto", "numba", "numpy"):
            raise ConfigError(f"engine must be 'auto', 'numba' or 'numpy', got {self.engine!r}")
        if self.n_counts_fallback not in (None, "row_sum"):
            raise ConfigError(f"n_counts_fallback must be None or 'row_sum', got {self.n_counts_fallback!r}")


@dataclass
class TokenizeSummary:
    """What a tokenization run did: counts of cells and the mapped fraction of counts."""

    n_cells_in: int = 0
    n_cells_out: int = 0
    n_cells_filtered: int = 0
    n_cells_no_genes: int = 0
    n_genes_file: int = 0
    n_genes_mapped: int = 0
    n_duplicate_ids: int = 0
    mean_length: float = 0.0
    mapped_count_fraction: float = 0.0
    n_truncated: int = 0
    files: list[str] = field(default_factory=list)

    def merge(self, other: "TokenizeSummary") -> "TokenizeSummary":
        """Pool two summaries (cell-weighted means)."""
        out = TokenizeSummary()
        for k in ("n_cells_in", "n_cells_out", "n_cells_filtered", "n_cells_no_genes", "n_truncated",
                  "n_genes_file", "n_genes_mapped", "n_duplicate_ids"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        n = max(out.n_cells_out, 1)
        out.mean_length = (self.mean_length * self.n_cells_out + other.mean_length * other.n_cells_out) / n
        out.mapped_count_fraction = (
            self.mapped_count_fraction * self.n_cells_out + other.mapped_count_fraction * other.n_cells_out
        ) / n
        out.files = self.files + other.files
        return out


@dataclass
class _SourcePlan:
    """A file made ready for encoding by :meth:`TranscriptomeTokenizer._plan_source`: the gene aggregation
    (n_vars, n_used) with the used genes' token ids and medians (ascending token id), the filter mask
    (n_obs,) or None, each cell's ``n_counts`` and whether it falls back to its total, cell ids and the
    kept obs columns (n_obs,) by output name."""

    agg: sp.csr_matrix
    tokens: np.ndarray
    medians: np.ndarray
    mask: np.ndarray | None
    given: np.ndarray
    bad: np.ndarray
    cell_ids: np.ndarray
    kept_obs: dict


@dataclass
class _RowTally:
    """Counts of the rows of one file encoded by :meth:`TranscriptomeTokenizer._encode_rows`.

    The mapped count fractions are kept per chunk and summed in chunk order by :meth:`close_file`, so a
    file's summary is the same float for float whether its rows were encoded in one pass or in Dask tasks
    of whole chunks (tallies of consecutive tasks joined with :meth:`extend`)."""

    n_cells_out: int = 0
    n_cells_no_genes: int = 0
    n_truncated: int = 0
    length_sum: int = 0
    mapped_fractions: list = field(default_factory=list)

    def extend(self, other: _RowTally) -> None:
        """Append the tally of the rows that follow."""
        self.n_cells_out += other.n_cells_out
        self.n_cells_no_genes += other.n_cells_no_genes
        self.n_truncated += other.n_truncated
        self.length_sum += other.length_sum
        self.mapped_fractions.extend(other.mapped_fractions)

    def close_file(self, summary: TokenizeSummary, name: str) -> None:
        """Add the file's rows to its ``summary`` (means over its cells) and log skipped cells."""
        summary.n_cells_out += self.n_cells_out
        summary.n_cells_no_genes += self.n_cells_no_genes
        summary.n_truncated += self.n_truncated
        mapped = 0.0
        for f in self.mapped_fractions:  # in chunk order, as one pass adds them
            mapped += f
        n = max(summary.n_cells_out, 1)
        summary.mean_length = self.length_sum / n
        summary.mapped_count_fraction = mapped / n
        summary.files.append(name)
        if summary.n_cells_no_genes:
            log.warning("%s: skipped %d cells with no gene in the token dictionary", name, summary.n_cells_no_genes)


def _write_shards(tables: Iterable[pa.Table], folder: Path, stem: str, shard_limit: int,
                  schema: pa.Schema | None = None) -> tuple[list[Path], pa.Schema | None]:
    """Write Arrow tables into shards ``folder/{stem}-{k:05d}.arrow.part`` (``datasets``' ArrowWriter, the
    format ``save_to_disk`` writes), starting a new shard once one holds ``shard_limit`` bytes.

    Tables are cast to ``schema``, default the first table's (an empty writer cannot infer one). Returns
    the shards written, in order, and the schema (None if no table came)."""
    from datasets.arrow_writer import ArrowWriter

    writer, parts = None, []
    try:
        for table in tables:
            if schema is None:
                schema = table.schema
            elif table.schema != schema:
                table = table.cast(schema)
            if writer is None:
                parts.append(folder / f"{stem}-{len(parts):05d}.arrow.part")
                writer = ArrowWriter(schema=schema, path=str(parts[-1]))
            writer.write_table(table)
            if getattr(writer, "_num_bytes", 0) >= shard_limit:
                writer.finalize()
                writer.close()
                writer = None
        if writer is not None:
            writer.finalize()
    finally:
        if writer is not None:
            writer.close()
    return parts, schema


def _cast_shard(path: Path, schema: pa.Schema) -> None:
    """Rewrite the Arrow shard ``path`` with its columns cast to ``schema``, batch by batch (temp + rename)."""
    from datasets.arrow_writer import ArrowWriter

    tmp = path.with_name(path.name + ".cast.part")
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_stream(source)
        writer = ArrowWriter(schema=schema, path=str(tmp))
        try:
            for batch in reader:
                writer.write_table(pa.Table.from_batches([batch]).cast(schema))
            writer.finalize()
        finally:
            writer.close()
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The core: rank value encoding of a normalised sparse block
# --------------------------------------------------------------------------------------------
def rank_value_encode(
    values: sp.csr_matrix, token_ids: np.ndarray, max_genes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the non-zero entries of each row by value and return their token ids.

    Parameters
    ----------
    values
        (n_cells, n_genes) CSR matrix of normalised values ``x_g`` (explicit zeros are ignored).
    token_ids
        (n_genes,) int array: token id of each column.
    max_genes
        Keep at most this many genes per cell (the highest-ranked).

    Returns
    -------
    (ids, offsets)
        ``ids`` (int32, concatenated over cells) and ``offsets`` (int64, n_cells + 1) such that
        cell ``i`` is ``ids[offsets[i]:offsets[i+1]]``, ordered by ``x_g`` descending with ties
        broken by ascending token id.
    """
    values = sp.csr_matrix(values, copy=True)
    values.eliminate_zeros()
    token_ids = np.asarray(token_ids)
    if token_ids.size > 1 and not np.all(np.diff(token_ids) > 0):
        # columns in ascending token order, so that the order within a row is the tie-break
        perm = np.argsort(token_ids, kind="stable")
        values, token_ids = values[:, perm], token_ids[perm]
    values.sort_indices()
    n = values.shape[0]
    indptr, indices = values.indptr, values.indices
    neg = -values.data
    kept = np.minimum(np.diff(indptr), max_genes)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(kept, out=offsets[1:])
    ids = np.empty(offsets[-1], dtype=np.int32)
    # one stable argsort per cell over its own non-zeros: small, cache-resident sorts are ~3x
    # faster than one lexsort over the whole chunk; the loop costs ~1 us per cell
    for i in range(n):
        s, e = indptr[i], indptr[i + 1]
        top = np.argsort(neg[s:e], kind="stable")[: kept[i]]
        ids[offsets[i]:offsets[i + 1]] = token_ids[indices[s + top]]
    return ids, offsets


def _wrap_special(ids: np.ndarray, offsets: np.ndarray, cls_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``cls_id`` before and ``eos_id`` after every cell's ids."""
    n = offsets.size - 1
    lengths = np.diff(offsets) + 2
    new_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_off[1:])
    out = np.empty(new_off[-1], dtype=np.int32)
    out[new_off[:-1]] = cls_id
    out[new_off[1:] - 1] = eos_id
    inner = np.ones(out.size, dtype=bool)
    inner[new_off[:-1]] = False
    inner[new_off[1:] - 1] = False
    out[inner] = ids
    return out, new_off


# --------------------------------------------------------------------------------------------
# The compiled ranking (numba): same output as rank_value_encode, without a general sort
# --------------------------------------------------------------------------------------------
_DEBRUIJN_MUL = np.uint64(0x03F79D71B4CB0A89)  # index of the lowest set bit of a 64-bit word
_DEBRUIJN = np.zeros(64, np.int64)
for _i in range(64):
    _DEBRUIJN[((1 << _i) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _i
_N_BUCKETS = 16  # counts 2 .. 16 get a bucket each; higher and non-integer counts share bucket 0


def _encode_cells(data, indices, indptr, given, use_total, rank_of_col, dup_by_rank, median_by_rank, token_by_rank,
                  target_sum, max_genes, cls_id, eos_id):
    """Rank value encoding of CSR rows (compiled by :func:`_compiled_kernel`; plain Python otherwise).

    ``rank_of_col[j]``: rank of file column ``j``'s dictionary gene in (median ascending, token id
    ascending), -1 if unmapped; ``dup_by_rank``: ranks that several file columns map to (summed);
    ``median_by_rank`` / ``token_by_rank``: the gene medians and token ids in rank order. A row's
    ``n_counts`` is ``given[r]``, or its total count where ``use_total[r]``. ``cls_id`` / ``eos_id``:
    -1 for none. Returns ``(ids, offsets, total, mapped, n_genes)``: token ids of all rows (int32),
    row offsets (rows without a dictionary gene are empty, without special tokens), each row's total
    and mapped count, and its number of distinct dictionary genes before truncation.
    """
    n_rows = indptr.size - 1
    n_used = token_by_rank.size
    nbk = _N_BUCKETS
    one = np.uint64(1)
    has_dup = False
    for g in range(n_used):
        if dup_by_rank[g]:
            has_dup = True
            break
    pos = np.full(n_used, -1, np.int64)
    n_words = (n_used + 63) >> 6
    bits1 = np.zeros(n_words, np.uint64)  # genes counted once
    bits2 = np.zeros(n_words, np.uint64)  # genes counted more than once (or a non-integer count)
    count_by_rank = np.zeros(n_used, np.float64)
    extra = 2 if cls_id >= 0 else 0
    max_nnz = 1
    cap = 0
    for r in range(n_rows):
        k = indptr[r + 1] - indptr[r]
        if k > max_nnz:
            max_nnz = k
        cap += min(k, max_genes) + extra
    ent_g = np.empty(max_nnz, np.int64)
    ent_c = np.empty(max_nnz, np.float64)
    gx = np.empty(max_nnz, np.float64)
    gt = np.empty(max_nnz, np.int32)
    tx = np.empty(max_nnz, np.float64)
    tt = np.empty(max_nnz, np.int32)
    fx = np.empty(max_nnz, np.float64)
    ft = np.empty(max_nnz, np.int32)
    count = np.zeros(nbk + 1, np.int64)
    runs = np.empty(max_nnz // 16 + nbk + 3, np.int64)
    start = np.zeros(nbk + 2, np.int64)
    out = np.empty(cap, np.int32)
    offsets = np.zeros(n_rows + 1, np.int64)
    total = np.zeros(n_rows, np.float64)
    mapped = np.zeros(n_rows, np.float64)
    n_genes = np.zeros(n_rows, np.int64)
    o = 0
    for r in range(n_rows):
        # 1. counts of the dictionary's genes (duplicate ids summed), total and mapped counts
        t = 0.0
        mt = 0.0
        m = 0
        for k in range(indptr[r], indptr[r + 1]):
            c = np.float64(data[k])
            t += c
            g = rank_of_col[indices[k]]
            if g < 0 or c == 0:
                continue
            mt += c
            if has_dup and dup_by_rank[g]:
                p = pos[g]
                if p >= 0:
                    ent_c[p] += c
                    continue
                pos[g] = m
            ent_g[m] = g
            ent_c[m] = c
            m += 1
        total[r] = t
        mapped[r] = mt
        if has_dup:
            for i in range(m):
                pos[ent_g[i]] = -1
        n = t if use_total[r] else given[r]
        # 2. genes into two bitmaps over their rank (median ascending, then token ascending)
        count[:] = 0
        lo1 = n_words
        hi1 = -1
        lo2 = n_words
        hi2 = -1
        q = 0
        for i in range(m):
            c = ent_c[i]
            if c == 0:  # duplicates summing to zero
                continue
            q += 1
            g = ent_g[i]
            w = g >> 6
            bit = one << np.uint64(g & 63)
            if c == 1.0:
                bits1[w] |= bit
                lo1 = min(lo1, w)
                hi1 = max(hi1, w)
            else:
                bits2[w] |= bit
                count_by_rank[g] = c
                lo2 = min(lo2, w)
                hi2 = max(hi2, w)
                b = 0
                if c <= nbk and c > 1 and c == np.floor(c):
                    b = np.int64(c)
                count[b] += 1
        m = q
        n_genes[r] = m
        if m == 0:
            offsets[r + 1] = o
            continue
        # 3. the other genes by count, each bucket in rank order (= descending x within a count)
        start[0] = 0
        for b in range(nbk + 1):
            start[b + 1] = start[b] + count[b]
            count[b] = start[b]
        for w in range(lo2, hi2 + 1):
            word = bits2[w]
            bits2[w] = 0
            while word != 0:
                g = (w << 6) + _DEBRUIJN[((word & (~word + one)) * _DEBRUIJN_MUL) >> np.uint64(58)]
                word &= word - one
                c = count_by_rank[g]
                b = 0
                if c <= nbk and c > 1 and c == np.floor(c):
                    b = np.int64(c)
                p = count[b]
                gx[p] = c / n * target_sum / median_by_rank[g]
                gt[p] = token_by_rank[g]
                count[b] = p + 1
        # 4. the other genes sorted by descending x: bucket 0 (higher or non-integer counts) in insertion-sorted
        # runs of 16, buckets 2 .. nbk as they are (each a sorted run), then runs merged pairwise
        nr = 0
        s0 = 0
        e = start[1]
        while s0 < e:
            s1 = min(s0 + 16, e)
            for a in range(s0 + 1, s1):
                xe = gx[a]
                te = gt[a]
                z = a - 1
                while z >= s0 and gx[z] < xe:
                    gx[z + 1] = gx[z]
                    gt[z + 1] = gt[z]
                    z -= 1
                gx[z + 1] = xe
                gt[z + 1] = te
            runs[nr] = s0
            nr += 1
            s0 = s1
        for b in range(2, nbk + 1):
            if start[b + 1] > start[b]:
                runs[nr] = start[b]
                nr += 1
        na = start[nbk + 1]
        runs[nr] = na
        sx = gx
        st = gt
        dx = tx
        dt = tt
        while nr > 1:
            nn = 0
            for p in range(0, nr, 2):
                s0 = runs[p]
                if p + 1 >= nr:  # odd run out: copied
                    for a in range(s0, runs[p + 1]):
                        dx[a] = sx[a]
                        dt[a] = st[a]
                    runs[nn] = s0
                    nn += 1
                    continue
                ia = s0
                ea = runs[p + 1]
                ib = ea
                eb = runs[p + 2]
                q = s0
                while ia < ea and ib < eb:
                    xa = sx[ia]
                    xb = sx[ib]
                    take = xa >= xb
                    dx[q] = xa if take else xb
                    dt[q] = st[ia] if take else st[ib]
                    ia += take
                    ib += 1 - take
                    q += 1
                while ia < ea:
                    dx[q] = sx[ia]
                    dt[q] = st[ia]
                    ia += 1
                    q += 1
                while ib < eb:
                    dx[q] = sx[ib]
                    dt[q] = st[ib]
                    ib += 1
                    q += 1
                runs[nn] = s0
                nn += 1
            runs[nn] = na
            nr = nn
            sx, dx = dx, sx
            st, dt = dt, st
        ax = sx
        at = st
        # 5. genes counted once, in rank order from their bitmap, merged with (ax, at) into (fx, ft)
        a1 = 1.0 / n * target_sum  # the same operations as for any count
        ia = 0
        q = 0
        for w in range(lo1, hi1 + 1):
            word = bits1[w]
            bits1[w] = 0
            while word != 0:
                g = (w << 6) + _DEBRUIJN[((word & (~word + one)) * _DEBRUIJN_MUL) >> np.uint64(58)]
                word &= word - one
                x = a1 / median_by_rank[g]
                while ia < na and ax[ia] >= x:
                    fx[q] = ax[ia]
                    ft[q] = at[ia]
                    ia += 1
                    q += 1
                fx[q] = x
                ft[q] = token_by_rank[g]
                q += 1
        while ia < na:
            fx[q] = ax[ia]
            ft[q] = at[ia]
            ia += 1
            q += 1
        # 6. equal values in ascending token id (also across the cut below), the first max_genes genes out
        for a in range(1, m):
            xe = fx[a]
            if xe == fx[a - 1]:
                te = ft[a]
                z = a - 1
                while z >= 0 and fx[z] == xe and ft[z] > te:
                    ft[z + 1] = ft[z]
                    z -= 1
                ft[z + 1] = te
        keep = m if m < max_genes else max_genes
        if cls_id >= 0:
            out[o] = cls_id
            o += 1
        out[o:o + keep] = ft[:keep]
        o += keep
        if eos_id >= 0:
            out[o] = eos_id
            o += 1
        offsets[r + 1] = o
    return out[:o], offsets, total, mapped, n_genes


_KERNEL = None


def _compiled_kernel():
    """The jitted :func:`_encode_cells` (compiled once, cached on disk by numba), or None without numba."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - scanpy requires numba
            _KERNEL = False
            return None
        opts = dict(nogil=True, error_model="numpy")  # one compiled version per count dtype, on first use
        try:
            _KERNEL = numba.njit(cache=True, **opts)(_encode_cells)
        except Exception:  # no writable cache location: compile in memory
            _KERNEL = numba.njit(**opts)(_encode_cells)
    return _KERNEL or None


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
class TranscriptomeTokenizer:
    """Rank value encoding of raw counts into ``input_ids`` (Geneformer-compatible).

    Parameters
    ----------
    vocab
        :class:`~netformer.genes.GeneVocab`: token dictionary, gene medians, id mapping.
    config
        :class:`TokenizerConfig`; keyword overrides are applied on top of it.

    Examples
    --------
    >>> vocab = GeneVocab.from_geneformer("../shared/data/genes/geneformer_gc104M")  # doctest: +SKIP
    >>> tok = TranscriptomeTokenizer(vocab, model_input_size=4096, obs_columns=["cell_type"])  # doctest: +SKIP
    >>> ds = tok.tokenize("pbmc.h5ad")  # doctest: +SKIP
    """

    def __init__(self, vocab: GeneVocab, config: TokenizerConfig | None = None, **overrides) -> None:
        cfg = asdict(config) if config is not None else {}
        cfg.update(overrides)
        self.config = TokenizerConfig(**cfg)
        self.vocab = vocab
        special = self.config.special_tokens
        if special is None:
            special = vocab.has_cls_eos
        if special and not vocab.has_cls_eos:
            raise ConfigError(
                f"special_tokens=True but the token dictionary '{vocab.name}' has no <cls>/<eos>"
            )
        self.special_tokens = bool(special)
        self.max_genes = self.config.model_input_size - (2 if self.special_tokens else 0)
        self.summary = TokenizeSummary()

    # -- gene handling -------------------------------------------------------------------------
    def _gene_ids(self, var: pd.DataFrame, name: str, notes: bool = True) -> np.ndarray:
        ids = select_gene_ids(var, self.config.gene_id_column, name, notes)
        if (self.config.gene_id_column == "auto" and not looks_like_ensembl(ids)
                and self.vocab.ensembl_mapping is None
                and not any(str(g).upper() in self.vocab.token_dict for g in ids[:2000] if g is not None)):
            raise GeneIdError(
                f"{name}: the var index looks like gene symbols (e.g. {list(var.index[:3])}) but the "
                f"token dictionary '{self.vocab.name}' is keyed by Ensembl ids and has no mapping "
                "dictionary. Pass gene_id_column='<var column with Ensembl ids>', or add Ensembl ids "
                "with netformer.genes.symbol_to_ensembl(adata.var_names)."
            )
        return ids

    def _aggregation(self, var: pd.DataFrame, name: str, summary: TokenizeSummary, notes: bool = True):
        """Sparse (n_vars, n_used) 0/1 matrix summing file genes into vocabulary genes."""
        mapped = self.vocab.map_ids(self._gene_ids(var, name, notes))
        ok = np.array([m is not None for m in mapped])
        if not ok.any():
            ids = self._gene_ids(var, name)
            hint = (" The gene ids look like gene symbols; pass gene_id_column='<var column with Ensembl ids>' "
                    "or map them with netformer.genes.symbol_to_ensembl." if not looks_like_ensembl(ids) else
                    " Check the species and the gene id column (gene_id_column=...).")
            raise GeneIdError(
                f"{name}: none of its {len(mapped)} genes is in the token dictionary '{self.vocab.name}'.{hint}"
            )
        used, col = np.unique(mapped[ok].astype(str), return_inverse=True)
        n_dup = int(ok.sum() - used.size)
        if n_dup and notes:
            log.warning("%s: %d genes share an Ensembl id after mapping (upper-cased ids, Ensembl mapping "
                        "dictionary); their counts are summed, as upstream does", name, n_dup)
        agg = sp.csr_matrix(
            (np.ones(ok.sum()), (np.flatnonzero(ok), col)), shape=(len(mapped), used.size)
        )
        tokens = np.array([self.vocab.token_dict[g] for g in used], dtype=np.int64)
        medians = np.array([self.vocab.gene_median[g] for g in used], dtype=np.float64)
        # columns in ascending token id (rank_value_encode then needs no column permutation)
        by_token = np.argsort(tokens, kind="stable")
        agg, tokens, medians = agg[:, by_token], tokens[by_token], medians[by_token]
        summary.n_genes_file += len(mapped)
        summary.n_genes_mapped += int(used.size)
        summary.n_duplicate_ids += n_dup
        return agg, tokens, medians

    def _n_counts(self, obs: pd.DataFrame, name: str, mask: np.ndarray | None,
                  notes: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``obs[n_counts_column]`` as float64 and the mask of cells whose value is not a positive finite
        number; raises :class:`InputDataError` naming such cells unless the row-sum fallback is on."""
        col = self.config.n_counts_column
        values = pd.to_numeric(obs[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values <= 0)
        considered = bad if mask is None else bad & mask
        n_bad = int(considered.sum())
        if n_bad:
            cells = list(obs.index[considered][:5])
            if self.config.n_counts_fallback != "row_sum":
                raise InputDataError(
                    f"{name}: obs[{col!r}] is missing, zero, negative or not a number for {n_bad} cells (e.g. {cells}); "
                    f"fix the column, delete it to use each cell's total count, or pass n_counts_fallback='row_sum' "
                    "(CLI: --n-counts-fallback row-sum) to use the total count for those cells")
            if notes:
                log.warning("%s: obs[%r] is not a positive number for %d cells (e.g. %s); using their total count over "
                            "all genes instead (n_counts_fallback='row_sum')", name, col, n_bad, cells)
        return values, bad

    def _check_counts(self, block: sp.csr_matrix, name: str, first_row: int) -> None:
        data = block.data
        if data.size == 0:
            return
        if not np.all(np.isfinite(data)):
            raise InputDataError(f"{name}: counts contain NaN or infinite values (near cell {first_row}); "
                                 "tokenize raw UMI counts, not a processed matrix")
        if data.min() < 0:
            raise InputDataError(f"{name}: counts contain negative values (near cell {first_row}); "
                                 "tokenize raw counts, not scaled or log-transformed data")
        if np.issubdtype(data.dtype, np.floating) and not np.all(data == np.round(data)):
            raise InputDataError(
                f"{name}: counts are not integers (near cell {first_row}); the rank value encoding expects raw "
                "UMI counts: name the layer that holds them (Python: layer='counts'; CLI: --layer counts)"
            )

    # -- encoding ------------------------------------------------------------------------------
    def _plan_source(self, src: CountSource, summary: TokenizeSummary, notes: bool = True) -> _SourcePlan:
        """Everything a file's rows need before they are encoded, with every check of its genes and obs.

        The per-file preparation step: maps the genes (:class:`GeneIdError`), reads the filter column,
        ``n_counts`` and the kept obs columns (:class:`InputDataError`), and adds the file's cell and gene
        counts to ``summary``. The single-process path plans a file once; on Dask the driver plans every
        file before any task starts (so bad input fails there) and each task plans its file again.
        ``notes=False`` leaves out the log lines (a task repeats what the driver already logged).
        """
        cfg = self.config
        agg, tokens, medians = self._aggregation(src.var, src.name, summary, notes)
        obs = src.obs
        mask = None
        if cfg.filter_column:
            if cfg.filter_column in obs.columns:
                mask = _filter_mask(obs[cfg.filter_column], src.name, cfg.filter_column)
                summary.n_cells_filtered += int((~mask).sum())
            else:
                log.debug("%s has no obs column %r; tokenizing all cells", src.name, cfg.filter_column)
        has_n_counts = cfg.n_counts_column in obs.columns
        if not has_n_counts and notes:
            log.warning("%s has no obs[%r]; using each cell's total count over all genes in the file",
                        src.name, cfg.n_counts_column)
        given, bad = self._n_counts(obs, src.name, mask, notes) if has_n_counts else (None, None)
        if given is None:
            given, bad = np.zeros(src.n_obs), np.ones(src.n_obs, dtype=bool)
        given = np.where(bad, 0.0, given)
        keep_cols = dict(cfg.obs_columns) if isinstance(cfg.obs_columns, Mapping) else {c: c for c in cfg.obs_columns}
        missing = [c for c in keep_cols if c not in obs.columns]
        if missing:
            raise InputDataError(f"{src.name}: obs has no column(s) {missing}; columns are {list(obs.columns)}")
        summary.n_cells_in += src.n_obs
        return _SourcePlan(agg, tokens, medians, mask, given, bad, obs.index.astype(str).to_numpy(),
                           {out_col: obs[src_col].to_numpy() for src_col, out_col in keep_cols.items()})

    def _encoder(self, plan: _SourcePlan, threads: int | None = None):
        """The compiled (or NumPy) encoder of a planned file; ``threads`` default: ``config.threads`` or
        the CPUs available, at most 4."""
        cfg = self.config
        kernel = _compiled_kernel() if cfg.engine != "numpy" else None
        if cfg.engine == "numba" and kernel is None:
            raise ConfigError("engine='numba' but numba cannot be imported; use engine='auto' or 'numpy'")
        if kernel is None:
            return _NumpyEncoder(plan.agg, plan.tokens, plan.medians, self)
        return _KernelEncoder(kernel, plan.agg, plan.tokens, plan.medians, self,
                              _n_threads(cfg.threads if threads is None else threads))

    def _encode_rows(self, src: CountSource, plan: _SourcePlan, tally: _RowTally, start: int = 0,
                     stop: int | None = None, threads: int | None = None) -> Iterator[pa.Table]:
        """Encode rows ``start:stop`` of a planned file: one Arrow table per chunk of ``config.chunk_size`` rows
        that holds a cell (cells filtered out or without a dictionary gene are left out), counted in ``tally``.

        The encode-a-row-range step, shared by the single-process path (the whole file) and the Dask tasks
        (a range that starts on a chunk boundary, so the chunks are the same). Raises
        :class:`InputDataError` on bad counts (NaN, negative, non-integer; ``n_counts`` not positive).
        """
        cfg = self.config
        encode = self._encoder(plan, threads)
        stop = src.n_obs if stop is None else min(stop, src.n_obs)
        reader = _read_ahead(src.chunks(cfg.chunk_size, plan.mask, start, stop))
        given, bad = plan.given, plan.bad
        try:
            for rows, block in progress(reader, f"tokenizing {src.name}", total=-(-(stop - start) // cfg.chunk_size),
                                        unit="chunk"):
                if cfg.check_counts:
                    self._check_counts(block, src.name, int(rows[0]))
                ids, offsets, total, mapped, n_genes = encode(block, given[rows], bad[rows])
                ok = n_genes > 0
                tally.n_cells_no_genes += int((~ok).sum())
                n_counts = np.where(bad[rows], total, given[rows])
                if (n_counts[ok] <= 0).any():
                    raise InputDataError(f"{src.name}: obs[{cfg.n_counts_column!r}] is zero or negative for cells with counts")
                if not ok.all():
                    offsets = np.append(offsets[:-1][ok], offsets[-1])
                    rows, total, mapped, n_genes = rows[ok], total[ok], mapped[ok], n_genes[ok]
                if rows.size == 0:
                    continue
                tally.n_truncated += int((n_genes > self.max_genes).sum())
                lengths = np.diff(offsets).astype(np.int32)
                tally.length_sum += int(lengths.sum())
                tally.mapped_fractions.append(float((mapped / np.maximum(total, 1e-12)).sum()))
                columns = {
                    "input_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids)),
                    "length": pa.array(lengths),
                    "cell_id": pa.array(plan.cell_ids[rows]),
                }
                for out_col, values in plan.kept_obs.items():
                    columns[out_col] = _arrow_column(values[rows])
                tally.n_cells_out += len(rows)
                yield pa.table(columns)
        finally:
            reader.close()  # the read-ahead thread stops before the file is closed
            encode.close()

    def _encode_source(self, src: CountSource, summary: TokenizeSummary) -> Iterator[pa.Table]:
        """A whole file: :meth:`_plan_source`, then :meth:`_encode_rows` over all its rows."""
        plan = self._plan_source(src, summary)
        tally = _RowTally()
        yield from self._encode_rows(src, plan, tally)
        tally.close_file(summary, src.name)

    def iter_tables(self, source) -> Iterator[pa.Table]:
        """Yield Arrow tables of tokenized cells, one per chunk, for one file or AnnData.

        The per-source :class:`TokenizeSummary` is merged into ``self.summary``.
        """
        summary = TokenizeSummary()
        with open_counts(source, self.config.layer) as src:
            yield from self._encode_source(src, summary)
        self.summary = self.summary.merge(summary)

    def tokenize(self, source) -> "datasets.Dataset":  # noqa: F821
        """Tokenize one file or AnnData into an in-memory :class:`datasets.Dataset`.

        Raises :class:`InputDataError` if no cell could be tokenized.
        """
        import datasets

        self.summary = TokenizeSummary()
        tables = list(self.iter_tables(source))
        if not tables:
            raise InputDataError(_nothing_tokenized(self.summary))
        return datasets.Dataset(pa.concat_tables(tables), info=self._dataset_info())

    def settings(self) -> dict:
        """What a model needs to know of this tokenizer: dictionary name and digest, input size, special tokens."""
        key = (id(self.vocab.token_dict), len(self.vocab.token_dict))
        if getattr(self, "_digest", (None, None))[0] != key:  # the digest hashes the whole dictionary: once
            self._digest = (key, self.vocab.digest)
        return {"vocab": self.vocab.name, "vocab_digest": self._digest[1], "vocab_size": self.vocab.vocab_size,
                "model_input_size": self.config.model_input_size, "special_tokens": self.special_tokens}

    def _dataset_info(self):
        """``datasets.DatasetInfo`` whose description records :meth:`settings` (JSON under ``"netformer"``),
        so a dataset carries its dictionary's digest through ``select``, ``save_to_disk`` and loading."""
        import datasets

        remember_vocab(self.vocab)
        return datasets.DatasetInfo(description=json.dumps({DATASET_INFO_KEY: self.settings()}))

    def write(self, sources: Iterable, out_dir: str | Path, overwrite: bool = False,
              max_shard_size: int | str | None = None, *, client=None,
              rows_per_task: int | None = None) -> TokenizeSummary:
        """Tokenize files (streamed) into a dataset directory readable by ``datasets.load_from_disk``.

        The Arrow shards (``data-XXXXX-of-NNNNN.arrow``, at most ``max_shard_size`` each: default
        ``datasets.config.MAX_SHARD_SIZE``, 500 MB, as ``save_to_disk``) are written in place as the cells
        are encoded, chunk after chunk, with ``state.json`` and ``dataset_info.json`` as ``save_to_disk``
        writes them: nothing is copied or read back, so memory stays bounded by the chunk size whatever
        the number of cells. The directory also holds ``netformer_tokenizer.json`` (config, vocabulary
        name, summary) and ``vocab/`` (the :class:`GeneVocab` used, readable with ``GeneVocab.load``).
        Output is written to a temporary directory and renamed into place; a killed run leaves only that
        temporary, removed by the next run. Raises :class:`~netformer.errors.OutputExistsError` if
        ``out_dir`` exists and not ``overwrite``.

        With a ``dask.distributed`` ``client`` (:func:`netformer.cluster.dask_client`) the cells are
        encoded by tasks of (file, row range), ``rows_per_task`` rows each (default
        :data:`netformer.cluster.ROWS_PER_TASK`, 50,000, rounded to whole chunks), each writing its own
        shards into the temporary directory, which must be on a filesystem the workers share; see
        :func:`netformer.cluster.plan_tokenize`. ``sources`` must then be paths. Every file is checked
        before a task starts; the dataset equals the single-process one (same ``input_ids``, cells in
        the same order, same summary). Without a client everything runs in this process, as before.
        """
        from datasets import config as ds_config
        from datasets.utils.py_utils import convert_file_size_to_int

        if isinstance(sources, (str, Path)) or not isinstance(sources, Iterable):
            sources = [sources]
        sources = list(sources)
        shard_limit = convert_file_size_to_int(max_shard_size or ds_config.MAX_SHARD_SIZE)
        self.summary = TokenizeSummary()
        job = None
        if client is not None:
            from .cluster import plan_tokenize

            job = plan_tokenize(self, sources, rows_per_task)  # every file checked before any output
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            if job is None:
                parts, schema = _write_shards((t for source in sources for t in self.iter_tables(source)),
                                              tmp, "data", shard_limit)
            else:
                parts, schema = job.run(client, tmp, shard_limit)  # sets self.summary
            if schema is None:
                raise InputDataError(_nothing_tokenized(self.summary))
            self._finish_dataset(tmp, parts, schema)
        log.info("tokenized %d cells (mean length %.0f) into %s", self.summary.n_cells_out,
                 self.summary.mean_length, out_dir)
        return self.summary

    def _finish_dataset(self, folder: Path, parts: Sequence[Path], schema: pa.Schema) -> None:
        """Make ``folder`` a dataset directory: ``parts`` (Arrow shards, in cell order) renamed
        ``data-XXXXX-of-NNNNN.arrow``, ``state.json`` and ``dataset_info.json`` as ``save_to_disk`` writes
        them, ``vocab/`` and ``netformer_tokenizer.json`` (settings, config, :attr:`summary`)."""
        from datasets import Features
        from datasets import config as ds_config
        from datasets.fingerprint import generate_random_fingerprint
        from datasets.utils.py_utils import asdict as ds_asdict

        names = [f"data-{i:05d}-of-{len(parts):05d}.arrow" for i in range(len(parts))]
        for part, name in zip(parts, names):
            os.replace(part, folder / name)
        info = self._dataset_info()
        info.features = Features.from_arrow_schema(schema)
        state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": generate_random_fingerprint(),
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        (folder / ds_config.DATASET_STATE_JSON_FILENAME).write_text(json.dumps(state, indent=2, sort_keys=True))
        info_dict = ds_asdict(info)
        (folder / ds_config.DATASET_INFO_FILENAME).write_text(
            json.dumps({k: info_dict[k] for k in sorted(info_dict)}, indent=2))
        self.vocab.save(folder / "vocab")
        (folder / "netformer_tokenizer.json").write_text(json.dumps(
            {**self.settings(), "config": asdict(self.config), "summary": asdict(self.summary)},
            indent=2, default=str))


def _n_threads(threads: int | None) -> int:
    from .cluster import available_cpus

    return int(threads) if threads is not None else min(4, available_cpus())


class _NumpyEncoder:
    """One chunk -> ``(ids, offsets, total, mapped, n_genes)`` with sparse NumPy/SciPy operations."""

    def __init__(self, agg, tokens, medians, tok: "TranscriptomeTokenizer") -> None:
        self.agg, self.tokens, self.medians, self.tok = agg, tokens, medians, tok

    def __call__(self, block: sp.csr_matrix, given: np.ndarray, use_total: np.ndarray):
        tok = self.tok
        total = np.asarray(block.sum(axis=1)).ravel().astype(np.float64)
        n_counts = np.where(use_total, total, given)
        genes = sp.csr_matrix(block @ self.agg)
        genes.eliminate_zeros()
        mapped = np.asarray(genes.sum(axis=1)).ravel().astype(np.float64)
        n_genes = np.diff(genes.indptr).astype(np.int64)
        ok = n_genes > 0
        sub = genes[ok] if not ok.all() else genes
        # x_g = count / n_counts * target_sum / median  (same operation order as upstream)
        row_of = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
        x = sub.data.astype(np.float64) / n_counts[ok][row_of] * tok.config.target_sum / self.medians[sub.indices]
        ids, off = rank_value_encode(sp.csr_matrix((x, sub.indices, sub.indptr), shape=sub.shape),
                                     self.tokens, tok.max_genes)
        if tok.special_tokens:
            ids, off = _wrap_special(ids, off, tok.vocab.cls_id, tok.vocab.eos_id)
        lengths = np.zeros(n_genes.size, dtype=np.int64)
        lengths[ok] = np.diff(off)
        offsets = np.zeros(n_genes.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return ids, offsets, total, mapped, n_genes

    def close(self) -> None:
        pass


class _KernelEncoder:
    """One chunk -> ``(ids, offsets, total, mapped, n_genes)`` with the compiled kernel, the chunk's rows
    split over ``threads`` threads (the kernel releases the GIL)."""

    def __init__(self, kernel, agg, tokens, medians, tok: "TranscriptomeTokenizer", threads: int) -> None:
        agg = sp.csr_matrix(agg)
        col = np.full(agg.shape[0], -1, dtype=np.int64)
        has = np.diff(agg.indptr) > 0
        col[has] = agg.indices[agg.indptr[:-1][has]]
        order = np.lexsort((tokens, medians))  # rank: median ascending, then token id ascending
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        self.rank_of_col = np.where(col >= 0, rank[np.maximum(col, 0)], -1).astype(np.int32)
        self.dup_by_rank = (np.bincount(col[col >= 0], minlength=order.size) > 1)[order]
        self.median_by_rank = np.ascontiguousarray(medians[order], dtype=np.float64)
        self.token_by_rank = np.ascontiguousarray(tokens[order], dtype=np.int32)
        self.kernel, self.tok, self.threads = kernel, tok, threads
        self.cls = tok.vocab.cls_id if tok.special_tokens else -1
        self.eos = tok.vocab.eos_id if tok.special_tokens else -1
        self.pool = None
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(threads, thread_name_prefix="netformer-tokenize")

    def _run(self, data, indices, indptr, given, use_total):
        return self.kernel(data, indices, indptr, given, use_total, self.rank_of_col, self.dup_by_rank,
                           self.median_by_rank, self.token_by_rank, float(self.tok.config.target_sum),
                           int(self.tok.max_genes), int(self.cls), int(self.eos))

    def __call__(self, block: sp.csr_matrix, given: np.ndarray, use_total: np.ndarray):
        data = block.data  # int32 / int64 / float32 / float64 as stored (one compiled version each)
        if data.dtype not in (np.int32, np.int64, np.float32, np.float64) or not data.flags.c_contiguous:
            data = np.ascontiguousarray(data, dtype=np.float64)
        indices = np.ascontiguousarray(block.indices, dtype=np.int32)
        indptr = np.ascontiguousarray(block.indptr, dtype=np.int64)
        given = np.ascontiguousarray(given, dtype=np.float64)
        use_total = np.ascontiguousarray(use_total, dtype=bool)
        n = indptr.size - 1
        parts = min(self.threads, max(1, n // 256))
        if parts == 1 or self.pool is None:
            return self._run(data, indices, indptr, given, use_total)
        # rows split where the non-zeros split evenly
        cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], parts + 1)[1:-1])
        bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < n)), n]
        jobs = [self.pool.submit(self._run, data, indices, indptr[a:b + 1], given[a:b], use_total[a:b])
                for a, b in zip(bounds[:-1], bounds[1:])]
        res = [j.result() for j in jobs]
        ids = np.concatenate([r[0] for r in res])
        shift = np.cumsum([0] + [r[1][-1] for r in res[:-1]])
        offsets = np.concatenate([[0]] + [r[1][1:] + s for r, s in zip(res, shift)])
        return (ids, offsets, *(np.concatenate([r[k] for r in res]) for k in (2, 3, 4)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _read_ahead(chunks: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``chunks`` with the next item read in a background thread (reading overlaps encoding).

    Errors of the reader are raised in the consumer; closing the generator stops the reader before
    the caller closes the file."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as exc:  # handed to the consumer
            q.put((exc, None))

    thread = threading.Thread(target=work, name="netformer-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


_TRUE = {"1", "1.0", "true", "t", "yes", "y", "pass", "passed"}
_FALSE = {"0", "0.0", "false", "f", "no", "n", "fail", "failed"}


def _filter_mask(values: pd.Series, name: str, column: str) -> np.ndarray:
    """Cells that pass ``obs[column]`` (upstream's ``filter_pass``): 1/True, or the strings
    "1"/"true"/"yes"/"pass" (any case). Raises :class:`InputDataError` naming the values that are neither."""
    if values.dtype.kind in "biuf":
        v = values.to_numpy(dtype=np.float64)
        if np.isnan(v).any():
            raise InputDataError(f"{name}: obs[{column!r}] has missing values; give 1 (keep) or 0 (drop) for every cell")
        return v == 1
    text = values.astype(str).str.strip().str.lower()
    bad = sorted(set(text[~text.isin(_TRUE | _FALSE)]))
    if bad:
        raise InputDataError(f"{name}: obs[{column!r}] holds values that are neither pass nor fail ({bad[:5]}); "
                             "give 1/True to keep a cell and 0/False to drop it")
    return text.isin(_TRUE).to_numpy()


def _nothing_tokenized(s: TokenizeSummary) -> str:
    return (f"no cell was tokenized: {s.n_cells_in} cells in the input, {s.n_cells_filtered} filtered out "
            f"(obs filter_pass), {s.n_cells_no_genes} with no gene of the token dictionary; give cells with counts "
            "on the dictionary's genes (check the gene ids and the filter column)")


def _arrow_column(values: np.ndarray) -> pa.Array:
    """An obs column as Arrow: numbers stay numbers; categoricals and objects become strings (NaN ->
    null) typed ``string`` even when a chunk holds no value, so every chunk has the same schema."""
    if values.dtype.kind in "biuf":
        return pa.array(values)
    return pa.array([None if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in values],
                    type=pa.string())


def load_tokenized(path: str | Path) -> "datasets.Dataset":  # noqa: F821
    """Load a tokenized dataset directory written by :meth:`TranscriptomeTokenizer.write` (or any
    ``datasets.save_to_disk`` folder with ``input_ids``, e.g. upstream Geneformer's).

    Its dictionary is found by :func:`netformer.genes.dataset_vocab` (``vocab/`` beside the Arrow files).
    Raises :class:`InputDataError` if ``path`` is not such a folder or holds no ``input_ids``.
    """
    import datasets

    path = Path(path)
    if not (path / "state.json").exists():
        raise InputDataError(f"{path} is not a tokenized dataset directory (no state.json); run `netformer tokenize` first")
    try:
        files = json.loads((path / "state.json").read_text()).get("_data_files")
    except (OSError, ValueError):
        files = None
    if files == []:
        raise InputDataError(f"{path} holds no cell; tokenize cells with netformer tokenize first")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types on damaged folders
        raise CorruptFileError(f"cannot read the tokenized dataset {path} ({type(exc).__name__}: {exc}); "
                               "tokenize the cells again") from None
    if not hasattr(ds, "column_names") or "input_ids" not in ds.column_names:
        raise InputDataError(f"{path} holds no input_ids column; tokenize the cells with netformer tokenize")
    return ds


MEDIAN_MODES = ("auto", "exact", "tdigest")
"""How :func:`build_vocab` computes gene medians (``medians=``)."""

EXACT_MEDIAN_MAX_CELLS = 200_000
"""``medians="auto"`` is exact up to this many cells in the corpus (the exact mode holds every non-zero value:
~16 bytes each, ~3 GB for 200,000 cells of ~1,000 genes) and a t-digest sketch above."""

TDIGEST_COMPRESSION = 100.0
"""t-digest compression of the median sketch (crick's default; about 2 x 100 centroids per gene at most)."""


def _median_genes(var: pd.DataFrame, gene_id_column: str | None, name: str, notes: bool = True):
    """The distinct upper-cased gene ids of a file (sorted) and the (n_vars, n_genes) 0/1 matrix summing its
    columns into them (duplicate ids summed). Raises :class:`GeneIdError` as :func:`select_gene_ids`."""
    ids = np.array([None if i is None else i.upper() for i in select_gene_ids(var, gene_id_column, name, notes)],
                   dtype=object)
    ok = np.array([i is not None for i in ids], dtype=bool)
    used, col = np.unique(ids[ok].astype(str), return_inverse=True)
    agg = sp.csr_matrix((np.ones(ok.sum()), (np.flatnonzero(ok), col)), shape=(len(ids), used.size))
    return used, agg


def _median_task(settings: dict, source, start: int, stop: int):
    """One (file, row range) task of :func:`build_vocab`: the normalised non-zero values
    ``count / n_counts * target_sum`` of rows ``start:stop``, by gene (index into the file's
    :func:`_median_genes`). Returns ``(genes, values)``: the genes present (ascending) and their values,
    ``sketch=False``: ``(v, bounds)``, all values (float64) ordered by gene, cut at ``bounds`` into the genes'
    values in row order (two arrays: Dask sends them as two buffers, not thousands); ``sketch=True``: one
    crick ``TDigest`` per gene."""
    with open_counts(source, settings["layer"]) as src:
        _, agg = _median_genes(src.var, settings["gene_id_column"], src.name, notes=False)
        parts_g, parts_v = [], []
        for _, block in src.chunks(settings["chunk_size"], None, start, stop):
            total = block.sum(axis=1).A1.astype(np.float64)
            genes = sp.csr_matrix(block @ agg)
            genes.eliminate_zeros()
            row_of = np.repeat(np.arange(genes.shape[0]), np.diff(genes.indptr))
            parts_v.append((genes.data / total[row_of] * settings["target_sum"]).astype(np.float64))
            parts_g.append(genes.indices.copy())
    g = np.concatenate(parts_g) if parts_g else np.zeros(0, np.int32)
    v = np.concatenate(parts_v) if parts_v else np.zeros(0)
    order = np.argsort(g, kind="stable")
    g, v = g[order], v[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    genes = g[np.r_[0, bounds]] if g.size else g
    if not settings["sketch"]:
        return genes, (v, bounds)
    from crick import TDigest

    digests = []
    for vals in np.split(v, bounds) if g.size else []:
        d = TDigest(settings["compression"])
        d.update(vals)
        d.centroids()  # flushes the buffer, as pickling does: a digest merges the same here and off a worker
        digests.append(d)
    return genes, digests


def build_vocab(
    sources: Iterable,
    *,
    gene_id_column: str | None = "auto",
    min_cells: int = 10,
    target_sum: float = 10_000.0,
    special_tokens: Sequence[str] = ("<pad>", "<mask>", "<cls>", "<eos>"),
    chunk_size: int = 2048,
    name: str = "custom",
    layer: str | None = None,
    medians: str = "auto",
    client=None,
    rows_per_task: int | None = None,
    compression: float = TDIGEST_COMPRESSION,
) -> GeneVocab:
    """Build a token dictionary and gene median dictionary from a corpus of count files.

    The gene median of ``g`` is the median, over all cells where ``g`` is detected, of
    ``count_g / n_counts * target_sum`` (Geneformer's non-zero median; ``n_counts`` = the cell's total
    count in the file). Genes detected in fewer than ``min_cells`` cells are left out. Gene ids are
    taken as in :class:`TokenizerConfig` (``gene_id_column``), upper-cased, and duplicates summed.

    The work is cut into (file, row range) tasks (``rows_per_task`` rows, default
    :data:`netformer.cluster.ROWS_PER_TASK`, rounded to whole chunks of ``chunk_size``), run in this
    process or, with a ``dask.distributed`` ``client``, on its workers; results are combined in task order,
    so the dictionary does not depend on the number of workers.

    Parameters
    ----------
    sources
        Paths (.h5ad/.zarr/.loom) or AnnData objects of raw counts (paths only with ``client``).
    layer
        Read the counts from ``layers[layer]`` instead of ``X``.
    medians
        ``"exact"``: every non-zero value is kept and the median taken exactly (memory ~16 bytes per
        non-zero count of the corpus). ``"tdigest"``: one t-digest per gene and task (crick's
        ``TDigest``, the compiled, mergeable sketch Dask itself uses; ``compression`` 100), merged across
        tasks in task order with ``TDigest.merge``: memory bounded by genes x centroids whatever the number
        of cells; a gene's number of cells is the digest's size (exact). Upstream Geneformer sketches its
        medians with t-digests too (the ``tdigest`` package). ``"auto"`` (default): exact up to
        :data:`EXACT_MEDIAN_MAX_CELLS` (200,000) cells in all, tdigest above. On the real PBMC files the
        sketch's median relative error is given in ``docs/distributed.md`` (benchmarks/median_sketch.py).

    Returns
    -------
    GeneVocab
        Special tokens first (ids 0..), then genes in sorted id order.

    Raises
    ------
    ConfigError
        Unknown ``medians``, AnnData sources with a ``client``, ``rows_per_task < 1``.
    GeneIdError, MissingFileError, CorruptFileError
        A file's gene ids, path or content (checked for every file before any task runs).
    InputDataError
        No gene detected in ``min_cells`` cells.
    """
    from .cluster import row_tasks, run_tasks

    if medians not in MEDIAN_MODES:
        raise ConfigError(f"medians must be one of {', '.join(MEDIAN_MODES)}, got {medians!r}")
    if isinstance(sources, (str, Path)) or not isinstance(sources, Iterable):
        sources = [sources]
    sources = list(sources)
    if client is not None and not all(isinstance(s, (str, os.PathLike)) for s in sources):
        raise ConfigError("building a vocabulary on Dask needs file paths (the workers open the files); write the "
                          "AnnData to .h5ad first, or build it without a client")
    gene_names, tasks, n_cells = [], [], 0
    for f, source in enumerate(sources):  # every file checked before a task runs
        with open_counts(source, layer) as src:
            gene_names.append(_median_genes(src.var, gene_id_column, src.name)[0])
            tasks += [(f, source, a, b) for a, b in row_tasks(src.n_obs, rows_per_task, chunk_size)]
            n_cells += src.n_obs
    if medians == "auto":
        medians = "exact" if n_cells <= EXACT_MEDIAN_MAX_CELLS else "tdigest"
        (log.warning if medians == "tdigest" else log.info)(
            "gene medians: %s (%d cells; exact up to %d)%s", medians, n_cells, EXACT_MEDIAN_MAX_CELLS,
            "; sketched medians reorder genes of equal count in most cells (docs/distributed.md): pass "
            "medians='exact' (CLI --medians exact) for exact ones" if medians == "tdigest" else "")
    settings = {"layer": layer, "gene_id_column": gene_id_column, "chunk_size": chunk_size,
                "target_sum": target_sum, "sketch": medians == "tdigest", "compression": float(compression)}
    results = run_tasks(_median_task, [t[1:] for t in tasks], client, shared=settings, desc="gene medians")
    per_gene: dict = {}  # gene -> its digest (merged as tasks come, in task order) or its values
    for (f, *_), (genes, values) in zip(tasks, results):
        if medians == "exact":
            values = np.split(values[0], values[1]) if genes.size else []
        for gi, vals in zip(genes, values):
            gene = gene_names[f][gi]
            if gene not in per_gene:
                per_gene[gene] = vals if medians == "tdigest" else [vals]
            elif medians == "tdigest":
                per_gene[gene].merge(vals)
            else:
                per_gene[gene].append(vals)
    result = {}
    for gene, acc in per_gene.items():
        if medians == "tdigest":
            if acc.size() >= min_cells:
                result[gene] = float(acc.quantile(0.5))
        else:
            vals = np.concatenate(acc)
            if vals.size >= min_cells:
                result[gene] = float(np.median(vals))
    if not result:
        raise InputDataError(f"no gene is detected in at least min_cells={min_cells} cells")
    log.info("built vocabulary '%s': %d genes (%s medians)", name, len(result), medians)
    return GeneVocab.from_medians(result, special_tokens=special_tokens, name=name)


def select_gene_ids(var: pd.DataFrame, gene_id_column: str | None = "auto", name: str = "data",
                    notes: bool = True) -> np.ndarray:
    """Gene ids of a var table as an object array (None where missing).

    ``gene_id_column``: ``None`` = var index; a column name; or ``"auto"``: the var index if it
    looks like Ensembl ids, else the first of ``ensembl_id``, ``gene_ids``, ``gene_id``,
    ``feature_id`` present, else the var index (symbols, to be mapped by the vocabulary); the
    choice is logged unless ``notes=False``. Raises :class:`GeneIdError` for a column var lacks.
    """
    if gene_id_column == "auto":
        if looks_like_ensembl(var.index):
            ids = var.index
        else:
            found = next((c for c in _ID_COLUMNS if c in var.columns), None)
            if found is not None and notes:
                log.info("%s: var index is not Ensembl ids; using var[%r]", name, found)
            ids = var[found] if found else var.index
    elif gene_id_column is None:
        ids = var.index
    else:
        if gene_id_column not in var.columns:
            raise GeneIdError(f"{name}: var has no column {gene_id_column!r}; columns are {list(var.columns)}")
        ids = var[gene_id_column]
    return np.array([None if pd.isna(i) else str(i) for i in ids], dtype=object)
