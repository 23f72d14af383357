"""Cell and gene embeddings from a BERT encoder over rank value encodings (Geneformer ``EmbExtractor``).

- Cell embedding: mean of the hidden states over the gene tokens (``<cls>``, ``<eos>`` and padding
  excluded) at a chosen layer, or the ``<cls>`` hidden state.
- Gene embedding: the contextual hidden state of a gene's token, averaged over the cells in which
  the gene occurs.

Layers are counted as in ``output_hidden_states``: ``layer=-1`` is the last encoder layer,
``layer=-2`` (default) the second to last, which is upstream's default (``emb_layer=-1`` there).
Only the layers up to the one requested are run.

Speed: cells are sorted by length and batched so that padding is minimal, attention runs through
PyTorch's scaled-dot-product kernels (``attn_implementation="sdpa"``), and inference runs under
``torch.inference_mode``; on CUDA, ``dtype=torch.bfloat16`` halves memory and time.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, DictionaryError, InputDataError
from .model import get_device

log = logging.getLogger(__name__)


@dataclass
class EmbeddingConfig:
    """Settings of embedding extraction.

    Attributes
    ----------
    layer
        Hidden-state index (``-1`` last layer, ``-2`` second to last (default), ``0`` token
        embeddings).
    pooling
        ``"mean"`` over gene tokens or ``"cls"`` (needs ``<cls>`` at position 0).
    batch_size
        Cells per forward pass.
    max_length
        Truncate cells to this many tokens (default: the model's ``max_position_embeddings``).
    device
        Default: CUDA when available, else CPU.
    dtype
        Autocast dtype on CUDA (e.g. ``torch.bfloat16``); ignored on CPU.
    """

    layer: int = -2
    pooling: str = "mean"
    batch_size: int = 32
    max_length: int | None = None
    device: str | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ConfigError("pooling must be 'mean' or 'cls'")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be positive")


def _base(model):
    """The ``BertModel`` inside any Bert head model."""
    return getattr(model, "bert", model)


@contextlib.contextmanager
def truncated_encoder(model, layer: int) -> Iterator[int]:
    """Temporarily drop the encoder layers after ``layer`` (hidden-state index); yields the
    number of layers kept."""
    base = _base(model)
    layers = base.encoder.layer
    n = len(layers)
    keep = layer if layer >= 0 else n + 1 + layer
    if not 0 <= keep <= n:
        raise ConfigError(f"layer {layer} is out of range for a model with {n} layers")
    base.encoder.layer = torch.nn.ModuleList(list(layers)[:keep])
    try:
        yield keep
    finally:
        base.encoder.layer = layers


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` long tensors of shape
    (batch, min(longest, max_length))."""
    width = min(max(len(s) for s in seqs), max_length)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:width]
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first) to minimise padding."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def _check_vocab(model, dataset) -> None:
    vocab_size = _base(model).config.vocab_size
    sample = dataset.select(range(min(len(dataset), 256)))["input_ids"]
    top = max((max(s) for s in sample if len(s)), default=0)
    if top >= vocab_size:
        raise DictionaryError(
            f"the dataset holds token id {top} but the model's vocabulary has {vocab_size} tokens; "
            "tokenize with the dictionary the model was trained on"
        )


def _special_ids(model, special_ids: Sequence[int] | None) -> list[int]:
    if special_ids is not None:
        return list(special_ids)
    pad = _base(model).config.pad_token_id or 0
    return [pad]


