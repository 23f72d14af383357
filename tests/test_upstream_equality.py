"""Equality with upstream Geneformer, as tests (issue 10, item 7).

Checkpoints in upstream's exact format are built from the REAL upstream configurations
(``../shared/data/models/geneformer_configs``: ``Geneformer-V1-10M`` and ``Geneformer-V2-104M``, only
``num_hidden_layers`` cut to 2 to stay fast): ``transformers.BertForMaskedLM(BertConfig(**config))``
with random weights, saved with ``save_pretrained`` and WITHOUT a dictionary beside them, as Geneformer
publishes its checkpoints. Real pbmc3k cells are tokenized with Geneformer's own dictionaries: V1 with
gc30M at upstream's input size 2,048 (the cells with the most genes are truncated there), V2 with
gc104M at input size 1,024 instead of upstream's 4,096, to keep the V2 forward passes fast (the rule
does not depend on the input size; the cells with more than 1,022 genes are truncated).

The reference (:func:`upstream_cell_embedding`) re-derives upstream's cell embedding rule
independently, in plain torch, one cell at a time (batch size 1, no padding), from
``geneformer/emb_extractor.py`` (``EmbExtractor``, ``get_embs``) and ``geneformer/perturber_utils.py``
(``load_model``, ``quant_layers``, ``mean_nonpadding_embs``):

- the model is the ``BertForMaskedLM`` loaded with ``output_hidden_states=True``, in eval mode;
- ``emb_layer=-1`` (upstream's default) means ``layer_to_quant = quant_layers(model) + emb_layer`` =
  ``n_layers - 1``: of the ``n_layers + 1`` hidden states that is the second to last,
  ``hidden_states[-2]``;
- ``emb_mode="cell"``: the mean of that state over the non-padding positions; when the dictionary holds
  ``<cls>`` (and ``<eos>``), upstream drops position 0 (``embs_i[:, 1:, :]``) and averages the first
  ``length - 2`` of the rest, i.e. ``<cls>`` and ``<eos>`` are left out (V2); V1 dictionaries have
  neither, and every position is averaged.

The netformer side never sees the dictionary through the checkpoint: the Python API gets it from the
tokenized dataset (which records it) or from ``vocab=``; the CLI from the tokenized folder's ``vocab/``.

That ``input_ids`` equal upstream's rank value encoding is tested in ``tests/test_tokenize.py``
(``test_v2_input_ids_equal_upstream``: gc104M, input 4,096, on 30 pbmc3k cells, against its
``upstream_reference``); :func:`test_v1_input_ids_equal_upstream_rank_value_encoding` adds the V1 case
(gc30M, input 2,048, truncation, no special tokens) on the very cells embedded here, with that same
reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from netformer.embed import EmbeddingConfig, embed_cells  # noqa: E402
from netformer.errors import DictionaryError  # noqa: E402
from netformer.genes import GeneVocab, model_vocab  # noqa: E402
from netformer.model import load_model  # noqa: E402
from netformer.tokenize import TranscriptomeTokenizer, load_tokenized  # noqa: E402

ATOL = 1e-5
N_LAYERS = 2  # the only change to upstream's configurations


# ------------------------------------------------------------------------------------------------
# the independent re-derivation of upstream's rule
# ------------------------------------------------------------------------------------------------
def upstream_cell_embedding(model, input_ids: list[int], has_cls_eos: bool) -> np.ndarray:
    """Upstream ``EmbExtractor`` (``emb_mode="cell"``, ``emb_layer=-1``) on one cell, in plain torch.

    ``model`` is a ``BertForMaskedLM`` loaded as upstream's ``perturber_utils.load_model`` does
    (``output_hidden_states=True``, eval mode). One cell, batch size 1, no padding: the attention mask
    is all ones and "the non-padding positions" are all positions. The hidden states are taken from
    the masked-LM model's BERT encoder (``model.bert``): the same ``hidden_states`` tuple the full
    ``BertForMaskedLM`` forward returns (the LM head does not touch them), without computing the
    20-25k-way logits.
    """
    ids = torch.tensor([input_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    hidden_states = out.hidden_states
    assert len(hidden_states) == model.config.num_hidden_layers + 1  # embeddings + one per layer
    layer_to_quant = model.config.num_hidden_layers + (-1)  # quant_layers(model) + emb_layer
    h = hidden_states[layer_to_quant][0]  # (length, hidden) == hidden_states[-2]
    length = len(input_ids)
    if has_cls_eos:
        h = h[1:]  # drop <cls>
        h = h[: length - 2]  # the first length - 2 positions of the rest: <eos> (last) is dropped
    else:
        h = h[:length]
    return h.mean(dim=0).numpy()


def _mean_with_special(model, input_ids: list[int]) -> np.ndarray:
    """A mean over ALL positions, <cls> and <eos> included (NOT upstream's V2 rule; a negative control)."""
    ids = torch.tensor([input_ids], dtype=torch.long)
    with torch.no_grad():
        h = model.bert(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]
    return h.mean(dim=0).numpy()


# ------------------------------------------------------------------------------------------------
# fixtures: upstream-format checkpoints, real cells, the reference embeddings
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str  # Geneformer-V1-10M / Geneformer-V2-104M
    checkpoint: Path  # config.json + model.safetensors only
    vocab: GeneVocab
    input_size: int
    cells: np.ndarray  # row indices into pbmc3k
    dataset: object  # datasets.Dataset tokenized in this process (records the dictionary's digest)
    folder: Path  # the same cells written by TranscriptomeTokenizer.write (carries vocab/)
    reference: np.ndarray  # upstream_cell_embedding per cell
    with_special: np.ndarray | None  # mean including <cls>/<eos> (V2 only)


CASES = {
    # name: (dictionary folder, input size used here, pbmc3k cells)
    "Geneformer-V1-10M": ("geneformer_gc30M", 2048, 20),
    "Geneformer-V2-104M": ("geneformer_gc104M", 1024, 10),
}


@pytest.fixture(scope="module")
def pbmc(scrna):
    return ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")


def _cells(adata: ad.AnnData, n: int) -> np.ndarray:
    """The 2 cells with the most expressed genes (3,422 and 3,315: truncated at both input sizes) and
    ``n - 2`` cells spread over the file, in file order."""
    n_genes = np.diff(adata.X.tocsr().indptr)
    top = np.argsort(-n_genes, kind="stable")[:2]
    spread = np.linspace(0, adata.n_obs - 1, n - 2).astype(int)
    return np.unique(np.r_[top, spread])


def upstream_checkpoint(shared_data: Path, name: str, path: Path) -> Path:
    """A random-weight checkpoint in upstream's exact format from upstream's real configuration."""
    config = json.loads((shared_data / "models" / "geneformer_configs" / f"{name}.config.json").read_text())
    config["num_hidden_layers"] = N_LAYERS
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**config))
    model.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    return path


