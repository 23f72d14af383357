"""Statistics of in silico perturbation results (Geneformer ``InSilicoPerturberStats``), as tidy tables.

For each perturbed gene (or joint set) the per-cell shifts are compared with

- the pooled shifts of all perturbed genes (upstream ``mode="goal_state_shift"`` / ``"aggregate"``),
- a null distribution: the shifts of random genes (``null=None``: ``n_null_genes`` genes drawn with
  ``seed`` from the screen itself, the gene under test left out) or the results of a separate null run
  (random genes, a control model) passed as ``null``,

by the two-sided Wilcoxon rank-sum / Mann-Whitney U test (:func:`scipy.stats.mannwhitneyu`,
asymptotic; the reference sample is subsampled to at most ``max_reference`` values with ``seed``),
with Benjamini-Hochberg FDR (:func:`statsmodels.stats.multitest.multipletests`). A two-component
Gaussian mixture (:class:`sklearn.mixture.GaussianMixture`) on the genes' mean shifts flags the
component with the larger mean as ``impactful`` (upstream's ``mixture_model`` mode), with
upstream's borders: genes above that component's mean are impactful and genes below the other
component's mean are not, whatever the mixture predicts (a broad component would otherwise also
claim the far low tail); genes in between take the predicted component.

Screen-mode results use the exact shift where a gene was evaluated exactly and the first-order
estimate elsewhere (``frac_exact`` says how often each gene was exact).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import atomic_file, new_figure, save_figure
from ..errors import ConfigError, InputDataError

log = logging.getLogger(__name__)


@dataclass
class StatsConfig:
    """Settings of :func:`gene_stats`.

    Attributes
    ----------
    value
        Column to test; ``"auto"``: ``shift_goal`` with cell states, else ``cell_effect``.
    min_cells
        Genes perturbed in fewer cells get no p-value (NaN) and no mixture flag.
    n_null_genes
        Random genes forming the built-in null (when no ``null`` results are given).
    max_reference
        Reference samples (pooled / null) are subsampled to this many values.
    alpha
        FDR level of the ``significant`` and ``toward_goal`` flags.
    seed
        Seeds the null genes, subsampling and the mixture.
    species
        For Ensembl id -> symbol (GENCODE).
    """

    value: str = "auto"
    min_cells: int = 3
    n_null_genes: int = 200
    max_reference: int = 20000
    alpha: float = 0.05
    seed: int = 0
    species: str = "human"


def _values(results: pd.DataFrame, value: str) -> tuple[pd.Series, str]:
    if results.empty:
        raise InputDataError("no perturbation results to summarise")
    if value == "auto":
        value = "shift_goal" if "shift_goal" in results.columns else "cell_effect"
    if value not in results.columns:
        raise ConfigError(f"column {value!r} not in the results (columns: {list(results.columns)})")
    v = results[value].astype(float)
    est = {"shift_goal": "shift_estimate", "cell_effect": "cell_effect_estimate"}.get(value)
    if est in results.columns:
        v = v.fillna(results[est].astype(float))
    return v, value


def _symbols(labels, species: str) -> list[str]:
    from ..genes import ensembl_to_symbol

    parts = sorted({p for lab in labels for p in str(lab).split("+")})
    table = ensembl_to_symbol(parts, species=species) if parts else pd.Series(dtype=object)
    return ["+".join(str(table.get(p) or p) for p in str(lab).split("+")) for lab in labels]


def _mwu(x: np.ndarray, ref: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    if len(x) == 0 or len(ref) == 0:
        return float("nan")
    return float(mannwhitneyu(x, ref, alternative="two-sided", method="asymptotic").pvalue)


def _bh(p: np.ndarray) -> np.ndarray:
    from statsmodels.stats.multitest import multipletests

    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out


def gene_stats(results: pd.DataFrame, config: StatsConfig | None = None, null: pd.DataFrame | np.ndarray | None = None
               ) -> pd.DataFrame:
    """Per-gene aggregate table of perturbation shifts.

    Parameters
    ----------
    results
        ``PerturbResult.results`` (one row per cell and perturbation).
    config
        :class:`StatsConfig`.
    null
        Optional null shifts: a results DataFrame of a null run (same value column) or an array.

    Returns
    -------
    DataFrame sorted by ``mean_shift`` (descending; genes in fewer than ``min_cells`` cells
    last), one row per perturbed gene (set): ``symbol``,
    ``ensembl_id``, ``n_cells``, ``mean_shift``, ``median_shift``, ``std_shift``, ``p_vs_pooled``,
    ``fdr_vs_pooled``, ``p_vs_null``, ``fdr_vs_null``, ``impactful`` (mixture flag), ``significant``,
    plus ``mean_<alternative shift>`` columns and ``toward_goal`` / ``goal_specific`` with cell
    states, ``frac_exact`` in screen mode, and ``value`` (the column tested).
    """
    cfg = config or StatsConfig()
    vals, value = _values(results, cfg.value)
    df = pd.DataFrame({"gene": results["perturbed"].astype(str), "v": vals.to_numpy()}).dropna()
    alt_cols = [c for c in results.columns if c.startswith("shift_") and c not in ("shift_goal", "shift_estimate")]
    grouped = df.groupby("gene", sort=True)["v"]
    genes = list(grouped.groups.keys())
    by_gene = {g: grouped.get_group(g).to_numpy() for g in genes}
    n = np.array([len(by_gene[g]) for g in genes])
    rng = np.random.default_rng(cfg.seed)
    pooled = df["v"].to_numpy()
    if len(pooled) > cfg.max_reference:
        pooled = rng.choice(pooled, cfg.max_reference, replace=False)
    tested = [g for g, k in zip(genes, n) if k >= cfg.min_cells]
    if null is not None:
        null_vals = np.asarray(_values(null, value)[0].dropna() if isinstance(null, pd.DataFrame) else null, float)
        null_genes: set[str] = set()
    else:
        pool = np.array(tested if tested else genes, dtype=object)
        null_genes = set(rng.choice(pool, min(cfg.n_null_genes, len(pool)), replace=False).tolist())
        null_vals = None
    p_pool = np.full(len(genes), np.nan)
    p_null = np.full(len(genes), np.nan)
    null_all = np.concatenate([by_gene[g] for g in sorted(null_genes)]) if null_genes else None
    for i, g in enumerate(genes):
        if n[i] < cfg.min_cells:
            continue
        x = by_gene[g]
        p_pool[i] = _mwu(x, pooled)
        if null_vals is not None:
            ref = null_vals
        else:
            others = [by_gene[h] for h in sorted(null_genes) if h != g]
            ref = (np.concatenate(others) if others else None) if g in null_genes else null_all
        if ref is not None and len(ref) > cfg.max_reference:
            ref = np.random.default_rng(cfg.seed + 1).choice(ref, cfg.max_reference, replace=False)
        p_null[i] = _mwu(x, ref) if ref is not None else np.nan
    table = pd.DataFrame({
        "ensembl_id": genes,
        "n_cells": n,
        "mean_shift": [by_gene[g].mean() for g in genes],
        "median_shift": [np.median(by_gene[g]) for g in genes],
        "std_shift": [by_gene[g].std(ddof=1) if len(by_gene[g]) > 1 else np.nan for g in genes],
        "p_vs_pooled": p_pool,
        "fdr_vs_pooled": _bh(p_pool),
        "p_vs_null": p_null,
        "fdr_vs_null": _bh(p_null),
    })
    table.insert(0, "symbol", _symbols(genes, cfg.species))
    table["impactful"] = _mixture_flag(table, cfg)
    table["significant"] = (table["fdr_vs_pooled"] < cfg.alpha).fillna(False)
    means = results.assign(gene=results["perturbed"].astype(str)).groupby("gene")
    for c in alt_cols:
        table[f"mean_{c}"] = means[c].mean().reindex(genes).to_numpy()
    if value == "shift_goal":
        table["toward_goal"] = table["significant"] & (table["mean_shift"] > 0)
        if alt_cols:
            alt_max = table[[f"mean_{c}" for c in alt_cols]].max(axis=1)
            table["goal_specific"] = table["toward_goal"] & (table["mean_shift"] > alt_max.fillna(-np.inf))
    if "exact" in results.columns:
        table["frac_exact"] = means["exact"].mean().reindex(genes).to_numpy()
    table["value"] = value
    table["_tested"] = table["n_cells"] >= cfg.min_cells
    table = table.sort_values(["_tested", "mean_shift", "ensembl_id"], ascending=[False, False, True], kind="stable")
    return table.drop(columns="_tested").reset_index(drop=True)


def _mixture_flag(table: pd.DataFrame, cfg: StatsConfig) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    flag = np.zeros(len(table), dtype=bool)
    ok = (table["n_cells"] >= cfg.min_cells).to_numpy()
    x = table.loc[ok, "mean_shift"].to_numpy().reshape(-1, 1)
    if len(x) < 4 or np.ptp(x) == 0:
        return flag
    x = (x - x.mean()) / x.std()  # shifts are ~1e-4: standardise so reg_covar (1e-6) does not swamp them
    gm = GaussianMixture(2, random_state=cfg.seed).fit(x)
    means = gm.means_.ravel()
    high = int(np.argmax(means))
    # borders as upstream's get_impact_component: beyond a component's mean, that component
    v = x.ravel()
    flag[ok] = (v > means.max()) | ((v > means.min()) & (gm.predict(x) == high))
    return flag


def _wrap(title: str, width: int = 70) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) or title


def plot_ranked_shifts(table: pd.DataFrame, path: str | Path | None = None, n_label: int = 10,
                       title: str | None = None, ax=None) -> Path | None:
    """Mean shift of every tested gene (``table``: :func:`gene_stats`) against its rank, log rank axis.

    Draws on ``ax`` or a new figure; writes a PNG to ``path`` when given. Returns the path (or the
    figure without ``path``), or None when no gene was tested (the plot is skipped with a log line).

    Genes flagged ``impactful`` are coloured; the top ``n_label`` genes are listed in a box. Genes
    perturbed in too few cells to be tested (NaN ``p_vs_pooled``) are left out and counted in the
    legend; their means rest on a handful of cells.
    """
    tested = table[table["p_vs_pooled"].notna()] if "p_vs_pooled" in table else table
    if tested.empty:
        log.warning("ranked-shift plot skipped: no gene was perturbed in enough cells to be tested "
                    "(perturb more cells, or lower StatsConfig.min_cells)")
        return None
    y = tested["mean_shift"].to_numpy()
    x = np.arange(1, len(y) + 1)
    fig, ax = new_figure(figsize=(7, 4.5)) if ax is None else (ax.figure, ax)
    imp = tested["impactful"].to_numpy(bool)
    untested = len(table) - len(tested)
    ax.scatter(x[~imp], y[~imp], s=4, color="0.6",
               label="other genes" + (f" ({untested} genes in too few cells not shown)" if untested else ""))
    ax.scatter(x[imp], y[imp], s=6, color="C3", label="impactful (2-component mixture)")
    top = tested.head(n_label)
    if len(top):
        ax.text(0.98, 0.97, "\n".join(f"{i + 1}. {sym}" for i, sym in enumerate(top["symbol"])),
                transform=ax.transAxes, ha="right", va="top", fontsize=7, family="monospace",
                bbox=dict(facecolor="white", edgecolor="0.8"))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("gene rank")
    ax.set_ylabel(f"mean {table['value'].iloc[0] if 'value' in table else 'shift'} over cells")
    ax.set_title(_wrap(title or "in silico perturbation: ranked genes"), fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    return save_figure(fig, path) if path is not None else fig


def plot_top_genes(results: pd.DataFrame, table: pd.DataFrame, path: str | Path, n: int = 20,
                   title: str | None = None) -> Path | None:
    """Per-cell shift distributions (box plots) of the top ``n`` genes of ``table`` (PNG).

    Each gene is labelled with the number of cells it was perturbed in, and ``*`` when it is
    significant (``table['significant']``, FDR vs the pooled shifts below ``StatsConfig.alpha``).
    """
    import matplotlib

    vals, _ = _values(results, table["value"].iloc[0] if "value" in table else "auto")
    top = table.head(n)
    if top.empty:
        log.warning("top-gene plot skipped: the gene table is empty")
        return None
    data = [vals[results["perturbed"].astype(str) == g].dropna().to_numpy() for g in top["ensembl_id"]]
    fig, ax = new_figure(figsize=(7, 0.3 * len(top) + 1.5))
    # horizontal boxes: ``orientation`` since Matplotlib 3.10, ``vert`` (deprecated in 3.11) before it
    mpl_version = tuple(int(x) for x in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if mpl_version >= (3, 10) else {"vert": False}
    ax.boxplot(data[::-1], showfliers=False, **horizontal)
    star = top["significant"].to_numpy(bool) if "significant" in top else np.zeros(len(top), bool)
    labels = [f"{sym} (n={n}){' *' if st else ''}" for sym, n, st in zip(top["symbol"], top["n_cells"], star)]
    ax.set_yticks(np.arange(1, len(top) + 1), labels[::-1], fontsize=8)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("shift per cell   (n: cells perturbed; *: FDR vs pooled shifts < alpha)")
    ax.set_title(_wrap(title or f"top {len(top)} genes"), fontsize=10)
    return save_figure(fig, path)


def write_stats(table: pd.DataFrame, out_dir: str | Path, results: pd.DataFrame | None = None,
                title: str | None = None) -> dict[str, Path]:
    """Write ``genes.csv``, ``genes.parquet``, ``ranked_shifts.png`` and (with ``results``)
    ``top_genes.png`` into ``out_dir``, each atomically. Returns the paths written (a plot with nothing
    to show is skipped with a logged line and left out)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "genes.csv", "parquet": out / "genes.parquet", "ranked": out / "ranked_shifts.png"}
    with atomic_file(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_file(paths["parquet"]) as tmp:
        table.to_parquet(tmp, index=False)
    if plot_ranked_shifts(table, paths["ranked"], title=title) is None:
        del paths["ranked"]
    if results is not None and plot_top_genes(results, table, out / "top_genes.png", title=title) is not None:
        paths["top"] = out / "top_genes.png"
    return paths
