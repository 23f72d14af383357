"""Model presets, checkpoints, embeddings and pretraining on real cells."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from netformer.embed import EmbeddingConfig, embed_cells, embed_genes, knn_accuracy
from netformer.errors import ConfigError, DictionaryError, OutputExistsError
from netformer.genes import model_vocab
from netformer.model import PRESETS, load_model, model_config, new_model, save_model
from netformer.pretrain import PretrainConfig, pretrain


def test_presets_match_geneformer_shapes(shared_data):
    from netformer.genes import GeneVocab

    v1 = GeneVocab.from_geneformer(shared_data / "genes" / "geneformer_gc30M")
    cfg = model_config("geneformer-v1-10m", vocab=v1)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.max_position_embeddings, cfg.vocab_size, cfg.hidden_act) == (6, 256, 4, 512, 2048, 25426, "relu")
    n = sum(p.numel() for p in new_model(cfg).bert.encoder.parameters())
    assert 3e6 < n < 6e6  # encoder of the "10M" model (embeddings add 6.5M)
    assert PRESETS["geneformer-v2-104m"]["hidden_size"] == 768
    with pytest.raises(DictionaryError, match="vocab_size"):
        model_config("geneformer-v2-104m", vocab=v1)
    with pytest.raises(ConfigError):
        model_config("huge")


def test_pretraining_lowers_loss_and_embeddings_separate_cell_types(tiny_pretrained):
    hist = tiny_pretrained.result.loss_history
    first, last = hist[0]["loss"], min(h["loss"] for h in hist[-3:])
    assert first > 8.5  # close to ln(vocab) at the start
    assert last < first - 1.0, (first, last)
    model = load_model(tiny_pretrained.model_dir)
    ds = tiny_pretrained.pbmc
    emb = embed_cells(model, ds, EmbeddingConfig(batch_size=64))
    assert emb.shape == (len(ds), 64) and np.isfinite(emb).all()
    labels = pd.Series(ds["cell_type"]).replace("None", np.nan)
    acc = knn_accuracy(emb, labels)
    majority = labels.value_counts(normalize=True).iloc[0]
    assert acc > majority + 0.1, (acc, majority)  # measured: 0.58 vs 0.43 after 150 steps


def test_checkpoint_is_plain_huggingface(tiny_pretrained):
    cfg = json.loads((tiny_pretrained.model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["hidden_act"] == "relu"
    assert (tiny_pretrained.model_dir / "model.safetensors").exists()
    from transformers import BertForMaskedLM

    plain = BertForMaskedLM.from_pretrained(str(tiny_pretrained.model_dir))  # what upstream code does
    ours = load_model(tiny_pretrained.model_dir, kind="base")
    ids = torch.tensor([tiny_pretrained.pbmc[0]["input_ids"]])
    with torch.no_grad():
        a = plain.eval().bert(ids).last_hidden_state
        b = ours(ids).last_hidden_state
    torch.testing.assert_close(a, b)
    assert model_vocab(tiny_pretrained.model_dir).token_dict == tiny_pretrained.vocab.token_dict


def test_embeddings_do_not_depend_on_batching_and_skip_layers_exactly(tiny_pretrained):
    model = load_model(tiny_pretrained.model_dir, attn_implementation="eager")
    seqs = tiny_pretrained.pbmc.select(range(12))["input_ids"]
    seqs = [s[: 20 + 17 * i] for i, s in enumerate(seqs)]  # varied lengths -> padding in batches
    one = embed_cells(model, seqs, EmbeddingConfig(batch_size=1, precision="fp32"))
    many = embed_cells(model, seqs, EmbeddingConfig(batch_size=12, precision="fp32"))
    np.testing.assert_allclose(one, many, atol=2e-5)
    # truncating the encoder gives the same state as output_hidden_states of the full model
    ids = torch.tensor([seqs[5]])
    genes = ~torch.isin(ids[0], torch.tensor(tiny_pretrained.vocab.special_ids))  # <cls> is not pooled
    with torch.no_grad():
        full = model(ids, output_hidden_states=True).hidden_states[-2][0][genes].mean(0).numpy()
    np.testing.assert_allclose(embed_cells(model, [seqs[5]], EmbeddingConfig(layer=-2, precision="fp32"))[0], full,
                               atol=2e-5)
    cls = embed_cells(model, seqs, EmbeddingConfig(pooling="cls", layer=-1, precision="fp32"))
    with torch.no_grad():
        np.testing.assert_allclose(cls[5], model(ids).last_hidden_state[0, 0].numpy(), atol=2e-5)


def test_gene_embeddings(tiny_pretrained):
    model = load_model(tiny_pretrained.model_dir)
    ds = tiny_pretrained.pbmc.select(range(100))
    genes = embed_genes(model, ds)
    counts = pd.Series([t for s in ds["input_ids"] for t in s[1:-1]]).value_counts()
    assert len(genes) == len(counts)
    top = tiny_pretrained.vocab.token_to_gene(counts.index[0])
    assert genes.loc[top, "n_cells"] == counts.iloc[0]
    assert genes.filter(like="dim_").shape[1] == 64


def test_vocabulary_mismatch_is_caught(tiny_pretrained, shared_data):
    from netformer.genes import GeneVocab
    from netformer.tokenize import TranscriptomeTokenizer

    v1 = GeneVocab.from_geneformer(shared_data / "genes" / "geneformer_gc30M")
    ds = TranscriptomeTokenizer(v1, model_input_size=256).tokenize(shared_data / "scrna" / "cider_baron_pancreas_350cells_raw.h5ad")
    with pytest.raises(DictionaryError, match="vocabulary"):
        embed_cells(load_model(tiny_pretrained.model_dir), ds)


def test_pretraining_resumes_after_interruption(tiny_pretrained, tmp_path):
    ds = tiny_pretrained.kang.select(range(64)).select_columns(["input_ids", "length"])
    cfg = dict(preset="tiny", max_length=64, batch_size=8, warmup_steps=2, save_steps=4, logging_steps=2, seed=1)
    out = tmp_path / "run"
    pretrain(ds, tiny_pretrained.vocab, out, PretrainConfig(max_steps=4, **cfg))
    assert (out / "checkpoints" / "checkpoint-4").exists()
    import shutil

    shutil.rmtree(out / "model")  # as if the job died after its last checkpoint
    res = pretrain(ds, tiny_pretrained.vocab, out, PretrainConfig(max_steps=8, **cfg))
    assert res.n_steps == 8
    assert res.resumed_from and res.resumed_from.endswith("checkpoint-4")  # steps 1-4 not recomputed
    assert [h["step"] for h in res.loss_history] == [2, 4, 6, 8]  # one history, no step twice
    with pytest.raises(OutputExistsError):
        pretrain(ds, tiny_pretrained.vocab, out, PretrainConfig(max_steps=8, **cfg))


def test_save_model_is_atomic(tiny_pretrained, tmp_path):
    model = load_model(tiny_pretrained.model_dir, kind="mlm")
    save_model(model, tmp_path / "m", vocab=tiny_pretrained.vocab)
    with pytest.raises(OutputExistsError):
        save_model(model, tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_published_geneformer_v1_checkpoint_layout_runs_with_our_tokenizer(shared_data, tmp_path):
    """A directory laid out like the published Geneformer-V1-10M checkpoint (upstream's config.json
    fields, weights as pytorch_model.bin) loads and embeds cells tokenized with the gc30M dictionary."""
    from transformers import BertConfig, BertForMaskedLM

    from netformer.genes import GeneVocab
    from netformer.tokenize import TranscriptomeTokenizer

    upstream_config = {
        "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.02, "gradient_checkpointing": False,
        "hidden_act": "relu", "hidden_dropout_prob": 0.02, "hidden_size": 256, "initializer_range": 0.02,
        "intermediate_size": 512, "layer_norm_eps": 1e-12, "max_position_embeddings": 2048, "model_type": "bert",
        "num_attention_heads": 4, "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
        "transformers_version": "4.6.0", "type_vocab_size": 2, "use_cache": True, "vocab_size": 25426,
    }
    ckpt = tmp_path / "gf-6L-30M-i2048"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(upstream_config))
    torch.manual_seed(0)
    torch.save(BertForMaskedLM(BertConfig(**upstream_config)).state_dict(), ckpt / "pytorch_model.bin")

    v1 = GeneVocab.from_geneformer(shared_data / "genes" / "geneformer_gc30M")
    model = load_model(ckpt)
    v1.check_model(model.config.vocab_size, model.config.pad_token_id)
    ds = TranscriptomeTokenizer(v1, model_input_size=2048).tokenize(shared_data / "scrna" / "cider_baron_pancreas_350cells_raw.h5ad")
    emb = embed_cells(model, ds.select(range(8)), EmbeddingConfig(batch_size=4))
    assert emb.shape == (8, 256) and np.isfinite(emb).all()


def test_saved_model_round_trips_its_complete_vocabulary(v2, tmp_path):
    """A model directory carries the whole GeneVocab (Ensembl mapping included) and the tokenizer settings."""
    from netformer.model import tokenizer_settings

    model = new_model(model_config("tiny", vocab=v2), seed=0)
    save_model(model, tmp_path / "m", vocab=v2, tokenizer={"model_input_size": 256})
    back = model_vocab(tmp_path / "m")
    assert back.digest == v2.digest and back.name == v2.name
    assert back.ensembl_mapping == v2.ensembl_mapping and len(back.ensembl_mapping) > 50_000
    assert back.gene_median == v2.gene_median
    settings = tokenizer_settings(tmp_path / "m")
    assert settings["model_input_size"] == 256 and settings["special_tokens"] is True
    assert settings["vocab_digest"] == v2.digest
    with pytest.raises(DictionaryError, match="vocab_size"):
        save_model(new_model(model_config("tiny", vocab=v2, vocab_size=100)), tmp_path / "bad", vocab=v2)
    assert not (tmp_path / "bad").exists()
