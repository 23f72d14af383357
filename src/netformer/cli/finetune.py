"""``netformer finetune``: fine-tune and evaluate a cell or gene classifier (:mod:`netformer.classify`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import (ClassWeights, Device, FinetuneSchedule, ModelArg, Overwrite, Subfolder, Task, VocabDir,
                      checked_precision, model_and_vocab, precision_option, value)


def finetune(
    task: Annotated[Task, typer.Argument(help="'cell' (a label per cell) or 'gene' (a label per gene).",
                                         show_default=False)],
    cells: Annotated[Path, typer.Argument(
        help="The cells: raw counts (.h5ad; tokenized here with the model's dictionary and used by the baseline) "
             "or a tokenized folder (netformer tokenize; its baseline counts come from --counts).",
        show_default=False)],
    model: ModelArg,
    output_dir: Annotated[Path, typer.Option("--out", "-o", show_default=False,
                                             help="Where the fine-tuned model, metrics, predictions and plots go.")],
    counts: Annotated[Optional[Path], typer.Option(
        "--counts", help="With a tokenized folder: the raw counts (.h5ad) it was tokenized from, matched by cell_id, "
                         "for the baseline. Without them only --folds 0 --search 0 runs (fit and save, no "
                         "evaluation): every reported result stands beside its baseline.")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Column with cell labels (cell task); "
                                                                     "unlabelled cells are dropped.")] = "cell_type",
    gene_labels: Annotated[Optional[Path], typer.Option(
        "--gene-labels", help="Gene labels (gene task; Ensembl ids or symbols): CSV rows gene,label, or one column "
                              "per class. With --task: replaces the recipe's bundled labels.")] = None,
    gene_task: Annotated[Optional[str], typer.Option(
        "--task", help="A gene-task recipe (gene task): dosage-sensitivity, bivalent-vs-nonmethylated, "
                       "bivalent-vs-lys4 (the paper's labels, a 5-fold CV beside the "
                       "per-gene-statistics baseline and the published figure, in OUT/gene_task.csv). "
                       "Own-label recipes (tf-regulatory-range, central-vs-peripheral, tf-targets, custom) "
                       "take --gene-labels.")] = None,
    group_column: Annotated[Optional[str], typer.Option(
        "--group-column", help="Column (donor/batch/sample) no group of which is split.")] = None,
    n_splits: Annotated[int, typer.Option("--folds", help="Cross-validation folds (0: no evaluation, fit "
                                                          "only).")] = 5,
    search: Annotated[int, typer.Option("--search", help="Optuna trials of a hyperparameter search before "
                                                         "the CV.")] = 0,
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    learning_rate: Annotated[float, typer.Option("--lr")] = 5e-4,
    lr_scheduler: Annotated[FinetuneSchedule, typer.Option("--lr-scheduler")] = "linear",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    grad_accum: Annotated[int, typer.Option("--gradient-accumulation-steps", help="Batches per optimiser step "
                                            "(their gradients summed).")] = 1,
    freeze_layers: Annotated[int, typer.Option("--freeze-layers", help="Freeze embeddings and the first N "
                                                                       "layers (-1: train the head only).")] = 0,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Truncate cells to this many "
                                                                           "tokens.")] = None,
    n_cells: Annotated[Optional[int], typer.Option("--n-cells", help="Random subsample of cells (seeded).")] = None,
    vocab: VocabDir = None,
    subfolder: Subfolder = None,
    class_weights: Annotated[Optional[ClassWeights], typer.Option("--class-weights",
                                                                  help="'balanced' or omit.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = None,
    precision: precision_option("fp32", "Training keeps float32 master weights under bf16 autocast.") = "fp32",
    lora_rank: Annotated[Optional[int], typer.Option(
        "--lora-rank", help="Train LoRA adapters of this rank (peft; query/key/value, alpha 2 x rank) and the "
                            "head instead of the whole model; saved as a peft adapter beside the base "
                            "checkpoint.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Fine-tune a classifier, evaluate it beside its baseline (cross-validated) and save it in OUT/model.

    A checkpoint without a dictionary beside it is saved with the resolved one in OUT/pretrained
    first. OUT holds the search (OUT/search/, OUT/search_trials.csv), the cross-validation (OUT/cv/),
    the final model (OUT/model/) and, last, OUT/config.json.

    Resumable: a run killed at any moment (kill -9, out of memory, a pre-empted job) and started again
    with the same command continues where it stopped: finished search trials and CV folds are kept
    (OUT/manifest.json, OUT/search/manifest.json, OUT/cv/fold_K/) and the outputs equal an uninterrupted
    run's. The same command with other settings over an unfinished OUT is refused (ConfigError) unless
    --overwrite; --overwrite runs in .OUT.overwrite beside OUT and replaces the old results only when
    the new run is complete.

    Errors (all before anything is written): OutputExistsError (OUT holds a finished run, or other
    files), DictionaryError (no dictionary: --vocab; cells tokenized with another one), ConfigError
    (--folds 1, evaluation without --counts, --counts with raw counts, an unfinished OUT with other
    settings), InputDataError (missing columns, no cell labelled, a single class, a class with fewer
    members than --folds, fewer groups than --folds).
    """
    from .._io import atomic_file
    from ..classify import (CellClassifier, FinetuneConfig, GeneClassifier, cross_validate_cells,
                            cross_validate_genes, search_cells, search_genes)
    from ..classify.cv import check_finetune_inputs, config_settings, data_digest, drop_unlabelled, model_digest
    from ..classify.data import load_cells, read_gene_labels
    from ..classify.gene_tasks import run_gene_task, task_labels
    from ..distributed import barrier, world
    from ..distributed import init as init_world
    from ..runs import MANIFEST, open_shared_run
    from ..errors import ConfigError, InputDataError
    from ..genes import model_vocab
    from ..model import attach_vocab, model_input_size

    cell_task = value(task) == "cell"
    if n_splits < 0 or n_splits == 1:
        raise ConfigError(f"--folds {n_splits}: give 0 (fit only, no evaluation) or at least 2 folds")
    if search < 0:
        raise ConfigError(f"--search {search}: give 0 (no search) or a positive number of trials")
    w = world()
    if w.distributed and (n_splits >= 2 or search > 0):
        raise ConfigError(f"under torchrun ({w.size} processes) netformer finetune trains one model data-parallel: "
                          "pass --folds 0 --search 0 (cross-validation folds and search trials are separate fits; "
                          "run those in one process)")
    _refuse_finished(output_dir, overwrite, MANIFEST)
    checked_precision(precision, device)
    tokenized = cells.is_dir()
    if tokenized and counts is None and (n_splits >= 2 or search > 0):
        raise ConfigError(f"{cells} holds tokenized cells: the evaluation beside the baseline needs their raw counts; "
                          "pass --counts FILE.h5ad, or --folds 0 --search 0 to fit and save without evaluation")
    if gene_task is not None and cell_task:
        raise ConfigError("--task names a gene-task recipe: run 'netformer finetune gene ... --task NAME'")
    if not cell_task and gene_labels is None and gene_task is None:
        raise InputDataError("the gene task needs --gene-labels FILE.csv (columns gene,label) or a recipe, --task NAME "
                             "(netformer.classify.gene_tasks.GENE_TASKS)")
    if gene_task is not None:
        recipe = gene_task
        recipe_labels = task_labels(recipe, gene_labels)
        glabels = recipe_labels[0]
    else:
        recipe = None
        glabels = read_gene_labels(gene_labels) if not cell_task else None
    path, chosen = model_and_vocab(model, subfolder, cells if tokenized else None, vocab)
    cfg = FinetuneConfig(learning_rate=learning_rate, lr_scheduler=value(lr_scheduler), epochs=epochs,
                         batch_size=batch_size, gradient_accumulation_steps=grad_accum, freeze_layers=freeze_layers, max_length=max_length,
                         class_weights=value(class_weights), seed=seed, device=device,
                         precision=value(precision),
                         lora=None if lora_rank is None else {"r": lora_rank, "alpha": 2 * lora_rank})
    columns = ([label_column] if cell_task else []) + ([group_column] if group_column else [])
    model_input = model_input_size(path)
    data = load_cells(cells, chosen, counts=counts, max_length=max_length or model_input, obs_columns=columns,
                      n_cells=n_cells, seed=seed)
    if cell_task:
        data = drop_unlabelled(data, label_column)
    check_finetune_inputs(path, data, label_column if cell_task else glabels, task=value(task), n_splits=n_splits,
                          n_trials=search, group_column=group_column, config=cfg, seed=seed)
    label = label_column if cell_task else None
    settings = {"task": value(task), "config": config_settings(cfg), "label_column": label,
                "group_column": group_column, "folds": n_splits, "search": search, "n_cells": n_cells, "seed": seed,
                "vocab": chosen.digest, "model": model_digest(path), "cells": data_digest(data, [label, group_column]),
                "gene_labels": sorted(glabels.items()) if glabels else None, "gene_task": recipe}
    init_world(device)  # a rank of a torchrun job joins the others (its GPU, or its share of the CPU)
    run = open_shared_run(output_dir, settings, overwrite, "config.json", "fine-tuning run")
    if run.finished:  # a replacement run that was complete when it was killed: now in place
        typer.echo(f"fine-tuned model written to {output_dir / 'model'}")
        return
    out = run.folder
    if model_vocab(path) is None:  # a netformer model directory (checkpoint + dictionary) used from here on
        if w.is_main:
            attach_vocab(path, chosen, out / "pretrained", overwrite=True)
            typer.echo(f"checkpoint and dictionary {chosen.name!r} saved together in {output_dir / 'pretrained'}")
        barrier()
        path = out / "pretrained"
    if search > 0:
        res = (search_cells(path, data, label_column, n_trials=search, base_config=cfg, group_column=group_column,
                            seed=seed, output_dir=out / "search") if cell_task
               else search_genes(path, data, glabels, n_trials=search, base_config=cfg, seed=seed,
                                 output_dir=out / "search"))
        with atomic_file(out / "search_trials.csv") as tmp:
            res.trials.to_csv(tmp, index=False)
        cfg = res.best_config
        typer.echo(f"best trial: validation macro-F1 {res.best_value:.3f} "
                   f"(baseline {res.baseline.get('macro_f1', float('nan')):.3f})")
    if n_splits >= 2 and recipe is not None:
        res = run_gene_task(recipe, path, data, n_splits=n_splits, config=cfg, seed=seed, output_dir=out / "cv",
                            label_counts=recipe_labels)
        res.save(out)
        typer.echo(f"{recipe}: {res.counts['used']} genes "
                   f"({', '.join(f'{k} {v}' for k, v in res.counts['per_class'].items())})")
        typer.echo(res.table.drop(columns="what").round(3).to_string())
    elif n_splits >= 2:
        cv = (cross_validate_cells(path, data, label_column, n_splits=n_splits, group_column=group_column, config=cfg,
                                   seed=seed, output_dir=out / "cv") if cell_task
              else cross_validate_genes(path, data, glabels, n_splits=n_splits, config=cfg, seed=seed,
                                        output_dir=out / "cv"))
        typer.echo(cv.summary().round(4).to_string())
    clf = (CellClassifier(path, cfg).fit(data.dataset, label_column) if cell_task
           else GeneClassifier(path, cfg).fit(data.dataset, glabels))
    clf.save(out / "model", overwrite=True)  # rank 0 writes it
    if not w.is_main:
        return
    with atomic_file(out / "config.json") as tmp:  # last: marks the run finished
        tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
    run.commit()
    typer.echo(f"fine-tuned model written to {output_dir / 'model'}")


def _refuse_finished(output_dir: Path, overwrite: bool, manifest: str) -> None:
    """OutputExistsError at once (before any input is read) for an OUT that holds a finished run or
    files of something else, unless --overwrite; an unfinished run is checked once the inputs are read."""
    from .._io import check_output

    if overwrite or not output_dir.exists():
        return
    if not output_dir.is_dir() or (output_dir / "config.json").exists() or (
            not (output_dir / manifest).exists() and any(output_dir.iterdir())):
        check_output(output_dir, overwrite=False)
