"""Fine-tuning on real data (../shared/data) with the tiny pretrained model: cell types of pbmc3k,
Kang ctrl/stim, pancreas grouped by donor, TF vs non-TF genes; every result beside its baseline."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from netformer.classify import (CellClassifier, CellData, FinetuneConfig, GeneClassifier, align_counts,
                                cross_validate_cells, cross_validate_genes, kfold_indices, resolve_gene_labels,
                                search_cells, tf_gene_labels, tokenize_cells, train_val_test_split)
from netformer.errors import ConfigError, DictionaryError, GeneIdError, InputDataError, OutputExistsError

log = logging.getLogger(__name__)

FAST = dict(max_length=128, batch_size=16, learning_rate=3e-3, warmup_ratio=0.1, seed=0)


def _cells(ds, path, n, seed=0, label=None):
    """A random subset of ``n`` tokenized cells (labelled ones when ``label``) with aligned counts."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(ds))
    if label is not None:
        idx = np.array([i for i, v in enumerate(ds[label]) if v is not None])
    idx = np.sort(rng.choice(idx, min(n, len(idx)), replace=False))
    sub = ds.select(idx.tolist())
    return CellData(sub, align_counts(sub, ad.read_h5ad(path)))


@pytest.fixture(scope="module")
def pbmc_cells(tiny_pretrained, scrna):
    return _cells(tiny_pretrained.pbmc, scrna / "pbmc3k_raw_labeled.h5ad", 900, label="cell_type")


def test_pbmc_cell_types_beat_chance_beside_baseline(tiny_pretrained, pbmc_cells, tmp_path):
    data = pbmc_cells
    y = np.array(data.dataset["cell_type"])
    split = train_val_test_split(y, test_size=0.3, val_size=0.0, seed=0)
    train, test = data.subset(split["train"]), data.subset(split["test"])
    clf = CellClassifier(tiny_pretrained.model_dir, FinetuneConfig(epochs=8, **FAST)).fit(train.dataset, "cell_type")
    ev = clf.evaluate(test.dataset, "cell_type", test.adata, train_adata=train.adata, output_dir=tmp_path / "ev")
    table = ev.table()
    log.info("pbmc3k cell types (held-out 30%%):\n%s", table.round(3))
    print(table.round(3))
    majority = pd.Series(y[split["test"]]).value_counts(normalize=True).iloc[0]
    # chance: the majority class alone reaches `majority` accuracy and macro-F1 <= 2/(k+...) ~ 0.1
    assert ev.model.accuracy > majority + 0.15
    assert ev.model.macro_f1 > 0.3  # chance (guessing by class frequency) is ~0.125
    assert ev.baseline.macro_f1 > 0.6  # the PCA baseline is strong on pbmc3k
    assert set(ev.classes) == set(y)
    for f in ("metrics.csv", "per_class.csv", "predictions.csv", "confusion_model.png", "confusion_baseline.png"):
        assert (tmp_path / "ev" / f).stat().st_size > 0
    pred = pd.read_csv(tmp_path / "ev" / "predictions.csv", index_col=0)
    assert len(pred) == len(split["test"]) and {"true", "model_pred", "baseline_pred"} <= set(pred.columns)


def test_pbmc_cell_types_5fold_cv_beside_baseline(tiny_pretrained, pbmc_cells):
    y = np.array(pbmc_cells.dataset["cell_type"])
    keep = np.flatnonzero(y != "Megakaryocytes")[:600]  # too few in 900 cells for 5 folds (a typed error)
    data = pbmc_cells.subset(keep)
    cv = cross_validate_cells(tiny_pretrained.model_dir, data, "cell_type", n_splits=5,
                              config=FinetuneConfig(epochs=5, class_weights="balanced", **FAST))
    summary = cv.summary()
    print("pbmc3k cell types, 5-fold CV (tiny test encoder):")
    print(summary.round(3).to_string())
    assert len(cv.folds) == 5 and cv.pooled.model.n == 600  # every cell tested exactly once
    # chance macro-F1 (guessing by class frequency) is ~0.14 for 7 types
    assert summary.loc["model_macro_f1", "mean"] > 0.2
    assert summary.loc["baseline_macro_f1", "mean"] > 0.6


