"""The one encoder path: every model job (embed, pretrain, classify, perturb) runs cells through here.

- :func:`base_model`: the ``BertModel`` inside any Bert head model.
- :func:`truncated_encoder`: run only the layers up to a hidden-state index.
- :func:`length_sorted_batches`, :func:`pad_batch`: length-sorted batches with right padding.
- :func:`pool`: mean over gene tokens (special tokens and padding excluded) or the ``<cls>`` state.
- :func:`check_dataset`: the one dataset-vs-model check.
- :func:`encoder_and_dictionary`, :func:`load_encoder`: a model with its token dictionary (the one
  policy, :func:`netformer.genes.resolve_vocab`), checked against the model and the cells.
- :func:`default_device`, :func:`model_device`: the one device rule.
- :func:`iter_hidden`: hidden states of many cells in length-sorted batches.
- :func:`layer_forward`: one BERT encoder layer on the model's own weights, with key biases and,
  on request, its attention probabilities (which the SDPA kernel never returns).

Hidden-state layers are counted as in ``output_hidden_states``: ``0`` is the embedding layer's output,
``-1`` the last encoder layer, ``-2`` the second to last (upstream Geneformer's default,
``emb_layer=-1`` in ``EmbExtractor``).

Pooling follows upstream ``EmbExtractor``: the mean of the hidden states over the non-padding
positions, with ``<cls>`` and ``<eos>`` left out for dictionaries that have them (Geneformer V2); we
leave out every special token of the dictionary by id, which is the same set of positions on
tokenized cells (``<cls>`` first, ``<eos>`` last, no ``<mask>``).

Device rule: a loaded model is used where it is (its parameters' device) unless a device is given;
a model is moved only when a different device is asked for, and the move is logged. Models loaded
from a path go to :func:`default_device` (CUDA when available, else CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError, DictionaryError, InputDataError

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")


def base_model(model):
    """The ``BertModel`` inside any Bert head model (MLM, cell or gene classifier), or ``model`` itself."""
    return getattr(model, "bert", model)


# ------------------------------------------------------------------------------------------------
# device
# ------------------------------------------------------------------------------------------------
def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU (never hard-coded). A rank of a torchrun job
    asking for CUDA without an index gets its own GPU, ``LOCAL_RANK``."""
    from .distributed import world

    want = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    w = world()
    if want.type == "cuda" and want.index is None and w.distributed and torch.cuda.is_available():
        return torch.device("cuda", w.local_rank % torch.cuda.device_count())  # one GPU per rank: GPU LOCAL_RANK
    return want


def model_device(model, device: str | torch.device | None = None) -> torch.device:
    """The device a job runs ``model`` on: the model's own device unless ``device`` is given.

    When ``device`` differs from where the model is, the model is moved there and the move is
    logged (the caller's object is moved: the one case where a model changes device).
    """
    try:
        here = next(model.parameters()).device
    except StopIteration:
        here = torch.device("cpu")
    if device is None:
        return here
    want = default_device(device)  # "cuda" under torchrun: this rank's GPU
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    if want != here:
        log.info("moving the model from %s to %s", here, want)
        model.to(want)
    return want


# ------------------------------------------------------------------------------------------------
# layers, batches, pooling
# ------------------------------------------------------------------------------------------------
def n_kept_layers(model, layer: int) -> int:
    """Number of encoder layers that produce hidden-state index ``layer``; ConfigError if out of range."""
    n = len(base_model(model).encoder.layer)
    keep = layer if layer >= 0 else n + 1 + layer
    if not 0 <= keep <= n:
        raise ConfigError(f"layer {layer} is out of range for a model with {n} layers "
                          f"(use -{n + 1}..{n}; -1 is the last layer, -2 the second to last)")
    return keep