@pytest.fixture(scope="module", params=list(CASES))
def case(request, shared_data, pbmc, tmp_path_factory) -> Case:
    name = request.param
    vocab_dir, input_size, n_cells = CASES[name]
    vocab = GeneVocab.from_geneformer(shared_data / "genes" / vocab_dir)
    tmp = tmp_path_factory.mktemp(name)
    checkpoint = upstream_checkpoint(shared_data, name, tmp / "checkpoint")
    assert model_vocab(checkpoint) is None  # no dictionary beside it (nor in a repository around it)
    cells = _cells(pbmc, n_cells)
    sub = pbmc[cells].copy()
    tokenizer = TranscriptomeTokenizer(vocab, model_input_size=input_size)
    dataset = tokenizer.tokenize(sub)
    assert len(dataset) == len(cells)
    folder = tmp / "tokenized"
    h5ad = tmp / "cells.h5ad"
    sub.write_h5ad(h5ad)
    TranscriptomeTokenizer(vocab, model_input_size=input_size).write([h5ad], folder)
    assert (folder / "vocab").is_dir()

    ref_model = transformers.BertForMaskedLM.from_pretrained(checkpoint, output_hidden_states=True,
                                                             attn_implementation="eager").eval()
    seqs = dataset["input_ids"]
    reference = np.stack([upstream_cell_embedding(ref_model, s, vocab.has_cls_eos) for s in seqs])
    with_special = np.stack([_mean_with_special(ref_model, s) for s in seqs]) if vocab.has_cls_eos else None
    return Case(name, checkpoint, vocab, input_size, cells, dataset, folder, reference, with_special)


# ------------------------------------------------------------------------------------------------
# the cells are what upstream's tokenizer gives
# ------------------------------------------------------------------------------------------------
def test_cells_are_upstream_rank_value_encodings(case):
    """The tokenized cells are upstream's shape: V1 2,048 genes at most and no special token; V2
    ``<cls>`` ... ``<eos>``, at most input size; the largest cells are truncated."""
    lengths = np.asarray(case.dataset["length"])
    assert lengths.max() == case.input_size  # the 2 largest cells fill the input
    for seq in case.dataset["input_ids"]:
        if case.vocab.has_cls_eos:
            assert seq[0] == case.vocab.cls_id and seq[-1] == case.vocab.eos_id
            assert case.vocab.cls_id not in seq[1:-1] and case.vocab.eos_id not in seq[1:-1]
        else:
            assert not set(seq) & set(case.vocab.special_ids)
        assert len(set(seq)) == len(seq)


