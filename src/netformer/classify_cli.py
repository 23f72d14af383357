"""``netformer finetune``: fine-tune a cell or gene classifier from the command line (thin layer
over :mod:`netformer.classify`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def register(app) -> None:
    """Add ``netformer finetune`` to the CLI."""
    import typer

    @app.command("finetune")
    def finetune_cmd(
        task: str = typer.Argument(..., help="'cell' (a label per cell) or 'gene' (a label per gene)."),
        counts: Path = typer.Argument(..., help="Raw counts (.h5ad) of the cells; tokenized with the model's vocabulary "
                                               "and used by the baseline."),
        model_dir: Path = typer.Argument(..., help="Pretrained model directory (with its vocabulary, or see --vocab)."),
        output_dir: Path = typer.Argument(..., help="Where the fine-tuned model, metrics, predictions and plots go."),
        label_column: str = typer.Option("cell_type", "--label-column", help="obs column with cell labels (cell task)."),
        gene_labels: Optional[Path] = typer.Option(None, "--gene-labels",
                                                   help="CSV gene,label (gene task; Ensembl ids or symbols)."),
        group_column: Optional[str] = typer.Option(None, "--group-column",
                                                   help="obs column (donor/batch/sample) no group of which is split."),
        n_splits: int = typer.Option(5, "--folds", help="Cross-validation folds (0: one train/test split)."),
        search: int = typer.Option(0, "--search", help="Optuna trials of a hyperparameter search before the CV."),
        epochs: int = typer.Option(2, "--epochs"),
        learning_rate: float = typer.Option(5e-4, "--lr"),
        batch_size: int = typer.Option(16, "--batch-size"),
        freeze_layers: int = typer.Option(0, "--freeze-layers"),
        max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate cells to this many tokens."),
        n_cells: Optional[int] = typer.Option(None, "--n-cells", help="Random subsample of cells (seeded)."),
        vocab_dir: Optional[Path] = typer.Option(
            None, "--vocab", help="Token dictionary folder for a checkpoint without one beside it (a published "
                                  "Geneformer model), e.g. Geneformer's gc30M folder for V1 models."),
        class_weights: Optional[str] = typer.Option(None, "--class-weights", help="'balanced' or omit."),
        seed: int = typer.Option(0, "--seed"),
        device: Optional[str] = typer.Option(None, "--device"),
        overwrite: bool = typer.Option(False, "--overwrite"),
    ) -> None:
        """Fine-tune and evaluate a classifier beside its baseline (cross-validated), save the model."""
        import pandas as pd

        from ._io import check_output
        from .classify import (CellClassifier, FinetuneConfig, GeneClassifier, cross_validate_cells,
                               cross_validate_genes, search_cells, search_genes, tokenize_cells)
        from .errors import ConfigError, InputDataError
        from .model import load_vocab_for

        if task not in ("cell", "gene"):
            raise ConfigError("task must be 'cell' or 'gene'")
        check_output(output_dir, overwrite)
        vocab = load_vocab_for(model_dir)
        if vocab is not None and vocab_dir is not None:
            raise ConfigError(f"{model_dir} has its own token dictionary; drop --vocab")
        if vocab is None:
            if vocab_dir is None:
                raise ConfigError(f"{model_dir} holds no token dictionary (a published Geneformer checkpoint?); "
                                  "pass --vocab DIR with the dictionary it was trained with")
            from .genes import GeneVocab
            from .model import attach_vocab

            # a netformer model directory (checkpoint + dictionary) inside the output, used from here on
            output_dir.mkdir(parents=True, exist_ok=True)
            vocab = GeneVocab.load(vocab_dir)
            model_dir = attach_vocab(model_dir, vocab, output_dir / "pretrained", overwrite=True)
            typer.echo(f"checkpoint and dictionary {vocab.name!r} saved together in {model_dir}")
        cfg = FinetuneConfig(learning_rate=learning_rate, epochs=epochs, batch_size=batch_size,
                             freeze_layers=freeze_layers, max_length=max_length, class_weights=class_weights,
                             seed=seed, device=device)
        from transformers import AutoConfig

        max_in = max_length or AutoConfig.from_pretrained(str(model_dir)).max_position_embeddings
        cols = [label_column] if task == "cell" else []
        if group_column:
            cols.append(group_column)
        data = tokenize_cells(counts, vocab, max_length=max_in, obs_columns=cols, n_cells=n_cells, seed=seed)
        output_dir.mkdir(parents=True, exist_ok=True)
        if task == "cell":
            labels = data.dataset[label_column]
            keep = [i for i, v in enumerate(labels) if v is not None]
            if len(keep) < len(labels):
                typer.echo(f"dropping {len(labels) - len(keep)} cells without a {label_column!r} label")
                data = data.subset(keep)
        else:
            if gene_labels is None:
                raise InputDataError("the gene task needs --gene-labels FILE.csv (columns gene,label)")
            table = pd.read_csv(gene_labels)
            if table.shape[1] < 2:
                raise InputDataError(f"{gene_labels} needs two columns: gene, label")
            glabels = dict(zip(table.iloc[:, 0].astype(str), table.iloc[:, 1].astype(str)))
        if search > 0:
            res = (search_cells(model_dir, data, label_column, n_trials=search, base_config=cfg, group_column=group_column,
                                seed=seed) if task == "cell"
                   else search_genes(model_dir, data, glabels, n_trials=search, base_config=cfg, seed=seed))
            res.trials.to_csv(output_dir / "search_trials.csv", index=False)
            cfg = res.best_config
            typer.echo(f"best trial: validation macro-F1 {res.best_value:.3f} (baseline {res.baseline.get('macro_f1', float('nan')):.3f})")
        if n_splits >= 2:
            cv = (cross_validate_cells(model_dir, data, label_column, n_splits=n_splits, group_column=group_column,
                                       config=cfg, seed=seed, output_dir=output_dir / "cv") if task == "cell"
                  else cross_validate_genes(model_dir, data, glabels, n_splits=n_splits, config=cfg, seed=seed,
                                            output_dir=output_dir / "cv"))
            typer.echo(cv.summary().round(4).to_string())
        clf = CellClassifier(model_dir, cfg) if task == "cell" else GeneClassifier(model_dir, cfg)
        if task == "cell":
            clf.fit(data.dataset, label_column)
        else:
            clf.fit(data.dataset, glabels)
        clf.save(output_dir / "model", overwrite=overwrite)
        (output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        typer.echo(f"fine-tuned model written to {output_dir / 'model'}")
