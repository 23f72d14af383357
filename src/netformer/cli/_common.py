"""Pieces shared by the commands: validated choices, options used by several commands, parsing helpers.

Every choice is an :class:`enum.Enum` built from the library's own constant, so the CLI and the
Python API accept the same values (typer rejects anything else before a command runs).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

from ..classify.config import SCHEDULES
from ..encoder import POOLINGS
from ..model import PRESETS
from ..perturb import PERTURBATIONS
from ..perturb.run import MODES
from ..precision import PRECISIONS
from ..pretrain import LR_SCHEDULERS
from ..select.active import STRATEGIES
from ..select.benchmark import MODELS
from ..select.candidates import MISSING_POLICIES
from ..select.greedy import METHODS


def choices(name: str, values: Iterable[str]) -> type[Enum]:
    """A ``str`` Enum named ``name`` whose members (names and values) are ``values``."""
    return Enum(name, [(v, v) for v in values], type=str)


def value(choice):
    """The plain value of an Enum member (commands also accept plain strings when called from Python)."""
    return choice.value if isinstance(choice, Enum) else choice


Perturbation = choices("Perturbation", PERTURBATIONS)
Pooling = choices("Pooling", POOLINGS)
Preset = choices("Preset", PRESETS)
FinetuneSchedule = choices("FinetuneSchedule", SCHEDULES)
Method = choices("Method", METHODS)
Strategy = choices("Strategy", STRATEGIES)
Missing = choices("Missing", MISSING_POLICIES)
BenchmarkModel = choices("BenchmarkModel", MODELS)
PretrainSchedule = choices("PretrainSchedule", LR_SCHEDULERS)
Mode = choices("Mode", MODES)
PrecisionChoice = choices("Precision", PRECISIONS)
NCountsFallback = choices("NCountsFallback", ("row-sum",))
# No constant in the library yet for these (FinetuneConfig checks a literal): keep in step with it.
ClassWeights = choices("ClassWeights", ("balanced",))
Task = choices("Task", ("cell", "gene"))

# options several commands share
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
VocabDir = Annotated[Optional[Path], typer.Option(
    "--vocab", help="Token dictionary folder (ours, or Geneformer's pickles) for a checkpoint that has none beside "
                    "it, e.g. Geneformer's gc104M folder for V2 models, gc30M for V1. Default: the model's own, else "
                    "the one the cells were tokenized with; a dictionary that differs from either is refused.")]
Subfolder = Annotated[Optional[str], typer.Option(
    "--subfolder", help="The model's folder inside MODEL, e.g. Geneformer-V2-104M for ctheodoris/Geneformer.")]
Device = Annotated[Optional[str], typer.Option("--device", help="cpu | cuda | cuda:1 ... (default: CUDA if available).")]
def precision_option(default: str, note: str) -> object:
    """The ``--precision`` option of a command (its default and what it means there)."""
    return Annotated[PrecisionChoice, typer.Option(
        "--precision", help=f"fp32 | bf16 | auto (bf16 where the GPU or CPU (AMX, AVX512-BF16) multiplies it "
                            f"natively, else fp32; bf16 elsewhere is refused). {note}")]


def checked_precision(precision, device: str | None) -> str:
    """The ``--precision`` value, checked against the device the command will run on before anything
    is loaded or written (:func:`netformer.precision.resolve_precision` raises ConfigError)."""
    from ..encoder import default_device
    from ..precision import resolve_precision

    resolve_precision(value(precision), default_device(device))
    return value(precision)


ModelArg = Annotated[str, typer.Argument(
    help="Model directory, or a Hugging Face Hub id such as ctheodoris/Geneformer (with --subfolder; read from the "
         "Hub cache, also offline with HF_HUB_OFFLINE=1).", show_default=False)]
Tokenized = Annotated[Path, typer.Argument(help="Tokenized dataset directory (netformer tokenize).", show_default=False)]


def key_values(items: Iterable[str], option: str, parse_json: bool = False) -> dict:
    """``["K=V", ...]`` as a dict; values read as JSON when ``parse_json`` (else kept as strings).

    Raises :class:`~netformer.errors.ConfigError` naming ``option`` for an item without ``=``.
    """
    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        if parse_json:
            try:
                val = json.loads(val)
            except json.JSONDecodeError:
                pass
        out[key] = val
    return out


def model_and_vocab(model: str, subfolder: str | None, data, vocab: Path | None):
    """The local model directory and its token dictionary, resolved before any output is written.

    ``model`` is a folder or a Hub id (:func:`netformer.model.resolve_checkpoint`); the dictionary
    comes from the one policy, :func:`netformer.genes.resolve_vocab` (the model's, else ``vocab``,
    else the one the cells ``data`` were tokenized with). Says on stderr when the dictionary is not
    the model's own. Raises :class:`~netformer.errors.DictionaryError` (none, or a mismatch) and the
    errors of :func:`netformer.model.check_model_dir`.
    """
    from ..genes import model_vocab, resolve_vocab
    from ..model import check_model_dir, resolve_checkpoint

    path = check_model_dir(resolve_checkpoint(model, subfolder))
    chosen = resolve_vocab(path, data, vocab)
    if model_vocab(path) is None:
        source = f"--vocab {vocab}" if vocab is not None else f"the one {data} was tokenized with"
        typer.echo(f"{path} holds no token dictionary; using {source} ({chosen.describe()})", err=True)
    return path, chosen
