"""``netformer perturb``: in silico perturbation and treatment of tokenized cells (:mod:`netformer.perturb`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import (Device, ModelArg, checked_precision, precision_option, Mode, Perturbation, Pooling, Subfolder, Tokenized, VocabDir, key_values,
                      model_and_vocab, value)


def perturb(
    model: ModelArg,
    data: Tokenized,
    out: Annotated[Path, typer.Option("--out", "-o", show_default=False,
                                      help="Output directory (resumable: run again to continue).")],
    perturbation: Annotated[Perturbation, typer.Option(help="How the genes are perturbed.")] = "delete",
    genes: Annotated[Optional[List[str]], typer.Option(
        "--gene", "-g", help="Gene (Ensembl id or symbol) perturbed jointly; repeat. Default: every expressed gene, "
                             "one at a time.")] = None,
    anchor: Annotated[Optional[str], typer.Option(help="Anchor gene paired with every expressed gene.")] = None,
    fraction: Annotated[float, typer.Option(help="Fraction of the cell's genes moved by inhibit/activate.")] = 0.25,
    mode: Annotated[Mode, typer.Option(help="exact, or screen (an estimate for every gene + exact top-K).")] = "exact",
    top_k: Annotated[int, typer.Option(help="Genes per cell evaluated exactly in screen mode.")] = 20,
    screen_anchors: Annotated[int, typer.Option(help="Screen mode, deletion toward a goal: exact position-shift "
                                                     "effects at this many positions per cell (0: first-order).")] = 8,
    state_column: Annotated[Optional[str], typer.Option(help="Column with cell states.")] = None,
    start: Annotated[Optional[str], typer.Option(help="Start state (cells perturbed).")] = None,
    goal: Annotated[Optional[str], typer.Option(help="Goal state.")] = None,
    alt: Annotated[Optional[List[str]], typer.Option("--alt", help="Alternative state; repeat.")] = None,
    filter_: Annotated[Optional[List[str]], typer.Option("--filter", help="COLUMN=V1,V2 cell filter; "
                                                                          "repeat.")] = None,
    max_cells: Annotated[Optional[int], typer.Option(help="Cap on perturbed cells (drawn with --seed).")] = None,
    max_state_cells: Annotated[int, typer.Option(help="Cells per state averaged into its position (drawn with "
                                                      "--seed).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for cell sampling and statistics.")] = 0,
    layer: Annotated[int, typer.Option(help="Embedding layer (hidden-state index).")] = -2,
    pooling: Annotated[Pooling, typer.Option(help="Cell embedding: mean over gene tokens, or cls.")] = "mean",
    batch_size: Annotated[int, typer.Option(help="Perturbed sequences per forward pass.")] = 64,
    chunk_cells: Annotated[int, typer.Option(help="Cells per resumable chunk.")] = 16,
    gene_effects: Annotated[bool, typer.Option(help="Also write each other gene's cosine (large).")] = False,
    vocab: VocabDir = None,
    subfolder: Subfolder = None,
    device: Device = None,
    precision: precision_option("fp32", "bf16 runs a bf16 copy of the encoder for every pass (faster; per-gene "
                                        "shifts agree with fp32 to Spearman >= 0.996).") = "fp32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished output directory.")] = False,
) -> None:
    """Perturb cells in silico; write results.parquet, genes.csv/.parquet and PNG plots into --out.

    Errors (before anything is written): ConfigError (inconsistent settings, states incomplete or
    equal, a --filter without '='), DictionaryError (no dictionary: --vocab; cells tokenized with
    another one), GeneIdError (unknown or unexpressed genes), InputDataError (columns, states).
    """
    from ..distributed import world
    from ..errors import ConfigError
    from ..perturb import CellStates, PerturbConfig, StatsConfig, gene_stats, write_stats
    from ..perturb import perturb as run_perturb
    from ..tokenize import load_tokenized

    checked_precision(precision, device)
    states = None
    if any(v is not None for v in (state_column, start, goal)):
        if not (state_column and start and goal):
            raise ConfigError("cell states need --state-column, --start and --goal together")
        states = CellStates(state_column, start, goal, tuple(alt or ()))
    cell_filter: dict[str, list[str]] = {}
    for item in filter_ or []:  # a column may be repeated: its values add up
        ((col, vals),) = key_values([item], "--filter").items()
        cell_filter.setdefault(col, []).extend(v for v in vals.split(",") if v)
    cfg = PerturbConfig(perturbation=value(perturbation), genes=list(genes) if genes else "all", anchor=anchor,
                        fraction=fraction, mode=value(mode), top_k=top_k, screen_anchors=screen_anchors, layer=layer,
                        pooling=value(pooling),
                        batch_size=batch_size, cell_filter=cell_filter or None, max_cells=max_cells, seed=seed,
                        max_state_cells=max_state_cells,
                        chunk_cells=chunk_cells, gene_effects=gene_effects, device=device,
                        precision=value(precision))
    ds = load_tokenized(data)
    path, chosen = model_and_vocab(model, subfolder, data, vocab)
    res = run_perturb(path, ds, cfg, states=states, vocab=chosen, out_dir=out, overwrite=overwrite)
    if not world().is_main:  # under torchrun rank 0 writes the tables of the merged run
        return
    table = gene_stats(res.results, StatsConfig(seed=seed))
    paths = write_stats(table, out, res.results)
    typer.echo(f"{len(res.results)} perturbations in {res.results['cell_index'].nunique()} cells; "
               f"skipped: {json.dumps(res.skipped)}; tables: {paths['csv']}")
    typer.echo(table.head(20)[["symbol", "ensembl_id", "n_cells", "mean_shift", "fdr_vs_pooled"]].to_string(index=False))
