"""Data commands: ``netformer tokenize`` (rank value encoding) and ``netformer annotate`` (marker genes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..tokenize import MEDIAN_MODES
from ._common import NCountsFallback, Overwrite, choices, value

Medians = choices("Medians", MEDIAN_MODES)


def tokenize(
    inputs: Annotated[List[Path], typer.Argument(help="Count files (.h5ad, .zarr, .loom) of raw UMI counts.",
                                                 show_default=False)],
    output: Annotated[Path, typer.Option("--out", "-o", help="Output dataset directory.", show_default=False)],
    vocab: Annotated[Optional[str], typer.Option(help="Vocabulary directory (ours, or Geneformer's pickles, e.g. "
                                                      "geneformer_gc104M/). Omit with --build-vocab.")] = None,
    build_vocab: Annotated[bool, typer.Option("--build-vocab", help="Build token dictionary and gene medians "
                                                                    "from the inputs.")] = False,
    input_size: Annotated[int, typer.Option(help="Model input size (V1 2048, V2 4096), special tokens "
                                                 "included.")] = 2048,
    obs_column: Annotated[List[str], typer.Option("--obs-column", help="obs column to keep (repeatable).")] = [],
    gene_id_column: Annotated[str, typer.Option(help="var column with gene ids ('auto': detect; 'none': the "
                                                     "var index).")] = "auto",
    chunk_size: Annotated[int, typer.Option(help="Cells per chunk (bounds memory).")] = 4096,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Read counts from this AnnData layer (e.g. counts) "
                                                                 "instead of X.")] = None,
    n_counts_fallback: Annotated[Optional[NCountsFallback], typer.Option(
        "--n-counts-fallback", help="row-sum: cells whose obs n_counts is missing, zero, negative or not a number "
                                    "use their total count over all genes (logged); default: refuse them.")] = None,
    medians: Annotated[Medians, typer.Option(
        "--medians", help="Gene medians of --build-vocab: exact (every value kept), tdigest (bounded memory, a "
                          "t-digest per gene), auto: exact up to 200,000 cells.")] = "auto",
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Run on a local Dask cluster of N worker processes (0: one per CPU). Default: this "
                          "process only.", show_default=False)] = None,
    scheduler: Annotated[str | None, typer.Option(
        "--scheduler", help="Join a running Dask cluster at this address (tcp://HOST:8786); the output folder must "
                            "be on a filesystem the workers share.", show_default=False)] = None,
    rows_per_task: Annotated[int | None, typer.Option(
        "--rows-per-task", help="Cells of one file per Dask task (rounded to whole chunks); default 50,000.",
        show_default=False)] = None,
    overwrite: Overwrite = False,
) -> None:
    """Rank value encoding of count files into a Hugging Face dataset directory (with its dictionary in vocab/).

    With --workers N or --scheduler ADDRESS the files are tokenized (and --build-vocab's medians computed)
    by Dask tasks of (file, row range); the output equals the single-process one (docs/distributed.md).

    Errors: ConfigError unless exactly one of --vocab and --build-vocab is given, or for both --workers and
    --scheduler; ClusterError for a scheduler not reached within 15 s; OutputExistsError for an existing
    --out without --overwrite; InputDataError / GeneIdError for unusable counts (checked before any task).
    """
    import contextlib

    from .._io import check_output
    from ..cluster import dask_client
    from ..errors import ConfigError
    from ..genes import GeneVocab
    from ..tokenize import TokenizerConfig, TranscriptomeTokenizer
    from ..tokenize import build_vocab as build

    if build_vocab == (vocab is not None):
        raise ConfigError("give exactly one of --vocab DIR and --build-vocab")
    if workers is not None and scheduler is not None:
        raise ConfigError("give one of --workers N (a local Dask cluster) and --scheduler ADDRESS (a running one)")
    if rows_per_task is not None and rows_per_task < 1:
        raise ConfigError(f"--rows-per-task must be positive, got {rows_per_task}")
    check_output(output, overwrite)
    gid = None if gene_id_column == "none" else gene_id_column
    tok_cfg = TokenizerConfig(model_input_size=input_size, obs_columns=obs_column, gene_id_column=gid,
                              chunk_size=chunk_size, layer=layer,
                              n_counts_fallback=None if n_counts_fallback is None else "row_sum")
    on_dask = workers is not None or scheduler is not None
    with (dask_client(workers, scheduler) if on_dask else contextlib.nullcontext()) as client:
        v = (build(inputs, gene_id_column=gid, layer=layer, chunk_size=chunk_size, medians=value(medians), client=client,
                   rows_per_task=rows_per_task) if build_vocab else GeneVocab.load(vocab))
        tok = TranscriptomeTokenizer(v, tok_cfg)
        s = tok.write(inputs, output, overwrite=overwrite, client=client, rows_per_task=rows_per_task)
    typer.echo(f"{s.n_cells_out} cells, mean length {s.mean_length:.0f}, "
               f"{s.mapped_count_fraction:.1%} of counts on dictionary genes -> {output}")


def annotate(
    input_path: Annotated[Path, typer.Argument(help="h5ad file with raw counts in X.", show_default=False)],
    output_csv: Annotated[Path, typer.Option("--out", "-o", help="CSV to write: barcode,cell_type,cluster.",
                                             show_default=False)],
    markers: Annotated[Optional[Path], typer.Option(help="JSON marker table; default: the PBMC markers.")] = None,
    resolution: Annotated[float, typer.Option(help="Leiden resolution.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed of PCA, neighbours and Leiden.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Name cells by marker genes (Leiden clusters scored on known markers; docs/annotate.md).

    Errors: OutputExistsError (existing --out), CorruptFileError (unreadable h5ad), InputDataError
    (bad marker table, no marker found).
    """
    from ..annotate import AnnotationConfig, annotate_file, load_markers

    table = annotate_file(input_path, output_csv, markers=load_markers(markers) if markers is not None else None,
                          config=AnnotationConfig(resolution=resolution, random_state=seed), overwrite=overwrite)
    counts = table["cell_type"].value_counts()
    typer.echo(f"wrote {output_csv}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
