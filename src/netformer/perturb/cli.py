"""``netformer perturb``: in silico perturbation / treatment on a tokenized dataset (thin CLI layer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

log = logging.getLogger(__name__)


def _parse_filter(items: list[str]) -> dict[str, list[str]]:
    from ..errors import ConfigError

    out: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--filter expects COLUMN=VALUE[,VALUE...], got {item!r}")
        col, vals = item.split("=", 1)
        out.setdefault(col, []).extend(v for v in vals.split(",") if v)
    return out


def register(app: typer.Typer) -> None:
    """Add the ``perturb`` command to the netformer CLI."""

    @app.command("perturb")
    def perturb_cmd(
        model: Path = typer.Argument(..., help="Model directory (pretrained or fine-tuned cell classifier)."),
        data: Path = typer.Argument(..., help="Tokenized dataset directory (netformer tokenize)."),
        out: Path = typer.Argument(..., help="Output directory (resumable: run again to continue)."),
        perturbation: str = typer.Option("delete", help="delete | overexpress | inhibit | activate."),
        genes: Optional[List[str]] = typer.Option(None, "--gene", "-g", help="Gene (Ensembl id or symbol) perturbed jointly; repeat. Default: every expressed gene, one at a time."),
        anchor: Optional[str] = typer.Option(None, help="Anchor gene paired with every expressed gene."),
        fraction: float = typer.Option(0.25, help="Fraction of the cell's genes moved by inhibit/activate."),
        mode: str = typer.Option("exact", help="exact | screen (first-order estimate + exact top-K)."),
        top_k: int = typer.Option(20, help="Genes per cell evaluated exactly in screen mode."),
        state_column: Optional[str] = typer.Option(None, help="obs column with cell states."),
        start: Optional[str] = typer.Option(None, help="Start state (cells perturbed)."),
        goal: Optional[str] = typer.Option(None, help="Goal state."),
        alt: Optional[List[str]] = typer.Option(None, "--alt", help="Alternative state; repeat."),
        filter_: Optional[List[str]] = typer.Option(None, "--filter", help="COLUMN=V1,V2 cell filter; repeat."),
        max_cells: Optional[int] = typer.Option(None, help="Cap on perturbed cells (drawn with --seed)."),
        seed: int = typer.Option(0, help="Seed for cell sampling and statistics."),
        layer: int = typer.Option(-2, help="Embedding layer (hidden-state index)."),
        batch_size: int = typer.Option(64, help="Perturbed sequences per forward pass."),
        chunk_cells: int = typer.Option(16, help="Cells per resumable chunk."),
        gene_effects: bool = typer.Option(False, help="Also write each other gene's cosine (large)."),
        device: Optional[str] = typer.Option(None, help="cpu | cuda (default: CUDA if available)."),
        overwrite: bool = typer.Option(False, help="Replace a finished output directory."),
    ) -> None:
        """Perturb cells in silico; write results.parquet, genes.csv/.parquet and PNG plots into OUT."""
        from ..model import load_vocab_for
        from ..tokenize import load_tokenized, load_tokenized_vocab
        from . import CellStates, PerturbConfig, StatsConfig, gene_stats, perturb, write_stats
        from ..errors import ConfigError

        states = None
        if any(v is not None for v in (state_column, start, goal)):
            if not (state_column and start and goal):
                raise ConfigError("cell states need --state-column, --start and --goal together")
            states = CellStates(state_column, start, goal, tuple(alt or ()))
        cfg = PerturbConfig(perturbation=perturbation, genes=list(genes) if genes else "all", anchor=anchor,
                            fraction=fraction, mode=mode, top_k=top_k, layer=layer, batch_size=batch_size,
                            cell_filter=_parse_filter(filter_ or []) or None, max_cells=max_cells, seed=seed,
                            chunk_cells=chunk_cells, gene_effects=gene_effects, device=device)
        vocab = load_vocab_for(model)
        if vocab is None and (Path(data) / "vocab").exists():
            # a published Geneformer checkpoint has no dictionary beside it: use the one the cells
            # were tokenized with (perturb() checks that it fits the model)
            vocab = load_tokenized_vocab(data)
            typer.echo(f"{model} holds no token dictionary; using the one {data} was tokenized with "
                       f"({vocab.name})", err=True)
        res = perturb(model, load_tokenized(data), cfg, states=states, vocab=vocab, out_dir=out, overwrite=overwrite)
        table = gene_stats(res.results, StatsConfig(seed=seed))
        paths = write_stats(table, out, res.results)
        typer.echo(f"{len(res.results)} perturbations in {res.results['cell_index'].nunique()} cells; "
                   f"skipped: {json.dumps(res.skipped)}; tables: {paths['csv']}")
        typer.echo(table.head(20)[["symbol", "ensembl_id", "n_cells", "mean_shift", "fdr_vs_pooled"]].to_string(index=False))