def test_kang_ctrl_stim_auc(tiny_pretrained, scrna, tmp_path):
    data = _cells(tiny_pretrained.kang, scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", 600, seed=1)
    y = np.array(data.dataset["condition"])
    split = train_val_test_split(y, test_size=0.3, val_size=0.0, seed=0)
    train, test = data.subset(split["train"]), data.subset(split["test"])
    cfg = FinetuneConfig(**{**FAST, "epochs": 6, "learning_rate": 1e-3, "max_length": 256})
    clf = CellClassifier(tiny_pretrained.model_dir, cfg).fit(train.dataset, "condition")
    ev = clf.evaluate(test.dataset, "condition", test.adata, train_adata=train.adata, output_dir=tmp_path)
    print(ev.table().round(3))
    assert ev.classes == ["ctrl", "stim"]
    # The interferon response is strong: the PCA baseline separates the states almost perfectly; the
    # tiny test encoder (2 layers, a few hundred pretraining steps) must still beat chance (AUC 0.5).
    assert ev.baseline.auc > 0.9
    assert ev.model.auc > 0.7
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_pancreas_grouped_by_donor(tiny_pretrained, scrna):
    data = tokenize_cells(scrna / "cider_baron_pancreas_350cells_raw.h5ad", tiny_pretrained.vocab, max_length=128,
                          obs_columns=["cell_type", "donor", "species"])
    assert len(data) == 350 and data.adata.n_obs == 350
    donors = np.array(data.dataset["donor"])
    folds = kfold_indices(data.dataset["cell_type"], 3, groups=donors, seed=0)
    for tr, te in folds:
        assert not set(donors[tr]) & set(donors[te])
    cv = cross_validate_cells(tiny_pretrained.model_dir, data, "cell_type", n_splits=3, group_column="donor",
                              config=FinetuneConfig(epochs=3, **FAST))
    print(cv.folds.round(3).to_string())
    assert len(cv.folds) == 3
    test_groups = [set(g.split(";")) for g in cv.folds["test_groups"]]
    assert set().union(*test_groups) == set(donors) and sum(map(len, test_groups)) == len(set(donors))
    assert cv.pooled.model.n == 350
    # 5 balanced types: chance macro-F1 ~0.2. The PCA baseline crosses donors and species well; the tiny
    # test encoder, fine-tuned for 3 epochs on ~230 cells, stays at chance here (it predicts one class;
    # see docs/classify.md), so only the baseline is held to a bar and the model's metrics to validity.
    assert cv.pooled.baseline.macro_f1 > 0.6
    assert 0 <= cv.pooled.model.macro_f1 <= 1 and 0 <= cv.pooled.model.auc <= 1


def test_tf_gene_classification_auc(tiny_pretrained, pbmc_cells):
    labels = tf_gene_labels(tiny_pretrained.vocab)
    assert "ENSG00000136997" in labels and labels["ENSG00000136997"] == "TF"  # MYC
    assert labels["ENSG00000111640"] == "non-TF"  # GAPDH
    data = pbmc_cells.subset(np.arange(400))
    cv = cross_validate_genes(tiny_pretrained.model_dir, data, labels, n_splits=3,
                              config=FinetuneConfig(epochs=1, class_weights="balanced", **FAST))
    print(cv.folds.round(3).to_string())
    pooled = cv.pooled
    assert set(pooled.classes) == {"TF", "non-TF"}
    assert pooled.model.n > 300 and (pooled.predictions["true"] == "TF").sum() > 20
    assert 0 <= pooled.model.auc <= 1 and 0 <= pooled.baseline.auc <= 1
    # Highly expressed genes are rarely TFs, so expression statistics beat chance.
    assert pooled.baseline.auc > 0.55


def test_save_load_and_determinism(tiny_pretrained, pbmc_cells, tmp_path):
    train = pbmc_cells.subset(np.arange(200))
    cfg = FinetuneConfig(epochs=1, freeze_layers=1, class_weights="balanced", **FAST)
    a = CellClassifier(tiny_pretrained.model_dir, cfg).fit(train.dataset, "cell_type")
    b = CellClassifier(tiny_pretrained.model_dir, cfg).fit(train.dataset, "cell_type")
    pa, pb = a.predict_proba(train.dataset), b.predict_proba(train.dataset)
    np.testing.assert_allclose(pa, pb, atol=1e-6)
    frozen = a.model.bert.encoder.layer[0].attention.self.query.weight
    from netformer.model import load_model

    orig = load_model(tiny_pretrained.model_dir, kind="base").encoder.layer[0].attention.self.query.weight
    assert torch_equal(frozen, orig)
    a.save(tmp_path / "clf")
    with pytest.raises(OutputExistsError):
        a.save(tmp_path / "clf")
    c = CellClassifier.load(tmp_path / "clf")
    np.testing.assert_allclose(c.predict_proba(train.dataset), pa, atol=1e-5)
    assert c.classes_ == a.classes_
    import transformers

    plain = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / "clf"))
    assert plain.config.num_labels == len(a.classes_)
    with pytest.raises(ConfigError):
        GeneClassifier.load(tmp_path / "clf")


def torch_equal(x, y):
    import torch

    return bool(torch.equal(x.detach().cpu(), y.detach().cpu()))


def test_search_returns_best_config_and_trials(tiny_pretrained, pbmc_cells):
    from netformer.classify import SearchSpace

    types = pd.Series(pbmc_cells.dataset["cell_type"])
    common = types.value_counts().index[:4]
    data = pbmc_cells.subset(np.flatnonzero(types.isin(common).to_numpy())[:240])

    space = SearchSpace(epochs=(1, 1), batch_size=(32,), freeze_layers=(0, 2))
    res = search_cells(tiny_pretrained.model_dir, data, "cell_type", n_trials=2, space=space,
                       base_config=FinetuneConfig(**FAST))
    assert len(res.trials) == 2
    assert res.best_value == res.trials["val_macro_f1"].max()
    assert isinstance(res.best_config, FinetuneConfig) and res.best_config.max_length == 128
    assert "macro_f1" in res.baseline


