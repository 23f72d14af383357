"""Atomic output helpers: results are written to a temporary path and renamed into place."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError, OutputPathError

log = logging.getLogger(__name__)


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path, raising :class:`OutputExistsError` if it exists and ``overwrite`` is False.

    Also checks, before any work is done, that the output can be created there: raises
    :class:`OutputPathError` (an ``OSError`` with ``errno`` ENOTDIR, EACCES or EROFS and the path as
    ``filename``) when a file stands where a folder of the path must be or the folder is not writable.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists and holds results; choose another output path or pass "
            "overwrite=True (CLI: --overwrite) to replace it."
        )
    _check_writable(path.absolute().parent)
    return path


def _check_writable(folder: Path) -> None:
    """Raise ``OSError`` unless ``folder`` exists and is writable or can be created (its first existing
    ancestor is a writable directory)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
        raise OutputPathError(code, os.strerror(code), str(existing))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions a plain ``mkdir`` / ``open``
    would: 0777 / 0666 less the umask (``mkdtemp`` / ``mkstemp`` make 0700 / 0600)."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def clean_stale_temporaries(path: str | os.PathLike) -> int:
    """Remove temporary siblings of ``path`` (``.NAME.tmp-PID-*``) left by killed writers; returns how many.

    A temporary whose process id is still running is left alone (another writer at work).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    n = 0
    for p in path.parent.glob(_tmp_prefix(path) + "*"):
        pid = p.name[len(_tmp_prefix(path)):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        remove_dir(p) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    if n:
        log.info("removed %d temporary folder(s) of %s left by an interrupted run", n, path)
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dir(path: str | os.PathLike) -> None:
    """Remove a folder tree if it exists (no error if it does not)."""
    shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the complete folder ``new`` onto ``path``: the old ``path`` is renamed aside first and
    deleted only after ``new`` is in place, so at every moment one complete version exists."""
    new, path = Path(new), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        remove_dir(old)
        os.replace(path, old)
        os.replace(new, path)
        remove_dir(old) if old.is_dir() else old.unlink()
    else:
        os.replace(new, path)
    return path


def _inside_temporary(path: Path) -> bool:
    """True when ``path`` or a folder above it is a temporary of this module or a run's work folder
    (hidden names: ``.NAME.tmp-...``, ``.OUT.overwrite``, ``.OUT.run``)."""
    return any(p.startswith(".") and p not in (".", "..") and (".tmp-" in p or p.endswith((".overwrite", ".run")))
               for p in path.parts)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success rename it to ``path``.

    On any exception the temporary directory is removed and ``path`` is left untouched, so no
    half-written output is ever visible; an existing ``path`` (with ``overwrite``) stays in place
    until the new one is complete. Temporaries left by killed writers of the same target are
    removed first. The result has normal permissions (umask honoured). Raises
    :class:`OutputExistsError` when ``path`` exists and ``overwrite`` is False.
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _normal_permissions(tmp)
    replace_dir(tmp, path)
    # a folder written inside another one's temporary (a model saved into a run not yet in place) is
    # announced when that one is: the log names only paths a user will find
    log.log(logging.DEBUG if _inside_temporary(path) else logging.INFO, "wrote %s", path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success rename it onto ``path``.

    Files default to ``overwrite=True`` (a figure or table regenerated in place); pass False to
    refuse an existing file with :class:`OutputExistsError`. Permissions and stale temporaries as
    :func:`atomic_dir`.
    """
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    _normal_permissions(tmp)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4), **subplots_kw):
    """A Matplotlib figure and its axes, made without pyplot: ``(Figure, Axes or array of Axes)``.

    The figure is not registered with pyplot, so making and saving it never switches the caller's
    backend, opens a window or leaks figures in a notebook (save it with :func:`save_figure`, or
    display it: Jupyter shows a returned ``Figure``).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (temporary file, then rename); returns the path."""
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
