"""``netformer select run | benchmark``: one-shot selection and the selection benchmark (thin CLI layer)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def read_candidates(path: Path) -> list[str]:
    """Candidate genes from a text file (one symbol per line) or a CSV/TSV with a ``gene`` column.

    Raises :class:`InputDataError` if the file is missing or empty.
    """
    import pandas as pd

    from ..errors import InputDataError

    if not path.exists():
        raise InputDataError(f"candidate file {path} does not exist.")
    name = path.name.removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
        if "gene" not in df.columns:
            raise InputDataError(f"{path} has no 'gene' column (columns: {list(df.columns)}).")
        genes = df["gene"].astype(str).str.strip().tolist()
    else:
        genes = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not genes:
        raise InputDataError(f"candidate file {path} lists no genes.")
    return genes


def register(app: typer.Typer) -> None:
    """Add the ``select`` command group to the netformer CLI."""
    grp = typer.Typer(help="One-shot selection of perturbation experiments (GraphReach, MaxSpec) and "
                           "its benchmark against active learning.", no_args_is_help=True)

    @grp.command("run")
    def run(
        out: Path = typer.Option(..., "--out", "-o", help="Output directory (selection.csv, coverage.png, summary.json)."),
        budget: int = typer.Option(..., "--budget", "-b", help="Number of perturbations to select."),
        candidates: Optional[Path] = typer.Option(None, help="Candidate genes: text file (one per line) or CSV with a 'gene' column. Default: every graph node."),
        graph: Optional[Path] = typer.Option(None, help="Edge list source,target,importance. Default: the shipped GEARS GO graph."),
        method: str = typer.Option("graphreach", help="graphreach | graphreach_fl | maxspec | degree | pagerank | random."),
        layers: int = typer.Option(1, help="Graph layers L of the model (P = A_hat^L); GEARS: 1."),
        plain: bool = typer.Option(False, "--plain", help="Plain instead of lazy greedy (same output, slower)."),
        beta: Optional[float] = typer.Option(None, help="MaxSpec kernel scale (default 1/median ||P_u||^2)."),
        missing: str = typer.Option("drop", help="Candidates absent from the graph: drop (logged) or error."),
        symmetrize: bool = typer.Option(False, help="Treat the graph as undirected (max(A, A^T))."),
        compare: bool = typer.Option(True, help="Also draw degree/PageRank/random coverage in the PNG."),
        seed: int = typer.Option(0, help="Seed (random baseline only)."),
        overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    ) -> None:
        """Select BUDGET perturbations in one shot; write a ranked CSV and a coverage-vs-budget PNG atomically."""
        from .._io import atomic_dir, check_output
        from ..graphs import load_edge_list
        from .greedy import RANKING_METHODS, SelectConfig, Selector

        check_output(out, overwrite)
        cfg = SelectConfig(method=method, n_layers=layers, lazy=not plain, beta=beta, missing=missing, seed=seed)
        g = load_edge_list(graph, symmetrize=symmetrize)
        cands = read_candidates(candidates) if candidates else None
        sel = Selector(g, cands, n_layers=layers, missing=missing)
        res = sel.select(budget, cfg)
        others = [sel.select(budget, cfg, method=m) for m in RANKING_METHODS if compare and m != method]
        with atomic_dir(out, overwrite) as tmp:
            res.to_frame().to_csv(tmp / "selection.csv", index=False)
            res.plot_coverage(tmp / "coverage.png", others)
            summary = {
                "method": res.method, "algorithm": res.algorithm, "budget": res.budget,
                "n_candidates": res.n_candidates, "n_graph_nodes": res.n_nodes, "n_layers": res.n_layers,
                "objective": float(res.objective[-1]), "coverage_fraction": float(res.coverage[-1]),
                "n_gain_evaluations": res.n_evaluations, "seconds": res.seconds, "bound": res.bound,
                "missing_candidates": res.missing, "graph_components": sel.pool.n_components,
            }
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        typer.echo(f"selected {res.budget} of {res.n_candidates} candidates with {res.method}; "
                   f"coverage {res.coverage[-1]:.3f}; wrote {out}")

    try:
        from .benchmark_cli import add_benchmark_command
    except ImportError as exc:  # benchmark needs netformer.perturbseq
        log.debug("select benchmark unavailable: %s", exc)
    else:
        add_benchmark_command(grp)

    app.add_typer(grp, name="select")
