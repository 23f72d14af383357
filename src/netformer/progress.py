"""The one progress display of netformer: a tqdm bar on a terminal, log lines everywhere.

Every long loop (tokenizing, pretraining, fine-tuning, embedding, perturbing, Dask tasks, GEARS
epochs) reports through :class:`Progress` or :func:`progress`:

- on a terminal, one tqdm bar (``leave=False``); a loop started while another bar is showing (an
  embedding inside a perturbation run, a checkpoint save inside training) shows no second bar;
- always, a log line at INFO every ``log_every`` of the work and at the end (``tokenizing pbmc3k:
  4/10 chunks (40%), 12.3 s``), so progress reaches a cluster job's log file, where tqdm bars are
  switched off. Inner loops log at DEBUG, so the log shows one loop at a time too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("netformer.progress")

T = TypeVar("T")
_active: list["Progress"] = []


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of ``total`` units of work (``total=None``: unknown, logged every ``log_every`` x 100 units).

    Parameters
    ----------
    total
        Units of work (chunks, steps, cells).
    desc
        What is being done, the start of every line.
    unit
        Name of a unit (``chunk``, ``step``, ``task``).
    log_every
        Fraction of ``total`` between log lines (default 0.1: ten lines).
    logger
        Where the lines go (default ``netformer.progress``).
    initial
        Units already done (a resumed job).

    Use as a context manager or call :meth:`close`; :meth:`update` adds done units.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", log_every: float = 0.1,
                 logger: logging.Logger | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = initial
        self._log = logger or log
        self._inner = bool(_active)
        self._level = logging.DEBUG if self._inner else logging.INFO
        self._step = max(1, int(round((total or 1000) * log_every))) if total else 100
        self._next = (initial // self._step + 1) * self._step
        self._t0 = time.perf_counter()
        self._bar = None
        if not self._inner and _terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, initial=initial)
        _active.append(self)
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done; log a line when the next ``log_every`` mark is passed."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        if self.done >= self._next or (self.total is not None and self.done >= self.total):
            self._line()
            while self._next <= self.done:
                self._next += self._step

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._t0
        units = self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")
        if self.total:
            self._log.log(self._level, "%s: %d/%d %s (%.0f%%), %.1f s", self.desc, self.done, self.total, units,
                          100 * self.done / self.total, elapsed)
        else:
            self._log.log(self._level, "%s: %d %s, %.1f s", self.desc, self.done, units, elapsed)

    def close(self) -> None:
        """Close the bar (a last line is logged if the end was not reached, e.g. a loop left early)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self in _active:
            _active.remove(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             log_every: float = 0.1, logger: logging.Logger | None = None) -> Iterator[T]:
    """Iterate ``iterable`` with a :class:`Progress` (``total`` defaults to ``len(iterable)`` when known)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, log_every, logger) as p:
        for item in iterable:
            yield item
            p.update()