@contextlib.contextmanager
def truncated_encoder(model, layer: int) -> Iterator[int]:
    """Temporarily drop the encoder layers after hidden-state index ``layer``; yields the number kept.

    Raises :class:`ConfigError` if ``layer`` is out of range.
    """
    base = base_model(model)
    layers = base.encoder.layer
    keep = n_kept_layers(base, layer)
    base.encoder.layer = torch.nn.ModuleList(list(layers)[:keep])
    try:
        yield keep
    finally:
        base.encoder.layer = layers


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` long tensors of shape
    (batch, min(longest, max_length)); longer cells are truncated to ``max_length``."""
    width = min(max(len(s) for s in seqs), max_length)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:width]
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[i, : len(s)] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first, ties in input order) to
    minimise padding."""
    if batch_size < 1:
        raise ConfigError("batch_size must be positive")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def pool(hidden: torch.Tensor, ids: torch.Tensor, special: torch.Tensor, pooling: str = "mean",
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cell embeddings from hidden states: (B, L, H) -> (B, H).

    ``pooling="mean"``: mean over positions whose token is not in ``special`` (1-D tensor of token
    ids; pass the dictionary's special ids) and, with ``mask`` (B, L), not padding. ``"cls"``: the
    state at position 0 (``<cls>`` in V2 dictionaries).
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    keep = ~torch.isin(ids, special.to(ids.device))
    if mask is not None:
        keep &= mask.bool()
    return masked_mean(hidden, keep)


def masked_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (..., L, H) over the positions where ``keep`` (..., L; bool or 0/1 weights) is
    set: (..., H). The one mean-pooling formula (also differentiated through by the screen)."""
    w = keep.unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(-2) / w.sum(-2).clamp(min=1.0)


def special_tensor(vocab, device=None) -> torch.Tensor:
    """The dictionary's special token ids as a 1-D long tensor (for :func:`pool`)."""
    return torch.tensor(sorted(vocab.special_ids), dtype=torch.long, device=device)


def layer_forward(layer, x: torch.Tensor, key_bias: torch.Tensor,
                  return_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One Hugging Face ``BertLayer`` (post-LayerNorm, as in Geneformer) on its own weights, in eval mode.

    Parameters
    ----------
    layer
        A ``BertLayer`` (``model.encoder.layer[i]``).
    x
        (..., L, H) input hidden state of the layer (one cell (L, H) or a batch (B, L, H)).
    key_bias
        (..., L) additive bias on the attention logits of each key position (0 = present; a large
        negative number masks padding; ``log g`` gates a token as :func:`netformer.perturb.gated_forward`).
    return_attention
        Also return the attention probabilities, (..., heads, L, L) (query x key, rows sum to 1),
        ``softmax(q k^T / sqrt(d_head) + key_bias)``: what ``output_attentions=True`` gives with eager
        attention.

    Returns the (..., L, H) output state (and the probabilities). Dropout is not applied. Equals the
    model's own layer to float tolerance (tested in test_perturb and test_network).
    """
    att = layer.attention.self
    nh, hd = att.num_attention_heads, att.attention_head_size
    lead = x.shape[:-1]  # (..., L)
    q = att.query(x).view(*lead, nh, hd).transpose(-2, -3)  # (..., nh, L, hd)
    k = att.key(x).view(*lead, nh, hd).transpose(-2, -3)
    v = att.value(x).view(*lead, nh, hd).transpose(-2, -3)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + key_bias.unsqueeze(-2).unsqueeze(-2)
    probs = scores.softmax(-1)
    ctx = (probs @ v).transpose(-2, -3).reshape(*lead, nh * hd)
    a = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
    m = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(a))
    out = layer.output.LayerNorm(layer.output.dense(m) + a)
    return (out, probs) if return_attention else out


# ------------------------------------------------------------------------------------------------
# the one dataset check
# ------------------------------------------------------------------------------------------------
def input_ids_of(dataset) -> list:
    """``input_ids`` of a tokenized :class:`datasets.Dataset`, or the list of token id lists given."""
    if hasattr(dataset, "column_names"):
        if "input_ids" not in dataset.column_names:
            raise InputDataError("the dataset has no input_ids column; tokenize it with netformer tokenize first")
        return dataset["input_ids"]
    return list(dataset)


def encoder_and_dictionary(model, dataset=None, vocab=None):
    """``(base, vocab)``: the ``BertModel`` of a loaded ``model`` (:func:`base_model`) and its token
    dictionary by the one policy (:func:`netformer.genes.resolve_vocab`: the model's own, else
    ``vocab``, else the one ``dataset`` was tokenized with), checked against the encoder's
    ``vocab_size`` and pad id; with ``dataset``, its cells are checked too (:func:`check_dataset`).

    Raises
    ------
    DictionaryError
        No dictionary, or one that disagrees with the model or the cells.
    InputDataError
        As :func:`check_dataset`.
    """
    from .genes import resolve_vocab

    base = base_model(model)
    vocab = resolve_vocab(model, dataset, vocab, model_config={"vocab_size": base.config.vocab_size,
                                                              "pad_token_id": base.config.pad_token_id})
    if dataset is not None:
        check_dataset(dataset, base.config.vocab_size)
    return base, vocab


def load_encoder(model, dataset=None, vocab=None, device=None):
    """``(base, vocab, device)`` of a cell job: ``model`` (a loaded model, or a directory loaded with
    :func:`netformer.model.load_model` onto ``device``), its dictionary and checks as
    :func:`encoder_and_dictionary`, and the one device of the run (:func:`model_device`). Errors as
    :func:`netformer.model.load_model` and :func:`encoder_and_dictionary`."""
    import os

    if isinstance(model, (str, os.PathLike)):
        from .model import load_model

        model = load_model(model, kind="base", device=device)
    dev = model_device(base_model(model), device)
    base, vocab = encoder_and_dictionary(model, dataset, vocab)
    return base, vocab, dev


def check_dataset(dataset, vocab_size: int, what: str = "the dataset") -> None:
    """The one dataset-vs-model check, in bounded memory.

    Checks that there is at least one cell, that no cell is empty, and that every token id is below
    the model's ``vocab_size``. A :class:`datasets.Dataset` is scanned in Arrow batches (a corpus of
    millions of cells is never materialised as Python lists); a list of token id lists is checked
    as it is. (Which dictionary the cells were tokenized with is compared by content in
    :func:`netformer.genes.resolve_vocab`.)

    Raises
    ------
    InputDataError
        No cell, no ``input_ids`` column, or empty cells (named by index).
    DictionaryError
        A token id beyond the model's vocabulary.
    """
    if len(dataset) == 0:
        raise InputDataError(f"{what} holds no cell; tokenize cells with netformer tokenize first")
    empty, top = [], -1
    for start, lengths, batch_top in _token_stats(dataset):
        if (lengths == 0).any():
            empty += (start + np.flatnonzero(lengths == 0)).tolist()
        top = max(top, batch_top)
    if empty:
        raise InputDataError(f"{what} holds {len(empty)} cell(s) without tokens (e.g. index {empty[:5]}); "
                             "re-tokenize with netformer tokenize, which skips cells with no dictionary gene")
    if top >= vocab_size:
        raise DictionaryError(
            f"{what} holds token id {top} but the model's vocabulary has {vocab_size} tokens; "
            "tokenize the cells with the dictionary the model was trained on"
        )


def _token_stats(dataset, batch_size: int = 65_536):
    """Yield ``(first row, (n,) lengths, largest token id)`` per batch of cells."""
    if not hasattr(dataset, "column_names"):
        seqs = list(dataset)
        yield 0, np.array([len(s) for s in seqs]), max((max(s) for s in seqs if len(s)), default=-1)
        return
    if "input_ids" not in dataset.column_names:
        raise InputDataError("the dataset has no input_ids column; tokenize it with netformer tokenize first")
    import pyarrow.compute as pc

    arrow = dataset.select_columns(["input_ids"]).with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        col = arrow[start: start + batch_size]["input_ids"]
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        top = pc.max(pc.list_flatten(col)).as_py()
        yield start, lengths, -1 if top is None else int(top)


# ------------------------------------------------------------------------------------------------
# many cells through the encoder
# ------------------------------------------------------------------------------------------------
def iter_hidden(
    model,
    seqs: Sequence[Sequence[int]],
    layer: int = -2,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    desc: str = "embedding",
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the encoder, truncated at ``layer``, over cells in length-sorted batches.

    Yields ``(indices, hidden, input_ids, attention_mask)`` per batch: ``hidden`` is the
    (batch, length, hidden) float32 state at ``layer`` on the model's device, ``indices`` the positions
    of the batch's cells in ``seqs``. ``max_length`` defaults to the model's input size. ``precision``
    (``fp32``, ``bf16``, ``auto``; :func:`netformer.precision.resolve_precision`) runs a bfloat16 copy of
    the model for ``bf16`` (:func:`netformer.precision.inference_model`); ``hidden`` is float32 either way.
    Each forward pass runs without gradients on the truncated encoder; between batches the model is
    whole and grad mode is the caller's.
    """
    from .precision import inference_model, resolve_precision
    from .progress import progress

    base = base_model(model)
    dev = model_device(base, device)
    base = inference_model(base, resolve_precision(precision, dev))
    base.eval()
    max_len = min(max_length or base.config.max_position_embeddings, base.config.max_position_embeddings)
    pad = base.config.pad_token_id or 0
    n_kept_layers(base, layer)
    batches = length_sorted_batches([len(s) for s in seqs], batch_size)
    for idx in progress(batches, desc, unit="batch", logger=log):
        ids, mask = pad_batch([seqs[i] for i in idx], pad, max_len)
        ids, mask = ids.to(dev), mask.to(dev)
        # the contexts hold for the forward pass only: nothing leaks into the caller's loop body
        with torch.no_grad(), truncated_encoder(base, layer):
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        yield idx, hidden, ids, mask
