"""Model commands: ``netformer pretrain``, ``netformer embed`` and ``netformer demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (Device, ModelArg, choices, Overwrite, Pooling, Preset, PretrainSchedule, Subfolder, Tokenized,
                      VocabDir, checked_precision, model_and_vocab, precision_option, value)

EMBEDDING_FORMATS = (".parquet", ".csv", ".h5ad")
GeneKind = choices("GeneKind", ("contextual", "static"))  # netformer.embed.GENE_EMBEDDING_KINDS


def pretrain(
    data: Tokenized,
    output: Annotated[Path, typer.Option("--out", "-o", help="Output directory (checkpoints/, model/).",
                                         show_default=False)],
    preset: Annotated[Preset, typer.Option(help="Model preset (netformer.model.PRESETS).")] = "small",
    max_length: Annotated[Optional[int], typer.Option(help="Truncate cells to this many tokens.")] = None,
    epochs: Annotated[float, typer.Option()] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Optimisation steps (> 0 overrides --epochs).")] = -1,
    batch_size: Annotated[int, typer.Option(help="Cells per device and step.")] = 16,
    learning_rate: Annotated[Optional[float], typer.Option(help="Default: the preset's (1e-3 for most).")] = None,
    warmup_steps: Annotated[int, typer.Option()] = 100,
    weight_decay: Annotated[Optional[float], typer.Option(help="Default: the preset's (0.001 for most).")] = None,
    lr_scheduler: Annotated[Optional[PretrainSchedule], typer.Option(
        help="linear (V1) or cosine (V2); default: the preset's.")] = None,
    save_steps: Annotated[int, typer.Option(help="Checkpoint interval (the resume granularity).")] = 200,
    logging_steps: Annotated[int, typer.Option()] = 10,
    seed: Annotated[int, typer.Option()] = 0,
    vocab: VocabDir = None,
    device: Device = None,
    precision: precision_option("fp32", "Training keeps float32 master weights under bf16 autocast.") = "fp32",
    overwrite: Overwrite = False,
) -> None:
    """Masked gene pretraining; re-running with the same --out resumes from the last checkpoint.

    Under torchrun / accelerate launch every process trains on its share of the batches (DDP) and
    only the main process writes. Errors: DictionaryError (the cells record no dictionary and no
    --vocab, or a different one), OutputExistsError (a finished model in --out without --overwrite).
    """
    from ..encoder import default_device
    from ..genes import resolve_vocab
    from ..pretrain import PretrainConfig
    from ..pretrain import pretrain as run_pretrain
    from ..tokenize import load_tokenized

    checked_precision(precision, device)
    ds = load_tokenized(data)
    chosen = resolve_vocab(None, data, vocab)
    # An explicit device, so that the Trainer runs DDP (gloo) under torchrun on CPU-only machines too
    # (with device None it trains one full copy per process there).
    cfg = PretrainConfig(preset=value(preset), max_length=max_length, epochs=epochs, max_steps=max_steps,
                         batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
                         weight_decay=weight_decay, lr_scheduler=value(lr_scheduler), save_steps=save_steps,
                         logging_steps=logging_steps, seed=seed, device=device or default_device().type,
                         precision=value(precision))
    res = run_pretrain(ds.select_columns(["input_ids", "length"]), chosen, output, cfg, overwrite)
    h = res.loss_history
    loss = f"loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}; " if h else ""
    typer.echo(f"{res.n_steps} steps, {loss}model in {res.model_dir}")


def embed(
    model: ModelArg,
    data: Tokenized,
    output: Annotated[Path, typer.Option(
        "--out", "-o", show_default=False,
        help="Output file by suffix: .parquet or .csv (one row per cell: obs columns + dim_*), .h5ad "
             "(obsm['X_netformer']); with --genes one row per gene (n_cells + dim_*; .h5ad: X).")],
    layer: Annotated[int, typer.Option(help="Hidden-state layer (-1 last, -2 second to last).")] = -2,
    pooling: Annotated[Pooling, typer.Option(help="mean (over gene tokens) or cls.")] = "mean",
    genes: Annotated[bool, typer.Option("--genes", help="Gene embeddings instead of cells (see --kind).")] = False,
    kind: Annotated[GeneKind, typer.Option(help="With --genes: contextual (hidden states averaged over the cells) "
                                                "or static (the model's input token embeddings; the cells only "
                                                "resolve the dictionary).")] = "contextual",
    graph_out: Annotated[Optional[Path], typer.Option(help="With --genes: also write the kNN cosine gene graph "
                                                           "(source,target,importance in symbols, like the GO "
                                                           "graph) to this CSV.")] = None,
    knn: Annotated[int, typer.Option("--knn", help="Neighbours per gene of --graph-out.")] = 20,
    batch_size: Annotated[int, typer.Option()] = 32,
    chunk_cells: Annotated[int, typer.Option(help="Cells per resumable chunk (a killed run continues; under "
                                                  "torchrun the ranks share the chunks).")] = 4096,
    umap_by: Annotated[Optional[str], typer.Option(help="Dataset column to colour a UMAP PNG by (written "
                                                        "beside --out).")] = None,
    vocab: VocabDir = None,
    subfolder: Subfolder = None,
    device: Device = None,
    precision: precision_option("auto", "Inference runs a bf16 copy of the model.") = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Cell (or gene) embeddings of a tokenized dataset.

    Everything is checked before the model runs: the output suffix, --umap-by, the output path, the
    model and its dictionary against the cells. Errors: ConfigError (suffix, --umap-by or --graph-out
    without the right --genes, layer), InputDataError (no such column), DictionaryError, OutputExistsError.
    """
    import anndata as ad
    import pandas as pd

    from .._io import atomic_file, check_output, remove_dir
    from ..distributed import world
    from ..embed import EmbeddingConfig, embed_cells, gene_embeddings, umap_plot
    from ..graphs import embedding_graph
    from ..errors import ConfigError, InputDataError
    from ..model import load_model
    from ..tokenize import load_tokenized

    if output.suffix not in EMBEDDING_FORMATS:
        raise ConfigError(f"--out {output}: write embeddings to one of {', '.join(EMBEDDING_FORMATS)}")
    if genes and umap_by:
        raise ConfigError("--umap-by colours cells; it does not apply to --genes")
    if graph_out is not None and not genes:
        raise ConfigError("--graph-out is a gene graph; add --genes")
    check_output(output, overwrite)
    if graph_out is not None:
        check_output(graph_out, overwrite)
    checked_precision(precision, device)
    ds = load_tokenized(data)
    if umap_by and umap_by not in ds.column_names:
        raise InputDataError(f"--umap-by {umap_by}: the cells have no such column (columns: {ds.column_names})")
    path, chosen = model_and_vocab(model, subfolder, data, vocab)
    cfg = EmbeddingConfig(layer=layer, pooling=value(pooling), batch_size=batch_size, device=device,
                          precision=value(precision), chunk_cells=chunk_cells)
    w = world()
    if genes and w.distributed:
        raise ConfigError("--genes runs in one process (its sums over cells are not sharded); run it without torchrun")
    m = load_model(path, device=device)
    work = output.parent / f".{output.name}.run"  # the resumable chunks, removed once --out is written
    if genes:
        frame = gene_embeddings(m, ds, value(kind), cfg, vocab=chosen)
        dims = frame.filter(like="dim_")
        table = ad.AnnData(dims.to_numpy(), obs=frame.drop(columns=dims.columns).astype({"symbol": str}),
                           var=pd.DataFrame(index=dims.columns)) \
            if output.suffix == ".h5ad" else frame  # indexed by gene
        what = f"{len(frame)} {value(kind)} gene embeddings"
        if graph_out is not None:
            edges = embedding_graph(frame, knn)
            with atomic_file(graph_out, overwrite=overwrite) as tmp:
                edges.to_csv(tmp, index=False)
            typer.echo(f"kNN cosine gene graph, {edges['target'].nunique()} genes, {len(edges)} edges -> {graph_out}")
    else:
        emb = embed_cells(m, ds, cfg, vocab=chosen, run_dir=work)
        if not w.is_main:  # rank 0 writes the merged table
            return
        meta = ds.remove_columns(["input_ids"]).to_pandas()
        if output.suffix == ".h5ad":
            obs = meta.set_index("cell_id") if "cell_id" in meta else meta.set_axis(meta.index.astype(str))
            table = ad.AnnData(obs=obs.astype({c: str for c in obs.columns if obs[c].dtype == object}))
            table.obsm["X_netformer"] = emb
        else:
            table = pd.concat([meta, pd.DataFrame(emb, columns=[f"dim_{i}" for i in range(emb.shape[1])])], axis=1)
        what = f"{emb.shape[0]} cell embeddings of size {emb.shape[1]}"
    with atomic_file(output, overwrite=overwrite) as tmp:
        if output.suffix == ".h5ad":
            table.write_h5ad(tmp)
        elif output.suffix == ".csv":
            table.to_csv(tmp, index=genes)
        else:
            table.to_parquet(tmp, index=genes)
    remove_dir(work)
    if umap_by:
        umap_plot(emb, meta[umap_by], output.with_suffix(f".umap_{umap_by}.png"), title=f"cell embeddings by {umap_by}")
    typer.echo(f"{what} -> {output}")


