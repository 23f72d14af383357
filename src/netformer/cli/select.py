"""``netformer select run | benchmark``: one-shot selection of perturbation experiments and its benchmark
against active learning (:mod:`netformer.select`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import (
    BenchmarkModel,
    Method,
    Missing,
    Overwrite,
    Strategy,
    choices,
    key_values,
    value,
)

Rewire = choices("Rewire", ("degree", "random"))
Prior = choices("Prior", ("go", "fm", "fm+go"))  # netformer.select.priors.PRIORS
PriorUse = choices("PriorUse", ("selection", "kernel", "model"))  # netformer.select.priors.PRIOR_USES
PRIOR_HELP = ("Selection graph: go (GO graph), fm (the foundation model's kNN cosine gene graph of --model-dir; "
              "candidates its dictionary lacks keep their GO edges) or fm+go (union, max importance).")
ModelDir = Annotated[Optional[Path], typer.Option(
    "--model-dir", help="Checkpoint whose static gene embeddings give the fm graph (--prior fm / fm+go).")]
Knn = Annotated[int, typer.Option("--knn", help="Neighbours per gene of the fm graph.")]
MinCoverage = Annotated[Optional[float], typer.Option(
    help="Fail (exit 2) when the checkpoint's dictionary covers a smaller fraction of the candidates, instead "
         "of falling back to GO for them.")]

GO_GRAPH_HELP = ("Edge list source,target,importance. Default: the GEARS-style GO graph "
                 "graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz of the shared data folder (not part of the package; "
                 "located by NETFORMER_SHARED_DATA, else ../shared/data beside the repository).")


def run(
    out: Annotated[Path, typer.Option("--out", "-o", show_default=False,
                                      help="Output directory (selection.csv, coverage.png, summary.json).")],
    budget: Annotated[int, typer.Option("--budget", "-b", help="Number of perturbations to select.",
                                        show_default=False)],
    candidates: Annotated[Optional[Path], typer.Option(
        help="Candidate genes: text file (one per line) or CSV with a 'gene' column. Default: every graph "
             "node.")] = None,
    graph: Annotated[Optional[Path], typer.Option(help=GO_GRAPH_HELP)] = None,
    method: Annotated[Method, typer.Option(help="Selection criterion or ranking baseline.")] = "graphreach",
    layers: Annotated[int, typer.Option(help="Graph layers L of the model (P = A_hat^L); GEARS: 1.")] = 1,
    plain: Annotated[bool, typer.Option("--plain", help="Plain instead of lazy greedy (same output, "
                                                        "slower).")] = False,
    beta: Annotated[Optional[float], typer.Option(help="MaxSpec kernel scale (default 1/median "
                                                       "||P_u||^2).")] = None,
    missing: Annotated[Missing, typer.Option(help="Candidates absent from the graph: drop (logged) or "
                                                  "error.")] = "drop",
    symmetrize: Annotated[bool, typer.Option(help="Treat the graph as undirected (max(A, A^T)).")] = False,
    compare: Annotated[bool, typer.Option(help="Also draw degree/PageRank/random coverage in the PNG.")] = True,
    seed: Annotated[int, typer.Option(help="Seed (random baseline only).")] = 0,
    prior: Annotated[Prior, typer.Option(help=PRIOR_HELP)] = "go",
    model_dir: ModelDir = None,
    knn: Knn = 20,
    min_coverage: MinCoverage = None,
    overwrite: Overwrite = False,
) -> None:
    """Select BUDGET perturbations in one shot; write a ranked CSV, a coverage-vs-budget PNG and a summary.

    Errors: OutputExistsError, BudgetError (budget above the candidates in the graph), GeneIdError
    (--missing error and absent candidates), InputDataError (candidate or graph file), ConfigError
    (--prior fm without --model-dir), CoverageError (below --min-coverage).
    """
    from .._io import atomic_dir, check_output
    from ..errors import ConfigError
    from ..graphs import GeneGraph, load_edge_list
    from ..select.priors import selection_edges
    from ..select.candidates import read_candidates
    from ..select.greedy import RANKING_METHODS, SelectConfig, Selector

    check_output(out, overwrite)
    method, missing = value(method), value(missing)
    cfg = SelectConfig(method=method, n_layers=layers, lazy=not plain, beta=beta, missing=missing, seed=seed)
    cands = read_candidates(candidates) if candidates else None
    prior = value(prior)
    if prior == "go":
        g = load_edge_list(graph, symmetrize=symmetrize)
    elif model_dir is None:
        raise ConfigError(f"--prior {prior} needs --model-dir DIR (the checkpoint whose gene embeddings give the graph)")
    else:
        g = GeneGraph.from_edges(selection_edges(prior, cands, model=model_dir, go=graph, k=knn,
                                                 min_coverage=min_coverage), symmetrize=symmetrize)
    sel = Selector(g, cands, n_layers=layers, missing=missing)
    res = sel.select(budget, cfg)
    others = [sel.select(budget, cfg, method=m) for m in RANKING_METHODS if compare and m != method]
    summary = {
        "method": res.method, "algorithm": res.algorithm, "budget": res.budget,
        "n_candidates": res.n_candidates, "n_graph_nodes": res.n_nodes, "n_layers": res.n_layers,
        "objective": float(res.objective[-1]), "coverage_fraction": float(res.coverage[-1]),
        "n_gain_evaluations": res.n_evaluations, "seconds": res.seconds, "bound": res.bound,
        "missing_candidates": res.missing, "graph_components": sel.pool.n_components, "prior": prior,
    }
    with atomic_dir(out, overwrite) as tmp:
        res.to_frame().to_csv(tmp / "selection.csv", index=False)
        res.plot_coverage(tmp / "coverage.png", others)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    typer.echo(f"selected {res.budget} of {res.n_candidates} candidates with {res.method}; "
               f"coverage {res.coverage[-1]:.3f}; wrote {out}")


def benchmark(
    out: Annotated[Path, typer.Option("--out", "-o", show_default=False, help="Output directory (results.csv, "
                                      "summary.csv, published_iterpert.csv, benchmark.png, benchmark_vs_random.png, "
                                      "config.json).")],
    data: Annotated[Optional[Path], typer.Option(
        help="REAL Perturb-seq h5ad (GEARS perturb_processed.h5ad or scPerturb style). Default: the SEMI-SYNTHETIC "
             "benchmark (simulated responses on the GO graph and real K562 control cells of the shared data "
             "folder).")] = None,
    subset: Annotated[List[str], typer.Option(help="obs filter for --data, KEY=VALUE (e.g. dataset=norman19); "
                                                   "repeat.")] = [],
    graph: Annotated[Optional[Path], typer.Option(help=GO_GRAPH_HELP)] = None,
    budget: Annotated[List[int], typer.Option("--budget", help="Cumulative budget; repeat (e.g. --budget 25 "
                                              "--budget 50 ...). Default: the semi-synthetic set uses 25, 50, 100, "
                                              "200, 400, 600; --data uses --initial/--rounds/--batch.")] = [],
    initial: Annotated[int, typer.Option(help="Initial budget (round 0), when no --budget is given.")] = 100,
    rounds: Annotated[int, typer.Option(help="Active-learning rounds after the initial set.")] = 5,
    batch: Annotated[int, typer.Option(help="Perturbations per round.")] = 100,
    seeds: Annotated[int, typer.Option(help="Number of seeds (0..seeds-1); semi-synthetic: a seed = test split "
                                            "+ measurement noise.")] = 3,
    model: Annotated[List[BenchmarkModel], typer.Option(help="Outcome model fitted on the measured perturbations; "
                                                             "repeat for several (default ridge).")] = [],
    model_option: Annotated[List[str], typer.Option(help="Model constructor option KEY=VALUE (JSON value), e.g. "
                                                         "epochs=5, given to every --model; repeat.")] = [],
    oneshot: Annotated[List[Method], typer.Option(help="One-shot method; repeat (default: all).")] = [],
    strategy: Annotated[List[Strategy], typer.Option(help="Active-learning strategy; repeat (default: "
                                                          "all).")] = [],
    graph_noise: Annotated[List[float], typer.Option(help="Semi-synthetic: fraction of the selection graph's edges "
                                                          "rewired (the truth and, unless --prior-use model, the models keep the true graph); repeat "
                                                          "(default 0).")] = [],
    rewire: Annotated[Rewire, typer.Option(help="Rewiring: degree-preserving double-edge swaps or random "
                                                "endpoints.")] = "degree",
    positive_control: Annotated[bool, typer.Option(help="Semi-synthetic: add the oracle positive control "
                                                        "(test-aware V-optimal design on the true graph).")] = True,
    prior: Annotated[Prior, typer.Option(help=PRIOR_HELP + " Where it replaces GO: --prior-use.")] = "go",
    prior_use: Annotated[List[PriorUse], typer.Option(
        "--prior-use", help="Where the --prior graph replaces GO: selection (the one-shot selection graph), "
                            "kernel (IterPert's graph prior kernel), model (the gene graph of ridge / sgc / "
                            "gears); repeat (default selection).")] = [],
    model_dir: ModelDir = None,
    knn: Knn = 20,
    min_coverage: MinCoverage = None,
    synthetic_option: Annotated[List[str], typer.Option(help="Semi-synthetic generator option KEY=VALUE "
                                                             "(SyntheticConfig field, e.g. own=0.2); repeat.")] = [],
    n_candidates: Annotated[int, typer.Option(help="Semi-synthetic: perturbable genes (pool + test).")] = 3000,
    n_test: Annotated[int, typer.Option(help="Semi-synthetic: held-out test genes.")] = 500,
    data_seed: Annotated[int, typer.Option(help="Seed of the semi-synthetic ground truth / real test split.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Compare one-shot selection and active learning at equal cumulative budgets; write CSVs and PNG curves.

    summary.csv holds mean, 95% interval and paired Wilcoxon tests (BH-corrected) of every method
    against random, per model, budget and graph noise (docs/select.md).

    Errors: OutputExistsError, ConfigError (KEY=VALUE items without '=', unknown synthetic options,
    bad budgets or graph noise, --prior fm without --model-dir), BudgetError (budgets larger than the pool),
    InputDataError (unreadable --data or graph), CoverageError (below --min-coverage).
    """
    import dataclasses

    from .._io import check_output
    from ..errors import ConfigError
    from ..graphs import load_edge_list
    from ..select.active import STRATEGIES
    from ..select.benchmark import (
        BenchmarkConfig,
        benchmark_file,
        benchmark_semisynthetic,
        write_report,
    )
    from ..select.greedy import METHODS
    from ..select.synthetic import SyntheticConfig

    check_output(out, overwrite)
    opts = key_values(model_option, "--model-option", parse_json=True)
    filt = key_values(subset, "--subset") or None
    sopts = key_values(synthetic_option, "--synthetic-option", parse_json=True)
    if filt and data is None:
        raise ConfigError("--subset filters the cells of --data; give --data FILE.h5ad or drop --subset")
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    bad = sorted(set(sopts) - fields)
    if bad:
        raise ConfigError(f"unknown --synthetic-option {bad}; SyntheticConfig fields: {sorted(fields)}")
    models = tuple(map(value, model)) or ("ridge",)
    budgets = tuple(budget) or ((25, 50, 100, 200, 400, 600) if data is None and (initial, rounds, batch) == (100, 5, 100)
                                else None)
    cfg = BenchmarkConfig(initial=initial, rounds=rounds, batch=batch, budgets=budgets, seeds=tuple(range(seeds)),
                          oneshot=tuple(map(value, oneshot)) or METHODS,
                          strategies=tuple(map(value, strategy)) or STRATEGIES, model=models[0], models=models,
                          options_by_model={m: opts for m in models} if opts else {},
                          graph_noise=tuple(graph_noise) or (0.0,), rewire=value(rewire),
                          positive_control=positive_control, prior=value(prior),
                          model_dir=str(model_dir) if model_dir else None, fm_k=knn, min_coverage=min_coverage,
                          prior_uses=tuple(map(value, prior_use)) or ("selection",))
    if data is None:
        scfg = SyntheticConfig(**{"n_candidates": n_candidates, "n_test": n_test, "seed": data_seed, **sopts})
        res = benchmark_semisynthetic(cfg, scfg, graph=load_edge_list(graph) if graph is not None else None)
    else:
        if cfg.graph_noise != (0.0,):
            raise ConfigError("--graph-noise needs the semi-synthetic benchmark (a known true graph); drop --data")
        res = benchmark_file(data, cfg, graph_path=graph, subset=filt, seed=data_seed)
    write_report(res, out, overwrite=overwrite, config=cfg)
    typer.echo(f"wrote {out} ({res['setting'].iloc[0]})")
