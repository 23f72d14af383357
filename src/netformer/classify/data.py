"""Tokenized cells beside their counts: alignment, labels and vocabulary checks."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DictionaryError, InputDataError

log = logging.getLogger(__name__)


@dataclass
class CellData:
    """A tokenized dataset and the raw counts of the same cells, row-aligned.

    ``dataset`` (``datasets.Dataset`` with ``input_ids``, ``length``, ``cell_id`` and obs columns)
    and ``adata`` (AnnData of raw counts) hold the same cells in the same order, so the model and the
    baseline always see identical cells.
    """

    dataset: object
    adata: object

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, idx: Sequence[int]) -> "CellData":
        idx = np.asarray(idx, dtype=int)
        return CellData(self.dataset.select(idx.tolist()), self.adata[idx].copy())


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


def check_vocab(dataset, vocab_size: int, model_vocab=None, dataset_dir: str | Path | None = None) -> None:
    """Raise :class:`DictionaryError` when the data were tokenized with another vocabulary.

    Checks that every token id is below the model's ``vocab_size`` and, when the dataset directory
    holds ``netformer_tokenizer.json``, that its vocabulary size and name match the model's.
    """
    if dataset_dir is not None and model_vocab is not None:
        info_path = Path(dataset_dir) / "netformer_tokenizer.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            if info.get("vocab_size") != model_vocab.vocab_size or info.get("vocab") != model_vocab.name:
                raise DictionaryError(
                    f"{dataset_dir} was tokenized with vocabulary {info.get('vocab')!r} ({info.get('vocab_size')} tokens) "
                    f"but the model uses {model_vocab.name!r} ({model_vocab.vocab_size} tokens); re-tokenize with "
                    "the model's vocabulary (netformer.model.load_vocab_for(model_dir))"
                )
    top = -1
    for i in range(0, len(dataset), 4096):
        chunk = dataset[i: i + 4096]["input_ids"]
        top = max(top, max((max(s) for s in chunk if len(s)), default=-1))
    if top >= vocab_size:
        raise DictionaryError(
            f"the dataset holds token id {top} but the model's vocabulary has {vocab_size} tokens; "
            "tokenize with the dictionary the model was trained on"
        )
