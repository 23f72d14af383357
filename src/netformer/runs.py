"""Resumable runs: one folder, one manifest, one rule for resuming, refusing and replacing.

A long job (k-fold cross-validation, a hyperparameter search, in silico perturbation) writes its
finished pieces into a folder whose ``manifest.json`` records a fingerprint of everything that
determines the result (settings, model, cells). :func:`open_run` decides what a new start does:

- nothing there: a fresh run;
- the same fingerprint: resume (skip finished pieces), or read back a finished result;
- other settings over an unfinished run: :class:`~netformer.errors.ConfigError` naming them;
- a finished run with other settings, or foreign files: :class:`~netformer.errors.OutputExistsError`;
- the processes of one ``torchrun`` job share one run (:func:`open_shared_run`): rank 0 opens it, the
  others join, and each marks the pieces it finishes with its own file (:func:`mark_done`), so no two
  processes write one file and a resume may use another number of processes;
- ``overwrite``: the new run works in a staging folder beside the old one (``.NAME.overwrite``,
  itself resumable) and replaces it only when complete (:meth:`RunFolder.commit`), so a kill -9 at
  any moment leaves one complete result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ._io import (
    atomic_file,
    check_output,
    clean_stale_temporaries,
    remove_dir,
    replace_dir,
)
from .errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def tokens_digest(dataset, rows) -> str:
    """16 hex digits of SHA-256 over ``rows`` (indices into a tokenized dataset) and those cells' ``input_ids``:
    what a resumed run must find again in its input."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    h = hashlib.sha256(rows.tobytes())
    for ids in dataset.select(rows.tolist()).with_format("arrow")[:]["input_ids"].to_pylist():
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def parameters_digest(model) -> str:
    """16 hex digits of SHA-256 over every parameter's name and bytes (as float32 on the CPU, so a run may
    resume on another device): what a resumed run must find again in its model."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().cpu()
        h.update(name.encode())
        h.update((t.float() if t.is_floating_point() else t).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(settings: Mapping) -> str:
    """SHA-256 of the settings as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def settings_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """Names of the settings that differ (``config.epochs``; ``the model`` / ``the cells`` for digests)."""
    names = {"model": "the model", "cells": "the cells", "gene_labels": "the gene labels"}
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += settings_diff(a, b, f"{prefix}{k}.")
        else:
            out.append(names.get(k, f"{prefix}{k}") if not prefix else f"{prefix}{k}")
    return out


