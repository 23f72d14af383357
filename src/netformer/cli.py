"""Command-line interface: a thin layer over the Python API.

``netformer tokenize | pretrain | embed | demo`` live here; other command groups
(``finetune``, ``perturb``, ``select``) are registered by their own modules through a
``register(app)`` function so that each stays next to the API it wraps.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import List, Optional

# Idle OpenMP threads sleep instead of spinning (spinning makes small tensor operations far slower
# on busy machines); set before torch is imported, and only if the user has not chosen.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

app = typer.Typer(
    help="netformer: single-cell foundation model and Perturb-seq experiment design.",
    no_args_is_help=True,
    add_completion=False,
)

# Modules that add their own commands: each defines ``register(app: typer.Typer) -> None``.
_PLUGINS = (
    "netformer.annotate",
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


def _vocab(spec: str):
    from .genes import GeneVocab

    return GeneVocab.load(spec)


@app.command()
def tokenize(
    inputs: List[Path] = typer.Argument(..., help="Count files (.h5ad, .zarr, .loom) of raw UMI counts."),
    output: Path = typer.Option(..., "--out", "-o", help="Output dataset directory."),
    vocab: Optional[str] = typer.Option(None, help="Vocabulary directory (ours, or Geneformer's pickles, e.g. "
                                        "geneformer_gc104M/). Omit with --build-vocab."),
    build_vocab: bool = typer.Option(False, "--build-vocab", help="Build token dictionary and gene medians from the inputs."),
    input_size: int = typer.Option(2048, help="Model input size (V1 2048, V2 4096), special tokens included."),
    obs_column: List[str] = typer.Option([], "--obs-column", help="obs column to keep (repeatable)."),
    gene_id_column: str = typer.Option("auto", help="var column with gene ids ('auto': detect)."),
    chunk_size: int = typer.Option(1024, help="Cells per chunk (bounds memory)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
) -> None:
    """Rank value encoding of count files into a Hugging Face dataset directory."""
    from .tokenize import TranscriptomeTokenizer
    from .tokenize import build_vocab as _build

    if build_vocab == (vocab is not None):
        raise typer.BadParameter("give exactly one of --vocab DIR and --build-vocab")
    v = _build(inputs) if build_vocab else _vocab(vocab)
    tok = TranscriptomeTokenizer(v, model_input_size=input_size, obs_columns=obs_column,
                                 gene_id_column=None if gene_id_column == "none" else gene_id_column,
                                 chunk_size=chunk_size)
    s = tok.write(inputs, output, overwrite=overwrite)
    typer.echo(f"{s.n_cells_out} cells, mean length {s.mean_length:.0f}, "
               f"{s.mapped_count_fraction:.1%} of counts on dictionary genes -> {output}")


@app.command()
def pretrain(
    data: Path = typer.Argument(..., help="Tokenized dataset directory (netformer tokenize)."),
    output: Path = typer.Option(..., "--out", "-o", help="Output directory (checkpoints/, model/)."),
    preset: str = typer.Option("small", help="Model preset: tiny, small, geneformer-v1-10m, geneformer-v2-104m."),
    max_length: Optional[int] = typer.Option(None, help="Truncate cells to this many tokens."),
    epochs: float = typer.Option(1.0), max_steps: int = typer.Option(-1),
    batch_size: int = typer.Option(16), learning_rate: float = typer.Option(1e-3),
    warmup_steps: int = typer.Option(100), weight_decay: float = typer.Option(0.001),
    lr_scheduler: str = typer.Option("linear", help="linear (V1) or cosine (V2)."),
    save_steps: int = typer.Option(200), logging_steps: int = typer.Option(10), seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False),
) -> None:
    """Masked gene pretraining; re-running with the same --out resumes from the last checkpoint."""
    from .pretrain import PretrainConfig
    from .pretrain import pretrain as _pretrain
    from .tokenize import load_tokenized, load_tokenized_vocab

    cfg = PretrainConfig(preset=preset, max_length=max_length, epochs=epochs, max_steps=max_steps,
                         batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
                         weight_decay=weight_decay, lr_scheduler=lr_scheduler, save_steps=save_steps,
                         logging_steps=logging_steps, seed=seed)
    ds = load_tokenized(data)
    res = _pretrain(ds.select_columns(["input_ids", "length"]), load_tokenized_vocab(data), output, cfg, overwrite)
    h = res.loss_history
    loss = f"loss {h[0]['loss']:.3f} -> {h[-1]['loss']:.3f}; " if h else ""
    typer.echo(f"{res.n_steps} steps, {loss}model in {res.model_dir}")


@app.command()
def embed(
    model: Path = typer.Argument(..., help="Model directory."),
    data: Path = typer.Argument(..., help="Tokenized dataset directory."),
    output: Path = typer.Option(..., "--out", "-o", help="Output .parquet (cells x dims) or .h5ad (obsm['X_netformer'])."),
    layer: int = typer.Option(-2, help="Hidden-state layer (-1 last, -2 second to last)."),
    pooling: str = typer.Option("mean", help="mean (over gene tokens) or cls."),
    genes: bool = typer.Option(False, "--genes", help="Gene embeddings (averaged over cells) instead of cells."),
    batch_size: int = typer.Option(32),
    umap_by: Optional[str] = typer.Option(None, help="Dataset column to colour a UMAP PNG by."),
    overwrite: bool = typer.Option(False),
) -> None:
    """Cell (or gene) embeddings of a tokenized dataset."""
    import anndata as ad
    import pandas as pd

    from ._io import atomic_file
    from .embed import EmbeddingConfig, embed_cells, embed_genes, umap_plot
    from .model import load_model, load_vocab_for
    from .tokenize import load_tokenized

    ds = load_tokenized(data)
    m = load_model(model)
    vocab = load_vocab_for(model)
    cfg = EmbeddingConfig(layer=layer, pooling=pooling, batch_size=batch_size)
    special = vocab.special_ids if vocab else None
    if genes:
        frame = embed_genes(m, ds, cfg, special_ids=special, vocab=vocab)
        with atomic_file(output, overwrite=overwrite) as tmp:
            frame.to_parquet(tmp)
        typer.echo(f"{len(frame)} gene embeddings -> {output}")
        return
    emb = embed_cells(m, ds, cfg, special_ids=special)
    meta = ds.remove_columns(["input_ids"]).to_pandas()
    if output.suffix == ".h5ad":
        a = ad.AnnData(obs=meta.set_index("cell_id").astype({c: str for c in meta.columns if meta[c].dtype == object and c != "cell_id"}))
        a.obsm["X_netformer"] = emb
        with atomic_file(output, overwrite=overwrite) as tmp:
            a.write_h5ad(tmp)
    else:
        frame = pd.concat([meta, pd.DataFrame(emb, columns=[f"dim_{i}" for i in range(emb.shape[1])])], axis=1)
        with atomic_file(output, overwrite=overwrite) as tmp:
            frame.to_parquet(tmp, index=False)
    if umap_by:
        umap_plot(emb, meta[umap_by], output.with_suffix(f".umap_{umap_by}.png"), title=f"cell embeddings by {umap_by}")
    typer.echo(f"{emb.shape[0]} cell embeddings of size {emb.shape[1]} -> {output}")


@app.command()
def demo(
    output: Path = typer.Option(Path("netformer_demo"), "--out", "-o", help="Output folder."),
    epochs: float = typer.Option(3.0, help="Pretraining epochs."),
    preset: str = typer.Option("small"),
    overwrite: bool = typer.Option(False, help="Replace a finished demo in the output folder."),
) -> None:
    """Run the end-to-end demo on the bundled pbmc3k data and write report.html."""
    from ._demo import run_demo

    res = run_demo(output, overwrite=overwrite, epochs=epochs, preset=preset)
    m = res.metrics
    typer.echo(f"k-NN accuracy: netformer {m['knn_accuracy_netformer']:.3f}, PCA baseline "
               f"{m['knn_accuracy_pca_baseline']:.3f}, majority {m['majority_class_rate']:.3f}")
    typer.echo(f"report: {res.report}")


def _register_plugins() -> None:
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a plugin module not present in this build
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
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
