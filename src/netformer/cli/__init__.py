"""The command line: a thin layer over the Python API.

Every command is a module-level function of this package (importable and callable from Python),
registered here in one place::

    netformer tokenize | annotate          (netformer.cli.data)
    netformer pretrain | embed | demo      (netformer.cli.model)
    netformer finetune                     (netformer.cli.finetune)
    netformer perturb                      (netformer.cli.perturb)
    netformer select run | benchmark       (netformer.cli.select)
    netformer network attention | perturbation   (netformer.cli.network)

:func:`main` (the ``netformer`` console script, ``python -m netformer``, ``torchrun -m netformer``)
runs them behind one error boundary: bad input gives one line ``error: ...`` and exit status 2,
an unexpected error one line and exit status 1 (``--verbose`` prints the traceback).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Sequence

# Idle OpenMP threads sleep instead of spinning (spinning makes small tensor operations far slower
# on busy machines); set before torch is imported, and only if the user has not chosen.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from . import data, finetune, model, network, perturb, select  # noqa: E402

app = typer.Typer(
    help="netformer: single-cell foundation model and Perturb-seq experiment design.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
select_app = typer.Typer(help="One-shot selection of perturbation experiments (GraphReach, MaxSpec) and its "
                              "benchmark against active learning.", no_args_is_help=True, rich_markup_mode=None)

app.command("tokenize")(data.tokenize)
app.command("annotate")(data.annotate)
app.command("pretrain")(model.pretrain)
app.command("embed")(model.embed)
app.command("demo")(model.demo)
app.command("finetune")(finetune.finetune)
app.command("perturb")(perturb.perturb)
select_app.command("run")(select.run)
select_app.command("benchmark")(select.benchmark)
app.add_typer(select_app, name="select")
network_app = typer.Typer(help="Gene networks from the model (attention, in silico deletion), their centrality and "
                               "their scores against GO and co-expression.", no_args_is_help=True,
                          rich_markup_mode=None)
network_app.command("attention")(network.attention)
network_app.command("perturbation")(network.perturbation)
app.add_typer(network_app, name="network")

_state = {"verbose": False}


@app.callback()
def _options(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages; print the "
                                                                          "traceback of an error.")] = False) -> None:
    _state["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------------
# the error boundary
# ------------------------------------------------------------------------------------------------
# Errors of these libraries that reach the boundary: (what failed, the fix).
LIBRARY_ERRORS = {
    "datasets": ("cannot read a tokenized dataset", "tokenize the cells again (netformer tokenize)"),
    "pyarrow": ("cannot read an Arrow / Parquet file", "the file is damaged or not Arrow/Parquet: write it again"),
    "safetensors": ("cannot read model weights", "the weights file is damaged: copy or download the model again"),
    "transformers": ("the model cannot be used", "check the model folder (config.json and weights) and --subfolder"),
    "huggingface_hub": ("the Hugging Face Hub model cannot be resolved",
                        "download it once with network access, or pass a local model folder"),
    "pandas": ("cannot read a table", "check that the CSV/TSV/Parquet file is complete and has the documented "
                                      "columns"),
    "h5py": ("cannot read an HDF5 (.h5ad) file", "the file is damaged or not an AnnData .h5ad: write it again"),
    "anndata": ("cannot read an AnnData file", "check that it is a complete .h5ad/.zarr file written by anndata"),
}

_OS_FIXES = {
    errno.ENOENT: "it does not exist; check the path",
    errno.EACCES: "permission denied; choose a location you can read/write (--out) or fix its permissions",
    errno.EPERM: "operation not permitted; choose another location (--out) or fix its permissions",
    errno.EROFS: "the file system is read-only; write the output elsewhere (--out)",
    errno.ENOSPC: "no space left on the device; free space or write the output elsewhere (--out)",
    errno.EISDIR: "it is a directory; give a file",
    errno.ENOTDIR: "a part of the path is not a directory; check the path",
    errno.EEXIST: "a file of that name is in the way; choose another path",
}
_TEMP_NAME = re.compile(r"^\.(.+)\.(tmp|old)-[^/]+$")  # the temporary names of netformer._io


def _usage_errors() -> tuple[type, ...]:
    """Exception types of the command-line parser (typer >= 0.2x vendors click; older typer uses click's)."""
    found = []
    for module, name in (("typer.exceptions", "TyperException"), ("click", "ClickException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__


def _library(exc: BaseException, by_frame: bool) -> str | None:
    """The library of :data:`LIBRARY_ERRORS` whose exception type this is (or, with ``by_frame``, in
    whose code it was raised), else None."""
    for cls in type(exc).__mro__:
        top = cls.__module__.split(".")[0].lstrip("_")
        if top in LIBRARY_ERRORS:
            return top
    tb, last = exc.__traceback__, None
    while by_frame and tb is not None:
        last, tb = tb, tb.tb_next
    if last is not None:
        parts = Path(last.tb_frame.f_code.co_filename).parts
        for top in LIBRARY_ERRORS:
            if top in parts and "site-packages" in parts:
                return top
    return None


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line (without ``error:``) and the exit status :func:`main` gives for ``exc``.

    2 for bad input: :class:`~netformer.errors.NetformerError`, command-line usage errors (unknown
    option, a value not among the choices), ``OSError`` (missing file, permission denied, read-only
    or full disk) and errors of the libraries in :data:`LIBRARY_ERRORS`; 130 when interrupted; 1 for
    anything else (a bug: the line says to run with ``--verbose`` for the traceback).
    """
    from ..errors import NetformerError

    if isinstance(exc, NetformerError):
        return str(exc), 2
    if isinstance(exc, _usage_errors()):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = exc.format_message().replace(": Value error, ", ": ")  # typer's wording of a bad choice
        return f"{message}{hint}", int(getattr(exc, "exit_code", 2) or 2)
    if isinstance(exc, KeyboardInterrupt) or isinstance(exc, typer.Abort):
        return "interrupted", 130
    lib = _library(exc, by_frame=False)
    if lib is None and isinstance(exc, OSError) and exc.filename is not None:
        path = Path(exc.filename)
        temp = _TEMP_NAME.match(path.name)  # a failed atomic write: name the output, not its temporary
        fix = _OS_FIXES.get(exc.errno, exc.strerror or _first_line(exc))
        return f"{path.with_name(temp.group(1)) if temp else path}: {fix}", 2
    lib = lib or _library(exc, by_frame=True)
    if lib is not None:
        what, fix = LIBRARY_ERRORS[lib]
        return f"{what} ({_first_line(exc)}); {fix}", 2
    if isinstance(exc, OSError):
        return f"{_first_line(exc)}; check the input and output paths", 2
    return f"unexpected {_first_line(exc)}; run with --verbose for the traceback", 1


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line (``argv``, default ``sys.argv[1:]``) and exit with its status.

    Entry point of the ``netformer`` console script and of ``python -m netformer``. Errors are
    reported by :func:`describe_error` as one red line on stderr; ``--verbose`` adds the traceback.
    """
    _state["verbose"] = False
    try:
        rc = app(args=list(sys.argv[1:] if argv is None else argv), prog_name="netformer", standalone_mode=False)
    except Exception as exc:  # the boundary: every error becomes one line and an exit status
        if type(exc).__name__ == "NoArgsIsHelpError":  # `netformer` / `netformer select` alone: the help
            exc.show()
            raise SystemExit(0) from None
        message, status = describe_error(exc)
        if _state["verbose"] and not isinstance(exc, _usage_errors()):
            traceback.print_exception(exc)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise SystemExit(status) from None
    except KeyboardInterrupt:
        typer.secho("error: interrupted", fg=typer.colors.RED, err=True)
        raise SystemExit(130) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)
