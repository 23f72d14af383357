"""Data jobs on a Dask cluster: tokenization and gene medians of a corpus as (file, row range) tasks.

The work of :meth:`netformer.tokenize.TranscriptomeTokenizer.write` and
:func:`netformer.tokenize.build_vocab` is cut into tasks of one file's row range each (``rows_per_task``
rows, rounded to whole chunks of the reader). The tasks run on ``dask.distributed`` workers: a
``LocalCluster`` sized to the machine, or any cluster whose scheduler the driver can reach (SLURM with
dask-jobqueue, Kubernetes, ...), see ``docs/distributed.md``. This module holds what is particular to
Dask: the client (:func:`dask_client`), the task split (:func:`row_tasks`), running tasks with progress
and results in task order (:func:`run_tasks`), and the tokenization job (:func:`plan_tokenize`). The
encoding and the medians themselves are the single-process code of :mod:`netformer.tokenize`, called per
task.

Guarantees: the driver checks every input (gene ids, obs columns, ``n_counts``) before any task or
output exists, so bad input fails with the same typed error as in one process; tasks are idempotent
(each attempt writes its shards under a fresh temporary name and renames them to the task's own names),
so a task that Dask retries after its worker died gives the same output; results are combined in task
order, so the output does not depend on the number of workers or the order tasks finish in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ClusterError, ConfigError

log = logging.getLogger(__name__)

ROWS_PER_TASK = 50_000
"""Default rows (cells) of one file per task: ~2-3 s of encoding on one core, shards of ~160 MB (V2, 4,096)."""

CONNECT_TIMEOUT = 15.0
"""Seconds :func:`dask_client` waits for a scheduler (``scheduler=``) before it gives up."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, *,
                timeout: float | None = None, memory_limit: str | float = "auto") -> Iterator[Any]:
    """A ``distributed.Client`` for data jobs, closed (with its cluster) on exit.

    Parameters
    ----------
    workers
        Start a ``distributed.LocalCluster`` of ``workers`` worker processes with one thread each
        (``processes=True``: the encoding holds the GIL in parts, processes scale, threads do not);
        ``0`` = one per CPU available (:func:`available_cpus`). Each worker gets ``memory_limit``
        (default ``"auto"``: the machine's memory divided among the workers).
    scheduler
        Address of a running scheduler (``tcp://HOST:8786``; e.g. ``SLURMCluster(...).scheduler_address``)
        to join instead. Exactly one of ``workers`` and ``scheduler`` is given.
    timeout
        Seconds to wait for the scheduler (default None: :data:`CONNECT_TIMEOUT`, 15).

    Raises
    ------
    ConfigError
        Neither or both of ``workers`` and ``scheduler``, or a negative ``workers``.
    ClusterError
        The scheduler cannot be reached within ``timeout`` seconds, or the address is malformed.
    """
    if (workers is None) == (scheduler is None):
        raise ConfigError("give exactly one of workers=N (a local cluster; 0 = one per CPU) and "
                          "scheduler=ADDRESS (join a running cluster)")
    from distributed import Client, LocalCluster

    timeout = CONNECT_TIMEOUT if timeout is None else float(timeout)
    if scheduler is not None:
        from distributed.comm import resolve_address

        try:
            resolve_address(scheduler)  # a malformed address or unknown host fails here, at once
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{scheduler!r} is not a reachable Dask scheduler address ({type(exc).__name__}: "
                               f"{exc}); give tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786") from None
        try:
            client = Client(scheduler, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - OSError / TimeoutError; garbage from a non-Dask port surfaces as anything
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler!r} within {timeout:g} s ({type(exc).__name__}: {exc}); "
                "check the address (tcp://HOST:8786) and that the scheduler runs, or use --workers N for a "
                "cluster on this machine") from None
        log.info("joined the Dask cluster at %s (%d workers)", scheduler, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return
    n = int(workers)
    if n < 0:
        raise ConfigError(f"workers must be 0 (one per CPU) or positive, got {n}")
    n = n or available_cpus()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dashboard needs bokeh" and port notes
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=None)
    client = Client(cluster)
    log.info("started a local Dask cluster: %d worker processes, 1 thread each", n)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def row_tasks(n_obs: int, rows_per_task: int | None, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges ``(start, stop)`` covering ``0:n_obs`` in order, each ``rows_per_task`` rows (default
    :data:`ROWS_PER_TASK`) rounded to a whole number of ``chunk_size`` chunks (at least one), so a
    task reads the same chunks a single pass over the file reads. Raises ConfigError for ``rows_per_task < 1``."""
    rows = ROWS_PER_TASK if rows_per_task is None else int(rows_per_task)
    if rows < 1:
        raise ConfigError(f"rows_per_task must be positive, got {rows}")
    step = max(1, round(rows / chunk_size)) * chunk_size
    return [(a, min(a + step, n_obs)) for a in range(0, n_obs, step)]


def _same(x):
    return x


def run_tasks(fn: Callable, tasks: Sequence[tuple], client=None, *, shared: Any = None,
              desc: str = "tasks") -> Iterator:
    """Yield ``fn(shared, *task)`` for every task, in task order, run here or on a Dask ``client``.

    Without a client the tasks run one after another in this process. With one, all are submitted at
    once (``shared`` is sent to the cluster once, as a task of its own that the scheduler can recompute if
    its worker dies) and their results are gathered as they finish, yielded in task order. Progress: a
    progress bar over tasks and a log line per 5% of tasks done (:mod:`netformer.progress`). A task whose worker dies is run again by
    Dask (up to ``distributed.scheduler.allowed-failures`` times, default 3); an error raised by a task
    (e.g. :class:`~netformer.errors.InputDataError` on bad counts) cancels the others and is raised here.
    Raises :class:`~netformer.errors.ClusterError` when a task keeps killing its workers.
    """
    from .progress import Progress

    bar = Progress(len(tasks), desc, unit="task", log_every=0.05, logger=log)
    try:
        if client is None:
            for task in tasks:
                result = fn(shared, *task)
                bar.update()  # before the result is handed on: the caller may stop after the last one
                yield result
            return
        yield from _run_on_dask(fn, tasks, client, shared, desc, bar)
    finally:
        bar.close()


def _run_on_dask(fn, tasks, client, shared, desc, bar) -> Iterator:
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    run = f"{desc.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "large object in task graph": sent once, on purpose
        shared_f = client.submit(_same, shared, key=f"netformer-{run}-shared")
        # a copy on every worker: else the scheduler keeps every task beside the one copy (data locality)
        # and, on a quiet cluster, one worker runs them all
        client.replicate([shared_f])
        futures = [client.submit(fn, shared_f, *task, key=f"netformer-{run}-{i:06d}")
                   for i, task in enumerate(tasks)]
    index = {f.key: i for i, f in enumerate(futures)}
    log.info("%s: %d tasks submitted to %d Dask workers", desc, len(tasks), len(client.scheduler_info()["workers"]))
    results: dict[int, Any] = {}
    nxt = 0
    try:
        for f in as_completed(futures):
            try:
                results[index[f.key]] = f.result()
            except KilledWorker as exc:
                raise ClusterError(
                    f"{desc}: the workers running one task died again and again ({exc}); give the workers more "
                    "memory or use fewer rows per task (--rows-per-task)") from None
            f.release()
            bar.update()
            while nxt in results:
                yield results.pop(nxt)
                nxt += 1
    finally:
        client.cancel([*futures, shared_f])


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------
@dataclass
class TokenizeJob:
    """A tokenization checked and cut into tasks by :func:`plan_tokenize`; :meth:`run` executes it.

    ``tasks`` are ``(file index, start, stop)`` in cell order; ``summaries`` the per-file summaries of
    the checks (cells in, filtered, genes mapped), completed by :meth:`run` with the tasks' counts."""

    tokenizer: Any  # netformer.tokenize.TranscriptomeTokenizer
    paths: list[str]
    summaries: list  # netformer.tokenize.TokenizeSummary per file
    tasks: list[tuple[int, int, int]]

    def run(self, client, folder: Path, shard_limit: int) -> tuple[list[Path], Any]:
        """Run the tasks on ``client``; each writes its shards into ``folder`` (shared by the workers).

        Returns the shards in cell order and the schema of the first (shards of other schemas, e.g. an obs
        column typed differently in another file, are cast to it), or ``(shards, None)`` if no cell came
        out. Sets the tokenizer's ``summary`` as a single-process run would."""
        from .tokenize import TokenizeSummary, _cast_shard, _RowTally

        tok = self.tokenizer
        folder = Path(folder)
        args = [(self.paths[f], i, a, b, str(folder), shard_limit) for i, (f, a, b) in enumerate(self.tasks)]
        tallies = [_RowTally() for _ in self.paths]
        parts: list[Path] = []
        schema = None
        for (f, _, _), (names, task_schema, tally) in zip(
                self.tasks, run_tasks(_tokenize_task, args, client, shared=tok, desc="tokenize")):
            tallies[f].extend(tally)
            if task_schema is None:
                continue
            shards = [folder / n for n in names]
            if schema is None:
                schema = task_schema
            elif task_schema != schema:
                for s in shards:
                    _cast_shard(s, schema)
            parts.extend(shards)
        for stray in folder.glob("*.part"):  # attempts of tasks whose worker died
            stray.unlink(missing_ok=True)
        tok.summary = TokenizeSummary()
        for path, summary, tally in zip(self.paths, self.summaries, tallies):
            tally.close_file(summary, Path(path).name)
            tok.summary = tok.summary.merge(summary)
        return parts, schema


def plan_tokenize(tokenizer, sources: Sequence, rows_per_task: int | None = None) -> TokenizeJob:
    """Check every file and cut the job into (file, row range) tasks; writes nothing.

    Each file is opened and planned as the single-process path plans it
    (:meth:`~netformer.tokenize.TranscriptomeTokenizer._plan_source`), so bad gene ids, obs columns or
    ``n_counts`` raise their typed error here, before any task or output. ``sources`` must be paths that
    the workers can open (ConfigError for in-memory AnnData). ``rows_per_task``: see :func:`row_tasks`.
    """
    from .readers import open_counts
    from .tokenize import TokenizeSummary

    paths, summaries, tasks = [], [], []
    for f, source in enumerate(sources):
        if not isinstance(source, (str, os.PathLike)):
            raise ConfigError("tokenizing on Dask needs file paths (the workers open the files); write the AnnData "
                              "to .h5ad first, or tokenize it without a client")
        summary = TokenizeSummary()
        with open_counts(source, tokenizer.config.layer) as src:
            tokenizer._plan_source(src, summary)
            tasks += [(f, a, b) for a, b in row_tasks(src.n_obs, rows_per_task, tokenizer.config.chunk_size)]
        paths.append(str(Path(source).absolute()))
        summaries.append(summary)
    log.info("tokenize: %d files, %d cells, %d tasks", len(paths), sum(s.n_cells_in for s in summaries), len(tasks))
    return TokenizeJob(tokenizer, paths, summaries, tasks)


_OPEN = threading.local()  # per worker thread: the file its last task read, kept open, with its plan


def _open_planned(tok, path: str):
    """The open :class:`~netformer.readers.CountSource` of ``path`` and its plan, reused by the next task of the
    same file in this thread (opening reads the file's obs: ~0.5 s for 1M cells, once instead of once a task).
    Keyed by the tokenizer object (held, so its id stays unique), the path, size and modification time."""
    from .readers import open_counts
    from .tokenize import TokenizeSummary

    st = os.stat(path)
    key = (id(tok), path, st.st_size, st.st_mtime_ns)
    if getattr(_OPEN, "key", None) != key:
        if getattr(_OPEN, "stack", None) is not None:
            _OPEN.stack.close()
            _OPEN.stack = None
        stack = contextlib.ExitStack()
        try:
            src = stack.enter_context(open_counts(path, tok.config.layer))
            plan = tok._plan_source(src, TokenizeSummary(), notes=False)
        except BaseException:
            stack.close()
            raise
        _OPEN.key, _OPEN.stack, _OPEN.src, _OPEN.plan, _OPEN.tok = key, stack, src, plan, tok
    return _OPEN.src, _OPEN.plan


def _tokenize_task(tok, path: str, index: int, start: int, stop: int, folder: str, shard_limit: int):
    """One task: rows ``start:stop`` of ``path`` encoded into shards ``folder/task-{index}-{k}.arrow``.

    Written under a name of this attempt first and renamed when complete, so a retried task (its worker
    died) replaces the same shards with the same content. Encodes on ``config.threads`` threads, default 1
    (the cluster's workers are the parallelism). Returns (shard names, schema or None, row tally)."""
    from .tokenize import _RowTally, _write_shards

    folder = Path(folder)
    tally = _RowTally()
    src, plan = _open_planned(tok, path)
    tables = tok._encode_rows(src, plan, tally, start, stop, threads=tok.config.threads or 1)
    attempt = f".attempt-{uuid.uuid4().hex}-task-{index:06d}"
    parts, schema = _write_shards(tables, folder, attempt, shard_limit)
    names = [f"task-{index:06d}-{k:05d}.arrow" for k in range(len(parts))]
    for part, name in zip(parts, names):
        os.replace(part, folder / name)
    return names, schema, tally
