"""Precision as a setting (fp32 / bf16 / auto) and the model presets (V2 configs, the seed model).

bf16 figures are checked against fp32 on real cells with the tiny pretrained encoder; where this
machine's CPU has no native bf16 those tests are skipped (``auto`` then gives fp32, checked too).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netformer import precision as P
from netformer.errors import ConfigError

NATIVE = P.bf16_support("cpu") is not None
needs_bf16 = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AMX / AVX512-BF16)")


def _no_bf16(monkeypatch):
    """Simulate a CPU without bf16 units (PyTorch's own probe answers False)."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)


def test_resolution_follows_the_hardware(monkeypatch):
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    assert P.resolve_precision("auto", "cpu") == ("bf16" if NATIVE else "fp32")
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        P.resolve_precision("fp16", "cpu")
    _no_bf16(monkeypatch)
    assert P.bf16_support("cpu") is None
    assert P.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError, match="bf16 needs a GPU with bf16 or a CPU with AMX or AVX512-BF16.*fp32"):
        P.resolve_precision("bf16", "cpu")


def test_cli_refuses_bf16_without_native_support_in_one_line(monkeypatch, capsys, tiny_pretrained, tmp_path):
    from netformer.cli import main

    _no_bf16(monkeypatch)
    data = tmp_path / "cells"
    tiny_pretrained.kang.select(range(4)).save_to_disk(str(data))
    out = tmp_path / "emb.parquet"
    with pytest.raises(SystemExit) as ex:
        main(["embed", str(tiny_pretrained.model_dir), str(data), "--out", str(out), "--precision", "bf16"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert ex.value.code == 2 and "Traceback" not in err and "Loading weights" not in err  # refused before loading
    assert len(lines) == 1 and lines[0].startswith("error: precision bf16 needs a GPU with bf16")
    assert not out.exists()


@needs_bf16
def test_bf16_embeddings_and_shifts_agree_with_fp32_on_real_cells(tiny_pretrained):
    from scipy.stats import spearmanr

    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.model import load_model
    from netformer.perturb import CellStates, PerturbConfig, perturb

    model = load_model(tiny_pretrained.model_dir, kind="base", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cells = tiny_pretrained.kang.select(range(48))
    a = embed_cells(model, cells, EmbeddingConfig(precision="fp32"))
    b = embed_cells(model, cells, EmbeddingConfig(precision="bf16"))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(a, b)  # close, and really computed in bf16
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's fp32 model is untouched
    assert next(model.parameters()).dtype == torch.float32

    states = CellStates("condition", start="stim", goal="ctrl")
    kw = dict(max_cells=2, max_state_cells=32, seed=0)
    r32 = perturb(model, tiny_pretrained.kang, PerturbConfig(precision="fp32", **kw), states=states).results
    r16 = perturb(model, tiny_pretrained.kang, PerturbConfig(precision="bf16", **kw), states=states).results
    m = r32.merge(r16, on=["cell_index", "perturbed"])
    for _, g in m.groupby("cell_index"):
        assert spearmanr(g["shift_goal_x"], g["shift_goal_y"]).statistic > 0.95
    sc = perturb(model, tiny_pretrained.kang, PerturbConfig(mode="screen", precision="bf16", **kw), states=states).results
    assert np.isfinite(sc["shift_estimate"]).all() and sc["exact"].sum() > 0


@needs_bf16
def test_bf16_fine_tuning_trains_with_fp32_master_weights(tiny_pretrained):
    from netformer.classify import CellClassifier, FinetuneConfig

    labelled = [i for i, c in enumerate(tiny_pretrained.pbmc["cell_type"]) if c is not None]
    cells = tiny_pretrained.pbmc.select(labelled[:64])
    clf = CellClassifier(tiny_pretrained.model_dir, FinetuneConfig(epochs=1, precision="bf16", device="cpu"))
    clf.fit(cells, "cell_type")
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())
    assert np.isfinite(clf.history_[0]["train_loss"])
    assert len(clf.predict_labels(cells)) == 64


def test_geneformer_presets_are_the_upstream_configs(shared_data):
    from netformer.model import model_config

    fields = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
              "hidden_act", "layer_norm_eps", "initializer_range", "type_vocab_size", "pad_token_id")
    folder = shared_data / "models" / "geneformer_configs"
    for preset, name in (("geneformer-v1-10m", "Geneformer-V1-10M"), ("geneformer-v2-104m", "Geneformer-V2-104M"),
                         ("geneformer-v2-316m", "Geneformer-V2-316M")):
        upstream = json.loads((folder / f"{name}.config.json").read_text())
        config = model_config(preset)
        ours = config.to_dict()
        assert {f: ours[f] for f in fields} == {f: upstream[f] for f in fields}, preset
        # learned absolute positions (transformers 5 has no other kind for BERT and drops the field)
        assert upstream["position_embedding_type"] == "absolute"
        assert getattr(config, "position_embedding_type", "absolute") == "absolute"
        assert getattr(config, "position_encoding", "learned") == "learned"


def test_unknown_preset_lists_the_presets():
    from netformer.model import PRESETS, model_config

    with pytest.raises(ConfigError) as err:
        model_config("geneformer-v3")
    assert all(p in str(err.value) for p in PRESETS)


def test_seed_preset_has_fixed_sinusoidal_positions_through_pretraining_save_and_load(tiny_pretrained, tmp_path):
    from netformer.embed import embed_cells
    from netformer.model import load_model, sinusoidal_positions
    from netformer.perturb import PerturbConfig, perturb
    from netformer.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(preset="netformer-seed", max_length=64, max_steps=2, batch_size=4, warmup_steps=0,
                         save_steps=2, logging_steps=1, model_overrides={"num_hidden_layers": 2})
    assert (cfg.learning_rate, cfg.weight_decay) == (1e-4, 0.01)  # the preset's AdamW settings
    assert PretrainConfig(preset="netformer-seed", learning_rate=3e-4).learning_rate == 3e-4
    cells = tiny_pretrained.pbmc.select(range(16)).select_columns(["input_ids", "length"])
    res = pretrain(cells, tiny_pretrained.vocab, tmp_path / "run", cfg)
    model = load_model(res.model_dir, kind="mlm", device="cpu")
    table = model.bert.embeddings.position_embeddings.weight
    assert model.config.position_encoding == "sinusoidal" and not table.requires_grad
    assert torch.equal(table, sinusoidal_positions(2048, 512))  # unchanged by training, round-tripped
    assert model.bert.embeddings.word_embeddings.weight.requires_grad
    # Vaswani et al. 2017: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)
    assert float(table[3, 10]) == pytest.approx(np.sin(3 / 10000 ** (10 / 512)), abs=1e-6)
    assert float(table[3, 11]) == pytest.approx(np.cos(3 / 10000 ** (10 / 512)), abs=1e-6)
    emb = embed_cells(load_model(res.model_dir, kind="base", device="cpu"), cells.select(range(4)))
    assert emb.shape == (4, 512) and np.isfinite(emb).all()
    r = perturb(res.model_dir, tiny_pretrained.pbmc.select(range(1)),
                PerturbConfig(max_length=32, precision="fp32")).results
    assert len(r) > 10 and np.isfinite(r["cell_effect"]).all()