def test_bad_input(tiny_pretrained, pbmc_cells, scrna):
    ds = pbmc_cells.dataset.select(range(60))
    mdir = tiny_pretrained.model_dir
    with pytest.raises(InputDataError, match="single class"):
        CellClassifier(mdir, FinetuneConfig(**FAST)).fit(ds, ["B cells"] * 60)
    with pytest.raises(InputDataError, match="no label"):
        CellClassifier(mdir).fit(ds, ["a", None] * 30)
    with pytest.raises(InputDataError, match="fewer members than"):
        kfold_indices(["a"] * 10 + ["b"] * 2, n_splits=5)
    with pytest.raises(InputDataError, match="fewer members than"):
        train_val_test_split(["a"] * 10 + ["b"], test_size=0.3)
    with pytest.raises(InputDataError, match="groups"):
        kfold_indices(["a", "b"] * 5, n_splits=3, groups=["d1", "d2"] * 5)
    with pytest.raises(InputDataError, match="no cells to classify"):
        kfold_indices([], n_splits=3)
    with pytest.raises(InputDataError, match="none of the 4 genes has a label"):
        kfold_indices([None] * 4, n_splits=2, what="genes")
    # grouped folds: class "b" lives in one donor only, so the fold holding that donor out trains on "a" alone
    from netformer.classify.splits import check_training_classes

    y, donors = ["a"] * 6 + ["b"] * 4, ["d1", "d2", "d3"] * 2 + ["d4"] * 4
    with pytest.raises(InputDataError, match="single class"):
        check_training_classes(y, kfold_indices(y, n_splits=4, groups=donors), "cells")
    with pytest.raises(InputDataError, match="single class"):
        ten = ds.select(range(10)).remove_columns("cell_type").add_column("cell_type", y).add_column("donor", donors)
        cross_validate_cells(mdir, CellData(ten, pbmc_cells.adata[:10].copy()), "cell_type", n_splits=4,
                             group_column="donor")
    with pytest.raises(GeneIdError):
        resolve_gene_labels({"NOT_A_GENE_1": "TF", "NOT_A_GENE_2": "non-TF"}, tiny_pretrained.vocab)
    with pytest.raises(GeneIdError, match="not in the token dictionary"):
        resolve_gene_labels({"MYC": "TF", "NOT_A_GENE": "non-TF"}, tiny_pretrained.vocab, on_missing="raise")
    assert resolve_gene_labels({"MYC": "TF", "NOT_A_GENE": "non-TF"}, tiny_pretrained.vocab) == {"ENSG00000136997": "TF"}
    # data tokenized with another vocabulary (Geneformer V1: 25,426 tokens) than the model's
    from netformer.genes import GeneVocab
    from netformer.tokenize import TranscriptomeTokenizer

    v1 = GeneVocab.load(scrna.parent / "genes" / "geneformer_gc30M")
    other = TranscriptomeTokenizer(v1, model_input_size=64).tokenize(ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")[:50])
    with pytest.raises(DictionaryError, match="vocabulary"):
        CellClassifier(mdir).fit(other, ["a", "b"] * 25)
    with pytest.raises(ConfigError):
        FinetuneConfig(lr_scheduler="nope")
    with pytest.raises(ConfigError, match="not fitted"):
        CellClassifier(mdir).predict_proba(ds)


def test_cli_finetune(tiny_pretrained, scrna, tmp_path):
    from typer.testing import CliRunner

    from netformer.cli import app

    out = tmp_path / "ft"
    res = CliRunner().invoke(app, ["finetune", "cell", str(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"),
                                   str(tiny_pretrained.model_dir), "--out", str(out), "--label-column", "condition",
                                   "--n-cells", "240", "--folds", "2", "--epochs", "1", "--max-length", "64",
                                   "--batch-size", "32"])
    assert res.exit_code == 0, res.output
    folds = pd.read_csv(out / "cv" / "folds.csv")
    assert len(folds) == 2 and {"model_macro_f1", "baseline_macro_f1"} <= set(folds.columns)
    clf = CellClassifier.load(out / "model")
    assert clf.classes_ == ["ctrl", "stim"]
    # a checkpoint without a dictionary beside it (as published Geneformer models): --vocab
    bare = tiny_pretrained.bare_checkpoint(tmp_path / "bare_model")
    vocab_dir = tmp_path / "vocab"
    tiny_pretrained.vocab.save(vocab_dir)
    args = ["finetune", "cell", str(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"), str(bare),
            "--out", str(tmp_path / "ft_bare"), "--label-column", "condition", "--n-cells", "120", "--folds", "0",
            "--epochs", "1", "--max-length", "64", "--batch-size", "32"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0 and "--vocab" in str(res.exception)
    res = CliRunner().invoke(app, args + ["--vocab", str(vocab_dir)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ft_bare" / "pretrained" / "token_dictionary.json").exists()
    assert CellClassifier.load(tmp_path / "ft_bare" / "model").vocab.token_dict == tiny_pretrained.vocab.token_dict
