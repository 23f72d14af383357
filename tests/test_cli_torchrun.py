"""Multi-process pretraining as the README documents it (`torchrun --nproc_per_node N -m netformer pretrain`),
with two CPU processes (gloo): one DDP run, the model written once, loadable with its dictionary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import pytest

from netformer.cli import main


def test_torchrun_pretrain_on_cpu(scrna, tmp_path):
    kang = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")
    kang[:300].copy().write_h5ad(tmp_path / "kang300.h5ad")
    with pytest.raises(SystemExit) as ok:
        main(["tokenize", str(tmp_path / "kang300.h5ad"), "--build-vocab", "--input-size", "64",
              "--out", str(tmp_path / "tok")])
    assert ok.value.code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "netformer", "pretrain", str(tmp_path / "tok"), "--out", str(tmp_path / "run"), "--preset", "tiny",
           "--max-steps", "4", "--batch-size", "8", "--warmup-steps", "1", "--logging-steps", "1", "--save-steps", "100"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    from netformer.genes import dataset_vocab, model_vocab
    from netformer.model import load_model

    model = load_model(tmp_path / "run" / "model", kind="mlm", device="cpu")
    assert model.config.num_hidden_layers == 2
    assert model_vocab(tmp_path / "run" / "model").digest == dataset_vocab(tmp_path / "tok")[1]
    # one data-parallel run: 4 steps of 8 cells on each of 2 processes is 64 of 300 cells
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())["history"]
    assert len(history) == 4 and history[-1]["epoch"] == pytest.approx(64 / 300, abs=0.01)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
