"""Tokenization on Dask: 1 vs 2 workers (and the 1-process path) on a large synthetic file, same output.

Each configuration tokenizes the same file into a fresh dataset directory with the V2 dictionaries (gc104M,
input size 4,096, ``<cls>``/``<eos>``):

- **1 process**: ``TranscriptomeTokenizer(vocab).write(file, out)`` in this process (the encoding split over
  ``threads`` = the CPUs available, at most 4, plus a read-ahead thread);
- **Dask, N workers**: ``write(file, out, client=client, rows_per_task=...)`` on a fresh
  ``dask_client(workers=N)`` (a ``LocalCluster`` of N worker processes, 1 thread each), N = 1 and 2.

Measured: wall time of the ``write`` call (for Dask: the cluster is started and warmed up before the clock
starts: each worker has imported netformer and loaded the compiled kernel), cells/s, cells/s per worker,
the speed-up of 2 workers over 1, and the peak RSS of each worker process (``VmHWM``, reset before the job and
read on the worker after it, and its RSS before the job: the difference is what the tasks needed; the workers are fresh per
configuration). The outputs are compared with the 1-process one: a SHA-256 over every cell's ``input_ids``
(values and lengths) and ``cell_id``, read back in slices from the memory-mapped Arrow files.

The synthetic file comes from ``benchmarks/make_synthetic_h5ad.py`` (created here when missing). Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/dask_tokenize.py --file /tmp/netformer_bench/synth_1m.h5ad \\
        --md benchmarks/results/dask_tokenize.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

GENES = "/work/shared/data/genes"


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_memory() -> dict:
    """On a worker (or here): its current RSS and its peak RSS since :func:`warm_up` (``VmRSS``, ``VmHWM``; MiB)
    and the CPU seconds it has used (user + system, all its threads)."""
    t = os.times()
    return {"rss": _status_mib("VmRSS"), "peak": _status_mib("VmHWM"), "cpu": t.user + t.system}


def warm_up() -> int:
    """On a worker (or here): import what the tasks use, load the compiled kernel (not timed), and reset the peak
    RSS (``/proc/self/clear_refs``; a forked worker inherits its parent's ``ru_maxrss``)."""
    import datasets  # noqa: F401

    from netformer.tokenize import _compiled_kernel

    _compiled_kernel()
    Path("/proc/self/clear_refs").write_text("5")
    return os.getpid()


def digest(path: Path, step: int = 50_000) -> tuple[int, str]:
    """(cells, SHA-256 of input_ids values, lengths and cell ids) of a tokenized dataset, read in slices."""
    from netformer.tokenize import load_tokenized

    table = load_tokenized(path).data.table
    h = hashlib.sha256()
    for start in range(0, table.num_rows, step):
        part = table.slice(start, step)
        ids = part.column("input_ids").combine_chunks()
        h.update(ids.flatten().to_numpy().tobytes())
        h.update(part.column("length").combine_chunks().to_numpy().tobytes())
        h.update("\n".join(part.column("cell_id").to_pylist()).encode())
    return table.num_rows, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default="/tmp/netformer_bench/synth_1m.h5ad")
    ap.add_argument("--cells", type=int, default=1_000_000, help="cells of the synthetic file if it is missing")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rows-per-task", type=int, default=None, help="default: netformer.cluster.ROWS_PER_TASK")
    ap.add_argument("--out", default="/tmp/netformer_bench/dask_tokenize_out")
    ap.add_argument("--md", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the tokenized outputs")
    args = ap.parse_args()

    path = Path(args.file)
    if not path.exists():
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_synthetic_h5ad.py")), "--cells",
                        str(args.cells), "--out", str(path)], check=True)

    import h5py

    from netformer._io import atomic_file
    from netformer.cluster import ROWS_PER_TASK, available_cpus, dask_client, row_tasks
    from netformer.genes import GeneVocab
    from netformer.tokenize import TranscriptomeTokenizer

    with h5py.File(path) as f:
        n_cells = int(f["obs"][f["obs"].attrs["_index"]].shape[0])
    vocab = GeneVocab.from_geneformer(f"{GENES}/geneformer_gc104M")
    rows = args.rows_per_task or ROWS_PER_TASK
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    results = []

    def tok():
        return TranscriptomeTokenizer(vocab, model_input_size=4096)

    warm_up()
    load0 = os.getloadavg()[0]
    base = worker_memory()
    t0 = time.perf_counter()
    s = tok().write(path, out / "one")
    wall = time.perf_counter() - t0
    end = worker_memory()
    results.append({"name": "1 process", "workers": 0, "wall": wall, "cells": s.n_cells_out,
                    "mem": f"{end['peak']:.0f} (before: {base['rss']:.0f})", "cpu": end["cpu"] - base["cpu"]})
    print(results[-1], flush=True)
    reference = digest(out / "one")

    for n in [int(w) for w in args.workers.split(",")]:
        with dask_client(workers=n) as client:
            client.run(warm_up)
            before = client.run(worker_memory)
            t0 = time.perf_counter()
            s = tok().write(path, out / f"dask{n}", client=client, rows_per_task=rows)
            wall = time.perf_counter() - t0
            after = client.run(worker_memory)
        mem = "; ".join(f"{after[w]['peak']:.0f} (before: {before[w]['rss']:.0f})" for w in sorted(after))
        cpu = sum(after[w]["cpu"] - before[w]["cpu"] for w in after)
        results.append({"name": f"Dask, {n} worker{'s' * (n > 1)}", "workers": n, "wall": wall,
                        "cells": s.n_cells_out, "mem": mem, "cpu": cpu})
        results[-1]["same"] = digest(out / f"dask{n}") == reference
        print(results[-1], flush=True)
        if not args.keep:
            shutil.rmtree(out / f"dask{n}", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    one = next((r for r in results if r["workers"] == 1), None)
    lines = [
        "# Tokenization on Dask: 1 vs 2 workers",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/dask_tokenize.py --file {path}"
        + (f" --rows-per-task {args.rows_per_task}" if args.rows_per_task else "") + "`",
        "",
        (f"Input: `{path.name}`, {n_cells:,} synthetic cells x 32,738 genes (resampled pbmc3k cells, "
         "benchmarks/make_synthetic_h5ad.py). V2 dictionaries (gc104M), input size 4,096. "
         f"Dask: rows per task {rows:,} rounded to whole chunks of 4,096 ({len(row_tasks(n_cells, rows, 4096))} "
         "tasks), `LocalCluster` of 1-thread worker processes started and warmed up before the clock starts "
         "(imports, compiled kernel; also for the 1-process run)."),
        "",
        (f"Machine: {platform.processor() or platform.machine()}, {available_cpus()} CPUs available, "
         f"{os.cpu_count()} in the machine; other jobs shared it (1-minute load average {load0:.1f} at the start, "
         f"{os.getloadavg()[0]:.1f} at the end). CPU s: user + system seconds of the processes that encoded "
         "(the workers; for 1 process, this process), all threads; cells per CPU-second is the throughput a "
         "worker gets from a core of its own."),
        "",
        ("| run | wall s | cells/s | cells/s per worker | speed-up vs 1 worker | CPU s | cells per CPU-second "
         "| peak RSS MiB per process (RSS before the job) | output equals 1 process |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = r["cells"] / r["wall"]
        per = f"{rate / r['workers']:,.0f}" if r["workers"] else ""
        speed = f"{one['wall'] / r['wall']:.2f}x" if one and r["workers"] else ""
        same = "" if r["workers"] == 0 else ("yes (SHA-256 of input_ids, lengths, cell ids)" if r["same"] else "**NO**")
        lines.append(f"| {r['name']} | {r['wall']:.1f} | {rate:,.0f} | {per} | {speed} | {r['cpu']:.0f} | "
                     f"{r['cells'] / r['cpu']:,.0f} | {r['mem']} | {same} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:  # written whole, atomically
        with atomic_file(args.md) as tmp:
            tmp.write_text(text)


if __name__ == "__main__":
    main()
