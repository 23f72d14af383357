"""``netformer select benchmark``: one-shot selection vs active learning (thin CLI layer)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def add_benchmark_command(grp: typer.Typer) -> None:
    """Add ``benchmark`` to the ``select`` command group."""

    @grp.command("benchmark")
    def benchmark(
        out: Path = typer.Option(..., "--out", "-o", help="Output directory (results.csv, summary.csv, published_iterpert.csv, benchmark.png)."),
        data: Optional[Path] = typer.Option(None, help="REAL Perturb-seq h5ad (GEARS perturb_processed.h5ad or scPerturb style). Default: the SEMI-SYNTHETIC benchmark."),
        subset: List[str] = typer.Option([], help="obs filters for --data, KEY=VALUE (e.g. dataset=norman19)."),
        graph: Optional[Path] = typer.Option(None, help="Edge list (default: shipped GO graph)."),
        initial: int = typer.Option(100, help="Initial budget (round 0)."),
        rounds: int = typer.Option(5, help="Active-learning rounds after the initial set."),
        batch: int = typer.Option(100, help="Perturbations per round."),
        seeds: int = typer.Option(3, help="Number of seeds (0..seeds-1)."),
        model: str = typer.Option("ridge", help="ridge | additive | train_mean | gears."),
        model_option: List[str] = typer.Option([], help="Model constructor option KEY=VALUE (JSON value), e.g. epochs=5."),
        oneshot: List[str] = typer.Option([], help="One-shot methods (default: all)."),
        strategy: List[str] = typer.Option([], help="Active-learning strategies (default: all)."),
        n_candidates: int = typer.Option(3000, help="Semi-synthetic: perturbable genes (pool + test)."),
        n_test: int = typer.Option(500, help="Semi-synthetic: held-out test genes."),
        data_seed: int = typer.Option(0, help="Seed of the semi-synthetic data / real test split."),
        overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    ) -> None:
        """Compare one-shot selection and active learning at equal cumulative budgets; write CSVs and PNG curves."""
        import json

        from .._io import check_output
        from ..errors import ConfigError
        from .benchmark import BenchmarkConfig, benchmark_file, benchmark_semisynthetic, write_report
        from .greedy import METHODS
        from .active import STRATEGIES
        from .synthetic import SyntheticConfig

        check_output(out, overwrite)
        opts = {}
        for item in model_option:
            if "=" not in item:
                raise ConfigError(f"--model-option expects KEY=VALUE, got {item!r}.")
            k, v = item.split("=", 1)
            try:
                opts[k] = json.loads(v)
            except json.JSONDecodeError:
                opts[k] = v
        cfg = BenchmarkConfig(model_options=opts, initial=initial, rounds=rounds, batch=batch, seeds=tuple(range(seeds)),
                              oneshot=tuple(oneshot) or METHODS, strategies=tuple(strategy) or STRATEGIES,
                              model=model)
        if data is None:
            res = benchmark_semisynthetic(cfg, SyntheticConfig(n_candidates=n_candidates, n_test=n_test, seed=data_seed))
        else:
            filt = dict(s.split("=", 1) for s in subset) if subset else None
            res = benchmark_file(data, cfg, graph_path=graph, subset=filt, seed=data_seed)
        write_report(res, out, overwrite=overwrite)
        typer.echo(f"wrote {out} ({res['setting'].iloc[0]})")
