"""``netformer network attention | perturbation``: gene networks from the model (:mod:`netformer.network`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ._common import (
    Device,
    ModelArg,
    Overwrite,
    Subfolder,
    VocabDir,
    checked_precision,
    key_values,
    model_and_vocab,
    precision_option,
    value,
)

Out = Annotated[Path, typer.Option("--out", "-o", show_default=False,
                                   help="Output folder: edges.csv, pairs.parquet, centrality.csv, network.png, "
                                        "scores.json, config.json.")]
MinCells = Annotated[int, typer.Option(help="attention: genes among the tokens of fewer cells are left out; "
                                            "perturbation: pairs measured in fewer cells are left out.")]
TopK = Annotated[Optional[int], typer.Option(help="Edges kept per source gene, highest scores first (0: all).")]
Threshold = Annotated[Optional[float], typer.Option(help="Keep only edges with score >= this.")]
NoGo = Annotated[bool, typer.Option("--no-go", help="Skip the scores against the GO graph.")]
Seed = Annotated[int, typer.Option(help="Seed for cell sampling, shuffled scores and permutations.")]


def _report(net, cfg, baseline, go: bool, out: Path, overwrite: bool, inputs: dict) -> None:
    from ..network import network_report, write_network

    rep = network_report(net, cfg, baseline=baseline, go=go)
    write_network(rep, out, overwrite=overwrite, inputs=inputs)
    typer.echo(f"{net.kind} network: {net.info.get('n_genes')} genes, {len(net.pairs)} scored pairs, "
               f"{len(rep.edges)} edges -> {out}")
    for name in ("go_all_pairs", "go_edges"):
        s = rep.scores.get(name, {})
        if "auprc" in s:
            base = f", co-expression {s['baseline_auprc']:.4f}" if "baseline_auprc" in s else ""
            typer.echo(f"GO AUPRC ({name}, {s['n_pairs']} pairs): {s['auprc']:.4f} (shuffled {s['auprc_shuffled']:.4f}, "
                       f"base rate {s['base_rate']:.4f}{base})")
    typer.echo(rep.centrality.head(10)[["symbol", "pagerank", "degree", "eigenvector"]].to_string(index=False))


def _filter(items: list[str] | None) -> dict | None:
    cell_filter: dict[str, list[str]] = {}
    for item in items or []:
        ((col, vals),) = key_values([item], "--filter").items()
        cell_filter.setdefault(col, []).extend(v for v in vals.split(",") if v)
    return cell_filter or None


def attention(
    model: ModelArg,
    data: Annotated[Path, typer.Argument(
        help="The cells: raw counts (.h5ad; tokenized here with the model's dictionary, and the co-expression "
             "baseline computed on them) or a tokenized folder (netformer tokenize; baseline with --counts).",
        show_default=False)],
    out: Out,
    layers: Annotated[str, typer.Option(help="Encoder layers, 0-based, comma-separated (-1 the last), or all.")] = "-1",
    heads: Annotated[str, typer.Option(help="Attention heads, 0-based, comma-separated, or all.")] = "all",
    min_cells: MinCells = 10,
    min_pair_cells: Annotated[int, typer.Option(help="Pairs co-occurring in fewer cells are left out.")] = 3,
    max_cells: Annotated[Optional[int], typer.Option(help="Cells used, drawn with --seed (0: all).")] = 500,
    filter_: Annotated[Optional[List[str]], typer.Option("--filter", help="COLUMN=V1,V2 cell filter; repeat.")] = None,
    top_k: TopK = 20,
    threshold: Threshold = None,
    batch_size: Annotated[int, typer.Option(help="Cells per forward pass.")] = 8,
    max_length: Annotated[Optional[int], typer.Option(help="Truncate cells to this many tokens.")] = None,
    counts: Annotated[Optional[Path], typer.Option(
        help="With a tokenized folder: the raw counts (.h5ad) it was tokenized from (matched by cell_id), for the "
             "co-expression baseline.")] = None,
    seed: Seed = 0,
    no_go: NoGo = False,
    vocab: VocabDir = None,
    subfolder: Subfolder = None,
    device: Device = None,
    precision: precision_option("fp32", "bf16 runs a bf16 copy of the encoder.") = "fp32",
    overwrite: Overwrite = False,
) -> None:
    """Attention-based gene network of cells: gene-to-gene attention of chosen layers and heads, aggregated
    over cells and row-normalised; its centrality, top subnetwork and scores against GO and co-expression.

    Errors (before anything is written): ConfigError (a layer or head the model does not have, bad
    settings), DictionaryError, InputDataError (no gene in --min-cells cells, filter columns),
    OutputExistsError.
    """
    from .._io import check_output
    from ..classify.data import load_cells
    from ..model import load_model, model_input_size
    from ..network import (
        NetworkConfig,
        attention_network,
        coexpression_network,
        network_cells,
        resolve_layers_heads,
    )

    check_output(out, overwrite)
    checked_precision(precision, device)
    cell_filter = _filter(filter_)
    cfg = NetworkConfig(layers=layers, heads=heads, min_cells=min_cells, min_pair_cells=min_pair_cells,
                        max_cells=max_cells or None, cell_filter=cell_filter, top_k=top_k or None, threshold=threshold,
                        batch_size=batch_size, max_length=max_length, seed=seed, device=device,
                        precision=value(precision))
    tokenized = data.is_dir()
    path, chosen = model_and_vocab(model, subfolder, data if tokenized else None, vocab)
    m = load_model(path, kind="base", device=device)
    resolve_layers_heads(m, cfg)  # a layer or head the model lacks: ConfigError before any cell is read
    cells = load_cells(data, chosen, counts=counts, max_length=max_length or model_input_size(path),
                       obs_columns=list(cell_filter or {}))
    net = attention_network(m, cells.dataset, cfg, vocab=chosen)
    baseline = None
    if cells.adata is not None:
        idx = network_cells(cells.dataset, cfg)
        baseline = coexpression_network(cells.adata[idx], chosen, genes=net.genes)
    else:
        typer.echo("no raw counts (pass --counts FILE.h5ad): the co-expression baseline is skipped", err=True)
    _report(net, cfg, baseline, not no_go, out, overwrite,
            {"model": str(path), "data": str(data), "counts": str(counts) if counts else None,
             "vocab": chosen.name, "vocab_digest": chosen.digest})


def perturbation(
    run_dir: Annotated[Path, typer.Argument(
        help="Output folder of netformer perturb --gene-effects (every expressed gene deleted, one at a time).",
        show_default=False)],
    out: Out,
    min_cells: MinCells = 10,
    top_k: TopK = 20,
    threshold: Threshold = None,
    counts: Annotated[Optional[Path], typer.Option(
        help="Raw counts (.h5ad) of the perturbed cells (matched by cell_id) for the co-expression "
             "baseline.")] = None,
    seed: Seed = 0,
    no_go: NoGo = False,
    overwrite: Overwrite = False,
) -> None:
    """Perturbation-based gene network: score(A -> B) = mean over cells of 1 - cos of gene B's contextual
    embedding when A is deleted; its centrality, top subnetwork and scores against GO and co-expression.

    Errors (before anything is written): InputDataError (no gene_effects.parquet, joint perturbations,
    no pair in --min-cells cells, cells absent from --counts), OutputExistsError.
    """
    import anndata as ad
    import pandas as pd

    from .._io import check_output
    from ..errors import InputDataError
    from ..network import NetworkConfig, coexpression_network, perturbation_network

    check_output(out, overwrite)
    cfg = NetworkConfig(min_cells=min_cells, top_k=top_k or None, threshold=threshold, seed=seed, max_cells=None)
    net = perturbation_network(run_dir, min_cells)
    baseline = None
    if counts is not None:
        cell_ids = pd.read_parquet(run_dir / "results.parquet", columns=["cell_id"])["cell_id"].astype(str).unique()
        adata = ad.read_h5ad(counts)
        adata.obs_names_make_unique()
        missing = pd.Index(cell_ids).difference(adata.obs_names)
        if len(missing):
            raise InputDataError(f"{len(missing)} perturbed cells (e.g. {missing[0]}) are not in {counts}; pass the "
                                 "counts the perturbed cells were tokenized from")
        baseline = coexpression_network(adata[pd.Index(cell_ids)], None, genes=net.genes)
    _report(net, cfg, baseline, not no_go, out, overwrite,
            {"perturb_run": str(run_dir), "counts": str(counts) if counts else None})
