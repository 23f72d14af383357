"""The end-to-end demo: cells -> states -> genes -> experiments, in one command and one report.

``netformer demo`` (or :func:`netformer.demo`) runs the mission on real data and writes one folder:

==================  ==============================================================================
``cells/``          bundled 10x pbmc3k counts -> token dictionary -> rank value encodings -> a pretrained
                    encoder -> cell embeddings, UMAPs, k-NN accuracy beside 50 PCs (:mod:`.cells`)
``states/``         a ctrl/stim classifier fine-tuned on Kang 2018 (read from ``../shared/data``), then
                    in silico treatment of stimulated cells toward control over every expressed gene,
                    with statistics and the known interferon-stimulated genes marked (:mod:`.states`)
``genes/``          gene embeddings from the model and its attention gene network with centrality,
                    scored against GO and co-expression (:mod:`.genes`)
``experiments/``    one-shot GraphReach selection of a Perturb-seq budget on the GO graph with its
                    coverage curve, and a panel on the real Norman 2019 devel set against random
                    (:mod:`.experiments`)
``report.html``     every step's figures beside its baseline, provenance, timings, links, "your own data"
``metrics.json``    the key figures of every step; ``demo.json`` the settings and the folder's format
==================  ==============================================================================

Each step writes ``<step>/step.json`` last; a re-run reuses every finished step whose settings match
and runs the others (a demo killed at any moment resumes; pretraining continues from its checkpoint).
``steps=`` (CLI ``--steps``) chooses steps; a step whose optional data is absent is skipped with one
line saying where to put the files, and the rest of the demo runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._io import atomic_file, remove_dir
from ..errors import ConfigError, OutputExistsError
from .config import STEPS, DemoConfig

log = logging.getLogger("netformer.demo")

#: Layout version of a demo folder (1: the cells-only demo with its files at the top level).
FORMAT = 2
STEP_FILE = "step.json"
DEMO_FILE = "demo.json"

__all__ = ["DemoConfig", "DemoResult", "STEPS", "StepSkipped", "run_demo"]


class StepSkipped(Exception):
    """Raised by a step whose optional input is absent: the message says what to install or where to put it."""


def shared_file(*parts: str) -> Path:
    """A file of the project's shared data folder (``../shared/data`` or ``$NETFORMER_SHARED_DATA``); a step
    whose optional data is absent raises :class:`StepSkipped` saying where to put it."""
    from ..datasets import shared_data_dir
    from ..errors import InputDataError

    try:
        path = shared_data_dir().joinpath(*parts)
    except InputDataError:
        path = None
    if path is None or not path.exists():
        raise StepSkipped(f"{'/'.join(parts)} is not here: put the project's shared data folder beside the clone "
                          "(../shared/data/) or set NETFORMER_SHARED_DATA to it")
    return path


@dataclass
class StepRecord:
    """What one step did: ``status`` is ``done`` (ran now), ``reused`` (finished earlier with these settings),
    ``skipped`` (optional data absent; ``message`` says why) or ``not run`` (left out by ``steps``)."""

    name: str
    status: str
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    message: str = ""


@dataclass
class DemoResult:
    """Folder, per-step records and key figures of a demo run."""

    output_dir: Path
    steps: dict
    metrics: dict

    @property
    def report(self) -> Path:
        return self.output_dir / "report.html"


@dataclass
class Context:
    """What a step gets: its folder, the settings, and the folder of the whole demo."""

    root: Path
    config: DemoConfig
    name: str

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def model_dir(self) -> Path:
        return self.root / "cells" / "pretrain" / "model"


def _check_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that is not a demo folder of this format (before anything is written)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} is a file; choose another output folder for the demo")
    info = out / DEMO_FILE
    if overwrite:
        remove_dir(out)
        return
    if info.exists():
        try:
            fmt = json.loads(info.read_text()).get("format")
        except (json.JSONDecodeError, OSError):
            fmt = None
        if fmt == FORMAT:
            return
        raise ConfigError(f"{out} holds a demo written by another netformer version (format {fmt}, this version "
                          f"writes {FORMAT}); pass --overwrite to replace it, or choose another folder")
    if (out / "report.html").exists() or (out / "pretrain").exists():
        raise ConfigError(f"{out} holds a demo from an older netformer version (no {DEMO_FILE}); pass --overwrite to "
                          "replace it, or choose another folder")
    if any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty and holds no demo; choose another output folder")


def _finished(ctx: Context) -> dict | None:
    f = ctx.dir / STEP_FILE
    if not f.exists():
        return None
    try:
        rec = json.loads(f.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return rec if rec.get("settings") == json.loads(json.dumps(ctx.config.step_settings(ctx.name))) else None


def _run_step(ctx: Context, fn, i: int, n: int) -> StepRecord:
    from .. import __version__

    old = _finished(ctx)
    if old is not None:
        log.info("[%d/%d] %s: finished in an earlier run with these settings, reused", i, n, ctx.name)
        return StepRecord(ctx.name, "reused", old["seconds"], old["metrics"], old["files"], old.get("message", ""))
    if (ctx.dir / STEP_FILE).exists():
        log.info("[%d/%d] %s: the settings changed since it last ran, running it again", i, n, ctx.name)
        remove_dir(ctx.dir)
    ctx.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        metrics, files = fn(ctx)
    except StepSkipped as e:
        log.warning("[%d/%d] %s skipped: %s", i, n, ctx.name, e)
        return StepRecord(ctx.name, "skipped", 0.0, {}, [], str(e))
    seconds = round(time.perf_counter() - t0, 1)
    files = [str(Path(f).relative_to(ctx.root)) for f in files]
    rec = {"step": ctx.name, "settings": ctx.config.step_settings(ctx.name), "seconds": seconds, "metrics": metrics,
           "files": files, "version": __version__}
    with atomic_file(ctx.dir / STEP_FILE) as tmp:  # last: marks the step finished
        tmp.write_text(json.dumps(rec, indent=1, default=str))
    log.info("[%d/%d] %s: done in %.0f s", i, n, ctx.name, seconds)
    return StepRecord(ctx.name, "done", seconds, metrics, files)


def run_demo(output_dir: str | Path = "netformer_demo", config: DemoConfig | None = None, overwrite: bool = False,
             **overrides) -> DemoResult:
    """Run the demo's steps and write the report (see the module docstring for the folder).

    Parameters
    ----------
    output_dir
        Output folder: new, or one holding a demo of this version (finished steps with the same settings
        are reused, the others run). A demo folder of an older layout raises :class:`ConfigError` and a
        non-empty folder of other files :class:`OutputExistsError` (both before anything is written),
        unless ``overwrite`` (the folder is replaced).
    config
        :class:`DemoConfig`; keyword overrides (e.g. ``epochs=1``, ``steps=("cells",)``) apply on top.

    Returns a :class:`DemoResult`. Raises :class:`ConfigError` for unknown steps or settings.
    """
    from . import cells, experiments, genes, states

    base = config.to_dict() if config else {}
    cfg = DemoConfig.from_dict({**base, **overrides})
    out = Path(output_dir)
    _check_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    from .. import __version__

    with atomic_file(out / DEMO_FILE) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "version": __version__, "config": cfg.to_dict()}, indent=1))
    runners = {"cells": cells.run, "states": states.run, "genes": genes.run, "experiments": experiments.run}
    needs_model = {"states", "genes"}
    wanted = set(cfg.steps)
    if wanted & needs_model and "cells" not in wanted and _finished(Context(out, cfg, "cells")) is None:
        log.info("the %s step needs the model of the cells step: running cells first",
                 " and ".join(s for s in STEPS if s in wanted & needs_model))
        wanted.add("cells")
    t_start = time.perf_counter()
    records: dict[str, StepRecord] = {}
    todo = [s for s in STEPS if s in wanted]
    for i, name in enumerate(todo, 1):
        records[name] = _run_step(Context(out, cfg, name), runners[name], i, len(todo))
    for name in STEPS:
        if name not in records:
            old = _finished(Context(out, cfg, name))
            records[name] = (StepRecord(name, "reused", old["seconds"], old["metrics"], old["files"]) if old
                             else StepRecord(name, "not run", message="left out by --steps"))
    records = {n: records[n] for n in STEPS}
    metrics = {n: r.metrics for n, r in records.items()}
    metrics["seconds"] = {n: r.seconds for n, r in records.items()}
    metrics["total_seconds"] = round(time.perf_counter() - t_start, 1)
    with atomic_file(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=str))
    from ..report import write_report

    write_report(out, records, cfg)
    log.info("demo finished in %.0f s; open %s", metrics["total_seconds"], out / "report.html")
    return DemoResult(out, records, metrics)