def test_v1_input_ids_equal_upstream_rank_value_encoding(pbmc, v1):
    """V1 (gc30M, input 2,048, no special tokens): ``input_ids`` equal upstream's rank value encoding
    (``geneformer/tokenizer.py``: ``x = count / n_counts * 10,000 / median``, genes sorted by ``x``
    descending, the first 2,048 kept), re-derived by ``upstream_reference`` of ``tests/test_tokenize.py``
    (V2 is tested there). Upstream's ``argsort`` is unstable; ours breaks ties by ascending token id,
    also at the truncation boundary, which is the one documented difference."""
    from test_tokenize import upstream_reference

    cells = _cells(pbmc, CASES["Geneformer-V1-10M"][2])
    ours = TranscriptomeTokenizer(v1, model_input_size=2048).tokenize(pbmc[cells].copy())["input_ids"]
    full = upstream_reference(pbmc, v1, cells, input_size=10**6, special=False)  # not truncated
    n_truncated = 0
    for got, (seq, values) in zip(ours, full):
        order = sorted(range(len(seq)), key=lambda i: (-values[i], seq[i]))  # ties: ascending token id
        want = [int(seq[i]) for i in order][:2048]
        assert got == want
        n_truncated += len(seq) > 2048
        # and upstream's own (unstable) order agrees wherever values are not tied
        upstream = [int(t) for t in seq[:2048]]
        untied = [i for i in range(len(want)) if np.sum(values == values[i]) == 1]
        assert [got[i] for i in untied] == [upstream[i] for i in untied]
    assert n_truncated == 2


# ------------------------------------------------------------------------------------------------
# embeddings: Python API and CLI against the reference
# ------------------------------------------------------------------------------------------------
def test_python_api_equals_upstream_with_the_datasets_dictionary(case):
    """``embed_cells`` (layer -2, mean pooling: the defaults) on a checkpoint without a dictionary, the
    dictionary coming from the tokenized dataset, equals upstream's rule per cell to 1e-5."""
    model = load_model(case.checkpoint, device="cpu")
    emb = embed_cells(model, case.dataset, EmbeddingConfig(layer=-2, pooling="mean", batch_size=4, precision="fp32"))
    assert emb.shape == (len(case.cells), model.config.hidden_size)
    np.testing.assert_allclose(emb, case.reference, rtol=0, atol=ATOL)
    # the same from the folder written to disk (its vocab/), and with the other defaults
    emb_disk = embed_cells(model, load_tokenized(case.folder), EmbeddingConfig(precision="fp32"))
    np.testing.assert_allclose(emb_disk, case.reference, rtol=0, atol=ATOL)


def test_python_api_equals_upstream_with_vocab_argument(case):
    """Cells that record no dictionary (plain token lists) need ``vocab=``; with it the embedding equals
    upstream's rule, and without it a DictionaryError says what to pass."""
    model = load_model(case.checkpoint, device="cpu")
    seqs = [list(s) for s in case.dataset["input_ids"]][:4]
    emb = embed_cells(model, seqs, EmbeddingConfig(precision="fp32"), vocab=case.vocab)
    np.testing.assert_allclose(emb, case.reference[:4], rtol=0, atol=ATOL)
    with pytest.raises(DictionaryError, match="vocab"):
        embed_cells(model, seqs)


@pytest.mark.parametrize("case", ["Geneformer-V2-104M"], indirect=True)
def test_v2_excludes_cls_and_eos(case):
    """The V2 comparison can fail: a mean that includes ``<cls>`` and ``<eos>`` is far from netformer's
    (and upstream's) embedding, by far more than the tolerance."""
    assert case.vocab.has_cls_eos
    gap = np.abs(case.with_special - case.reference).max(axis=1)
    assert (gap > 100 * ATOL).all(), gap.min()


@pytest.mark.parametrize("suffix", [".parquet", ".h5ad"])
def test_cli_embed_equals_upstream(case, tmp_path, capsys, suffix):
    """``netformer embed CHECKPOINT TOKENIZED --out OUT`` on a checkpoint without a dictionary uses the
    dictionary of the tokenized folder and writes upstream's embeddings (to 1e-5), in cell order."""
    from netformer.cli import main

    out = tmp_path / f"cells{suffix}"
    with pytest.raises(SystemExit) as stop:
        main(["embed", str(case.checkpoint), str(case.folder), "--out", str(out), "--device", "cpu",
              "--precision", "fp32"])
    captured = capsys.readouterr()
    assert stop.value.code == 0, captured.err
    assert case.vocab.name in captured.err  # says which dictionary it used (the cells')
    if suffix == ".parquet":
        table = pd.read_parquet(out)
        emb = table.filter(like="dim_").to_numpy()
        assert table["length"].tolist() == case.dataset["length"]
    else:
        cells = ad.read_h5ad(out)
        emb = cells.obsm["X_netformer"]
        assert cells.obs_names.tolist() == case.dataset["cell_id"]
    np.testing.assert_allclose(emb, case.reference, rtol=0, atol=ATOL)
