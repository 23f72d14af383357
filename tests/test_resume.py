"""Crash safety of pretraining: kill -9 at any moment, run again, get the uninterrupted result byte for byte.

Each job runs in its own process (tests/pretrain_job.py): the tiny preset on 64 real Kang 2018 cells,
8 steps per epoch, 24 steps (3 epochs), a checkpoint every 4 steps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("pretrain_job.py")


@pytest.fixture(scope="module")
def cells(tiny_pretrained, tmp_path_factory) -> Path:
    from netformer.tokenize import TranscriptomeTokenizer
    from netformer.datasets import shared_data_dir
    import anndata as ad

    a = ad.read_h5ad(shared_data_dir() / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")[:64].copy()
    out = tmp_path_factory.mktemp("resume") / "tokenized"
    TranscriptomeTokenizer(tiny_pretrained.vocab, model_input_size=64).write([a], out)
    return out


def run(data: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), str(data), str(out), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(cells) -> Path:
    out = cells.parent / "uninterrupted"
    r = run(cells, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def weights(run_dir: Path) -> bytes:
    return (run_dir / "model" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_is_bitwise_identical(cells, uninterrupted, tmp_path):
    out = tmp_path / "run"
    r = run(cells, out, "--kill-at", "12")  # step 12 = half-way through the second epoch
    assert r.returncode == -9 and not (out / "model").exists()
    assert (out / "checkpoints" / "checkpoint-12").exists()
    r = run(cells, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert weights(out) == weights(uninterrupted)
    hist = json.loads((out / "loss_history.json").read_text())["history"]
    assert [h["step"] for h in hist] == list(range(2, 25, 2))  # one history, no step twice
    assert hist == json.loads((uninterrupted / "loss_history.json").read_text())["history"]


@pytest.mark.slow
def test_incomplete_checkpoint_is_set_aside(cells, uninterrupted, tmp_path):
    out = tmp_path / "run"
    assert run(cells, out, "--kill-at", "8").returncode == -9
    # a kill while checkpoint-12 was being written: only its config.json made it to disk
    partial = out / "checkpoints" / "checkpoint-12"
    partial.mkdir()
    shutil.copy(out / "checkpoints" / "checkpoint-8" / "config.json", partial / "config.json")
    r = run(cells, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "incomplete" in r.stderr and (out / "checkpoints" / "incomplete-checkpoint-12").exists()
    assert weights(out) == weights(uninterrupted)


@pytest.mark.slow
def test_overwrite_starts_afresh_and_keeps_old_results_until_done(cells, uninterrupted, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)  # a finished seed-0 run
    r = run(cells, out, "--seed", "7", "--overwrite", "--kill-at", "12")
    assert r.returncode == -9
    assert weights(out) == weights(uninterrupted)  # the old results survive a kill of the new run
    r = run(cells, out, "--seed", "7", "--overwrite")
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = tmp_path / "fresh7"
    assert run(cells, fresh, "--seed", "7").returncode == 0
    assert weights(out) == weights(fresh) != weights(uninterrupted)  # seed 7's weights, not a resumed seed 0
    assert json.loads((out / "loss_history.json").read_text())["config"]["seed"] == 7
    assert not list(tmp_path.glob(".run.*"))  # no staging folder left behind


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(cells, tmp_path):
    out = tmp_path / "run"
    assert run(cells, out, "--kill-at", "8").returncode == -9
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = run(cells, out, "--lr", "1e-3")
    assert r.returncode != 0 and "other settings (learning_rate)" in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


@pytest.fixture(scope="module")
def kang_folder(tiny_pretrained, tmp_path_factory) -> Path:
    """256-token Kang cells on disk with their dictionary (as ``netformer tokenize`` writes them)."""
    out = tmp_path_factory.mktemp("perturb_resume") / "kang"
    tiny_pretrained.kang.select(range(990, 1030)).save_to_disk(str(out))
    tiny_pretrained.vocab.save(out / "vocab")
    return out


def perturb_cli(model, data, out, *extra) -> subprocess.Popen:
    args = [sys.executable, "-m", "netformer", "perturb", str(model), str(data), "--out", str(out), "--device", "cpu",
            "--state-column", "condition", "--start", "stim", "--goal", "ctrl", "--max-cells", "6",
            "--chunk-cells", "1", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_during_perturb_overwrite_keeps_old_results_and_resumes_exactly(tiny_pretrained, kang_folder, tmp_path):
    import time

    out, fresh = tmp_path / "isp", tmp_path / "fresh"
    assert perturb_cli(tiny_pretrained.model_dir, kang_folder, out, "--seed", "1").wait(600) == 0
    old = (out / "results.parquet").read_bytes()
    job = perturb_cli(tiny_pretrained.model_dir, kang_folder, out, "--overwrite")
    first_chunk = tmp_path / ".isp.overwrite" / "done" / "00000.json"
    t0 = time.time()
    while time.time() - t0 < 300:  # kill -9 once the replacement run has finished its first chunk
        if first_chunk.exists():
            break
        time.sleep(0.05)
    job.kill()
    assert job.wait() == -9
    assert (out / "results.parquet").read_bytes() == old  # the old results survive
    assert perturb_cli(tiny_pretrained.model_dir, kang_folder, out, "--overwrite").wait(600) == 0
    assert perturb_cli(tiny_pretrained.model_dir, kang_folder, fresh).wait(600) == 0
    assert (out / "results.parquet").read_bytes() == (fresh / "results.parquet").read_bytes() != old
    assert not (tmp_path / ".isp.overwrite").exists()
