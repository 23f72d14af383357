"""SEMI-SYNTHETIC Perturb-seq data on the real GO graph, for benchmarking selection at realistic scale.

Only a tiny real Perturb-seq set exists on these machines, so the selection benchmark also runs on
data whose *responses are simulated* while the graph, the readout genes, the control expression and
the measurement noise are real. Figures from it must always be labelled semi-synthetic.

Generative model (a linear structural model of regulation spreading over GO neighbours):

1. Universe U of ``n_candidates`` perturbable genes: breadth-first search over the (symmetrised) GO
   graph from the readout genes, nodes at equal distance taken in alphabetical order (the last level
   is cut alphabetically, so a few readout genes may end up isolated in U). Symbols that read as a
   control label (the gene ``CTRL``) are left out.
2. Readouts: the 500 HVGs of ``devel.h5ad`` (Norman 2019 K562); control expression = the real
   Norman 2019 control cells (mean ``mu_g`` and standard deviation ``sd_g``).
3. Responses are low-rank, as in real screens: ``n_modules`` gene modules, each ``program_size``
   random readout genes with weights ``N(0, sd_g^2)``. Every gene ``v`` in U carries a regulatory
   program ``z_v = sum_m a_vm module_m`` with ``modules_per_gene`` active modules, loadings
   ``a_vm ~ N(0, tau^2)``.
4. The true change caused by perturbing ``u`` spreads over its GO neighbourhood and adds an
   idiosyncratic part: ``delta_u = sum_v S[u, v] z_v + own * e_u`` where ``S`` is the symmetrised
   GCN-normalised GO adjacency of U (self loops included, one hop) and ``e_u`` a program drawn like
   ``z`` independently for ``u`` (not predictable from the graph).
5. Measured mean = ``mu + delta_u + noise``, noise = mean of ``n_cells`` real control cells drawn
   with replacement minus ``mu`` (real, correlated measurement noise of an ``n_cells``-cell mean).
   The control row is ``mu``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ConfigError, InputDataError
from ..graphs import GeneGraph, gcn_normalize, load_edge_list

log = logging.getLogger(__name__)

LABEL = "SEMI-SYNTHETIC (simulated responses on the real GO graph and real K562 control cells)"


@dataclass
class SyntheticConfig:
    """Parameters of :func:`make_semisynthetic` (see the module docstring for the model).

    n_candidates : perturbable genes (pool + test), default 3000.  n_test : held-out test genes, 500.
    n_cells : cells behind each measured mean, 50.  tau : module loading scale (effects in control sd units), 2.
    program_size : readout genes per module, 40.  n_modules : 10.  modules_per_gene : 2.
    own : weight of the idiosyncratic part, 0.2.
    seed : data seed (programs, noise, test split), 0.
    """

    n_candidates: int = 3000
    n_test: int = 500
    n_cells: int = 50
    tau: float = 2.0
    program_size: int = 40
    n_modules: int = 10
    modules_per_gene: int = 2
    own: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_test >= self.n_candidates or self.n_test < 1:
            raise ConfigError("need 1 <= n_test < n_candidates.")
        if self.n_cells < 1 or self.tau <= 0 or self.program_size < 1 or self.own < 0:
            raise ConfigError("need n_cells >= 1, tau > 0, program_size >= 1 and own >= 0.")
        if not 1 <= self.modules_per_gene <= self.n_modules:
            raise ConfigError("need 1 <= modules_per_gene <= n_modules.")


@dataclass
class SemiSynthetic:
    """A semi-synthetic benchmark set.

    data : PerturbData (pseudobulk; one row per perturbed gene of U plus 'ctrl'; 500 readout genes).
    graph : GeneGraph, the GO graph induced on U (what models and selection use).
    edges : DataFrame source,target,importance of that graph (for netformer.perturbseq models).
    pool, test : sorted lists of condition names (single genes).
    delta_true : DataFrame (U x readouts), noise-free changes.  label : the SEMI-SYNTHETIC label.
    """

    data: object
    graph: GeneGraph
    edges: pd.DataFrame
    pool: list
    test: list
    delta_true: pd.DataFrame
    config: SyntheticConfig
    label: str = LABEL


def bfs_universe(graph: GeneGraph, seeds: list[str], n: int) -> list[str]:
    """The first ``n`` genes of a breadth-first search over the symmetrised graph from ``seeds``
    (seeds first, in name order; each layer in name order). Returns fewer if the reachable set is smaller."""
    a = graph.adjacency
    a = (a + a.T).tocsr()
    order = [graph.index_of([s])[0] for s in sorted(set(seeds)) if s in graph]
    seen = set(order)
    frontier = deque(order)
    names = graph.genes
    while frontier and len(order) < n:
        level = []
        for _ in range(len(frontier)):
            u = frontier.popleft()
            for v in a.indices[a.indptr[u]:a.indptr[u + 1]]:
                if v not in seen:
                    seen.add(v)
                    level.append(v)
        level.sort(key=lambda v: names[v])
        order.extend(level)
        frontier.extend(level)
    return [str(names[i]) for i in order[:n]]


def norman_control(devel_path: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Real Norman 2019 K562 control cells of ``devel.h5ad``: (cells x 500 dense log-normalised, gene symbols)."""
    import anndata as ad

    if devel_path is None:
        from ..datasets import shared_data_dir

        devel_path = shared_data_dir() / "perturbseq" / "devel.h5ad"
    a = ad.read_h5ad(devel_path)
    mask = (a.obs["dataset"].astype(str) == "norman19") & (a.obs["condition"].astype(str) == "control")
    if mask.sum() < 2:
        raise InputDataError(f"{devel_path} holds fewer than 2 Norman 2019 control cells.")
    x = a.X[mask.to_numpy()]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64), [str(g) for g in a.var_names]


