"""Tools, scanpy style: run a model on the cells of an AnnData and put the results into it.

Each function reads raw counts from ``adata.X`` (or ``adata.layers[layer]``), tokenizes them with
the model's dictionary (the one policy, :func:`netformer.genes.resolve_vocab`), and writes its
result under ``key_added``: cell embeddings into ``obsm``, gene embeddings into ``varm``, labels and
predictions into ``obs``, tables into ``uns``; ``uns[key_added]`` records how the result was made
(model, layer, pooling, dictionary name and digest, netformer version). With ``copy=True`` the
input is left untouched and the annotated copy is returned; otherwise ``None`` is returned.

The science is in :mod:`netformer.embed`, :mod:`netformer.annotate`, :mod:`netformer.classify`,
:mod:`netformer.perturb` and :mod:`netformer.network`; these are the AnnData front door to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, InputDataError

__all__ = ["annotate", "classify", "embed", "embed_genes", "gene_network", "perturb"]


def _version() -> str:
    from . import __version__

    return __version__


def _unique_names(adata) -> None:
    if not adata.obs_names.is_unique:
        raise InputDataError("adata.obs_names are not unique; call adata.obs_names_make_unique() first so "
                             "results can be matched to cells")


def _model_and_vocab(model, vocab, subfolder, device):
    """(loaded encoder, its dictionary, a printable model name, tokens per cell)."""
    from .encoder import encoder_and_dictionary
    from .model import load_model, model_input_size

    name = str(model) + (f"/{subfolder}" if subfolder else "")
    if isinstance(model, (str, Path)):
        model = load_model(model, kind="base", device=device, subfolder=subfolder)
    base, vocab = encoder_and_dictionary(model, None, vocab)
    size = model_input_size(base.name_or_path) if base.name_or_path else base.config.max_position_embeddings
    return base, vocab, name, size


def _tokenized(adata, vocab, size: int, layer: str | None, obs_columns: Sequence[str] = ()):
    from .pp import tokenize

    _unique_names(adata)
    return tokenize(adata, vocab, model_input_size=size, layer=layer, obs_columns=list(obs_columns))


def _rows(adata, dataset) -> np.ndarray:
    return adata.obs_names.get_indexer(pd.Index(dataset["cell_id"]))


def embed(adata, model, *, vocab=None, layer: str | None = None, hidden_layer: int = -2, pooling: str = "mean",
          key_added: str = "X_netformer", batch_size: int = 32, device: str | None = None,
          precision: str = "auto", subfolder: str | None = None, copy: bool = False):
    """Cell embeddings of ``adata``'s cells into ``adata.obsm[key_added]`` (n_obs, hidden_size) float32.

    Upstream Geneformer's ``EmbExtractor`` rule: mean over the gene tokens (special tokens excluded) of
    the hidden state at ``hidden_layer`` (-2, the second to last layer, by default), or ``pooling="cls"``.
    Cells with no gene of the dictionary get NaN rows (and are counted in ``uns[key_added]``).

    Parameters
    ----------
    adata
        AnnData of raw counts (cells x genes); obs names must be unique.
    model
        Model directory, Hub id (with ``subfolder``), or a loaded Bert model.
    vocab
        Dictionary for a checkpoint that has none beside it (default: the model's).
    layer
        Counts from ``adata.layers[layer]`` instead of ``X``.
    precision
        ``auto`` (bf16 where native, else fp32), ``fp32`` or ``bf16``
        (:class:`~netformer.embed.EmbeddingConfig`; recorded in ``uns[key_added]``).
    copy
        Return an annotated copy instead of writing into ``adata``.

    Raises
    ------
    DictionaryError
        No dictionary for the model, or it does not fit.
    InputDataError
        Non-unique obs names, bad counts, no cell with a dictionary gene.
    """
    from .embed import EmbeddingConfig, embed_cells
    from .encoder import model_device
    from .precision import resolve_precision

    adata = adata.copy() if copy else adata
    base, vocab, name, size = _model_and_vocab(model, vocab, subfolder, device)
    ds = _tokenized(adata, vocab, size, layer)
    ecfg = EmbeddingConfig(layer=hidden_layer, pooling=pooling, batch_size=batch_size, device=device,
                           precision=precision)
    emb = embed_cells(base, ds, ecfg, vocab=vocab)
    full = np.full((adata.n_obs, emb.shape[1]), np.nan, dtype=np.float32)
    full[_rows(adata, ds)] = emb
    adata.obsm[key_added] = full
    adata.uns[key_added] = {"model": name, "hidden_layer": hidden_layer, "pooling": pooling, "counts_layer": layer or "X",
                            "vocab": vocab.name, "vocab_digest": vocab.digest, "model_input_size": size,
                            "precision": resolve_precision(precision, model_device(base, device)),
                            "n_cells_embedded": int(len(ds)), "netformer_version": _version()}
    return adata if copy else None


def embed_genes(adata, model, *, kind: str = "contextual", vocab=None, layer: str | None = None,
                hidden_layer: int = -2, key_added: str = "X_netformer", batch_size: int = 32,
                device: str | None = None, precision: str = "auto", subfolder: str | None = None,
                copy: bool = False):
    """Gene embeddings into ``adata.varm[key_added]`` (n_vars, hidden_size), NaN for genes outside the
    dictionary (contextual: or never among a cell's tokens); ``uns[key_added + "_genes"]`` records how,
    ``var[key_added + "_n_cells"]`` the number of cells per gene (0 for static).

    ``kind="contextual"`` (default): a gene token's hidden state at ``hidden_layer`` averaged over the
    cells that express it; ``"static"``: the model's input token embedding row of the gene (no cells
    run; :func:`netformer.embed.gene_embeddings`). Genes are matched to the dictionary as the tokenizer
    matches them (var index or Ensembl id column, through the dictionary's Ensembl mapping).
    Parameters and errors as :func:`embed`; :class:`ConfigError` for another ``kind``.
    """
    from .embed import EmbeddingConfig, gene_embeddings
    from .tokenize import select_gene_ids

    adata = adata.copy() if copy else adata
    base, vocab, name, size = _model_and_vocab(model, vocab, subfolder, device)
    ds = _tokenized(adata, vocab, size, layer) if kind == "contextual" else None
    table = gene_embeddings(base, ds, kind, EmbeddingConfig(layer=hidden_layer, batch_size=batch_size, device=device,
                                                            precision=precision), vocab=vocab)
    ids = vocab.map_ids(select_gene_ids(adata.var, "auto"))
    pos = table.index.get_indexer(pd.Index([i if i is not None else "" for i in ids]))
    dims = table.filter(like="dim_").to_numpy(np.float32)
    full = np.full((adata.n_vars, dims.shape[1]), np.nan, dtype=np.float32)
    full[pos >= 0] = dims[pos[pos >= 0]]
    adata.varm[key_added] = full
    n_cells = np.zeros(adata.n_vars, dtype=np.int64)
    if "n_cells" in table:
        n_cells[pos >= 0] = table["n_cells"].to_numpy()[pos[pos >= 0]]
    adata.var[f"{key_added}_n_cells"] = n_cells
    adata.uns[f"{key_added}_genes"] = {"model": name, "kind": kind, "hidden_layer": hidden_layer, "vocab": vocab.name,
                                       "vocab_digest": vocab.digest, "n_genes_embedded": int((pos >= 0).sum()),
                                       "netformer_version": _version()}
    return adata if copy else None


def annotate(adata, markers: Mapping[str, Sequence[str]] | None = None, *, key_added: str = "cell_type",
             resolution: float = 1.0, random_state: int = 0, copy: bool = False):
    """Name cells by marker genes (Leiden clusters scored on known markers; the PBMC markers by default)
    into ``obs[key_added]`` (and ``obs[key_added + "_cluster"]``, ``uns[key_added + "_marker_scores"]``).

    See :func:`netformer.annotate.annotate_by_markers` for the method (the scanpy PBMC3k tutorial's way
    of naming clusters) and the errors raised.
    """
    from .annotate import PBMC_MARKERS, annotate_by_markers

    adata = adata.copy() if copy else adata
    annotate_by_markers(adata, markers or PBMC_MARKERS, resolution=resolution, random_state=random_state,
                        key_added=key_added)
    return adata if copy else None


def classify(adata, classifier, *, layer: str | None = None, key_added: str = "netformer_prediction",
             device: str | None = None, copy: bool = False):
    """Predictions of a fine-tuned cell classifier (a folder written by ``CellClassifier.save`` /
    ``netformer finetune cell``) into ``obs[key_added]`` (categorical; NaN for cells without a
    dictionary gene) and the class probabilities into ``obsm[key_added + "_proba"]`` (n_obs, n_classes),
    the classes in ``uns[key_added]["classes"]``.

    Raises :class:`~netformer.errors.ConfigError` if ``classifier`` is not a saved cell classifier, and
    the errors of :func:`embed` for the cells.
    """
    from .classify import CellClassifier
    from .model import model_input_size

    adata = adata.copy() if copy else adata
    clf = CellClassifier.load(classifier, device=device)
    ds = _tokenized(adata, clf.vocab, model_input_size(classifier), layer)
    proba = clf.predict_proba(ds)
    rows = _rows(adata, ds)
    full = np.full((adata.n_obs, proba.shape[1]), np.nan, dtype=np.float32)
    full[rows] = proba
    labels = np.full(adata.n_obs, None, dtype=object)
    labels[rows] = np.asarray(clf.classes_, dtype=object)[proba.argmax(1)]
    adata.obs[key_added] = pd.Categorical(labels, categories=list(clf.classes_))
    adata.obsm[f"{key_added}_proba"] = full
    adata.uns[key_added] = {"classifier": str(classifier), "classes": list(clf.classes_), "counts_layer": layer or "X",
                            "vocab": clf.vocab.name, "vocab_digest": clf.vocab.digest, "netformer_version": _version()}
    return adata if copy else None


def perturb(adata, model, config=None, states=None, *, vocab=None, layer: str | None = None,
            key_added: str = "netformer_perturb", out_dir: str | Path | None = None, overwrite: bool = False,
            stats=None, subfolder: str | None = None, copy: bool = False):
    """In silico perturbation (and, with ``states``, treatment) of ``adata``'s cells.

    Runs :func:`netformer.perturb.perturb` (``config``: :class:`~netformer.perturb.PerturbConfig`,
    ``states``: :class:`~netformer.perturb.CellStates`, whose column must be in ``adata.obs``) and the
    per-gene statistics (:func:`netformer.perturb.gene_stats`, ``stats``: ``StatsConfig``), and stores
    the per-gene table in ``uns[key_added]["genes"]`` (a DataFrame sorted by mean shift) with the
    settings. With ``out_dir`` the run is resumable (see ``perturb``). Returns the
    :class:`~netformer.perturb.PerturbResult` (and, with ``copy``, the annotated copy as a second value).

    Raises the errors of :func:`netformer.perturb.perturb`; ``ConfigError`` if a state or filter
    column is not in ``adata.obs``.
    """
    from dataclasses import asdict

    from .perturb import PerturbConfig, StatsConfig, gene_stats
    from .perturb import perturb as _perturb

    cfg = config or PerturbConfig()
    adata = adata.copy() if copy else adata
    base, vocab, name, size = _model_and_vocab(model, vocab, subfolder, cfg.device)
    cols = ([states.column] if states is not None else []) + list((cfg.cell_filter or {}).keys())
    missing = [c for c in cols if c not in adata.obs.columns]
    if missing:
        raise ConfigError(f"adata.obs has no column(s) {missing}; columns are {list(adata.obs.columns)}")
    ds = _tokenized(adata, vocab, size, layer, obs_columns=list(dict.fromkeys(cols)))
    res = _perturb(base, ds, cfg, states=states, vocab=vocab, out_dir=out_dir, overwrite=overwrite)
    table = gene_stats(res.results, stats or StatsConfig(seed=cfg.seed))
    adata.uns[key_added] = {"genes": table, "model": name, "config": {k: str(v) for k, v in asdict(cfg).items()},
                            "states": None if states is None else asdict(states), "vocab": vocab.name,
                            "vocab_digest": vocab.digest, "complete": bool(res.complete),
                            "netformer_version": _version()}
    return (res, adata) if copy else res


def gene_network(adata, model, *, kind: str = "attention", config=None, perturb_config=None, vocab=None,
                 layer: str | None = None, key_added: str = "gene_network", baseline: bool = True, go: bool = True,
                 subfolder: str | None = None, copy: bool = False):
    """A gene network of ``adata``'s cells into ``adata.uns[key_added]``.

    ``kind="attention"``: :func:`netformer.network.attention_network` (gene-to-gene attention,
    aggregated over cells, row-normalised); ``kind="perturbation"``:
    :func:`netformer.network.perturbation_network_from_model` (every expressed gene of each cell
    deleted, ``score(A -> B)`` = mean ``1 - cos`` of gene B's contextual embedding). ``config``:
    :class:`~netformer.network.NetworkConfig` (cells, layers, heads, ``min_cells``, top-k);
    ``perturb_config``: the deletion screen's :class:`~netformer.perturb.PerturbConfig`.

    ``uns[key_added]`` holds ``edges`` (DataFrame ``source, target, source_symbol, target_symbol, score,
    n_cells``: top-k per source), ``centrality`` (``gene, symbol, degree, in_degree, out_degree,
    pagerank, eigenvector``), ``scores`` (GO AUPRC beside shuffled scores, the base rate and, with
    ``baseline``, the co-expression network of the cells ``config`` selects, which are the perturbed ones
    unless ``perturb_config`` selects others; the interferon-stimulated-gene module;
    :func:`netformer.network.network_report`), ``info``, ``config`` and the model and dictionary.
    ``go=False`` skips the GO scores (they are skipped anyway when the GO graph file is not found).

    Raises the errors of the network functions (:class:`~netformer.errors.ConfigError` for a layer or
    head the model lacks, :class:`~netformer.errors.InputDataError` when no gene passes ``min_cells``)
    and :func:`embed`'s for the cells.
    """
    from .errors import ConfigError
    from .network import (
        NetworkConfig,
        attention_network,
        coexpression_network,
        network_cells,
        network_report,
        perturbation_network_from_model,
        resolve_layers_heads,
    )

    if kind not in ("attention", "perturbation"):
        raise ConfigError(f"kind must be 'attention' or 'perturbation', got {kind!r}")
    cfg = config or NetworkConfig()
    adata = adata.copy() if copy else adata
    base, vocab, name, size = _model_and_vocab(model, vocab, subfolder, cfg.device)
    if kind == "attention":
        resolve_layers_heads(base, cfg)
    cols = list((cfg.cell_filter or {}).keys())
    missing = [c for c in cols if c not in adata.obs.columns]
    if missing:
        raise ConfigError(f"adata.obs has no column(s) {missing}; columns are {list(adata.obs.columns)}")
    ds = _tokenized(adata, vocab, cfg.max_length or size, layer, obs_columns=cols)
    if kind == "attention":
        net = attention_network(base, ds, cfg, vocab=vocab)
    else:
        net = perturbation_network_from_model(base, ds, cfg, perturb_config, vocab=vocab)
    base_net = None
    if baseline:
        import anndata as ad

        cells = adata[_rows(adata, ds)[network_cells(ds, cfg)]]  # the network's cells (config's selection)
        counts = cells if layer is None else ad.AnnData(cells.layers[layer], var=cells.var)
        base_net = coexpression_network(counts, vocab, genes=net.genes)
    rep = network_report(net, cfg, baseline=base_net, go=go)
    adata.uns[key_added] = {"edges": rep.edges, "centrality": rep.centrality, "scores": rep.scores,
                            "info": net.info, "kind": kind, "config": cfg.to_dict(), "model": name,
                            "vocab": vocab.name, "vocab_digest": vocab.digest, "netformer_version": _version()}
    return adata if copy else None
