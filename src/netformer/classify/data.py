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
    symbols through GENCODE (:func:`netformer.genes.symbol_to_ensembl`); how many keys were symbols
    is logged. Missing labels (None/NaN) are dropped. Two keys that map to one gene (a symbol and its
    Ensembl id, or two aliases) keep the gene once when they agree; when their classes differ the gene
    is dropped, with a warning naming the count (never a silent choice of one class).

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
    n_symbols = 0
    if todo:
        ens = symbol_to_ensembl([keys[i] for i in todo], species=species).tolist()
        for i, e in zip(todo, ens):
            if e is not None and e in vocab.token_dict:
                mapped[i] = e
                n_symbols += 1
    if n_symbols:
        log.info("%d of %d labelled genes were given as symbols and mapped to Ensembl ids through GENCODE",
                 n_symbols, len(items))
    sets: dict[str, list[str]] = {}
    missing = []
    for (k, v), m in zip(items, mapped):
        if m is None:
            missing.append(k)
        else:
            sets.setdefault(str(v), []).append(m)
    if missing:
        msg = (f"{len(missing)} of {len(items)} labelled genes are not in the token dictionary "
               f"'{vocab.name}' (e.g. {missing[:5]})")
        if on_missing == "raise" or not sets:
            raise GeneIdError(msg + "; label genes of the model's vocabulary (GeneVocab.genes), or pass "
                              "on_missing='drop' to skip them")
        log.warning("%s; they are dropped", msg)
    return gene_labels_from_sets(sets, what="mapped gene labels", quiet_duplicates=True)[0]


def gene_labels_from_sets(sets: Mapping[str, Sequence[str]], what: str = "gene labels",
                          quiet_duplicates: bool = False) -> tuple[dict[str, str], dict[str, int]]:
    """One class per gene from gene lists per class, de-duplicated; genes in two classes are dropped.

    Parameters
    ----------
    sets
        Class -> genes of that class (ids or symbols; order kept). Empty entries and NaN are ignored.
    what
        How the labels are named in the log lines.

    Returns
    -------
    ``(labels, counts)``: ``{gene: class}`` in first-seen order, and ``counts`` with ``listed`` (entries
    read), ``duplicates`` (repeated entries of a gene in one class, kept once), ``in_two_classes`` (genes
    listed under more than one class, dropped: their label is ambiguous) and ``kept``. Duplicates are
    logged at INFO, genes in two classes at WARNING with examples.
    """
    seen: dict[str, set[str]] = {}
    listed = duplicates = 0
    for cls, genes in sets.items():
        for g in genes:
            if g is None or (isinstance(g, float) and np.isnan(g)) or not str(g).strip():
                continue
            g = str(g).strip()
            listed += 1
            classes = seen.setdefault(g, set())
            duplicates += cls in classes
            classes.add(str(cls))
    two = [g for g, c in seen.items() if len(c) > 1]
    labels = {g: next(iter(c)) for g, c in seen.items() if len(c) == 1}
    if duplicates and not quiet_duplicates:
        log.info("%s: %d repeated entries of a gene within its class, each gene kept once", what, duplicates)
    if two:
        log.warning("%s: %d genes are listed under two or more classes (e.g. %s) and are dropped", what, len(two),
                    two[:5])
    return labels, {"listed": listed, "duplicates": duplicates, "in_two_classes": len(two), "kept": len(labels)}


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


_GENE_HEADERS = {"gene", "genes", "gene_id", "gene_ids", "ensembl_id", "ensembl", "symbol", "gene_symbol",
                 "gene_name", "feature_id", "id"}


def read_gene_labels(path: str | Path, return_counts: bool = False):
    """Gene labels from a table, in either of two documented layouts (CSV, or TSV for ``.tsv``/``.tsv.gz``).

    - **long**: a header row, genes in the first column, their class in the second (``gene,label``);
      recognised by a first column named like a gene column (``gene``, ``gene_id``, ``ensembl_id``,
      ``symbol``, ...), a second column named ``label`` or ``class``, or a second column with repeated
      values;
    - **wide**: one column per class, headed by the class name, each holding that class's genes
      (columns may differ in length; Geneformer's ``dosage_sens_tf_labels.csv`` layout); recognised by
      every column holding distinct values.

    Genes are Ensembl ids or symbols (:func:`resolve_gene_labels` maps them onto a dictionary). Repeated
    entries are kept once and genes under two classes are dropped, both logged with counts
    (:func:`gene_labels_from_sets`).

    Returns ``{gene: label}``, or ``(labels, counts)`` with ``return_counts``.

    Raises
    ------
    InputDataError
        The file does not exist, is empty, has fewer than two columns, or no gene is left.
    """
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"gene label file {path} does not exist; give a CSV with columns gene,label")
    sep = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str)
    except pd.errors.EmptyDataError:
        raise InputDataError(f"gene label file {path} is empty; give a CSV with columns gene,label") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputDataError(f"gene label file {path} is not a readable CSV/TSV table ({str(e).splitlines()[0]})") from None
    if table.shape[1] < 2 or table.empty:
        raise InputDataError(f"{path} needs two columns, gene and label, and at least one row "
                             f"(columns: {list(table.columns)})")
    if _is_wide(table):
        sets = {str(c): table[c].dropna().tolist() for c in table.columns}
    else:
        genes, classes = table.iloc[:, 0], table.iloc[:, 1]
        sets = {}
        for g, c in zip(genes, classes):
            if isinstance(c, str) and c.strip():
                sets.setdefault(c.strip(), []).append(g)
    labels, counts = gene_labels_from_sets(sets, what=path.name)
    if not labels:
        raise InputDataError(f"{path} leaves no labelled gene (every gene is in two classes, or no label is given)")
    return (labels, counts) if return_counts else labels


def _is_wide(table: pd.DataFrame) -> bool:
    """True for one column per class (every column's values distinct), False for ``gene,label`` rows."""
    if (str(table.columns[0]).strip().lower() in _GENE_HEADERS
            or str(table.columns[1]).strip().lower() in {"label", "labels", "class", "category"}):
        return False
    return all(table[c].dropna().is_unique for c in table.columns) and len(table) > 1
