"""Multi-process pretraining as the README documents it (`torchrun --nproc_per_node N -m netformer -- pretrain`),
with two CPU processes (gloo): one DDP run, the model written once, loadable with its dictionary, and its
loss trajectory that of a one-process run with the same global batch (16 cells: 2 x 8 against 1 x 16).

The two runs see the same cells at every step and mask each cell the same way (the masking of a cell
depends on its tokens, not on its batch); they differ in dropout draws and in how the loss is averaged
(per rank, then over ranks), so the losses agree within a tolerance, not bitwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from netformer.cli import main

LOSS_TOLERANCE = 0.02  # nats per step (measured: at most 0.005, losses 8.19 -> 8.15 over these 6 steps)


def test_torchrun_pretrain_on_cpu(scrna, tmp_path):
    kang = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")
    kang[:300].copy().write_h5ad(tmp_path / "kang300.h5ad")
    with pytest.raises(SystemExit) as ok:
        main(["tokenize", str(tmp_path / "kang300.h5ad"), "--build-vocab", "--input-size", "64",
              "--out", str(tmp_path / "tok")])
    assert ok.value.code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "netformer", "--", "pretrain", str(tmp_path / "tok"), "--out", str(tmp_path / "run"), "--preset", "tiny",
           "--max-steps", "6", "--batch-size", "8", "--warmup-steps", "1", "--logging-steps", "1", "--save-steps", "100"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    from netformer.genes import dataset_vocab, model_vocab
    from netformer.model import load_model

    model = load_model(tmp_path / "run" / "model", kind="mlm", device="cpu")
    assert model.config.num_hidden_layers == 2
    assert model_vocab(tmp_path / "run" / "model").digest == dataset_vocab(tmp_path / "tok")[1]
    # one data-parallel run: 6 steps of 8 cells on each of 2 processes is 96 of 300 cells
    history = json.loads((tmp_path / "run" / "loss_history.json").read_text())["history"]
    assert len(history) == 6 and history[-1]["epoch"] == pytest.approx(96 / 300, abs=0.01)
    # the same global batch in one process
    with pytest.raises(SystemExit) as ok:
        main([*cmd[cmd.index("pretrain"):], "--out", str(tmp_path / "one"), "--batch-size", "16", "--device", "cpu"])
    assert ok.value.code == 0
    single = json.loads((tmp_path / "one" / "loss_history.json").read_text())["history"]
    two, one = np.array([h["loss"] for h in history]), np.array([h["loss"] for h in single])
    print("loss 2 x 8:", two.round(4), "1 x 16:", one.round(4))
    assert len(one) == 6 and np.abs(two - one).max() < LOSS_TOLERANCE
    assert two[-1] < two[0]  # and it learns
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