def make_semisynthetic(config: SyntheticConfig | None = None, *, graph: GeneGraph | None = None,
                       devel_path: str | Path | None = None) -> SemiSynthetic:
    """Build the semi-synthetic benchmark set (see module docstring). Deterministic given ``config.seed``.

    Raises :class:`ConfigError` if the graph cannot supply ``n_candidates`` genes around the readouts.
    """
    from ..perturbseq.data import PerturbData

    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    graph = graph or load_edge_list()
    from ..perturbseq.data import CONTROL_ALIASES

    ctrl, readouts = norman_control(devel_path)
    # gene symbols that read as a control label (the real gene CTRL, chymotrypsin-like protease)
    # cannot be perturbation names; leave them out of the universe
    clash = [g for g in graph.genes if str(g).lower() in CONTROL_ALIASES]
    universe = [g for g in bfs_universe(graph, readouts, cfg.n_candidates + len(clash)) if g not in clash]
    universe = universe[: cfg.n_candidates]
    if len(universe) < cfg.n_candidates:
        raise ConfigError(f"only {len(universe)} genes are reachable from the readouts; lower n_candidates.")
    sub = graph.subgraph(universe)
    genes = list(sub.genes)
    s = gcn_normalize(sub.adjacency)
    s = ((s + s.T) * 0.5).tocsr()
    mu, sd = ctrl.mean(0), ctrl.std(0) + 1e-3
    n, g = len(genes), len(readouts)

    modules = np.zeros((cfg.n_modules, g))
    for k in range(cfg.n_modules):
        cols = rng.choice(g, size=min(cfg.program_size, g), replace=False)
        modules[k, cols] = rng.normal(0.0, sd[cols])

    def programs(m: int) -> np.ndarray:
        a = np.zeros((m, cfg.n_modules))
        for i in range(m):
            act = rng.choice(cfg.n_modules, size=cfg.modules_per_gene, replace=False)
            a[i, act] = rng.normal(0.0, cfg.tau, size=len(act))
        return a @ modules

    z, e = programs(n), programs(n)
    delta = s @ z + cfg.own * e
    noise = np.stack([ctrl[rng.integers(0, len(ctrl), cfg.n_cells)].mean(0) - mu for _ in range(n)])
    x = np.vstack([mu[None, :] + delta + noise, mu[None, :]])
    data = PerturbData.from_arrays(x, genes + ["ctrl"], readouts)
    test = sorted(rng.choice(genes, size=cfg.n_test, replace=False).tolist())
    pool = sorted(set(genes) - set(test))
    coo = sub.adjacency.tocoo()
    edges = pd.DataFrame({"source": sub.genes[coo.col], "target": sub.genes[coo.row], "importance": coo.data})
    log.info("%s: %d genes (%d pool, %d test), %d readouts, %d edges", LABEL, n, len(pool), len(test), g, len(edges))
    return SemiSynthetic(data, sub, edges, pool, test, pd.DataFrame(delta, index=genes, columns=readouts), cfg)
