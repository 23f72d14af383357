"""Command-line interface: a thin layer over the Python API.

``netformer tokenize | pretrain | embed | demo`` live here; other command groups
(``finetune``, ``perturb``, ``select``) are registered by their own modules through a
``register(app)`` function so that each stays next to the API it wraps.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    help="netformer: single-cell foundation model and Perturb-seq experiment design.",
    no_args_is_help=True,
    add_completion=False,
)

# Modules that add their own commands: each defines ``register(app: typer.Typer) -> None``.
_PLUGINS = (
    "netformer._cli_core",
    "netformer.classify_cli",
    "netformer.perturb.cli",
    "netformer.select.cli",
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_plugins() -> None:
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a plugin module not present in this build
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_plugins()


def main() -> None:
    """Entry point of the ``netformer`` console script."""
    from .errors import NetformerError

    try:
        app()
    except NetformerError as exc:  # clear one-line errors, not stack traces
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
