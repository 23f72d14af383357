"""Model jobs over several processes (torchrun, gloo on the CPU), as the README documents them:
`torchrun --nproc_per_node 2 -m netformer perturb ...` equals the one-process run table for table, a
run whose rank is killed with SIGKILL resumes (with another number of ranks) to the same tables, and
`netformer embed` under 2 ranks writes the one-process embeddings.

Real cells: Kang 2018 stimulated PBMCs on the tiny pretrained test model, one cell per chunk, fp32,
one CPU thread per process (the same kernels in every process, so the shifts are bitwise equal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from netformer.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false",
       "OMP_WAIT_POLICY": "PASSIVE"}


def torchrun(n: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "netformer", "--", *args]  # `--`: netformer's options are never taken for torchrun's (--start)


def in_process(args: list[str]) -> None:
    """The one-process run, with one thread like each rank."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as ok:
            main(args)
        assert ok.value.code == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kang_dir(tiny_pretrained, tmp_path_factory):
    data = tmp_path_factory.mktemp("dist") / "kang_tok"
    tiny_pretrained.kang.save_to_disk(str(data))
    return data


def perturb_args(t, data, out, n_cells=6) -> list[str]:
    return ["perturb", str(t.model_dir), str(data), "--out", str(out), "--state-column", "condition",
            "--start", "stim", "--goal", "ctrl", "--max-cells", str(n_cells), "--chunk-cells", "1",
            "--device", "cpu", "--precision", "fp32", "--seed", "0"]


def assert_same_run(a, b) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(a / "results.parquet"), pd.read_parquet(b / "results.parquet"))
    pd.testing.assert_frame_equal(pd.read_csv(a / "genes.csv"), pd.read_csv(b / "genes.csv"))


def test_perturb_two_ranks_equal_one_and_a_killed_rank_resumes(tiny_pretrained, kang_dir, tmp_path):
    t = tiny_pretrained
    in_process(perturb_args(t, kang_dir, tmp_path / "one"))
    one = pd.read_parquet(tmp_path / "one" / "results.parquet")
    assert one["cell_index"].nunique() == 6 and len(one) > 100

    r = subprocess.run(torchrun(2, perturb_args(t, kang_dir, tmp_path / "two")), capture_output=True, text=True,
                       env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert sorted(p.name for p in (tmp_path / "two" / "done").iterdir()) == [f"{i:05d}.json" for i in range(6)]

    # kill -9 one rank once the first chunk is done; torchrun stops the other; the run resumes on 1 rank
    killed = tmp_path / "killed"
    job = subprocess.Popen(torchrun(2, perturb_args(t, kang_dir, killed)), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (killed / "done").is_dir() or not any((killed / "done").iterdir()):
            assert job.poll() is None and time.time() < deadline, "the 2-rank run ended before a chunk was done"
            time.sleep(0.05)
        ranks = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        assert ranks, "no rank process found under torchrun"
        os.kill(int(ranks[-1]), signal.SIGKILL)
        assert job.wait(timeout=120) != 0
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    n_done = len(list((killed / "done").iterdir()))
    assert 1 <= n_done < 6 and not (killed / "results.parquet").exists()
    in_process(perturb_args(t, kang_dir, killed))
    assert_same_run(tmp_path / "one", killed)


def test_embed_two_ranks_equal_one(tiny_pretrained, kang_dir, tmp_path):
    t = tiny_pretrained
    args = ["embed", str(t.model_dir), str(kang_dir), "--device", "cpu", "--precision", "fp32", "--chunk-cells", "500"]
    in_process([*args, "--out", str(tmp_path / "one.parquet")])
    r = subprocess.run(torchrun(2, [*args, "--out", str(tmp_path / "two.parquet")]), capture_output=True, text=True,
                       env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    one, two = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "two.parquet")
    assert len(one) == len(t.kang) == 2000
    pd.testing.assert_frame_equal(one, two)
    dims = one.filter(like="dim_").to_numpy()
    assert np.isfinite(dims).all() and dims.std(axis=0).mean() > 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the work folder is gone


def test_finetune_two_ranks_trains_one_model(tiny_pretrained, scrna, tmp_path, monkeypatch, capsys):
    import anndata as ad

    from netformer.classify import CellClassifier

    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")
    types = ["CD4 T cells", "CD14+ Monocytes", "B cells"]
    idx = np.sort(np.concatenate([np.flatnonzero(a.obs["cell_type"] == t)[:80] for t in types]))
    a[idx].copy().write_h5ad(tmp_path / "cells.h5ad")
    args = ["finetune", "cell", str(tmp_path / "cells.h5ad"), str(tiny_pretrained.model_dir), "--out",
            str(tmp_path / "ft"), "--folds", "0", "--search", "0", "--epochs", "3", "--max-length", "64",
            "--batch-size", "8", "--device", "cpu"]
    r = subprocess.run(torchrun(2, args), capture_output=True, text=True, env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes: 16 cells per optimiser step" in r.stderr
    clf = CellClassifier.load(tmp_path / "ft" / "model", device="cpu")
    history = clf.history_
    assert [h["n_train"] for h in history] == [240] * 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "ft" / "config.json").exists()
    # cross-validation and search are separate fits: refused under torchrun, before anything is written
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as bad:
        main([*args[:5], str(tmp_path / "cv"), "--folds", "3", *args[8:]])
    assert bad.value.code == 2 and "under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()
