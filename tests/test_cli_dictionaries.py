"""Which token dictionary the model commands use, on a tiny real model and real cells: the one policy
(netformer.genes.resolve_vocab) behind embed, perturb and finetune, --vocab for checkpoints without a
dictionary, --subfolder (local and through the Hugging Face Hub cache), and finetune on a tokenized
folder with its counts from --counts. Every refusal is one line, exit status 2, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from netformer.cli import main
from test_cli_errors import error_line, run_cli


@pytest.fixture(scope="module")
def cells(tiny_pretrained, scrna, tmp_path_factory):
    """Real Kang 2018 cells: raw counts, tokenized with the model's dictionary, with Geneformer's V1
    dictionary, and without a dictionary; a copy of the model without its dictionary."""
    root = tmp_path_factory.mktemp("cli_cells")
    kang = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")
    kang[::16].copy().write_h5ad(root / "kang.h5ad")  # 125 cells, both conditions
    ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")[:60].copy().write_h5ad(root / "pbmc.h5ad")
    t = tiny_pretrained
    with pytest.raises(SystemExit) as ok:
        main(["tokenize", str(root / "kang.h5ad"), "--vocab", str(t.model_dir), "--input-size", "64",
              "--obs-column", "condition", "--out", str(root / "tok")])
    assert ok.value.code == 0
    with pytest.raises(SystemExit) as ok:
        main(["tokenize", str(root / "pbmc.h5ad"), "--vocab", str(scrna.parent / "genes" / "geneformer_gc30M"),
              "--input-size", "64", "--out", str(root / "tok_v1")])
    assert ok.value.code == 0
    shutil.copytree(root / "tok", root / "tok_plain")
    shutil.rmtree(root / "tok_plain" / "vocab")  # cells that record a digest but carry no dictionary
    t.bare_checkpoint(root / "bare")
    return root


def _nothing_written(out) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_mismatched_dictionary_is_refused(cells, tiny_pretrained, capsys, tmp_path):
    model = tiny_pretrained.model_dir
    v1 = cells / "tok_v1"
    for args, out in [
        (["embed", model, v1, "--out", tmp_path / "e.parquet"], tmp_path / "e.parquet"),
        (["perturb", model, v1, "--out", tmp_path / "isp", "--max-cells", "2"], tmp_path / "isp"),
        (["finetune", "cell", v1, model, "--out", tmp_path / "ft", "--label-column", "cell_type", "--folds", "0"],
         tmp_path / "ft"),
    ]:
        code, _, err = run_cli(capsys, *args)
        line = error_line(err)
        assert code == 2 and "were tokenized with" in line and "'gc30M'" in line and "re-tokenize" in line, line
        _nothing_written(out)
    # pretraining on cells tokenized with another dictionary than the one given
    code, _, err = run_cli(capsys, "pretrain", cells / "tok", "--out", tmp_path / "run", "--preset", "tiny",
                           "--max-steps", "2", "--vocab", v1 / "vocab")
    assert code == 2 and "were tokenized with" in error_line(err), err
    _nothing_written(tmp_path / "run")
    # an empty tokenized folder
    import datasets

    datasets.load_from_disk(str(cells / "tok")).select([]).save_to_disk(str(tmp_path / "empty"))
    for args in (["pretrain", tmp_path / "empty", "--out", tmp_path / "run", "--preset", "tiny"],
                 ["embed", model, tmp_path / "empty", "--out", tmp_path / "e.parquet"]):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "holds no cell" in error_line(err), err
    _nothing_written(tmp_path / "run")
    # an explicit --vocab that differs from the model's own dictionary
    code, _, err = run_cli(capsys, "finetune", "cell", cells / "kang.h5ad", model, "--out", tmp_path / "ft",
                           "--vocab", v1 / "vocab", "--label-column",
                           "condition", "--folds", "0")
    assert code == 2 and "differs" in error_line(err) and "--vocab" in error_line(err)
    _nothing_written(tmp_path / "ft")


def test_no_dictionary_anywhere_names_vocab(cells, capsys, tmp_path):
    bare, plain = cells / "bare", cells / "tok_plain"
    for args, out in [
        (["embed", bare, plain, "--out", tmp_path / "e.parquet"], tmp_path / "e.parquet"),
        (["perturb", bare, plain, "--out", tmp_path / "isp", "--max-cells", "2"], tmp_path / "isp"),
        (["finetune", "cell", plain, bare, "--out", tmp_path / "ft", "--label-column", "condition", "--folds", "0"],
         tmp_path / "ft"),
        (["finetune", "cell", cells / "kang.h5ad", bare, "--out", tmp_path / "ft", "--label-column", "condition"],
         tmp_path / "ft"),
    ]:
        code, _, err = run_cli(capsys, *args)
        line = error_line(err)
        assert code == 2 and "no token dictionary" in line and "--vocab" in line, line
        _nothing_written(out)


def test_vocab_option_gives_the_same_embeddings(cells, tiny_pretrained, capsys, tmp_path):
    model = tiny_pretrained.model_dir
    code, out, _ = run_cli(capsys, "embed", model, cells / "tok", "--out", tmp_path / "own.csv")
    assert code == 0 and "125 cell embeddings of size 64" in out
    code, _, err = run_cli(capsys, "embed", cells / "bare", cells / "tok_plain", "--out", tmp_path / "given.parquet",
                           "--vocab", model)
    assert code == 0 and "holds no token dictionary; using --vocab" in err
    own, given = pd.read_csv(tmp_path / "own.csv"), pd.read_parquet(tmp_path / "given.parquet")
    assert list(own["cell_id"]) == list(given["cell_id"])
    np.testing.assert_allclose(own.filter(like="dim_").to_numpy(), given.filter(like="dim_").to_numpy(), atol=1e-5)
    # local --subfolder: the model folder inside the pretraining run
    code, _, _ = run_cli(capsys, "embed", model.parent, cells / "tok", "--subfolder", model.name,
                         "--out", tmp_path / "sub.h5ad")
    emb = ad.read_h5ad(tmp_path / "sub.h5ad")
    assert code == 0 and emb.obsm["X_netformer"].shape == (125, 64)
    np.testing.assert_allclose(emb.obsm["X_netformer"], own.filter(like="dim_").to_numpy(), atol=1e-5)
    assert set(emb.obs["condition"]) == {"ctrl", "stim"}


def test_embed_validates_before_writing(cells, tiny_pretrained, capsys, tmp_path):
    model = tiny_pretrained.model_dir
    code, _, err = run_cli(capsys, "embed", model, cells / "tok", "--out", tmp_path / "e.txt")
    assert code == 2 and ".parquet, .csv, .h5ad" in error_line(err)
    code, _, err = run_cli(capsys, "embed", model, cells / "tok", "--out", tmp_path / "e.parquet", "--umap-by", "nope")
    assert code == 2 and "--umap-by nope" in error_line(err) and "condition" in error_line(err)
    code, _, err = run_cli(capsys, "embed", model, cells / "tok", "--out", tmp_path / "g.parquet", "--genes",
                           "--umap-by", "condition")
    assert code == 2 and "--umap-by" in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_hub_id_and_subfolder_through_the_hub_cache(cells, tiny_pretrained, tmp_path):
    """``netformer embed ctheodoris/Geneformer --subfolder M``: resolved offline from a Hugging Face Hub
    cache (the layout huggingface_hub writes), the checkpoint without a dictionary, so --vocab."""
    repo = tmp_path / "hub" / "models--ctheodoris--Geneformer"
    snap = repo / "snapshots" / "0123abcd" / "Geneformer-V2-104M"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(cells / "bare" / f, snap / f)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "netformer", "embed", "ctheodoris/Geneformer", str(cells / "tok"),
                        "--subfolder", "Geneformer-V2-104M", "--vocab", str(tiny_pretrained.model_dir),
                        "--out", str(tmp_path / "hub.parquet")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "125 cell embeddings" in r.stdout and str(snap) in r.stderr
    r = subprocess.run([sys.executable, "-m", "netformer", "embed", "ctheodoris/Geneformer", str(cells / "tok"),
                        "--subfolder", "Geneformer-V9", "--out", str(tmp_path / "none.parquet")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Geneformer-V9" in error_line(r.stderr)


def test_finetune_on_a_tokenized_folder(cells, tiny_pretrained, capsys, tmp_path):
    model, tok = tiny_pretrained.model_dir, cells / "tok"
    common = ["--label-column", "condition", "--epochs", "1", "--batch-size", "32"]
    # evaluation needs the baseline's raw counts
    code, _, err = run_cli(capsys, "finetune", "cell", tok, model, "--out", tmp_path / "ft", "--folds", "2", *common)
    assert code == 2 and "--counts FILE.h5ad" in error_line(err)
    _nothing_written(tmp_path / "ft")
    code, _, err = run_cli(capsys, "finetune", "cell", cells / "kang.h5ad", model, "--out", tmp_path / "ft",
                           "--counts", cells / "kang.h5ad", "--folds", "0", *common)
    assert code == 2 and "drop --counts" in error_line(err)
    _nothing_written(tmp_path / "ft")
    # cross-validated beside the PCA baseline on the counts aligned by cell_id
    code, _, _ = run_cli(capsys, "finetune", "cell", tok, model, "--out", tmp_path / "ft", "--counts",
                         cells / "kang.h5ad", "--folds", "2", *common)
    assert code == 0
    folds = pd.read_csv(tmp_path / "ft" / "cv" / "folds.csv")
    assert len(folds) == 2 and folds[["model_macro_f1", "baseline_macro_f1"]].notna().all().all()
    from netformer.classify import CellClassifier

    assert CellClassifier.load(tmp_path / "ft" / "model").classes_ == ["ctrl", "stim"]
    # a checkpoint without a dictionary, cells without one: --vocab; fitted and saved without evaluation
    code, _, _ = run_cli(capsys, "finetune", "cell", cells / "tok_plain", cells / "bare", "--out", tmp_path / "ft2",
                         "--vocab", model, "--folds", "0", *common)
    assert code == 0 and not (tmp_path / "ft2" / "cv").exists()
    clf = CellClassifier.load(tmp_path / "ft2" / "model")
    assert clf.vocab.digest == tiny_pretrained.vocab.digest
    assert (tmp_path / "ft2" / "pretrained" / "token_dictionary.json").exists()
