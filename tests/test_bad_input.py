"""Bad input and global state: one clear typed error and nothing left behind, or a logged fallback.

Each case is a probe that gave a silent wrong result or a traceback before (issue "crash-safe and
input-safe"); the CLI side of the same cases is in tests/test_cli_errors.py.
"""

from __future__ import annotations

import logging
import os
import random
import stat

import anndata as ad
import numpy as np
import pytest

from netformer.errors import ConfigError, InputDataError
from netformer.tokenize import TranscriptomeTokenizer


@pytest.fixture(scope="module")
def kang(scrna):
    return ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")[:30].copy()


@pytest.mark.parametrize("bad", [np.nan, 0.0, -5.0, "many"])
def test_bad_n_counts_is_refused_naming_the_cells(tiny_pretrained, kang, bad, tmp_path):
    a = kang.copy()
    a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel().astype(object if isinstance(bad, str) else float)
    a.obs.iloc[[3, 7], a.obs.columns.get_loc("n_counts")] = bad
    tok = TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64)
    with pytest.raises(InputDataError, match=r"2 cells \(e\.g\. \['" + a.obs_names[3]):
        tok.write([a], tmp_path / "out")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left


def test_n_counts_row_sum_fallback_equals_the_file_totals(tiny_pretrained, kang, caplog):
    a = kang.copy()
    a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel().astype(float)
    ref = TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).tokenize(a)["input_ids"]
    a.obs.iloc[[3, 7], a.obs.columns.get_loc("n_counts")] = np.nan
    with caplog.at_level(logging.WARNING):
        got = TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64,
                                     n_counts_fallback="row_sum").tokenize(a)["input_ids"]
    assert got == ref and "for 2 cells" in caplog.text
    # the bad cells are ranked by value, not left in token-id order
    assert got[3] != sorted(got[3])


def test_filter_pass_as_strings(tiny_pretrained, kang):
    a = kang.copy()
    a.obs["filter_pass"] = ["True" if i % 2 else "False" for i in range(a.n_obs)]
    ds = TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).tokenize(a)
    assert list(ds["cell_id"]) == list(a.obs_names[1::2])
    a.obs["filter_pass"] = ["maybe"] * a.n_obs
    with pytest.raises(InputDataError, match="neither pass nor fail"):
        TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).tokenize(a)


def test_no_cell_tokenized_is_one_clear_error(tiny_pretrained, kang, tmp_path):
    a = kang.copy()
    a.obs["filter_pass"] = 0
    with pytest.raises(InputDataError, match="30 filtered out"):
        TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).write([a], tmp_path / "out")
    with pytest.raises(InputDataError, match="no cell was tokenized"):
        TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).write([a[:0].copy()], tmp_path / "out")
    assert not list(tmp_path.iterdir())


def test_empty_datasets_are_refused_by_model_jobs(tiny_pretrained, tmp_path):
    from netformer.embed import embed_cells
    from netformer.model import load_model
    from netformer.pretrain import PretrainConfig, pretrain

    empty = tiny_pretrained.kang.select([])
    with pytest.raises(InputDataError, match="holds no cell"):
        embed_cells(load_model(tiny_pretrained.model_dir), empty)
    with pytest.raises(InputDataError, match="holds no cell"):
        pretrain(empty.select_columns(["input_ids", "length"]), tiny_pretrained.vocab, tmp_path / "run",
                 PretrainConfig(preset="tiny", max_steps=2))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("save_steps", 0), ("preset", "huge"),
                                         ("learning_rate", 0.0)])
def test_pretrain_settings_are_validated_before_any_output(field, value):
    from netformer.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match=field if field != "learning_rate" else "learning_rate"):
        PretrainConfig(**{field: value})


def test_perturb_settings_are_validated_before_any_output(tiny_pretrained, tmp_path):
    from netformer.perturb import PerturbConfig, perturb

    with pytest.raises(ConfigError, match="max_cells"):
        PerturbConfig(max_cells=0)
    with pytest.raises(ConfigError, match="layer 9 is out of range"):
        perturb(tiny_pretrained.model_dir, tiny_pretrained.kang, PerturbConfig(layer=9, max_cells=2),
                out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_outputs_have_normal_permissions_and_stale_temporaries_are_cleaned(tmp_path):
    from netformer._io import atomic_dir, atomic_file

    old = os.umask(0o022)
    try:
        stale = tmp_path / ".res.tmp-999999999-abcd"  # left by a killed writer (that pid is not running)
        stale.mkdir()
        (stale / "big.bin").write_bytes(b"0" * 1000)
        with atomic_dir(tmp_path / "res") as tmp:
            (tmp / "table.csv").write_text("a\n1\n")
        with atomic_file(tmp_path / "fig.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "res"]
    assert stat.S_IMODE((tmp_path / "res").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "res" / "table.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "fig.png").stat().st_mode) == 0o644


def test_saved_model_is_readable_by_colleagues(tiny_pretrained, tmp_path):
    from netformer.model import load_model, save_model

    old = os.umask(0o022)
    try:
        save_model(load_model(tiny_pretrained.model_dir, kind="mlm"), tmp_path / "m", vocab=tiny_pretrained.vocab)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m" / "model.safetensors").stat().st_mode) == 0o644


def test_two_token_dictionaries_in_one_folder_are_refused(shared_data, tmp_path):
    import shutil

    from netformer.errors import DictionaryError
    from netformer.genes import GeneVocab

    for d in ("geneformer_gc30M", "geneformer_gc104M"):
        for f in (shared_data / "genes" / d).glob("*.pkl"):
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(DictionaryError, match="2 token_dictionary files"):
        GeneVocab.load(tmp_path)


def test_duplicate_gene_ids_are_warned_with_the_count(tiny_pretrained, kang, caplog):
    a = kang[:, :200].copy()
    a.var.loc[a.var_names[1], "ensembl_id"] = a.var["ensembl_id"].iloc[0]
    with caplog.at_level(logging.WARNING):
        TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).tokenize(a)
    assert "1 genes share an Ensembl id" in caplog.text


def _global_state():
    import matplotlib
    import torch

    root = logging.getLogger()
    return (torch.get_num_threads(), torch.random.get_rng_state().sum().item(), np.random.get_state()[1][:4].tolist(),
            random.getstate()[1][:4], matplotlib.get_backend(), root.level, len(root.handlers))


def test_library_calls_leave_global_state_alone(tiny_pretrained, shared_data, tmp_path):
    import torch

    from netformer.embed import embed_cells
    from netformer.model import load_model
    from netformer.perturbseq.data import read_perturbseq
    from netformer.perturbseq.metrics import evaluate
    from netformer.perturbseq.models import TrainMean

    torch.set_num_threads(1)
    before = _global_state()
    embed_cells(load_model(tiny_pretrained.model_dir), tiny_pretrained.pbmc.select(range(8)))
    data = read_perturbseq(shared_data / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
    model = TrainMean().fit(data, list(data.perturbations[:10]))
    evaluate(model, data, data.perturbations[10:14])
    from netformer.classify import CellClassifier, FinetuneConfig
    from netformer.pretrain import PretrainConfig, pretrain

    CellClassifier(tiny_pretrained.model_dir, FinetuneConfig(epochs=1, batch_size=8, max_length=32, device="cpu")).fit(
        tiny_pretrained.kang.select(range(990, 1010)), "condition")
    pretrain(tiny_pretrained.kang.select(range(16)).select_columns(["input_ids", "length"]), tiny_pretrained.vocab,
             tmp_path / "run", PretrainConfig(preset="tiny", max_steps=2, batch_size=8, max_length=32, device="cpu"))
    assert _global_state() == before
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