def read_manifest(folder: Path) -> dict | None:
    """``folder/manifest.json``, or None when absent or unreadable (a kill while it was written)."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        log.warning("%s is unreadable; that run is treated as foreign", path)
        return None


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")


_TEMPORARY = re.compile(r"^\.(.+)\.tmp-\d+-")


def _clean_stale(folder: Path) -> None:
    """Remove the temporaries that killed writers left in ``folder`` and its fold folders."""
    for d in [folder, *[p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]]:
        for name in {m.group(1) for p in d.iterdir() if (m := _TEMPORARY.match(p.name))}:
            clean_stale_temporaries(d / name)


@dataclass
class RunFolder:
    """Where a resumable run writes: ``folder`` is ``final``, or with ``overwrite`` over an existing
    result a staging folder beside it (``.NAME.overwrite``) that :meth:`commit` moves onto ``final``.

    ``finished``: ``final`` already holds the finished result of a run with the same fingerprint
    (read it back instead of computing it).
    """

    final: Path
    folder: Path
    manifest: dict
    finished: bool = False

    def write_manifest(self) -> None:
        write_json(self.folder / MANIFEST, self.manifest)

    def commit(self) -> Path:
        """Move a complete staged run onto ``final`` (the old results stay until this moment)."""
        if self.folder != self.final:
            replace_dir(self.folder, self.final)
            self.folder = self.final
        return self.final


def open_run(final: str | Path, settings: dict, overwrite: bool, done_file: str, what: str) -> RunFolder:
    """The folder of a resumable run with ``settings``, fingerprinted in ``final/manifest.json``.

    - ``final`` absent or empty: a fresh run there.
    - ``final`` holds a run with the same fingerprint: resumed (``finished`` when ``done_file``
      exists, which the caller then reads back), also with ``overwrite`` unless finished.
    - ``final`` holds a finished run (``done_file``) with other settings, or foreign files:
      :class:`~netformer.errors.OutputExistsError` unless ``overwrite``.
    - ``final`` holds an unfinished run with other settings: :class:`~netformer.errors.ConfigError`
      naming the differences, unless ``overwrite``.

    With ``overwrite`` over an existing result the new run works in ``.NAME.overwrite`` beside
    ``final`` (itself resumable) and replaces ``final`` only when :meth:`RunFolder.commit` is called,
    so a kill never loses the old results.
    """
    final = Path(final)
    settings = json.loads(json.dumps(settings, default=str))  # as it reads back from the manifest
    fp = fingerprint(settings)
    old = read_manifest(final)
    done = (final / done_file).exists()
    if old is not None and old.get("fingerprint") == fp and not (done and overwrite):
        if not done:
            log.info("resuming the unfinished %s in %s", what, final)
        _clean_stale(final)
        return RunFolder(final, final, old, finished=done)
    folder = final
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        if not overwrite:
            if old is None or done:
                check_output(final, overwrite=False)
            diff = ", ".join(settings_diff(old.get("settings", {}), settings)) or "the settings"
            raise ConfigError(
                f"{final} holds an unfinished {what} with other settings ({diff}); run again with the same "
                "settings to resume it, choose another output folder, or pass overwrite=True (CLI: --overwrite) "
                "to start afresh (the old results stay until the new run is complete)")
        folder = final.parent / f".{final.name}.overwrite"
        staged = read_manifest(folder)
        if staged is not None and staged.get("fingerprint") == fp:
            run = RunFolder(final, folder, staged, finished=(folder / done_file).exists())
            if run.finished:  # killed after the staged run was complete, before it replaced the old one
                run.commit()
            else:
                log.info("resuming the replacement %s in %s", what, folder)
                _clean_stale(folder)
            return run
        remove_dir(folder)
    else:
        check_output(final, overwrite=True)  # the folder can be created there
    folder.mkdir(parents=True, exist_ok=True)
    run = RunFolder(final, folder, {"fingerprint": fp, "settings": settings})
    run.write_manifest()
    return run


DONE_DIR = "done"


def mark_done(folder: Path, piece: int, info: Mapping) -> None:
    """Record piece ``piece`` of a run as finished (``folder/done/NNNNN.json`` holding ``info``), after its
    outputs are written: one file per piece, so the ranks of a job never write the same file."""
    write_json(folder / DONE_DIR / f"{piece:05d}.json", dict(info))


def done_pieces(folder: Path | None, manifest: Mapping | None = None) -> dict[int, dict]:
    """The finished pieces of a run folder: piece -> the ``info`` given to :func:`mark_done` (plus those a
    manifest of an older version lists under ``"done"``)."""
    out = {int(k): v for k, v in (manifest or {}).get("done", {}).items()}
    d = None if folder is None else folder / DONE_DIR
    if d is not None and d.is_dir():
        for f in sorted(d.glob("[0-9]*.json")):
            try:
                out[int(f.stem)] = json.loads(f.read_text())
            except ValueError:  # cannot happen with atomic writes; a damaged marker means "not done"
                log.warning("%s is unreadable; piece %s is computed again", f, f.stem)
    return out


def open_shared_run(final: str | Path, settings: dict, overwrite: bool, done_file: str, what: str) -> RunFolder:
    """:func:`open_run` for every rank of a ``torchrun`` job: rank 0 opens (creates, resumes or stages) the
    run and every rank gets its answer (the same folder and finished flag; rank 0's error raised on every
    rank), before any rank writes into it. One process: :func:`open_run`."""
    from .distributed import barrier, from_main

    run = from_main(lambda: open_run(final, settings, overwrite, done_file, what))
    barrier()
    return run
