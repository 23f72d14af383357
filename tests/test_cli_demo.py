"""The command line (tokenize -> pretrain -> embed) and the demo, on real cells, end to end."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from netformer.cli import app
from netformer.errors import OutputExistsError

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_cli_pipeline_on_real_cells(scrna, tmp_path):
    sub = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")[::10].copy()
    sub.write_h5ad(tmp_path / "kang200.h5ad")
    out = _ok(runner.invoke(app, ["tokenize", str(tmp_path / "kang200.h5ad"), "--build-vocab", "--input-size", "64",
                                  "--obs-column", "condition", "--out", str(tmp_path / "tok")]))
    assert "200 cells" in out
    # refusing to overwrite, with a clear message instead of a traceback
    again = runner.invoke(app, ["tokenize", str(tmp_path / "kang200.h5ad"), "--build-vocab", "--out", str(tmp_path / "tok")])
    assert again.exit_code != 0 and isinstance(again.exception, OutputExistsError)
    _ok(runner.invoke(app, ["pretrain", str(tmp_path / "tok"), "--preset", "tiny", "--max-steps", "4",
                            "--batch-size", "8", "--warmup-steps", "1", "--out", str(tmp_path / "run")]))
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    _ok(runner.invoke(app, ["embed", str(tmp_path / "run" / "model"), str(tmp_path / "tok"),
                            "--out", str(tmp_path / "emb.parquet")]))
    emb = pd.read_parquet(tmp_path / "emb.parquet")
    assert len(emb) == 200 and set(emb["condition"]) == {"ctrl", "stim"}
    assert emb.filter(like="dim_").shape[1] == 64
    _ok(runner.invoke(app, ["embed", str(tmp_path / "run" / "model"), str(tmp_path / "tok"), "--genes",
                            "--out", str(tmp_path / "genes.parquet")]))
    assert pd.read_parquet(tmp_path / "genes.parquet")["n_cells"].max() <= 200


def test_main_prints_clear_errors(tmp_path, capsys):
    from netformer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["tokenize", str(tmp_path / "missing.h5ad"), "--vocab", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, caplog):
    import logging

    import netformer
    from netformer.errors import ConfigError

    small = dict(preset="tiny", max_length=64, epochs=0.5, batch_size=32, warmup_steps=2, max_cells=700,
                 finetune_epochs=1, finetune_cells=300, treat_cells=4, network_cells=60, panel_seeds=2, budget=10)
    res = netformer.demo(tmp_path / "demo", **small)
    out = res.output_dir
    assert [r.status for r in res.steps.values()] == ["done"] * 4
    for name in ["report.html", "metrics.json", "demo.json", "cells/umap_cell_type.png", "cells/umap_pca_baseline.png",
                 "cells/training_loss.png", "cells/cells.h5ad", "cells/cell_embeddings.parquet", "states/genes.csv",
                 "states/top20_significant.csv", "genes/gene_embeddings.parquet", "genes/network/network.png",
                 "experiments/coverage.png", "experiments/norman_panel_summary.csv"]:
        assert (out / name).stat().st_size > 0, name
    for png in out.rglob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["cells"]["n_cells"] == 700 and m["cells"]["mean_tokens_per_cell"] == 64
    assert 0 < m["cells"]["knn_accuracy_netformer"] <= 1 and m["cells"]["knn_accuracy_pca_baseline"] > 0.8
    assert len(m["cells"]["cell_type_counts"]) >= 6
    assert m["states"]["n_train"] + m["states"]["n_test"] == 300 and m["states"]["treated_cells"] == 4
    assert 0.5 <= m["states"]["baseline_auc"] <= 1 and m["genes"]["network_genes"] > 10
    assert 0 < m["experiments"]["coverage_random"] <= m["experiments"]["coverage_graphreach"] < 1
    html = (out / "report.html").read_text()
    for words in ("NN accuracy", "Top 20 significant genes", "Gene network against GO", "Norman 2019 panel",
                  "Provenance", "transformers", "Now try your own data", "netformer finetune gene"):
        assert words in html, words
    assert html.count("data:image/png;base64") >= 7 and "None" not in html
    cells = ad.read_h5ad(out / "cells" / "cells.h5ad")
    assert cells.obsm["X_netformer"].shape == (700, 64) and np.isfinite(cells.obsm["X_netformer"]).all()
    # a re-run reuses every finished step; another setting of one step reruns only that step
    with caplog.at_level(logging.INFO, logger="netformer.demo"):
        again = netformer.demo(out, **{**small, "budget": 12})
    assert [r.status for r in again.steps.values()] == ["reused", "reused", "reused", "done"]
    assert again.steps["cells"].metrics == res.steps["cells"].metrics
    # a folder of the older layout: one clear message, nothing touched
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.html").write_text("<html></html>")
    with pytest.raises(ConfigError, match="older netformer version"):
        netformer.demo(old)
    assert sorted(p.name for p in old.iterdir()) == ["report.html"]


def test_demo_step_without_its_optional_data_is_skipped_with_one_line(tmp_path):
    from netformer._demo import StepSkipped, run_demo, shared_file
    from netformer.errors import ConfigError

    with pytest.raises(StepSkipped, match="put the project's shared data folder beside the clone"):
        shared_file("scrna", "not_there.h5ad")
    with pytest.raises(ConfigError, match="unknown demo steps"):
        run_demo(tmp_path / "d", steps=["cells", "tissues"])
    assert not (tmp_path / "d").exists()


def test_loading_a_model_prints_no_library_bar(tiny_pretrained, capfd):
    """One progress bar at a time: transformers' "Loading weights" bar stays off when netformer loads a model."""
    from netformer.model import load_model

    capfd.readouterr()
    load_model(tiny_pretrained.model_dir)
    load_model(tiny_pretrained.model_dir, kind="cell", num_labels=2)
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "it/s" not in out + err
