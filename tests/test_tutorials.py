"""The tutorials in docs/tutorials run as written, on small real data with the tiny test model."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
CELLS = {"01_embeddings": 150, "02_classification": 120, "03_in_silico_treatment": 3, "04_gene_tasks": 150,
         "05_experiment_design": 0}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_tutorial_runs(name, tiny_pretrained, tmp_path, monkeypatch, capsys):
    script = TUTORIALS / f"{name}.py"
    monkeypatch.syspath_prepend(str(TUTORIALS))
    monkeypatch.setattr(sys, "argv", [str(script), "--model", str(tiny_pretrained.model_dir), "--cells",
                                      str(CELLS[name]), "--out", str(tmp_path), "--epochs", "1"])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip(), "a tutorial prints its result"
    expected = {"01_embeddings": "10-NN accuracy", "02_classification": "model_macro_f1",
                "03_in_silico_treatment": "mean_shift", "04_gene_tasks": "published",
                "05_experiment_design": "verdict_vs_random"}[name]
    assert expected in printed, printed
