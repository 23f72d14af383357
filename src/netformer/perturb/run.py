"""In silico perturbation and treatment over a tokenized dataset: :func:`perturb`.

For each selected cell the requested perturbations are applied to its rank value encoding
(:mod:`netformer.perturb.ops`) and the original and perturbed cells are embedded
(:class:`~netformer.perturb.engine.ExactEvaluator`; mean of the gene tokens' hidden states at
``layer``, upstream's default the second to last). Reported per cell and perturbation:

- ``cell_effect = 1 - cos(original, perturbed)`` (upstream's cell embedding shift);
- with :class:`~netformer.perturb.select_cells.CellStates`: ``shift_goal =
  cos(perturbed, goal) - cos(original, goal)`` where a state's position is the mean cell embedding
  of its cells, and ``shift_<state>`` likewise for each alternative state (upstream's
  ``cell_states_to_model``); positive = toward that state;
- optionally (``gene_effects=True``) for every other gene of the cell the cosine between its
  original and perturbed contextual embeddings (upstream ``emb_mode="cell_and_gene"``).

``mode="exact"`` evaluates every perturbation; ``mode="screen"`` ranks all genes of a cell by a
cheap estimate (:mod:`netformer.perturb.screen`: exact pooling term, first-order attention-context
term, exact position shifts at a few anchors) and evaluates the top ``top_k`` exactly.

With ``out_dir`` the run is resumable: cells are processed in chunks of ``chunk_cells``, each
chunk's rows are written as a Parquet shard and marked done (``done/NNNNN.json``); a run started again
with the same settings skips finished chunks. Final tables (``results.parquet``,
``gene_effects.parquet``, ``skipped.json``) are written atomically once all chunks are done.

Under ``torchrun --nproc_per_node N -m netformer perturb ...`` (:mod:`netformer.distributed`) the
ranks share the run folder: rank ``r`` computes chunks ``r, r + N, ...`` (the chunks depend on the
settings, not on ``N``), rank 0 merges every chunk in chunk order and writes the final tables. The
merged tables equal a one-process run's (the same chunks, each computed the same way), and a run
killed with N ranks resumes with any number.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .._io import atomic_file, check_output, replace_dir
from ..distributed import barrier, my_chunks, world
from ..distributed import init as init_world
from ..encoder import POOLINGS, load_encoder, n_kept_layers
from ..errors import ConfigError, GeneIdError, InputDataError
from ..genes import GeneVocab
from ..precision import PRECISIONS, inference_model, resolve_precision
from ..progress import progress
from ..runs import done_pieces, mark_done, open_shared_run, parameters_digest, tokens_digest, write_json
from .engine import ExactEvaluator, cosine
from .ops import PERTURBATIONS, CellLayout, perturb_cell
from .screen import screen_cell
from .select_cells import CellStates, resolve_genes, select_cells

log = logging.getLogger(__name__)

MODES = ("exact", "screen")


@dataclass
class PerturbConfig:
    """Settings of :func:`perturb`.

    Attributes
    ----------
    perturbation
        ``delete`` (default), ``overexpress``, ``inhibit`` or ``activate`` (see :mod:`~netformer.perturb.ops`).
    genes
        ``"all"``: every expressed gene of each cell, one at a time; or a list of Ensembl ids /
        symbols perturbed jointly.
    anchor
        With ``genes="all"``: perturb the anchor gene together with each other expressed gene
        (pairs); cells that do not express the anchor are skipped (except for overexpress).
    fraction
        Fraction of the cell's gene count that inhibit / activate move a gene (default 0.25).
    mode
        ``"exact"`` or ``"screen"`` (an estimate for all genes, :func:`~netformer.perturb.screen.screen_cell`,
        + exact top ``top_k``;
        needs ``genes="all"`` and no anchor).
    top_k
        Genes per cell evaluated exactly in screen mode.
    screen_anchors
        Screen mode, deletion toward a goal: exact position-shift effects at this many positions per
        cell, interpolated (:func:`~netformer.perturb.screen.screen_cell`; 0 = first-order estimate).
    layer, pooling
        Embedding layer (hidden-state index, -2 = second to last) and pooling (``mean``/``cls``).
    batch_size
        Perturbed sequences per forward pass.
    max_length
        Cells are truncated to this many tokens (default: the model's input size).
    gene_effects
        Also report every other gene's cosine (large: one row per gene per perturbation).
    cell_filter
        ``{obs column: allowed values}``; only matching cells are perturbed.
    max_cells, seed
        Cap on the number of perturbed cells, drawn reproducibly with ``seed``.
    max_state_cells
        Cells per state averaged into a state's position (drawn with ``seed``).
    chunk_cells
        Cells per resumable chunk.
    max_chunks
        Stop after this many new chunks (time-boxed jobs); call again to continue.
    device
        Default: where a loaded model is, or CUDA when available for a model directory (one rule,
        :func:`netformer.encoder.model_device`; a loaded model is moved only when a device is given).
    precision
        ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (bf16 where the hardware multiplies it natively,
        else fp32; :func:`netformer.precision.resolve_precision`). bf16 runs a bfloat16 copy of the
        encoder for the states, the screen and the exact passes (1.4-1.6x faster on an AVX512-BF16 CPU);
        the run records the resolved precision (a run resumes only with the same one). fp32 is the
        default because bf16 per-gene shifts agree with fp32 to Spearman 0.996-0.999 per cell, below
        the 0.999 this project asks of exact mode (the top-20 treatment ranking was identical;
        docs/precision.md).
    species
        For symbol lookup in GENCODE (``human``/``mouse``).
    """

    perturbation: str = "delete"
    genes: Sequence[str] | str = "all"
    anchor: str | None = None
    fraction: float = 0.25
    mode: str = "exact"
    top_k: int = 20
    screen_anchors: int = 8
    layer: int = -2
    pooling: str = "mean"
    batch_size: int = 64
    max_length: int | None = None
    gene_effects: bool = False
    cell_filter: Mapping[str, Sequence] | None = None
    max_cells: int | None = None
    seed: int = 0
    max_state_cells: int = 1000
    chunk_cells: int = 16
    max_chunks: int | None = None
    device: str | None = None
    precision: str = "fp32"
    species: str = "human"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.perturbation not in PERTURBATIONS:
            raise ConfigError(f"unknown perturbation {self.perturbation!r}; choose one of {PERTURBATIONS}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.genes, str):
            if self.genes != "all":
                self.genes = [self.genes]
        else:
            self.genes = list(self.genes)
            if not self.genes:
                raise ConfigError("genes is empty; give 'all' or at least one gene")
        if self.anchor is not None and self.genes != "all":
            raise ConfigError("anchor pairs the anchor with every expressed gene: use genes='all' with anchor")
        if self.mode == "screen" and (self.genes != "all" or self.anchor is not None):
            raise ConfigError("mode='screen' ranks all genes of a cell one at a time: use genes='all' and no anchor")
        if self.top_k < 1 or self.batch_size < 1 or self.chunk_cells < 1 or self.max_state_cells < 1:
            raise ConfigError("top_k, batch_size, chunk_cells and max_state_cells must be positive")
        if self.screen_anchors < 0:
            raise ConfigError(f"screen_anchors must be >= 0, got {self.screen_anchors}")
        if self.max_cells is not None and self.max_cells < 1:
            raise ConfigError(f"max_cells must be a positive number of cells (or None for all), got {self.max_cells}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ConfigError(f"max_chunks must be positive (or None), got {self.max_chunks}")
        if not 0 < self.fraction <= 1:
            raise ConfigError("fraction must be in (0, 1]")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.mode == "screen" and self.pooling != "mean":
            raise ConfigError("mode='screen' estimates mean-pooled embeddings; use pooling='mean'")


@dataclass
class PerturbResult:
    """Output of :func:`perturb`.

    Attributes
    ----------
    results
        One row per (cell, perturbation): ``cell_index``, ``cell_id``, ``perturbed`` (Ensembl ids
        joined by ``+``), ``n_expressed``, ``rank`` (0-based rank of the first perturbed gene in the
        cell, -1 if not expressed), ``n_genes``, ``cell_effect``, and with states ``shift_goal`` and
        ``shift_<alternative>``; in screen mode also ``shift_estimate`` (or
        ``cell_effect_estimate``) and ``exact`` (True where evaluated exactly, exact columns NaN
        elsewhere).
    gene_effects
        ``cell_index``, ``perturbed``, ``gene``, ``cos_sim`` (or None).
    skipped
        Counts of cells skipped, by reason.
    complete
        False when stopped by ``max_chunks``.
    states
        State label -> (hidden,) mean embedding.
    """

    results: pd.DataFrame
    gene_effects: pd.DataFrame | None
    skipped: dict[str, int]
    complete: bool
    states: dict[str, np.ndarray] = field(default_factory=dict)
    out_dir: Path | None = None


# ------------------------------------------------------------------------------------------------
def _label(tokens: Sequence[int], vocab: GeneVocab) -> str:
    return "+".join(vocab.token_to_gene(t) for t in tokens)


def state_embeddings(model, dataset, states: CellStates, vocab: GeneVocab | None = None, max_cells: int = 1000,
                     seed: int = 0, layer: int = -2, pooling: str = "mean", max_length: int | None = None,
                     device=None, batch_size: int = 32, precision: str = "fp32") -> dict[str, np.ndarray]:
    """Position of each state (start, goal, alternatives): the mean cell embedding
    (:func:`netformer.embed.embed_cells`, at ``precision``) over at most ``max_cells`` cells of that
    state drawn with ``seed``. Returns label -> (hidden,) float32."""
    from ..embed import EmbeddingConfig, embed_cells

    labels = states.validate(dataset)
    rng = np.random.default_rng(seed)
    ecfg = EmbeddingConfig(layer=layer, pooling=pooling, batch_size=batch_size, max_length=max_length,
                           device=None if device is None else str(device), precision=precision)
    out = {}
    for s in states.labels:
        idx = np.flatnonzero(labels == s)
        if idx.size > max_cells:
            idx = np.sort(rng.choice(idx, size=max_cells, replace=False))
        ids = dataset.select(idx.tolist())["input_ids"]
        out[s] = embed_cells(model, ids, ecfg, vocab=vocab).mean(0).astype(np.float32)
    return out


def _perturbation_sets(ids: list[int], genes_tok, anchor_tok, cfg: PerturbConfig, lay: CellLayout,
                       special: set[int]) -> tuple[list[tuple[int, ...]], str | None]:
    present = [t for t in ids[lay.start: lay.stop] if t not in special]
    moves_only = cfg.perturbation != "overexpress"
    if genes_tok == "all":
        if anchor_tok is None:
            return [(t,) for t in present], None
        if moves_only and anchor_tok not in present:
            return [], "anchor_not_expressed"
        return [(anchor_tok, t) for t in present if t != anchor_tok], None
    if moves_only:
        if not any(t in present for t in genes_tok):
            return [], "genes_not_expressed"
    return [tuple(genes_tok)], None


def _process_cell(ev: ExactEvaluator, ids: list[int], sets, cfg, vocab, goal_vecs, lay, cell_index, cell_id):
    present = {t: r for r, t in enumerate(ids[lay.start: lay.stop])}
    n_genes = lay.stop - lay.start
    kw = dict(cls_id=vocab.cls_id, eos_id=vocab.eos_id, fraction=cfg.fraction, max_length=len(ids) if
              cfg.perturbation != "overexpress" else cfg.max_length)
    est = None
    if cfg.mode == "screen":
        goal = goal_vecs.get("__goal__")
        positions, est = screen_cell(ev.base, ids, vocab.special_ids, cfg.perturbation, goal, cfg.fraction,
                                     vocab.cls_id, vocab.eos_id, anchors=cfg.screen_anchors)
        sets = [(int(ids[p]),) for p in positions]
        chosen = np.argsort(-est, kind="stable")[: cfg.top_k]
    else:
        chosen = np.arange(len(sets))
    variants = [perturb_cell(ids, sets[i], cfg.perturbation, **kw) for i in chosen]
    eff = ev.evaluate(ids, variants, gene_effects=cfg.gene_effects, perturbed_tokens=[sets[i] for i in chosen])
    n = len(sets)
    cell_effect = np.full(n, np.nan)
    cell_effect[chosen] = 1.0 - cosine(eff.perturbed, eff.original)
    rows = {
        "cell_index": np.full(n, cell_index, dtype=np.int64),
        "cell_id": [cell_id] * n,
        "perturbed": [_label(s, vocab) for s in sets],
        "n_expressed": np.array([sum(t in present for t in s) for s in sets], dtype=np.int64),
        "rank": np.array([present.get(s[-1] if len(s) == 2 and cfg.anchor else s[0], -1) for s in sets], dtype=np.int64),
        "n_genes": np.full(n, n_genes, dtype=np.int64),
        "cell_effect": cell_effect,
    }
    for name, vec in goal_vecs.items():
        if name == "__goal__":
            continue
        col = np.full(n, np.nan)
        col[chosen] = cosine(eff.perturbed, vec) - cosine(eff.original, vec)[0]
        rows[name] = col
    if est is not None:
        rows["shift_estimate" if "__goal__" in goal_vecs else "cell_effect_estimate"] = est
        flag = np.zeros(n, dtype=bool)
        flag[chosen] = True
        rows["exact"] = flag
    genes_df = None
    if cfg.gene_effects:
        parts = []
        for j, i in enumerate(chosen):
            toks, cos = eff.gene_cos[j]
            parts.append(pd.DataFrame({"cell_index": cell_index, "perturbed": rows["perturbed"][i],
                                       "gene": [vocab.token_to_gene(t) for t in toks], "cos_sim": cos}))
        genes_df = pd.concat(parts, ignore_index=True) if parts else None
    return pd.DataFrame(rows), genes_df


def _run_settings(cfg: PerturbConfig, cells: np.ndarray, base, states: CellStates | None, dataset) -> dict:
    """Everything that determines a run's results (the batch size, device and ``max_chunks`` do not)."""
    d = asdict(cfg)
    for k in ("device", "batch_size", "max_chunks"):
        d.pop(k)
    return {"config": d, "model": parameters_digest(base), "cells": tokens_digest(dataset, cells),
            "n_dataset": len(dataset), "states": asdict(states) if states else None}


def perturb(
    model,
    dataset,
    config: PerturbConfig | None = None,
    states: CellStates | None = None,
    vocab: GeneVocab | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
) -> PerturbResult:
    """Run in silico perturbation (and, with ``states``, in silico treatment) on a dataset.

    Parameters
    ----------
    model
        A model directory (pretrained ``BertForMaskedLM`` or fine-tuned classifier: its encoder is
        loaded with ``load_model(kind="base")``) or a loaded Bert model.
    dataset
        Tokenized :class:`datasets.Dataset` (``input_ids``; ``cell_id`` and state/filter columns).
    config
        :class:`PerturbConfig`.
    states
        :class:`CellStates` for shifts toward goal / alternative states; start-state cells are perturbed.
    vocab
        The model's :class:`~netformer.genes.GeneVocab`; default: resolved by
        :func:`netformer.genes.resolve_vocab` (the model's, else the dataset's); a dataset tokenized
        with another dictionary is refused.
    out_dir
        Resumable output directory (shards + manifest, final ``results.parquet``); None keeps
        everything in memory.
    overwrite
        Replace a finished ``out_dir`` (otherwise :class:`OutputExistsError`).

    Raises
    ------
    GeneIdError
        A gene is not in the dictionary, or no requested gene is expressed in any selected cell.
    InputDataError
        Unknown state labels or columns, no selected cell, no cell with >= 2 gene tokens.
    ConfigError
        Start state equal to goal; inconsistent settings; ``out_dir`` holding a different run.
    DictionaryError
        Model and dataset (or vocabulary) disagree.
    """
    cfg = config or PerturbConfig()
    base, vocab, device = load_encoder(model, dataset, vocab, cfg.device)
    n_kept_layers(base, cfg.layer)
    # the caller's config is left as given; this run's copy carries the effective input length
    cfg = replace(cfg, max_length=min(cfg.max_length or base.config.max_position_embeddings,
                                      base.config.max_position_embeddings),
                  precision=resolve_precision(cfg.precision, device))
    genes_tok = "all" if cfg.genes == "all" else resolve_genes(cfg.genes, vocab, cfg.species)
    anchor_tok = resolve_genes([cfg.anchor], vocab, cfg.species)[0] if cfg.anchor else None
    cells = select_cells(dataset, cfg.cell_filter, states, cfg.max_cells, cfg.seed)
    _check_expressed(dataset, cells, genes_tok, anchor_tok, cfg, vocab)

    final = Path(out_dir) if out_dir is not None else None
    w = init_world(device)
    if w.distributed and final is None:
        raise ConfigError(f"a perturbation run over {w.size} processes needs an output folder (out_dir=, CLI --out) "
                          "where the ranks write their shards")
    chunks = [cells[i: i + cfg.chunk_cells] for i in range(0, len(cells), cfg.chunk_cells)]
    # the fingerprint (a hash of every weight and of the cells' tokens) only for a resumable run
    settings = _run_settings(cfg, cells, base, states, dataset) if final is not None else {}
    out, manifest = _open_run(final, settings, overwrite)
    if manifest.get("finished"):  # a replacement that completed just before a kill: it is the result
        return _finished(final)
    base = inference_model(base, cfg.precision)  # after the run's fingerprint, which is of the given weights
    state_pos = _state_positions(base, dataset, states, vocab, cfg, device, out) if states is not None else {}
    goal_vecs = _goal_vectors(states, state_pos)

    results, genes_parts, new_chunks = [], [], 0
    done = done_pieces(out, manifest)
    barrier()  # every rank has read the same finished chunks before any writes more
    todo = [ci for ci in range(len(chunks)) if ci not in done]
    mine = [todo[i] for i in my_chunks(len(todo), w)]  # the remaining chunks, shared out afresh on a resume
    if w.distributed:
        log.info("rank %d of %d: %d of the %d chunks left", w.rank, w.size, len(mine), len(todo))
    with ExactEvaluator(base, vocab.special_ids, cfg.layer, cfg.pooling, cfg.batch_size, device) as ev:
        for ci in progress(mine, "perturbing" if not w.distributed else f"perturbing (rank {w.rank})",
                           unit="chunk", logger=log):
            if cfg.max_chunks is not None and new_chunks >= cfg.max_chunks:
                break
            chunk_df, chunk_g, skipped = _perturb_chunk(ev, dataset, chunks[ci], genes_tok, anchor_tok, cfg, vocab,
                                                        goal_vecs)
            if out is not None:
                _write_chunk(out, ci, chunk_df, chunk_g, skipped)
            else:
                results.append(chunk_df)
                genes_parts.append(chunk_g)
                done[ci] = {"skipped": skipped}
            new_chunks += 1
    barrier()  # every rank's shards are on disk
    if w.distributed and not w.is_main:  # rank 0 merges and writes the final tables; the others read them
        barrier()
        return _finished(final) if (final / "results.parquet").exists() else \
            PerturbResult(pd.DataFrame(), None, {}, False, state_pos, out)
    if out is not None:  # every finished chunk: this session's, other ranks' and earlier ones, in chunk order
        done = done_pieces(out, manifest)
        results = [_read_shard(out, "results", ci) for ci in sorted(done)]
        genes_parts = [_read_shard(out, "genes", ci) for ci in sorted(done)]
    complete = len(done) == len(chunks)
    skipped_total: dict[str, int] = {}
    for ci in sorted(done):
        skipped_total = _add(skipped_total, done[ci]["skipped"])
    res_df = _concat(results)
    gen_df = _concat(genes_parts)
    if skipped_total:
        log.info("skipped cells: %s", skipped_total)
    if complete and (res_df is None or res_df.empty):
        raise InputDataError(f"no perturbation was evaluated: every selected cell was skipped ({skipped_total})")
    res_df = res_df if res_df is not None else pd.DataFrame()
    if out is not None and complete:
        _write_final(out, res_df, gen_df, skipped_total)
        if out != final:
            replace_dir(out, final)
        out = final
    barrier()  # the other ranks of a torchrun job wait for these tables
    return PerturbResult(res_df, gen_df, skipped_total, complete, state_pos, out)


def _check_expressed(dataset, cells: np.ndarray, genes_tok, anchor_tok, cfg: PerturbConfig, vocab: GeneVocab) -> None:
    """Raise if no requested gene (or the anchor) is in any selected cell; log the absent ones."""
    if genes_tok == "all" and anchor_tok is None:
        return
    wanted = list(genes_tok) if genes_tok != "all" else [anchor_tok]
    sel_ids = dataset.select(cells.tolist())["input_ids"]
    counts = {t: sum(t in set(s[: cfg.max_length]) for s in sel_ids) for t in wanted}
    absent = [vocab.token_to_gene(t) for t, c in counts.items() if c == 0]
    if len(absent) == len(wanted) and cfg.perturbation != "overexpress":
        raise GeneIdError(f"gene(s) {absent} are not expressed in any of the {len(cells)} selected cells; "
                          "nothing to perturb (choose other genes or cells, or overexpress)")
    if absent:
        log.warning("genes not expressed in any selected cell: %s", absent)


def _open_run(final: Path | None, settings: dict, overwrite: bool) -> tuple[Path | None, dict]:
    """The folder this run writes into and its manifest (:func:`netformer.runs.open_run`: a fresh run,
    the unfinished run with the same settings resumed, other settings refused, ``overwrite`` staged
    beside the old results until complete). A finished run is replaced only with ``overwrite``
    (:class:`OutputExistsError`)."""
    if final is None:
        return None, {"done": {}}
    run = open_shared_run(final, settings, overwrite, "results.parquet", "perturbation run")
    if run.finished:
        if not overwrite:
            check_output(final, overwrite=False)
        return run.folder, {**run.manifest, "finished": True}
    run.manifest.setdefault("done", {})
    return run.folder, run.manifest


def _finished(final: Path) -> PerturbResult:
    """The result of a finished run folder, read back."""
    genes = final / "gene_effects.parquet"
    spath = final / "states.parquet"
    states = {}
    if spath.exists():
        sdf = pd.read_parquet(spath)
        states = {s: sdf[s].to_numpy(np.float32) for s in sdf.columns}
    skipped = json.loads((final / "skipped.json").read_text()) if (final / "skipped.json").exists() else {}
    return PerturbResult(pd.read_parquet(final / "results.parquet"), pd.read_parquet(genes) if genes.exists() else None,
                         skipped, True, states, final)


def _state_positions(base, dataset, states: CellStates, vocab: GeneVocab, cfg: PerturbConfig, device,
                     out: Path | None) -> dict[str, np.ndarray]:
    """Each state's mean cell embedding, read back from ``states.parquet`` when resuming."""
    spath = out / "states.parquet" if out is not None else None
    w = world()
    if w.distributed:  # rank 0 computes (or reads) them; the others read its file
        if w.is_main:
            _state_positions_here(base, dataset, states, vocab, cfg, device, spath)
        barrier()
    return _state_positions_here(base, dataset, states, vocab, cfg, device, spath)


def _state_positions_here(base, dataset, states: CellStates, vocab: GeneVocab, cfg: PerturbConfig, device,
                          spath: Path | None) -> dict[str, np.ndarray]:
    if spath is not None and spath.exists():
        sdf = pd.read_parquet(spath)
        return {s: sdf[s].to_numpy(np.float32) for s in sdf.columns}
    state_pos = state_embeddings(base, dataset, states, vocab, cfg.max_state_cells, cfg.seed,
                                 cfg.layer, cfg.pooling, cfg.max_length, device, cfg.batch_size, cfg.precision)
    if spath is not None:
        with atomic_file(spath) as tmp:
            pd.DataFrame(state_pos).to_parquet(tmp)
    return state_pos


def _goal_vectors(states: CellStates | None, state_pos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output column -> state position: ``shift_goal`` and ``shift_<alternative>`` (``__goal__`` for screens)."""
    if states is None:
        return {}
    goal_vecs = {"shift_goal": state_pos[states.goal], "__goal__": state_pos[states.goal]}
    for a in states.alternatives:
        goal_vecs[f"shift_{a}"] = state_pos[a]
    return goal_vecs


def _perturb_chunk(ev: ExactEvaluator, dataset, chunk: np.ndarray, genes_tok, anchor_tok, cfg: PerturbConfig,
                   vocab: GeneVocab, goal_vecs) -> tuple[pd.DataFrame | None, pd.DataFrame | None, dict[str, int]]:
    """Perturb the cells of one chunk: (results rows, gene-effect rows, skipped cells by reason)."""
    special = set(vocab.special_ids)
    has_cell_id = "cell_id" in dataset.column_names
    rows, gparts, skipped = [], [], {}
    for cell_index, rec in zip(chunk, dataset.select(chunk.tolist())):
        ids = [int(t) for t in rec["input_ids"][: cfg.max_length]]
        lay = CellLayout.of(ids, vocab.cls_id, vocab.eos_id)
        n_genes = sum(t not in special for t in ids[lay.start: lay.stop])
        if n_genes < 2:
            skipped["fewer_than_2_genes"] = skipped.get("fewer_than_2_genes", 0) + 1
            continue
        sets, reason = _perturbation_sets(ids, genes_tok, anchor_tok, cfg, lay, special)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        df, gdf = _process_cell(ev, ids, sets, cfg, vocab, goal_vecs, lay, int(cell_index),
                                str(rec["cell_id"]) if has_cell_id else str(int(cell_index)))
        rows.append(df)
        if gdf is not None:
            gparts.append(gdf)
    return _concat(rows), _concat(gparts), skipped


def _write_chunk(out: Path, ci: int, chunk_df, chunk_g, skipped: dict[str, int]) -> None:
    """Write a finished chunk's shards, then mark it done (so a crash loses at most it)."""
    if chunk_df is not None:
        with atomic_file(out / "shards" / f"results_{ci:05d}.parquet") as tmp:
            chunk_df.to_parquet(tmp, index=False)
    if chunk_g is not None:
        with atomic_file(out / "shards" / f"genes_{ci:05d}.parquet") as tmp:
            chunk_g.to_parquet(tmp, index=False)
    mark_done(out, ci, {"skipped": skipped, "rows": 0 if chunk_df is None else len(chunk_df)})


def _read_shard(out: Path, kind: str, ci: int) -> pd.DataFrame | None:
    path = out / "shards" / f"{kind}_{ci:05d}.parquet"
    return pd.read_parquet(path) if path.exists() else None


def _write_final(out: Path, res_df: pd.DataFrame, gen_df: pd.DataFrame | None, skipped: dict[str, int]) -> None:
    with atomic_file(out / "results.parquet") as tmp:
        res_df.to_parquet(tmp, index=False)
    if gen_df is not None:
        with atomic_file(out / "gene_effects.parquet") as tmp:
            gen_df.to_parquet(tmp, index=False)
    write_json(out / "skipped.json", skipped)


def _concat(parts: list) -> pd.DataFrame | None:
    parts = [x for x in parts if x is not None]
    return pd.concat(parts, ignore_index=True) if parts else None


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def load_results(out_dir: str | Path) -> pd.DataFrame:
    """The final ``results.parquet`` of a finished run directory."""
    path = Path(out_dir) / "results.parquet"
    if not path.exists():
        raise InputDataError(f"{path} does not exist: the run is unfinished (call perturb() again to resume)")
    return pd.read_parquet(path)