def iter_hidden(
    model,
    input_ids: Sequence[Sequence[int]],
    config: EmbeddingConfig | None = None,
    desc: str = "embedding",
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the encoder over cells in length-sorted batches.

    Yields ``(indices, hidden, input_ids, attention_mask)`` per batch, where ``hidden`` is the
    (batch, length, hidden) state at ``config.layer`` on the model's device, and ``indices`` the
    positions of the batch's cells in ``input_ids``.
    """
    cfg = config or EmbeddingConfig()
    base = _base(model)
    device = get_device(cfg.device)
    base.to(device).eval()
    max_len = cfg.max_length or base.config.max_position_embeddings
    pad = base.config.pad_token_id or 0
    lengths = [len(s) for s in input_ids]
    if any(n == 0 for n in lengths):
        raise InputDataError("some cells have no tokens; re-tokenize (empty cells are skipped there)")
    autocast = (
        torch.autocast(device_type="cuda", dtype=cfg.dtype)
        if cfg.dtype is not None and device.type == "cuda"
        else contextlib.nullcontext()
    )
    batches = length_sorted_batches(lengths, cfg.batch_size)
    with torch.inference_mode(), truncated_encoder(base, cfg.layer), autocast:
        for idx in tqdm(batches, desc=desc, unit="batch", disable=None, leave=False):
            ids, mask = pad_batch([input_ids[i] for i in idx], pad, max_len)
            ids, mask = ids.to(device), mask.to(device)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            yield idx, hidden.float(), ids, mask


def embed_cells(
    model,
    dataset,
    config: EmbeddingConfig | None = None,
    special_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Cell embeddings, shape (n_cells, hidden_size), float32, in dataset order.

    Parameters
    ----------
    model
        A ``BertModel`` or any Bert head model (its encoder is used).
    dataset
        A tokenized :class:`datasets.Dataset` (``input_ids`` column) or a list of token id lists.
    special_ids
        Token ids excluded from mean pooling besides padding (default: the pad id; pass
        ``vocab.special_ids`` to also exclude ``<cls>``/``<eos>``).

    Raises
    ------
    DictionaryError
        If the dataset holds token ids beyond the model's vocabulary.
    """
    cfg = config or EmbeddingConfig()
    ids = dataset["input_ids"] if hasattr(dataset, "column_names") else list(dataset)
    if hasattr(dataset, "column_names"):
        _check_vocab(model, dataset)
    hidden_size = _base(model).config.hidden_size
    out = np.zeros((len(ids), hidden_size), dtype=np.float32)
    special = torch.tensor(_special_ids(model, special_ids))
    for idx, hidden, tok, mask in iter_hidden(model, ids, cfg):
        if cfg.pooling == "cls":
            emb = hidden[:, 0]
        else:
            keep = mask.bool() & ~torch.isin(tok, special.to(tok.device))
            w = keep.unsqueeze(-1).float()
            emb = (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)
        out[idx] = emb.cpu().numpy()
    return out


def embed_genes(
    model,
    dataset,
    config: EmbeddingConfig | None = None,
    special_ids: Sequence[int] | None = None,
    vocab=None,
) -> pd.DataFrame:
    """Gene embeddings: each token's contextual hidden state averaged over cells.

    Returns a DataFrame indexed by token id (or gene id when ``vocab`` is given) with columns
    ``n_cells`` and ``dim_0 .. dim_{hidden-1}``, for every token that occurs in the data.
    """
    cfg = config or EmbeddingConfig()
    base = _base(model)
    ids = dataset["input_ids"] if hasattr(dataset, "column_names") else list(dataset)
    device = get_device(cfg.device)
    sums = torch.zeros((base.config.vocab_size, base.config.hidden_size), dtype=torch.float64, device=device)
    counts = torch.zeros(base.config.vocab_size, dtype=torch.float64, device=device)
    special = torch.tensor(_special_ids(model, special_ids), device=device)
    for _, hidden, tok, mask in iter_hidden(model, ids, cfg, desc="gene embeddings"):
        keep = mask.bool() & ~torch.isin(tok, special)
        sums.index_add_(0, tok[keep], hidden[keep].double())
        counts.index_add_(0, tok[keep], torch.ones(int(keep.sum()), dtype=torch.float64, device=device))
    present = torch.nonzero(counts > 0).flatten()
    emb = (sums[present] / counts[present, None]).float().cpu().numpy()
    index = present.cpu().numpy()
    if vocab is not None:
        index = [vocab.token_to_gene(t) for t in index]
    df = pd.DataFrame(emb, index=pd.Index(index, name="gene"), columns=[f"dim_{i}" for i in range(emb.shape[1])])
    df.insert(0, "n_cells", counts[present].cpu().numpy().astype(int))
    return df


def knn_accuracy(emb: np.ndarray, labels: Sequence, k: int = 10, n_splits: int = 5, seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour label accuracy of an embedding (cosine metric).

    A simple measure of how well an embedding separates known labels: 5-fold stratified CV of a
    ``KNeighborsClassifier(k, metric="cosine")``. Cells with missing labels are ignored.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = pd.Series(list(labels))
    ok = labels.notna().to_numpy()
    y = labels[ok].astype(str).to_numpy()
    counts = pd.Series(y).value_counts()
    n_splits = int(min(n_splits, counts.min())) if counts.min() >= 2 else 2
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(cross_val_score(clf, emb[ok], y, cv=cv).mean())


def pca_baseline(adata, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """The standard scanpy baseline embedding: 50 PCA components of log-normalised counts
    (``normalize_total(1e4)``, ``log1p``, top 2,000 highly variable genes, ``scale``, ``pca``)."""
    import scanpy as sc

    a = adata.copy()
    a.X = a.X.astype(np.float32)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=n_comps, random_state=seed)
    return a.obsm["X_pca"]


def umap_plot(
    emb: np.ndarray,
    labels: Sequence,
    path: str | Path,
    title: str = "cell embeddings",
    seed: int = 0,
    coords: np.ndarray | None = None,
) -> np.ndarray:
    """UMAP of an embedding coloured by ``labels``, written to a PNG; returns the 2-D coords."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._io import atomic_file

    if coords is None:
        import umap

        coords = umap.UMAP(n_neighbors=15, min_dist=0.3, metric="cosine", random_state=seed).fit_transform(emb)
    labels = pd.Series(list(labels)).astype(str).replace("nan", "unlabelled")
    fig, ax = plt.subplots(figsize=(7, 5.5))
    cats = sorted(labels.unique())
    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
    for i, c in enumerate(cats):
        m = (labels == c).to_numpy()
        ax.scatter(coords[m, 0], coords[m, 1], s=4, color=cmap(i % cmap.N), label=f"{c} ({m.sum()})")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return coords
