"""The paper's gene tasks as recipes: labels read as published (de-duplicated, genes in two classes
dropped), label files in both layouts, and the CLI recipe run beside its baseline and the published figure."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from typer.testing import CliRunner

from netformer.classify import resolve_gene_labels
from netformer.classify.data import read_gene_labels
from netformer.classify.gene_tasks import GENE_TASKS, bundled_label_dir, task_labels


def _plain_sets(folder, task):
    """Upstream's label files read independently: class -> set of ids."""
    if task == "dosage-sensitivity":
        t = pd.read_csv(folder / "dosage_sens_tf_labels.csv")
        return {c: set(t[c].dropna()) for c in t.columns}
    files = {"bivalent": "bivalent_gene_labels.txt", "no_methylation": "no_methylation_gene_labels.txt",
             "lys4_only": "lys4_only_gene_labels.txt"}
    classes = GENE_TASKS[task].classes
    return {c: {ln.strip() for ln in (folder / files[c]).read_text().splitlines() if ln.strip()} for c in classes}


@pytest.mark.parametrize("task", ["dosage-sensitivity", "bivalent-vs-nonmethylated", "bivalent-vs-lys4"])
def test_recipe_labels_equal_an_independent_reading(shared_data, task):
    folder = shared_data / "genes" / "geneformer_gene_labels"
    for f in bundled_label_dir().iterdir():  # the bundled copies are the published files
        if f.suffix in (".csv", ".txt"):
            assert f.read_bytes() == (folder / f.name).read_bytes()
    sets = _plain_sets(folder, task)
    a, b = sets.values()
    two = a & b
    labels, counts = task_labels(task)
    assert labels == {g: c for c, s in sets.items() for g in s if g not in two}
    assert counts["in_two_classes"] == len(two)
    assert counts["per_class"] == {c: len(s - two) for c, s in sets.items()}
    if task == "dosage-sensitivity":
        assert counts["per_class"] == {"dosage_sensitive": 122, "dosage_insensitive": 368} and not two
    else:
        assert "ENSG00000285708" in two  # the id all three promoter files end with


def test_label_layouts_duplicates_conflicts_and_symbols(tmp_path, tiny_pretrained, caplog):
    long = tmp_path / "long.csv"
    long.write_text("gene,label\nMYC,TF\nMYC,TF\nGAPDH,non-TF\nACTB,non-TF\nACTB,TF\n")
    wide = tmp_path / "wide.csv"
    wide.write_text("TF,non-TF\nMYC,GAPDH\nACTB,ACTB\n,CD3E\n")
    with caplog.at_level(logging.INFO):
        labels, counts = read_gene_labels(long, return_counts=True)
    assert labels == {"MYC": "TF", "GAPDH": "non-TF"}
    assert counts == {"listed": 5, "duplicates": 1, "in_two_classes": 1, "kept": 2}
    assert "1 genes are listed under two or more classes" in caplog.text
    assert read_gene_labels(wide) == {"MYC": "TF", "GAPDH": "non-TF", "CD3E": "non-TF"}
    # a symbol and its Ensembl id with different classes: dropped, not one chosen silently
    caplog.clear()
    with caplog.at_level(logging.INFO):
        got = resolve_gene_labels({"MYC": "TF", "ENSG00000136997": "non-TF", "GAPDH": "non-TF"}, tiny_pretrained.vocab)
    assert got == {"ENSG00000111640": "non-TF"}
    assert "given as symbols" in caplog.text and "two or more classes" in caplog.text


def test_cli_gene_task_beside_baseline_and_published(tiny_pretrained, scrna, tmp_path, capsys):
    from netformer.cli import app, main

    cells = str(scrna / "pbmc3k_raw_labeled.h5ad")
    common = [cells, str(tiny_pretrained.model_dir), "--n-cells", "150", "--epochs", "1", "--max-length", "64",
              "--batch-size", "32"]
    # an own-label recipe without labels, and more folds than genes of a class: exit 2, nothing written
    for extra, msg in ((["--task", "tf-targets"], "needs your label file"),
                       (["--task", "dosage-sensitivity", "--folds", "40"], "fewer members than the 40 folds")):
        with pytest.raises(SystemExit) as exc:
            main(["finetune", "gene", *common, "--out", str(tmp_path / "bad"), *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and msg in err and "Traceback" not in err, err
        assert not (tmp_path / "bad").exists()
    r = CliRunner().invoke(app, ["finetune", "gene", *common, "--out", str(tmp_path / "ds"), "--task",
                                 "dosage-sensitivity", "--folds", "2"])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "ds" / "gene_task.csv", index_col=0)
    assert list(table.index) == ["model", "baseline", "published"]
    assert table.loc["published", "roc_auc_mean"] == 0.914 and table.loc["published", "fold_5"] == 0.878
    folds = pd.read_csv(tmp_path / "ds" / "cv" / "folds.csv")
    assert table.loc["model", ["fold_1", "fold_2"]].tolist() == pytest.approx(folds["model_auc"].tolist())
    assert table.loc["baseline", "roc_auc_mean"] == pytest.approx(folds["baseline_auc"].mean())
    info = json.loads((tmp_path / "ds" / "gene_task.json").read_text())["counts"]
    assert info["labelled"] == 490 and info["used"] == sum(info["per_class"].values()) == folds["n_test"].sum()
    assert info["labelled"] - info["in_dictionary"] + info["not_in_cells"] == 490 - info["used"]
