"""Perturb-seq data on AnnData: readers, canonical condition names, means and DE genes.

A *condition* names the genes perturbed in a cell. netformer uses one canonical form everywhere:
the perturbed gene symbols sorted and joined by ``'+'`` (``'KLF1'``, ``'MAP2K3+MAP2K6'``) and
``'ctrl'`` for control cells. Two input conventions are read:

* GEARS processed data (``perturb_processed.h5ad``, Roohani et al. 2023): ``obs['condition']`` like
  ``'KLF1+ctrl'``, ``'ctrl+KLF1'``, ``'A+B'``, ``'ctrl'``; ``var`` index Ensembl ids and
  ``var['feature_name']`` gene symbols; ``X`` log-normalised.
* scPerturb / perturbench style (Peidli et al. 2024; Wu et al. 2024): ``obs['condition']`` like
  ``'KLF1'``, ``'MAP2K3+MAP2K6'``, ``'control'``; often several data sets or cell lines in one file
  (``obs['dataset']``, ``obs['cell_type']``), of which one must be chosen with ``subset``.

Pseudobulk tables (condition x gene mean expression) and plain arrays are accepted as well
(:meth:`PerturbData.from_pseudobulk`, :meth:`PerturbData.from_arrays`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._state import preserved_torch_threads
from ..errors import CorruptFileError, GeneIdError, InputDataError

log = logging.getLogger(__name__)

CONTROL = "ctrl"
"""Canonical name of the control condition."""

CONTROL_ALIASES = frozenset(
    {"ctrl", "control", "non-targeting", "nontargeting", "non_targeting", "ntc", "safe-targeting"}
)
"""Condition tokens (case-insensitive) read as 'no gene perturbed'.

