"""Data jobs on Dask (netformer.cluster): a 2-worker LocalCluster gives the 1-process output, also when a worker
is killed mid-run; gene medians by t-digest; bad input and an unreachable scheduler fail cleanly.

One cluster (2 worker processes, 1 thread each) serves the whole module; real files are read in place from
../shared/data/scrna with small tasks (300 cells) so that every job has several tasks per file.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("crick")

from netformer.cluster import dask_client
from netformer.errors import ClusterError, InputDataError
from netformer.tokenize import TranscriptomeTokenizer, build_vocab, load_tokenized

ROWS = 300  # cells per task: pbmc3k is 9 tasks, kang 7


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def files(scrna):
    return [scrna / "pbmc3k_raw_labeled.h5ad", scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"]


@pytest.fixture(scope="module")
def mixed(scrna, tmp_path_factory):
    """900 pbmc3k cells whose first 600 fail obs.filter_pass and whose n_counts are float64 (kang's are int64):
    two empty tasks, and shards of two Arrow schemas to be cast to the first."""
    import anndata as ad

    sub = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")[:900].copy()
    sub.obs["n_counts"] = sub.obs["n_counts"].astype(np.float64)
    sub.obs["filter_pass"] = (np.arange(900) >= 600).astype(int)
    path = tmp_path_factory.mktemp("mixed") / "pbmc900_filtered.h5ad"
    sub.write_h5ad(path)
    return [path, scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"]


def tokenizer(v2):
    return TranscriptomeTokenizer(v2, chunk_size=150, obs_columns=["n_counts", "batch"])


def assert_same_dataset(one, two):
    a, b = load_tokenized(one), load_tokenized(two)
    ids_a = a.data.table.column("input_ids").combine_chunks()
    ids_b = b.data.table.column("input_ids").combine_chunks()
    assert ids_a.values.to_numpy().tobytes() == ids_b.values.to_numpy().tobytes()
    assert ids_a.offsets.to_numpy().tobytes() == ids_b.offsets.to_numpy().tobytes()
    assert a.column_names == b.column_names and a.features == b.features
    assert a.data.table.equals(b.data.table)  # cell order, cell ids and obs columns too
    sa, sb = (json.loads((p / "netformer_tokenizer.json").read_text())["summary"] for p in (one, two))
    assert sa == sb
    return a


def test_two_workers_equal_one_process(client, files, v2, tmp_path):
    s1 = tokenizer(v2).write(files, tmp_path / "one")
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        s2 = tokenizer(v2).write(files, tmp_path / "two", client=client, rows_per_task=ROWS)
    assert s1 == s2 and s2.n_cells_out == 4700 and s2.files == [f.name for f in files]
    # both workers ran tasks (the plan is copied to each; with one copy the scheduler kept every task beside it)
    assert len({t["worker"] for t in stream.data if "-shared" not in str(t["key"])}) == 2
    ds = assert_same_dataset(tmp_path / "one", tmp_path / "two")
    shards = sorted(p.name for p in (tmp_path / "two").glob("*.arrow"))
    assert len(shards) == 16 and shards[-1] == "data-00015-of-00016.arrow"  # one per task, named in order
    assert not list((tmp_path / "two").glob("*.part")) and not list((tmp_path / "two").glob("task-*"))
    assert ds["cell_id"][:3] == list(load_tokenized(tmp_path / "one")["cell_id"][:3])


def test_empty_tasks_and_schemas_cast_to_the_first(client, mixed, v2, tmp_path):
    s1 = tokenizer(v2).write(mixed, tmp_path / "one")
    s2 = tokenizer(v2).write(mixed, tmp_path / "two", client=client, rows_per_task=ROWS)
    assert s1 == s2 and s2.n_cells_filtered == 600 and s2.n_cells_out == 300 + 2000
    ds = assert_same_dataset(tmp_path / "one", tmp_path / "two")
    assert str(ds.features["n_counts"].dtype) == "float64"  # the first file's type; kang's int64 cast
    assert len(list((tmp_path / "two").glob("*.arrow"))) == 1 + 7  # the two all-filtered tasks wrote nothing


def test_a_killed_worker_is_retried_and_the_output_is_the_same(client, files, scrna, v2, tmp_path):
    files = [*files, scrna / "pbmc_10x_3batches" / "1k_PBMC_v2_raw.h5ad"]
    tokenizer(v2).write(files, tmp_path / "one")
    pids = client.run(os.getpid)
    killed = {}

    def kill_when_a_task_is_done():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            busy = [w for w, keys in client.processing().items() if keys]
            if list(tmp_path.glob(".two.tmp-*/task-*.arrow")) and busy:
                killed[busy[0]] = pids[busy[0]]
                os.kill(pids[busy[0]], signal.SIGKILL)
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_when_a_task_is_done)
    watcher.start()
    summary = tokenizer(v2).write(files, tmp_path / "two", client=client, rows_per_task=ROWS)
    watcher.join()
    assert killed, "no worker was killed while it ran a task"
    assert summary.n_cells_out == 4700 + 996
    assert_same_dataset(tmp_path / "one", tmp_path / "two")
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert set(client.run(os.getpid).values()) != set(pids.values())


def test_tdigest_medians_on_dask_equal_one_process_and_are_close_to_exact(client, files):
    split = {"chunk_size": 500, "rows_per_task": 1000}  # 5 tasks: 3 of pbmc3k, 2 of kang
    exact = build_vocab(files, min_cells=5, medians="exact")
    exact_dask = build_vocab(files, min_cells=5, medians="exact", client=client, **split)
    sketch = build_vocab(files, min_cells=5, medians="tdigest", **split)
    sketch_dask = build_vocab(files, min_cells=5, medians="tdigest", client=client, **split)
    assert exact.gene_median == exact_dask.gene_median
    assert sketch.gene_median == sketch_dask.gene_median  # merged in task order: independent of the workers
    assert sketch.token_dict == exact.token_dict  # cells per gene from the digests' sizes: the same genes
    genes = list(exact.gene_median)
    rel = np.array([abs(sketch.gene_median[g] / exact.gene_median[g] - 1) for g in genes])
    assert len(genes) > 10_000 and np.median(rel) < 1e-3 and np.percentile(rel, 95) < 0.02


def test_bad_input_fails_in_the_driver_before_any_task(client, files, v2, tmp_path):
    before = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    tok = TranscriptomeTokenizer(v2, obs_columns=["cell_type"])  # kang has no cell_type
    with pytest.raises(InputDataError, match="cell_type"):
        tok.write(files, tmp_path / "out", client=client, rows_per_task=ROWS)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == before


def test_bad_counts_in_a_task_raise_their_type_in_the_driver(client, scrna, v2, tmp_path):
    import anndata as ad

    cells = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")[:600].copy()
    cells.X = cells.X.astype(np.float32).tocsr()
    cells.X.data[cells.X.indptr[400]:] *= 1.5  # non-integer counts from cell 400 on: the second task's rows
    cells.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(InputDataError, match="not integers"):
        TranscriptomeTokenizer(v2, chunk_size=100).write(tmp_path / "scaled.h5ad", tmp_path / "out", client=client,
                                                         rows_per_task=300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaled.h5ad"]  # no output, no temporary


def test_cli_joins_a_scheduler_and_an_unreachable_one_exits_2(client, scrna, tmp_path, capsys, monkeypatch):
    from netformer import cluster
    from netformer.cli import main

    address = client.scheduler.address
    small = scrna / "pbmc_10x_3batches" / "1k_PBMC_v2_raw.h5ad"  # 996 cells, symbols in the index, var.ensembl_id
    argv = ["tokenize", str(small), "--out", str(tmp_path / "cli"), "--build-vocab", "--medians", "tdigest",
            "--scheduler", address, "--rows-per-task", str(ROWS), "--chunk-size", "150"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    vocab = build_vocab([small], medians="tdigest", chunk_size=150, rows_per_task=ROWS)
    TranscriptomeTokenizer(vocab, chunk_size=150).write([small], tmp_path / "api")
    assert_same_dataset(tmp_path / "api", tmp_path / "cli")

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 2.0)
    capsys.readouterr()
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:3], str(tmp_path / "never"), "--build-vocab", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and time.perf_counter() - t0 < 15
    assert err.count("\n") == 0 and "Dask scheduler" in err and "tcp://127.0.0.1:9" in err
    assert not (tmp_path / "never").exists()
    with pytest.raises(ClusterError), dask_client(scheduler="no-port-here"):
        pass
