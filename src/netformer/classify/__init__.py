"""Fine-tuning: cell and gene classifiers with honest evaluation against standard baselines.

Geneformer's second use after embeddings (upstream ``Classifier`` with ``classifier="cell"`` or
``"gene"``; Theodoris et al. 2023). Every evaluation reports the fine-tuned model beside the standard
baseline on the same split: logistic regression on 50 PCA components of log-normalised counts for
cells (PCA fitted on training cells only), logistic regression on per-gene expression statistics for
genes.

Public API
----------
- :class:`FinetuneConfig` - learning rate, schedule, warm-up, weight decay, frozen layers, epochs,
  batch size, class weights, seed, device.
- :class:`CellClassifier`, :class:`GeneClassifier` - ``fit`` / ``predict`` / ``evaluate`` /
  ``save`` / ``load`` (plain Hugging Face model directories).
- :func:`tokenize_cells`, :class:`CellData` - tokenized cells with their aligned counts.
- :func:`kfold_indices`, :func:`train_val_test_split` - stratified, optionally grouped splits.
- :func:`cross_validate_cells`, :func:`cross_validate_genes` -> :class:`CVResult`.
- :func:`search_cells`, :func:`search_genes` -> :class:`SearchResult` (Optuna).
- :func:`tf_gene_labels` - transcription factors (GO:0003700) vs expressed non-TF genes.
- :class:`Evaluation`, :class:`Metrics`, :class:`PCABaseline`, :class:`GeneStatsBaseline`.
"""

from .baselines import GeneStatsBaseline, PCABaseline, gene_expression_stats, log_normalise
from .config import FinetuneConfig
from .cv import CVResult, cross_validate_cells, cross_validate_genes
from .data import CellData, align_counts, get_labels, resolve_gene_labels, tokenize_cells
from .evaluate import Evaluation, evaluate_cells, evaluate_genes
from .genesets import go_gene_set, tf_gene_labels
from .metrics import Metrics, classification_metrics, plot_confusion, plot_roc
from .models import CellClassifier, GeneClassifier
from .search import SearchResult, SearchSpace, search_cells, search_genes
from .splits import check_labels, kfold_indices, train_val_test_split

__all__ = [
    "CVResult", "CellClassifier", "CellData", "Evaluation", "FinetuneConfig", "GeneClassifier",
    "GeneStatsBaseline", "Metrics", "PCABaseline", "SearchResult", "SearchSpace", "align_counts",
    "check_labels", "classification_metrics", "cross_validate_cells", "cross_validate_genes",
    "evaluate_cells", "evaluate_genes", "gene_expression_stats", "get_labels", "go_gene_set", "kfold_indices",
    "log_normalise", "plot_confusion", "plot_roc", "resolve_gene_labels", "search_cells", "search_genes",
    "tf_gene_labels", "tokenize_cells", "train_val_test_split",
]