The all-capitals ``'CTRL'`` is the exception: it is the human gene symbol of chymotrypsin-like
protease (HGNC:2523) and is read as a gene, so a screen that perturbs it is not merged with the
control cells."""


def _is_control(token: str) -> bool:
    return token.lower() in CONTROL_ALIASES and token != "CTRL"

_GENE_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")

__all__ = [
    "CONTROL",
    "CONTROL_ALIASES",
    "PerturbData",
    "canonical_condition",
    "condition_genes",
    "detect_condition_format",
    "read_gears",
    "read_perturbseq",
    "read_scperturb",
]


# --------------------------------------------------------------------------------------------
# condition names
# --------------------------------------------------------------------------------------------
def condition_genes(condition: str) -> list[str]:
    """Genes of a canonical condition: ``'A+B'`` -> ``['A', 'B']``, ``'ctrl'`` -> ``[]``."""
    return [] if condition == CONTROL else condition.split("+")


def canonical_condition(name: str, *, max_genes: int = 2) -> str:
    """Canonical form of one condition name.

    Control tokens (:data:`CONTROL_ALIASES`, case-insensitive, except the gene symbol ``'CTRL'``) are dropped, the remaining gene
    symbols are sorted and joined by ``'+'``; a name with no gene left is ``'ctrl'``. So
    ``'KLF1+ctrl'``, ``'ctrl+KLF1'`` and ``'KLF1'`` all give ``'KLF1'``, ``'SET+KLF1'`` gives
    ``'KLF1+SET'`` and ``'control'`` gives ``'ctrl'``.

    Raises :class:`InputDataError` for names that are not in a known format: empty tokens
    (``'A+'``), characters other than letters, digits, ``.`` and ``-`` in a gene token (for example
    GEARS's ``condition_name`` column ``'A549_KLF1+ctrl_1+1'`` passed instead of ``condition``),
    the same gene twice, or more than ``max_genes`` genes.
    """
    if not isinstance(name, str):
        raise InputDataError(f"condition {name!r} is not a string; conditions are names like 'KLF1', 'A+B', 'ctrl'.")
    tokens = [t.strip() for t in name.split("+")]
    genes = []
    for tok in tokens:
        if _is_control(tok):
            continue
        if not tok or not _GENE_TOKEN.match(tok):
            raise InputDataError(
                f"condition {name!r} is not in a known format (bad token {tok!r}); expected gene "
                "symbols joined by '+' with 'ctrl'/'control' for no perturbation, as in 'KLF1', "
                "'KLF1+ctrl', 'MAP2K3+MAP2K6' or 'ctrl'. If this is GEARS's 'condition_name' column, "
                "read 'condition' instead (condition_key='condition')."
            )
        genes.append(tok)
    if len(set(genes)) != len(genes):
        raise InputDataError(f"condition {name!r} names the same gene twice; fix the label.")
    if len(genes) > max_genes:
        raise InputDataError(
            f"condition {name!r} perturbs {len(genes)} genes; at most {max_genes} are supported "
            "(pass max_genes to allow more)."
        )
    return "+".join(sorted(genes)) if genes else CONTROL


def detect_condition_format(names: Sequence[str]) -> str:
    """Guess the convention of a set of raw condition names.

    Returns ``'gears'`` when control is ``'ctrl'`` and single perturbations carry a ``'+ctrl'`` /
    ``'ctrl+'`` partner, ``'scperturb'`` when singles are bare symbols (control ``'control'`` or
    ``'ctrl'``). Raises :class:`InputDataError` if no control condition is present or the two
    conventions are mixed.
    """
    names = [str(n) for n in names]
    if not any(_is_control(n.strip()) for n in names):
        raise InputDataError(
            "no control condition found among the conditions (expected one of "
            f"{sorted(CONTROL_ALIASES)}); every perturbation needs control cells of the same cell "
            f"context. Conditions seen: {sorted(set(names))[:10]}"
        )
    paired = [n for n in names if "+" in n and any(_is_control(t.strip()) for t in n.split("+"))]
    bare = [n for n in names if "+" not in n and not _is_control(n.strip())]
    if paired and bare:
        raise InputDataError(
            "conditions mix the GEARS convention ('KLF1+ctrl') and the bare one ('KLF1'), e.g. "
            f"{paired[0]!r} and {bare[0]!r}; relabel them to one convention."
        )
    return "gears" if paired else "scperturb"


# --------------------------------------------------------------------------------------------
# the data object
# --------------------------------------------------------------------------------------------
class PerturbData:
    """Perturb-seq expression grouped by canonical condition (log-normalised, genes = symbols).

    Holds an AnnData ``adata`` with ``obs['condition']`` in canonical form (see
    :func:`canonical_condition`), ``var_names`` the measured gene symbols and ``X`` log-normalised
    expression (cells x genes), or, for pseudobulk input, one row per condition with
    ``obs['n_cells']``. Build it with :func:`read_perturbseq`, :func:`read_gears`,
    :func:`read_scperturb`, :meth:`from_anndata`, :meth:`from_pseudobulk` or :meth:`from_arrays`
    rather than directly.

    Parameters
    ----------
    adata
        AnnData whose ``obs['condition']`` is already canonical and contains ``'ctrl'``.
    pseudobulk
        True when each row is a condition mean rather than a cell.

    Raises
    ------
    InputDataError
        No control rows, non-canonical condition labels, non-finite expression.
    """

    def __init__(self, adata: ad.AnnData, *, pseudobulk: bool = False):
        if "condition" not in adata.obs:
            raise InputDataError("PerturbData needs obs['condition']; use PerturbData.from_anndata to read raw labels.")
        cond = adata.obs["condition"].astype(str)
        bad = [c for c in cond.unique() if canonical_condition(c) != c]
        if bad:
            raise InputDataError(
                f"conditions {bad[:5]} are not canonical; build the object with PerturbData.from_anndata."
            )
        if CONTROL not in set(cond):
            raise InputDataError(
                "no control cells ('ctrl') in the data; every perturbation needs control cells of the "
                "same cell context to measure its effect against."
            )
        if adata.var_names.has_duplicates:
            raise GeneIdError(
                f"duplicate gene symbols in var: {adata.var_names[adata.var_names.duplicated()][:5].tolist()}; "
                "call adata.var_names_make_unique() or drop them."
            )
        adata = adata.copy() if adata.is_view else adata
        adata.obs["condition"] = pd.Categorical(cond.values)
        self.adata = adata
        self.pseudobulk = bool(pseudobulk)
        vals = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
        if not np.all(np.isfinite(vals)):
            raise InputDataError("expression contains NaN or infinite values; remove or impute them first.")

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_anndata(
        cls,
        adata: ad.AnnData,
        *,
        condition_key: str = "condition",
        fmt: str = "auto",
        subset: Mapping[str, str | Sequence[str]] | None = None,
        context_keys: Sequence[str] = ("dataset", "cell_type", "cell_line"),
        gene_symbol_key: str | None = None,
        on_duplicate: str = "error",
        normalize: bool = False,
        max_genes: int = 2,
    ) -> "PerturbData":
        """Read cell-level Perturb-seq AnnData in GEARS or scPerturb/perturbench convention.

        Parameters
        ----------
        adata
            Cells x genes; ``X`` log-normalised (``log1p`` of size-factor-normalised counts) unless
            ``normalize=True``, which applies ``sc.pp.normalize_total`` + ``sc.pp.log1p`` to counts.
        condition_key
            ``obs`` column with the perturbation labels (default ``'condition'``).
        fmt
            ``'gears'``, ``'scperturb'`` or ``'auto'`` (:func:`detect_condition_format`).
        subset
            ``{obs column: value or values}`` keeping only matching cells, e.g.
            ``{'dataset': 'norman19'}``. Required when a ``context_keys`` column holds several
            values (control cells of one cell line are no control for another).
        gene_symbol_key
            ``var`` column holding gene symbols; default ``'feature_name'`` if present (GEARS),
            else ``'gene_symbol'`` / ``'gene_name'`` if present, else the var index.
        on_duplicate
            Two raw labels with the same canonical form (``'A+B'`` and ``'B+A'``): ``'error'``
            (default) or ``'merge'`` (pool their cells, logged). GEARS's ``'X+ctrl'`` /
            ``'ctrl+X'`` (guide position only) are always pooled.
        normalize
            Normalise raw counts (total 1e4 per cell, log1p).

        Raises
        ------
        InputDataError
            Missing condition column, unknown condition format, mixed conventions, several cell
            contexts without ``subset``, no control cells, duplicate conditions, counts given
            without ``normalize=True``.
        GeneIdError
            Duplicate gene symbols.
        """
        if condition_key not in adata.obs:
            raise InputDataError(
                f"obs has no column {condition_key!r} (columns: {list(adata.obs.columns)}); pass "
                "condition_key naming the perturbation labels."
            )
        if subset:
            mask = np.ones(adata.n_obs, dtype=bool)
            for key, val in subset.items():
                if key not in adata.obs:
                    raise InputDataError(f"subset column {key!r} not in obs (columns: {list(adata.obs.columns)}).")
                vals = [val] if isinstance(val, str) else list(val)
                mask &= adata.obs[key].astype(str).isin(vals).to_numpy()
            if not mask.any():
                raise InputDataError(f"subset {dict(subset)} selects no cells.")
            adata = adata[mask]
        for key in context_keys:
            if key in adata.obs and adata.obs[key].nunique() > 1 and key != condition_key:
                values = sorted(adata.obs[key].astype(str).unique())
                raise InputDataError(
                    f"the data hold several {key!r} values {values[:8]}; control cells of one context "
                    f"are no control for another. Choose one with subset={{'{key}': {values[0]!r}}}."
                )
        raw = adata.obs[condition_key].astype(str)
        uniq = list(pd.unique(raw))
        detected = detect_condition_format(uniq)
        if fmt not in ("auto", "gears", "scperturb"):
            raise InputDataError(f"fmt must be 'auto', 'gears' or 'scperturb', not {fmt!r}.")
        if fmt != "auto" and fmt != detected:
            raise InputDataError(
                f"conditions look like the {detected!r} convention but fmt={fmt!r} was asked; check "
                "condition_key or pass fmt='auto'."
            )
        mapping = {u: canonical_condition(u, max_genes=max_genes) for u in uniq}
        _check_duplicates(mapping, on_duplicate)
        X = adata.X
        if normalize:
            import scanpy as sc

            adata = adata.copy()
            sc.pp.normalize_total(adata, target_sum=1e4)
            sc.pp.log1p(adata)
            X = adata.X
        elif _looks_like_counts(X):
            raise InputDataError(
                "X looks like raw counts (integers, maximum above 50); Perturb-seq models here work on "
                "log-normalised expression. Pass normalize=True or give log1p-normalised data."
            )
        symbols = _gene_symbols(adata, gene_symbol_key)
        X = X.astype(np.float32) if X.dtype != np.float32 else X
        out = ad.AnnData(
            X=X,
            obs=pd.DataFrame({"condition": raw.map(mapping).values, "raw_condition": raw.values}, index=adata.obs_names),
            var=pd.DataFrame(index=pd.Index(symbols, name="gene_symbol")),
        )
        if adata.var_names.name != "gene_symbol" and list(adata.var_names) != list(symbols):
            out.var["gene_id"] = list(adata.var_names)
        log.info(
            "read %d cells x %d genes, %d conditions (%s convention)",
            out.n_obs, out.n_vars, out.obs["condition"].nunique(), detected,
        )
        return cls(out)

    @classmethod
    def from_pseudobulk(
        cls,
        table: pd.DataFrame,
        *,
        n_cells: Mapping[str, int] | Sequence[int] | None = None,
        on_duplicate: str = "error",
        max_genes: int = 2,
    ) -> "PerturbData":
        """Build from a condition x gene table of mean log-normalised expression.

        ``table`` index: raw condition names (any known convention); columns: gene symbols.
        ``n_cells`` optionally gives the number of cells behind each row. Without cells, DE genes
        are ranked by absolute mean change from control (see :meth:`top_de_genes`).

        Raises :class:`InputDataError` on duplicate conditions (two rows with the same canonical
        name; ``on_duplicate='merge'`` averages them), a missing control row or non-numeric values.
        """
        if not isinstance(table, pd.DataFrame):
            raise InputDataError("from_pseudobulk expects a pandas DataFrame (conditions x genes).")
        raw = [str(i) for i in table.index]
        detect_condition_format(raw)
        mapping = {u: canonical_condition(u, max_genes=max_genes) for u in pd.unique(np.array(raw))}
        if len(set(raw)) != len(raw):
            dup = sorted(pd.Index(raw)[pd.Index(raw).duplicated()].unique())
            if on_duplicate != "merge":
                raise InputDataError(f"duplicate conditions in the table index: {dup[:5]}; pass on_duplicate='merge' to average them.")
        _check_duplicates(mapping, on_duplicate)
        try:
            values = table.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputDataError(f"pseudobulk table must be numeric: {exc}") from None
        canon = np.array([mapping[r] for r in raw])
        counts = (
            np.ones(len(raw))
            if n_cells is None
            else np.array([n_cells[r] for r in raw] if isinstance(n_cells, Mapping) else list(n_cells), dtype=float)
        )
        conds = list(pd.unique(canon))
        means = np.zeros((len(conds), values.shape[1]), dtype=np.float64)
        ncell = np.zeros(len(conds))
        for i, c in enumerate(conds):
            rows = canon == c
            w = counts[rows]
            means[i] = (values[rows] * w[:, None]).sum(0) / w.sum()
            ncell[i] = w.sum()
        out = ad.AnnData(
            X=means.astype(np.float32),
            obs=pd.DataFrame({"condition": conds, "n_cells": ncell}, index=pd.Index(conds, name="row")),
            var=pd.DataFrame(index=pd.Index([str(c) for c in table.columns], name="gene_symbol")),
        )
        return cls(out, pseudobulk=True)

    @classmethod
    def from_arrays(
        cls,
        X: np.ndarray | sp.spmatrix,
        conditions: Sequence[str],
        genes: Sequence[str],
        *,
        on_duplicate: str = "merge",
        max_genes: int = 2,
    ) -> "PerturbData":
        """Build from an expression matrix and per-row condition labels.

        ``X``: (n_rows, n_genes) log-normalised expression, cells or condition means;
        ``conditions``: n_rows labels in any known convention; ``genes``: n_genes symbols. Rows
        sharing a condition are cells of that condition (``on_duplicate`` only concerns two
        *different* labels with one canonical form). If every condition has one row the object is
        treated as pseudobulk. Used e.g. by the semi-synthetic benchmark of ``netformer.select``.
        """
        X = X if sp.issparse(X) else np.asarray(X, dtype=np.float32)
        conditions = [str(c) for c in conditions]
        if X.shape[0] != len(conditions) or X.shape[1] != len(genes):
            raise InputDataError(
                f"X has shape {X.shape} but {len(conditions)} conditions and {len(genes)} genes were given."
            )
        detect_condition_format(list(pd.unique(np.array(conditions))))
        mapping = {u: canonical_condition(u, max_genes=max_genes) for u in pd.unique(np.array(conditions))}
        _check_duplicates(mapping, on_duplicate)
        canon = [mapping[c] for c in conditions]
        single_rows = pd.Series(canon).value_counts().max() == 1
        obs = pd.DataFrame({"condition": canon}, index=[f"row{i}" for i in range(len(canon))])
        if single_rows:
            obs["n_cells"] = 1.0
        out = ad.AnnData(X=X.astype(np.float32), obs=obs, var=pd.DataFrame(index=pd.Index([str(g) for g in genes], name="gene_symbol")))
        return cls(out, pseudobulk=bool(single_rows))

    # ---- basic views ---------------------------------------------------------------------
    def __repr__(self) -> str:
        kind = "pseudobulk" if self.pseudobulk else "cells"
        return (
            f"PerturbData({self.adata.n_obs} {kind} x {self.n_genes} genes; {len(self.singles)} single, "
            f"{len(self.doubles)} double perturbations)"
        )

    @property
    def genes(self) -> list[str]:
        """Measured gene symbols, in column order (length ``n_genes``)."""
        return list(self.adata.var_names)

    @property
    def n_genes(self) -> int:
        return self.adata.n_vars

    @cached_property
    def gene_index(self) -> dict[str, int]:
        """Gene symbol -> column index."""
        return {g: i for i, g in enumerate(self.adata.var_names)}

    @cached_property
    def conditions(self) -> list[str]:
        """All canonical conditions present, ``'ctrl'`` first, then sorted."""
        conds = sorted(set(self.adata.obs["condition"].astype(str)) - {CONTROL})
        return [CONTROL] + conds

    @property
    def perturbations(self) -> list[str]:
        """All conditions except control (sorted)."""
        return self.conditions[1:]

    @property
    def singles(self) -> list[str]:
        """Single-gene perturbations present (sorted)."""
        return [c for c in self.perturbations if "+" not in c]

    @property
    def doubles(self) -> list[str]:
        """Two-gene perturbations present (sorted)."""
        return [c for c in self.perturbations if c.count("+") == 1]

    @property
    def perturbed_genes(self) -> list[str]:
        """Every gene perturbed in at least one condition (sorted)."""
        return sorted({g for c in self.perturbations for g in condition_genes(c)})

    def measured_genes_of(self, condition: str) -> list[str]:
        """Genes of ``condition`` that are among the measured genes (e.g. for CRISPRa/i target checks)."""
        return [g for g in condition_genes(canonical_condition(condition)) if g in self.gene_index]

    @cached_property
    def n_cells(self) -> pd.Series:
        """Number of cells per condition (pseudobulk: ``obs['n_cells']``)."""
        obs = self.adata.obs
        if self.pseudobulk:
            return pd.Series(obs["n_cells"].to_numpy(), index=obs["condition"].astype(str).to_numpy()).reindex(self.conditions)
        return obs["condition"].astype(str).value_counts().reindex(self.conditions)

    def check_conditions(self, conditions: Sequence[str]) -> list[str]:
        """Canonicalise ``conditions`` and check they are present; raises :class:`InputDataError`."""
        canon = [canonical_condition(c) for c in conditions]
        missing = sorted(set(canon) - set(self.conditions))
        if missing:
            raise InputDataError(
                f"{len(missing)} conditions not in the data: {missing[:8]}; available: "
                f"{len(self.conditions)} conditions (see PerturbData.conditions)."
            )
        return canon

    # ---- means ---------------------------------------------------------------------------
    @cached_property
    def means(self) -> pd.DataFrame:
        """Mean log-normalised expression per condition: DataFrame (conditions x genes), float64."""
        codes = self.adata.obs["condition"].astype(str).to_numpy()
        conds = self.conditions
        idx = pd.Index(conds).get_indexer(codes)
        if self.pseudobulk:
            M = np.zeros((len(conds), self.n_genes))
            X = self.adata.X.toarray() if sp.issparse(self.adata.X) else np.asarray(self.adata.X)
            M[idx] = X
        else:
            ind = sp.csr_matrix((np.ones(len(idx)), (idx, np.arange(len(idx)))), shape=(len(conds), len(idx)))
            sums = ind @ self.adata.X
            sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
            M = sums / np.asarray(ind.sum(1)).ravel()[:, None]
        return pd.DataFrame(M.astype(np.float64), index=conds, columns=self.genes)

    def control_mean(self) -> np.ndarray:
        """Mean expression of control cells, shape (n_genes,)."""
        return self.means.loc[CONTROL].to_numpy()

    def mean(self, conditions: Sequence[str]) -> np.ndarray:
        """Mean expression of each condition, shape (n_conditions, n_genes)."""
        return self.means.loc[self.check_conditions(conditions)].to_numpy()

    def delta(self, conditions: Sequence[str]) -> np.ndarray:
        """Mean change from control of each condition, shape (n_conditions, n_genes)."""
        return self.mean(conditions) - self.control_mean()[None, :]

    def cells(self, conditions: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Dense expression rows and their canonical conditions for ``conditions`` (default all).

        Returns ``(X, labels)``: float32 (n_rows, n_genes) and an array of n_rows condition names.
        For pseudobulk data the rows are condition means.
        """
        labels = self.adata.obs["condition"].astype(str).to_numpy()
        mask = np.ones(len(labels), bool) if conditions is None else np.isin(labels, self.check_conditions(conditions))
        X = self.adata.X[mask]
        X = X.toarray() if sp.issparse(X) else np.asarray(X)
        return X.astype(np.float32, copy=False), labels[mask]

    def subset(self, conditions: Sequence[str]) -> "PerturbData":
        """A new PerturbData with only ``conditions`` (control is always kept)."""
        keep = set(self.check_conditions(conditions)) | {CONTROL}
        mask = self.adata.obs["condition"].astype(str).isin(keep).to_numpy()
        return PerturbData(self.adata[mask].copy(), pseudobulk=self.pseudobulk)

    # ---- differential expression ----------------------------------------------------------
    def top_de_genes(self, n: int = 20, *, method: str = "t-test") -> dict[str, list[str]]:
        """Top ``n`` differentially expressed genes of every perturbation against control.

        Follows GEARS (``get_DE_genes`` / ``rank_genes_groups_by_cov``): one
        ``sc.tl.rank_genes_groups(groupby='condition', reference='ctrl', rankby_abs=True,
        method='t-test', use_raw=False)`` over all cells, taking the first ``n`` genes of each group
        (ranked by absolute score). Conditions with fewer than 2 cells, and pseudobulk data, fall
        back to ranking genes by absolute mean change from control. Results are cached per
        ``(n, method)``.

        Returns ``{condition: [gene symbols, most significant first]}`` for every perturbation.
        """
        key = (n, method)
        cache = self.__dict__.setdefault("_de_cache", {})
        if key in cache:
            return cache[key]
        n = min(n, self.n_genes)
        out: dict[str, list[str]] = {}
        counts = self.n_cells
        groups = [c for c in self.perturbations if not self.pseudobulk and counts[c] >= 2]
        if groups and counts[CONTROL] >= 2:
            import scanpy as sc

            mask = self.adata.obs["condition"].astype(str).isin(groups + [CONTROL]).to_numpy()
            sub = ad.AnnData(X=self.adata.X[mask], obs=self.adata.obs[["condition"]].iloc[np.flatnonzero(mask)].copy())
            sub.var_names = self.adata.var_names
            sub.obs["condition"] = sub.obs["condition"].astype(str).astype("category")
            with warnings.catch_warnings(), preserved_torch_threads():  # scanpy's pandas warnings; its threads
                warnings.simplefilter("ignore", category=pd.errors.PerformanceWarning)
                sc.tl.rank_genes_groups(
                    sub, groupby="condition", groups=groups, reference=CONTROL, rankby_abs=True,
                    n_genes=n, method=method, use_raw=False,
                )
            names = sub.uns["rank_genes_groups"]["names"]
            for g in groups:
                out[g] = [str(x) for x in names[g][:n]]
        delta = self.means.to_numpy() - self.control_mean()[None, :]
        row = {c: i for i, c in enumerate(self.conditions)}
        genes = self.genes  # a property that builds the list: once, not per gene
        for c in self.perturbations:
            if c not in out:
                order = np.argsort(-np.abs(delta[row[c]]), kind="stable")[:n]
                out[c] = [genes[i] for i in order]
        cache[key] = out
        return out

    def de_indices(self, conditions: Sequence[str], n: int = 20) -> np.ndarray:
        """Column indices of the top ``n`` DE genes of each condition, int array (n_conditions, n)."""
        de = self.top_de_genes(n)
        return np.array([[self.gene_index[g] for g in de[c]] for c in self.check_conditions(conditions)], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
def _read_h5ad(path: str | os.PathLike) -> ad.AnnData:
    if not os.path.exists(path):
        raise InputDataError(f"{path} does not exist.")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptFileError(f"{path} could not be read as h5ad ({exc}); check the file is complete.") from None


def read_gears(path: str | os.PathLike, **kwargs) -> PerturbData:
    """Read a GEARS ``perturb_processed.h5ad`` (conditions ``'KLF1+ctrl'``, ``'A+B'``, ``'ctrl'``).

    Gene symbols come from ``var['feature_name']``; Ensembl ids are kept in ``var['gene_id']``.
    Keyword arguments go to :meth:`PerturbData.from_anndata`. Raises :class:`InputDataError` if the
    file is not in the GEARS convention.
    """
    return PerturbData.from_anndata(_read_h5ad(path), fmt="gears", **kwargs)


def read_scperturb(path: str | os.PathLike, subset: Mapping[str, str | Sequence[str]] | None = None, **kwargs) -> PerturbData:
    """Read an scPerturb / perturbench h5ad (conditions ``'KLF1'``, ``'A+B'``, ``'control'``).

    ``subset`` picks one data set / cell line, e.g. ``{'dataset': 'norman19'}`` or
    ``{'dataset': 'mcfaline23', 'cell_type': 'A172'}``. Other keyword arguments go to
    :meth:`PerturbData.from_anndata`.
    """
    return PerturbData.from_anndata(_read_h5ad(path), fmt="scperturb", subset=subset, **kwargs)


def read_perturbseq(path: str | os.PathLike, subset: Mapping[str, str | Sequence[str]] | None = None, **kwargs) -> PerturbData:
    """Read a Perturb-seq h5ad in either convention (detected from the condition names).

    Example: ``read_perturbseq('devel.h5ad', subset={'dataset': 'norman19'})``.
    """
    return PerturbData.from_anndata(_read_h5ad(path), fmt="auto", subset=subset, **kwargs)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_duplicates(mapping: Mapping[str, str], on_duplicate: str) -> None:
    if on_duplicate not in ("error", "merge"):
        raise InputDataError(f"on_duplicate must be 'error' or 'merge', not {on_duplicate!r}.")
    by_canon: dict[str, list[str]] = {}
    for rawname, canon in mapping.items():
        by_canon.setdefault(canon, []).append(rawname)
    for canon, raws in by_canon.items():
        if len(raws) < 2:
            continue
        # 'X+ctrl' / 'ctrl+X' / 'X' differ only in guide position: always the same perturbation
        gene_orders = {tuple(t for t in r.split("+") if not _is_control(t.strip())) for r in raws}
        if len(gene_orders) == 1 or canon == CONTROL:
            continue
        if on_duplicate == "error":
            raise InputDataError(
                f"labels {raws} all denote the condition {canon!r}; pass on_duplicate='merge' to pool "
                "them or relabel the data."
            )
        log.warning("pooling labels %s as condition %r", raws, canon)


def _looks_like_counts(X) -> bool:
    vals = X.data if sp.issparse(X) else np.asarray(X).ravel()
    vals = vals[: 200_000]
    return vals.size > 0 and float(vals.max()) > 50 and bool(np.all(np.mod(vals, 1) == 0))


def _gene_symbols(adata: ad.AnnData, key: str | None) -> list[str]:
    if key is None:
        key = next((k for k in ("feature_name", "gene_symbol", "gene_name") if k in adata.var), None)
    if key is not None and key not in adata.var:
        raise GeneIdError(f"var has no column {key!r} (columns: {list(adata.var.columns)}).")
    symbols = [str(s) for s in (adata.var[key] if key else adata.var_names)]
    if len(set(symbols)) != len(symbols):
        seen: dict[str, int] = {}
        from collections import Counter

        dups = sorted(s for s, k in Counter(symbols).items() if k > 1)
        log.warning("duplicate gene symbols %s made unique with suffixes -1, -2, ...", dups[:5])
        out = []
        for s in symbols:
            k = seen.get(s, 0)
            out.append(s if k == 0 else f"{s}-{k}")
            seen[s] = k + 1
        symbols = out
    if symbols and all(s.startswith("ENSG") for s in symbols[:50]):
        log.warning("gene names look like Ensembl ids; conditions name gene symbols, so pass gene_symbol_key.")
    return symbols