def demo(
    output: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("netformer_demo"),
    epochs: Annotated[float, typer.Option(help="Pretraining epochs.")] = 3.0,
    preset: Annotated[Preset, typer.Option(help="Model preset.")] = "small",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output folder (by default a "
                                                                "re-run reuses its finished steps).")] = False,
    steps: Annotated[str, typer.Option("--steps", help="Comma-separated steps to run: cells, states, genes, "
                                                       "experiments (states and genes need the cells step's "
                                                       "model and run it first when it is missing).")]
        = "cells,states,genes,experiments",
) -> None:
    """Run the end-to-end demo (cells -> states -> genes -> experiments) and write OUT/report.html.

    Cells: the bundled pbmc3k counts, a pretrained encoder, cell embeddings beside PCA. States: a
    ctrl/stim classifier on Kang 2018 and in silico treatment toward control. Genes: gene embeddings and
    the attention gene network against GO. Experiments: GraphReach selection on the GO graph and a panel
    on the Norman 2019 devel set. The last three read ../shared/data (a step whose data is absent is
    skipped with one line). A re-run reuses every finished step with the same settings.
    """
    from .._demo import run_demo

    res = run_demo(output, overwrite=overwrite, epochs=epochs, preset=value(preset),
                   steps=[s.strip() for s in steps.split(",") if s.strip()])
    for name, rec in res.steps.items():
        typer.echo(f"{name}: {rec.status}" + (f" ({rec.message})" if rec.message else f", {rec.seconds:.0f} s"))
    typer.echo(f"report: {res.report}")
