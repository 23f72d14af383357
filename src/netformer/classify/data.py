"""Tokenized cells beside their counts: alignment, cell labels and gene labels mapped onto a dictionary.

(Which dictionary the cells were tokenized with is checked by :func:`netformer.genes.resolve_vocab`.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, GeneIdError, InputDataError
from ..genes import GeneVocab, symbol_to_ensembl

log = logging.getLogger(__name__)


@dataclass
class CellData:
    """A tokenized dataset and the raw counts of the same cells, row-aligned.

    ``dataset`` (``datasets.Dataset`` with ``input_ids``, ``length``, ``cell_id`` and obs columns)
    and ``adata`` (AnnData of raw counts) hold the same cells in the same order, so the model and the
    baseline always see identical cells. ``adata`` is None for tokenized cells given without their
    counts (:func:`load_cells`): such data can be fitted, not evaluated beside a baseline.
    """

    dataset: object
    adata: object

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, idx: Sequence[int]) -> "CellData":
        """The cells at positions ``idx`` (counts too, when present)."""
        idx = np.asarray(idx, dtype=int)
        return CellData(self.dataset.select(idx.tolist()), self.adata[idx].copy() if self.adata is not None else None)


def tokenize_cells(source, vocab, max_length: int = 2048, obs_columns: Sequence[str] = (),
                   n_cells: int | None = None, seed: int = 0) -> CellData:
    """Tokenize an ``.h5ad`` path or AnnData with ``vocab`` and keep its counts aligned.

    Cell names are made unique first (``obs_names_make_unique``) so cells can be matched by id.
    ``n_cells``: optional random subsample (seeded) taken before tokenization.
    """
    import anndata as ad

    from ..tokenize import TranscriptomeTokenizer

    adata = ad.read_h5ad(source) if isinstance(source, (str, Path)) else source.copy()
    adata.obs_names_make_unique()
    if n_cells is not None and n_cells < adata.n_obs:
        rng = np.random.default_rng(seed)
        adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
    cols = [c for c in obs_columns if c in adata.obs.columns]
    missing = set(obs_columns) - set(cols)
    if missing:
        raise InputDataError(f"obs has no column(s) {sorted(missing)}; columns are {list(adata.obs.columns)}")
    ds = TranscriptomeTokenizer(vocab, model_input_size=max_length, obs_columns=cols).tokenize(adata)
    return CellData(ds, align_counts(ds, adata))


def align_counts(dataset, adata):
    """``adata`` rows reordered (and subset) to the dataset's ``cell_id`` column.

    Raises :class:`InputDataError` if the dataset has no ``cell_id`` column, the cell names of
    ``adata`` are not unique, or a tokenized cell is absent from ``adata``.
    """
    if "cell_id" not in dataset.column_names:
        raise InputDataError("the tokenized dataset has no cell_id column; re-tokenize with netformer.tokenize")
    if not adata.obs_names.is_unique:
        raise InputDataError("the count matrix has duplicate cell names; call adata.obs_names_make_unique() "
                             "before tokenizing so cells can be matched")
    ids = pd.Index(dataset["cell_id"])
    pos = adata.obs_names.get_indexer(ids)
    if (pos < 0).any():
        raise InputDataError(f"{int((pos < 0).sum())} tokenized cells (e.g. {list(ids[pos < 0][:3])}) are not in "
                             "the count matrix; pass the AnnData the dataset was tokenized from")
    return adata[pos].copy()


def get_labels(dataset, labels) -> np.ndarray:
    """Labels as an object array: ``labels`` is a dataset column name or a sequence of length n."""
    if isinstance(labels, str):
        if labels not in dataset.column_names:
            raise InputDataError(f"the dataset has no column {labels!r}; columns are {dataset.column_names} "
                                 "(tokenize with obs_columns=[...] to keep it)")
        values = dataset[labels]
    else:
        values = list(labels)
        if len(values) != len(dataset):
            raise InputDataError(f"{len(values)} labels for {len(dataset)} cells")
    return np.array([None if (v is None or (isinstance(v, float) and np.isnan(v))) else v for v in values],
                    dtype=object)


def resolve_gene_labels(gene_labels: Mapping[str, str] | pd.Series, vocab: GeneVocab, on_missing: str = "drop",
                        species: str = "human") -> dict[str, str]:
    """Map user gene labels (keys: Ensembl ids or symbols) onto the vocabulary's gene ids.

    Keys are looked up as vocabulary ids, then through the vocabulary's Ensembl mapping, then as
    symbols through GENCODE (:func:`netformer.genes.symbol_to_ensembl`). Missing labels (None/NaN)
    are dropped.

    Parameters
    ----------
    on_missing
        ``"drop"`` (log how many genes are not in the dictionary, with examples, and drop them)
        or ``"raise"``.

    Raises
    ------
    GeneIdError
        ``on_missing="raise"`` and some genes are not in the dictionary, or no gene is.
    """
    if on_missing not in ("drop", "raise"):
        raise ConfigError("on_missing must be 'drop' or 'raise'")
    items = [(str(k), v) for k, v in dict(gene_labels).items() if v is not None and not pd.isna(v)]
    keys = [k for k, _ in items]
    mapped = list(vocab.map_ids(keys))
    todo = [i for i, m in enumerate(mapped) if m is None]
    if todo:
        ens = symbol_to_ensembl([keys[i] for i in todo], species=species).tolist()
        for i, e in zip(todo, ens):
            if e is not None and e in vocab.token_dict:
                mapped[i] = e
    out, missing = {}, []
    for (k, v), m in zip(items, mapped):
        if m is None:
            missing.append(k)
        else:
            out[m] = str(v)
    if missing:
        msg = (f"{len(missing)} of {len(items)} labelled genes are not in the token dictionary "
               f"'{vocab.name}' (e.g. {missing[:5]})")
        if on_missing == "raise" or not out:
            raise GeneIdError(msg + "; label genes of the model's vocabulary (GeneVocab.genes), or pass "
                              "on_missing='drop' to skip them")
        log.warning("%s; they are dropped", msg)
    return out


def load_cells(source, vocab: GeneVocab, *, counts=None, max_length: int = 2048, obs_columns: Sequence[str] = (),
               n_cells: int | None = None, seed: int = 0, drop_missing: Sequence[str] = ()) -> CellData:
    """Cells for fine-tuning from raw counts or from a tokenized folder, with the counts the baseline needs.

    Parameters
    ----------
    source
        An ``.h5ad`` file (or AnnData) of raw counts, tokenized here with ``vocab`` and ``max_length``
        (:func:`tokenize_cells`); or a tokenized dataset directory written by ``netformer tokenize``
        (its dictionary is checked against the model by :func:`netformer.genes.resolve_vocab`, not here).
    vocab
        The model's dictionary (used to tokenize raw counts).
    counts
        For a tokenized folder: the ``.h5ad`` (or AnnData) of raw counts the cells were tokenized from,
        aligned by ``cell_id`` (:func:`align_counts`); None leaves ``CellData.adata`` None.
    obs_columns
        Columns the cells must carry (labels, groups).
    n_cells, seed
        Optional random subsample (seeded), drawn before tokenization.
    drop_missing
        Columns whose missing values (None/NaN) drop the cell (the count is logged).

    Raises
    ------
    InputDataError
        A column is missing, a tokenized cell is absent from ``counts``, or no cell is left.
    CorruptFileError
        The tokenized folder cannot be read.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        import anndata as ad

        from ..tokenize import load_tokenized

        ds = load_tokenized(source)
        missing = [c for c in obs_columns if c not in ds.column_names]
        if missing:
            raise InputDataError(f"the tokenized cells in {source} have no column(s) {missing}; columns are "
                                 f"{ds.column_names} (tokenize with --obs-column to keep them)")
        if n_cells is not None and n_cells < len(ds):
            rng = np.random.default_rng(seed)
            ds = ds.select(np.sort(rng.choice(len(ds), n_cells, replace=False)).tolist())
        adata = None
        if counts is not None:
            adata = ad.read_h5ad(counts) if isinstance(counts, (str, Path)) else counts.copy()
            adata.obs_names_make_unique()
            adata = align_counts(ds, adata)
        data = CellData(ds, adata)
    else:
        if counts is not None:
            raise ConfigError(f"counts are only needed beside a tokenized folder; {source} already holds the raw "
                              "counts (drop --counts)")
        data = tokenize_cells(source, vocab, max_length=max_length, obs_columns=obs_columns, n_cells=n_cells,
                              seed=seed)
    for column in drop_missing:
        keep = np.flatnonzero([v is not None for v in get_labels(data.dataset, column)])
        if len(keep) < len(data):
            log.info("dropping %d cells without a %r value", len(data) - len(keep), column)
            data = data.subset(keep)
    if len(data) == 0:
        raise InputDataError(f"no cell is left in {source}")
    return data


def read_gene_labels(path: str | Path) -> dict[str, str]:
    """Gene labels from a two-column table ``gene,label`` (CSV, or TSV for ``.tsv``/``.tsv.gz``).

    The first column holds genes (Ensembl ids or symbols; :func:`resolve_gene_labels` maps them onto a
    dictionary), the second their class; a header row is expected. Returns ``{gene: label}``.

    Raises
    ------
    InputDataError
        The file does not exist, is empty, or has fewer than two columns.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"gene label file {path} does not exist; give a CSV with columns gene,label")
    sep = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","
    try:
        table = pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        raise InputDataError(f"gene label file {path} is empty; give a CSV with columns gene,label") from None
    if table.shape[1] < 2 or table.empty:
        raise InputDataError(f"{path} needs two columns, gene and label, and at least one row "
                             f"(columns: {list(table.columns)})")
    return dict(zip(table.iloc[:, 0].astype(str), table.iloc[:, 1].astype(str)))
