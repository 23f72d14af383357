"""Ready recipes for the gene tasks of the Geneformer paper, and "your own labels" recipes.

Theodoris et al. 2023 (Nature 618:616-624) fine-tune Geneformer to classify genes: dosage-sensitive
vs -insensitive transcription factors, bivalent vs unmethylated or H3K4me3-only promoters, long- vs
short-range transcription factors, central vs peripheral genes of a network, and targets of a factor.
Upstream ships these as notebooks; here each is a named :class:`GeneTask` run by
:func:`run_gene_task` (Python) or ``netformer finetune gene CELLS MODEL --task NAME --out OUT``:

- labels: the published label files (bundled in ``netformer/data/gene_labels``, Apache-2.0, see its
  README), de-duplicated; genes listed in two classes dropped; every count reported;
- a stratified k-fold cross-validation over genes (:func:`~netformer.classify.cross_validate_genes`:
  the fine-tuned :class:`~netformer.classify.GeneClassifier` and the per-gene-statistics baseline on
  the same folds, resumable fold by fold);
- a table of ROC-AUC per fold, mean and standard deviation over folds, for the model, the baseline and
  upstream's published figure where one exists (:attr:`GeneTask.published`).

Tasks whose label files are not public outside the Genecorpus Hugging Face dataset (TF regulatory
range, central vs peripheral genes, TF targets) are "your own labels" recipes
(:attr:`GeneTask.own_labels`): the same run with ``gene_labels=`` / ``--gene-labels FILE`` in either
layout :func:`~netformer.classify.data.read_gene_labels` reads (``gene,label`` rows, or one column per
class). Any other binary or multi-class gene labels run through the ``custom`` task.

A deliberate difference from upstream's notebook: upstream freezes the first 4 of 6 layers of its
V1 model and trains 1 epoch with its defaults; the recipe takes the :class:`FinetuneConfig` given
(default: balanced class weights, the rest :class:`FinetuneConfig`'s defaults), which suits the small
encoders trained here; pass upstream's settings for a published checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .._io import atomic_file
from ..errors import ConfigError, InputDataError
from .config import FinetuneConfig
from .cv import CVResult, cross_validate_genes
from .data import CellData, gene_labels_from_sets, read_gene_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """A published result of a task: ``metric`` per fold, their mean and standard deviation."""

    metric: str
    mean: float
    std: float
    folds: tuple[float, ...]
    model: str
    source: str


@dataclass(frozen=True)
class GeneTask:
    """A gene classification recipe.

    Attributes
    ----------
    name
        The name used by :func:`gene_task` and ``--task``.
    description
        One line: what is told apart.
    classes
        The class names (positive first); empty for own-label tasks (the file's classes).
    files
        ``(class, file)`` pairs of bundled one-id-per-line lists, or ``("", file)`` for one table in a
        layout :func:`read_gene_labels` reads; empty for own-label tasks.
    source
        Where the labels come from.
    published
        Upstream's published cross-validated figure, or None.
    own_labels
        True when the user supplies the label file (``gene_labels=``).
    """

    name: str
    description: str
    classes: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    source: str = ""
    published: Published | None = None
    own_labels: bool = False


_GF = "Theodoris et al. 2023, Nature 618:616-624; label files from the Geneformer repository (Apache-2.0)"
_CHROMATIN = ("Geneformer's chromatin-dynamics task (H3K4me3/H3K27me3 promoter marks in embryonic stem cells); "
              + _GF)
_OWN = ("the published labels are part of the Genecorpus-30M Hugging Face dataset, not shipped here: "
        "supply them (or your own) with gene_labels= / --gene-labels FILE")

GENE_TASKS: dict[str, GeneTask] = {t.name: t for t in (
    GeneTask("dosage-sensitivity", "dosage-sensitive vs dosage-insensitive transcription factors",
             ("dosage_sensitive", "dosage_insensitive"), (("", "dosage_sens_tf_labels.csv"),), _GF,
             Published("roc_auc", 0.914, 0.032, (0.937, 0.941, 0.964, 0.890, 0.878),
                       "Geneformer V1-10M, 5-fold CV on 10,000 cells of Genecorpus-30M",
                       "Geneformer repository, examples/gene_classification.ipynb")),
    GeneTask("bivalent-vs-nonmethylated", "bivalent promoters vs promoters with neither mark",
             ("bivalent", "no_methylation"),
             (("bivalent", "bivalent_gene_labels.txt"), ("no_methylation", "no_methylation_gene_labels.txt")),
             _CHROMATIN),
    GeneTask("bivalent-vs-lys4", "bivalent promoters vs H3K4me3-only promoters",
             ("bivalent", "lys4_only"),
             (("bivalent", "bivalent_gene_labels.txt"), ("lys4_only", "lys4_only_gene_labels.txt")),
             _CHROMATIN),
    GeneTask("tf-regulatory-range", "long-range vs short-range transcription factors (your own labels)",
             source=_OWN, own_labels=True),
    GeneTask("central-vs-peripheral", "central vs peripheral genes of a gene network (your own labels, or "
             "labels drawn from a network's centrality)", source=_OWN, own_labels=True),
    GeneTask("tf-targets", "targets vs non-targets of a transcription factor (your own labels)", source=_OWN,
             own_labels=True),
    GeneTask("custom", "any gene labels of your own", source="the user's label file", own_labels=True),
)}


def gene_task(name: str | GeneTask) -> GeneTask:
    """The recipe called ``name`` (:data:`GENE_TASKS`). Raises :class:`ConfigError` for an unknown name."""
    if isinstance(name, GeneTask):
        return name
    if name not in GENE_TASKS:
        raise ConfigError(f"unknown gene task {name!r}; choose one of {sorted(GENE_TASKS)}")
    return GENE_TASKS[name]


def bundled_label_dir() -> Path:
    """The folder of the bundled label files (``netformer/data/gene_labels``)."""
    return Path(str(resources.files("netformer") / "data" / "gene_labels"))


def read_gene_list(path: str | Path) -> list[str]:
    """Genes of a one-id-per-line text file (blank lines and ``#`` comments skipped; order and repeats kept).

    Raises :class:`InputDataError` when the file is missing or lists no gene.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"gene list {path} does not exist")
    genes = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not genes:
        raise InputDataError(f"gene list {path} lists no gene")
    return genes


def task_labels(task: str | GeneTask, gene_labels: str | Path | Mapping[str, str] | None = None,
                label_dir: str | Path | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """The labels of a recipe, de-duplicated, genes in two classes dropped: ``(labels, counts)``.

    Parameters
    ----------
    task
        A :class:`GeneTask` or its name.
    gene_labels
        A label file (:func:`read_gene_labels` layouts) or a mapping gene -> class; required for
        own-label tasks, and replaces the bundled files of the paper's tasks.
    label_dir
        A folder holding the task's files under their bundled names (default: the bundled folder).

    ``counts``: ``listed``, ``duplicates``, ``in_two_classes``, ``kept`` and ``per_class``.

    Raises
    ------
    ConfigError
        An own-label task without ``gene_labels``, or an unknown task.
    InputDataError
        A label file is missing or empty, or fewer than two classes are left.
    """
    t = gene_task(task)
    if gene_labels is not None:
        if isinstance(gene_labels, Mapping):
            sets: dict[str, list[str]] = {}
            for g, c in gene_labels.items():
                sets.setdefault(str(c), []).append(g)
            labels, counts = gene_labels_from_sets(sets, what="gene labels")
        else:
            labels, counts = read_gene_labels(gene_labels, return_counts=True)
    elif t.own_labels:
        raise ConfigError(f"the {t.name!r} task needs your label file: {t.source}. Give a CSV with rows gene,label "
                          "(or one column per class); see docs/gene_tasks.md")
    else:
        folder = Path(label_dir) if label_dir is not None else bundled_label_dir()
        sets = {}
        labels, counts = {}, {}
        for cls, name in t.files:
            if cls:
                sets[cls] = read_gene_list(folder / name)
            else:
                labels, counts = read_gene_labels(folder / name, return_counts=True)
        if sets:
            labels, counts = gene_labels_from_sets(sets, what=t.name)
    per_class = pd.Series(labels, dtype=object).value_counts().sort_index()
    if len(per_class) < 2:
        raise InputDataError(f"the {t.name!r} labels hold {len(per_class)} class after de-duplication; a gene "
                             "classifier needs at least two")
    counts = {**counts, "per_class": {str(k): int(v) for k, v in per_class.items()}}
    log.info("%s: %d genes (%s); %d repeated entries kept once, %d genes in two classes dropped", t.name,
             len(labels), ", ".join(f"{k} {v}" for k, v in counts["per_class"].items()), counts["duplicates"],
             counts["in_two_classes"])
    return labels, counts


@dataclass
class GeneTaskResult:
    """A recipe's cross-validation beside its baseline and the published figure.

    Attributes
    ----------
    task
        The :class:`GeneTask`.
    table
        One row per ``model`` / ``baseline`` / ``published``: ``roc_auc_mean``, ``roc_auc_std`` (over
        folds, ddof 1), ``fold_1`` ... ``fold_k`` and ``what`` (the model, baseline or publication).
    counts
        Genes at each step: ``listed``, ``duplicates``, ``in_two_classes``, ``labelled``,
        ``in_dictionary``, ``not_in_cells``, ``used`` and ``per_class`` (of the used genes).
    cv
        The :class:`CVResult` (folds, pooled predictions).
    """

    task: GeneTask
    table: pd.DataFrame
    counts: dict
    cv: CVResult = field(repr=False)

    def save(self, output_dir: str | Path) -> dict[str, Path]:
        """Write ``gene_task.csv`` (the table) and ``gene_task.json`` (task, counts, published source),
        each atomically. Returns their paths."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"table": out / "gene_task.csv", "json": out / "gene_task.json"}
        with atomic_file(paths["table"]) as tmp:
            self.table.to_csv(tmp)
        info = {"task": self.task.name, "description": self.task.description, "source": self.task.source,
                "counts": self.counts,
                "published": None if self.task.published is None else self.task.published.__dict__}
        with atomic_file(paths["json"]) as tmp:
            tmp.write_text(json.dumps(info, indent=1, default=list) + "\n")
        return paths


def run_gene_task(
    task: str | GeneTask,
    model_dir: str | Path,
    data: CellData,
    *,
    gene_labels: str | Path | Mapping[str, str] | None = None,
    label_dir: str | Path | None = None,
    n_splits: int = 5,
    config: FinetuneConfig | None = None,
    seed: int = 0,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    label_counts: tuple[dict[str, str], dict] | None = None,
) -> GeneTaskResult:
    """Run a gene-task recipe: labels, k-fold CV of model and baseline, the table beside the publication.

    Parameters
    ----------
    task
        A name of :data:`GENE_TASKS` or a :class:`GeneTask`.
    model_dir
        A pretrained encoder (netformer or a Geneformer checkpoint with its dictionary).
    data
        The cells (:func:`~netformer.classify.data.load_cells`), with counts for the baseline.
    gene_labels, label_dir
        As :func:`task_labels`.
    n_splits, seed
        Stratified folds over genes (default 5, as upstream's notebook).
    config
        Fine-tuning settings (default ``FinetuneConfig(class_weights="balanced", seed=seed)``).
    output_dir, overwrite
        Resumable CV folder (:func:`~netformer.classify.cross_validate_genes`); the table is written
        beside the folds (:meth:`GeneTaskResult.save`).
    label_counts
        ``(labels, counts)`` already read by :func:`task_labels` (used instead of reading them again).

    Raises
    ------
    ConfigError
        Unknown task, an own-label task without labels, bad settings.
    InputDataError
        No count matrix (the baseline needs it), a label file missing, a class with fewer genes in
        the cells than ``n_splits`` (before anything is written).
    GeneIdError
        No labelled gene is in the model's dictionary.
    """
    t = gene_task(task)
    if data.adata is None:
        raise InputDataError("a gene task is scored beside the per-gene-statistics baseline, which needs the raw "
                             "counts: load the cells with counts (load_cells(..., counts=FILE.h5ad))")
    cfg = config or FinetuneConfig(class_weights="balanced", seed=seed)
    labels, counts = label_counts if label_counts is not None else task_labels(t, gene_labels, label_dir)
    cv = cross_validate_genes(model_dir, data, labels, n_splits=n_splits, config=cfg, seed=seed,
                              output_dir=output_dir, overwrite=overwrite)
    per_class = cv.pooled.predictions["true"].value_counts().sort_index()
    counts = {**{k: v for k, v in counts.items() if k != "per_class"}, **cv.genes,
              "per_class": {str(k): int(v) for k, v in per_class.items()}}
    log.info("%s: %d genes used (%s); %d not in the dictionary, %d in no cell", t.name, counts["used"],
             ", ".join(f"{k} {v}" for k, v in counts["per_class"].items()),
             counts["labelled"] - counts["in_dictionary"], counts["not_in_cells"])
    res = GeneTaskResult(t, task_table(cv, t.published, model=str(model_dir)), counts, cv)
    if output_dir is not None:
        res.save(output_dir)
    return res


def task_table(cv: CVResult, published: Published | None = None, model: str = "fine-tuned model") -> pd.DataFrame:
    """ROC-AUC per fold, mean and standard deviation (ddof 1) for model, baseline and ``published``."""
    rows = {}
    for who, what in (("model", f"fine-tuned {model}"), ("baseline", "logistic regression on per-gene "
                                                                       "expression statistics")):
        v = cv.folds[f"{who}_auc"].to_numpy(dtype=float)
        rows[who] = {"roc_auc_mean": float(np.mean(v)), "roc_auc_std": float(np.std(v, ddof=1)) if len(v) > 1
                     else float("nan"), **{f"fold_{i + 1}": float(x) for i, x in enumerate(v)}, "what": what}
    if published is not None:
        rows["published"] = {"roc_auc_mean": published.mean, "roc_auc_std": published.std,
                             **{f"fold_{i + 1}": x for i, x in enumerate(published.folds)},
                             "what": f"{published.model} ({published.source})"}
    return pd.DataFrame.from_dict(rows, orient="index")
