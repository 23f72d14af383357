"""SEMI-SYNTHETIC Perturb-seq data on the real GO graph, for benchmarking selection at realistic scale.

Only a tiny real Perturb-seq set exists on these machines, so the selection benchmark also runs on
data whose *responses are simulated* while the graph, the readout genes, the control expression and
the measurement noise are real. Figures from it must always be labelled semi-synthetic.

Generative model (a linear structural model of regulation spreading over GO neighbours):

1. Universe U of ``n_candidates`` perturbable genes: breadth-first search over the (symmetrised) GO
   graph from the readout genes, nodes at equal distance taken in alphabetical order (the last level
   is cut alphabetically, so a few readout genes may end up isolated in U). Symbols that read as a
   control label (the gene ``CTRL``) are left out. The TRUE graph is the GO graph induced on U,
   made undirected (an edge in either direction, weight = the larger importance, self loops kept;
   a gene with no edge inside U gets a weight-1 self loop).
2. Readouts: the 500 HVGs of ``devel.h5ad`` (Norman 2019 K562); control expression = the real
   Norman 2019 control cells (mean ``mu_g`` and standard deviation ``sd_g``).
3. Responses are low-rank, as in real screens: ``n_modules`` gene modules, each ``program_size``
   random readout genes with weights ``N(0, sd_g^2)``. Every gene ``v`` in U carries a regulatory
   program ``z_v = sum_m a_vm module_m`` with ``modules_per_gene`` active modules, loadings
   ``a_vm ~ N(0, tau^2)``.
4. The true change caused by perturbing ``u`` spreads over its graph neighbourhood and adds an
   idiosyncratic part: ``delta_u = sum_v (S^K)[u, v] z_v + own * e_u`` where ``S`` is the
   GCN-normalised TRUE graph (:func:`netformer.perturbseq.models.symmetric_gcn_operator`, self loops
   included), ``K = hops`` and ``e_u`` a program drawn like ``z`` independently for ``u`` (not
   predictable from the graph). Steps 1-4 depend on ``config.seed`` only: the ground truth.
5. A *draw* (:meth:`SemiSynthetic.draw`, one benchmark seed) redraws the measurement noise and the
   test split: measured mean = ``mu + delta_u + noise``, noise = mean of ``n_cells`` real control
   cells drawn with replacement minus ``mu`` (real, correlated measurement noise of an
   ``n_cells``-cell mean); the control row is ``mu``; ``n_test`` genes drawn uniformly from U are
   the test set, the rest the pool.

Graph noise (:func:`rewire_edges`): the selection graph may be the true graph with a fraction of its
undirected edges rewired by degree-preserving double-edge swaps, while the ground truth keeps the
true graph.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ConfigError, InputDataError
from ..graphs import GeneGraph, load_edge_list

log = logging.getLogger(__name__)

LABEL = "SEMI-SYNTHETIC (simulated responses on the real GO graph and real K562 control cells)"


@dataclass
class SyntheticConfig:
    """Parameters of :func:`make_semisynthetic` (see the module docstring for the model).

    n_candidates : perturbable genes (pool + test), default 3000.  n_test : held-out test genes, 500.
    n_cells : cells behind each measured mean, 100.  tau : module loading scale (effects in control sd
    units), 6.  program_size : readout genes per module, 40.  n_modules : 10.  modules_per_gene : 2.
    own : weight of the idiosyncratic part, 0.05.  hops : K of the true propagation ``S^K``, 1.
    (Until issue 15 the defaults were tau 2, own 0.2, n_cells 50: there the graph-predictable part of
    a response was about as large as the idiosyncratic one and no method separated from random;
    docs/select.md explains the change.)
    seed : ground-truth seed (universe cut, modules, programs), 0; the measurement noise and the test
    split come from :meth:`SemiSynthetic.draw` (``make_semisynthetic`` returns ``draw(seed)``).
    Round-trips to JSON with ``dataclasses.asdict`` / ``SyntheticConfig(**d)``.
    """

    n_candidates: int = 3000
    n_test: int = 500
    n_cells: int = 100
    tau: float = 6.0
    program_size: int = 40
    n_modules: int = 10
    modules_per_gene: int = 2
    own: float = 0.05
    hops: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_test >= self.n_candidates or self.n_test < 1:
            raise ConfigError("need 1 <= n_test < n_candidates.")
        if self.n_cells < 1 or self.tau <= 0 or self.program_size < 1 or self.own < 0 or self.hops < 1:
            raise ConfigError("need n_cells >= 1, tau > 0, program_size >= 1, own >= 0 and hops >= 1.")
        if not 1 <= self.modules_per_gene <= self.n_modules:
            raise ConfigError("need 1 <= modules_per_gene <= n_modules.")


@dataclass
class SemiSynthetic:
    """A semi-synthetic benchmark set: the ground truth plus one draw of noise and test split.

    data : PerturbData (pseudobulk; one row per perturbed gene of U plus 'ctrl'; 500 readout genes).
    graph : GeneGraph, the TRUE graph on U (undirected; what the models use).
    edges : DataFrame source,target,importance of that graph, both directions (for netformer.perturbseq models).
    pool, test : sorted lists of condition names (single genes) of this draw.
    delta_true : DataFrame (U x readouts), noise-free changes.  label : the SEMI-SYNTHETIC label.
    draw_seed : the seed of this draw (noise and split).  control_cells : the real control cells
    (cells x readouts) the noise is resampled from.
    """

    data: object
    graph: GeneGraph
    edges: pd.DataFrame
    pool: list
    test: list
    delta_true: pd.DataFrame
    config: SyntheticConfig
    label: str = LABEL
    draw_seed: int = 0
    control_cells: np.ndarray | None = field(default=None, repr=False)

    def draw(self, seed: int) -> "SemiSynthetic":
        """Same ground truth, new measurement noise and test split from ``seed`` (one benchmark seed).

        Deterministic: ``(config.seed, seed)`` seeds the generator. Returns a new SemiSynthetic.
        """
        from ..perturbseq.data import PerturbData

        cfg, ctrl = self.config, self.control_cells
        rng = np.random.default_rng([cfg.seed, 1, int(seed)])
        genes = list(self.delta_true.index)
        mu = ctrl.mean(0)
        idx = rng.integers(0, len(ctrl), size=(len(genes), cfg.n_cells))
        # mean of the drawn cells as (draw counts) @ cells: no (genes x n_cells x readouts) array
        counts = sp.csr_matrix((np.ones(idx.size), (np.repeat(np.arange(len(genes)), cfg.n_cells), idx.ravel())),
                               shape=(len(genes), len(ctrl)))
        noise = np.asarray(counts @ ctrl) / cfg.n_cells - mu[None, :]
        x = np.vstack([mu[None, :] + self.delta_true.to_numpy() + noise, mu[None, :]])
        data = PerturbData.from_arrays(x, genes + ["ctrl"], list(self.delta_true.columns))
        test = sorted(rng.choice(genes, size=cfg.n_test, replace=False).tolist())
        pool = sorted(set(genes) - set(test))
        return replace(self, data=data, pool=pool, test=test, draw_seed=int(seed))


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


def undirected_edges(graph: GeneGraph) -> pd.DataFrame:
    """Edges of ``graph`` made undirected: both directions of every edge with the larger importance,
    self loops once. Columns source, target, importance."""
    a = graph.adjacency
    a = a.maximum(a.T).tocoo()
    return pd.DataFrame({"source": graph.genes[a.col].astype(str), "target": graph.genes[a.row].astype(str),
                         "importance": a.data})


def rewire_edges(edges: pd.DataFrame, fraction: float, seed: int = 0, *, method: str = "degree") -> pd.DataFrame:
    """Rewire ``fraction`` of the undirected (non-loop) edges of a symmetric edge list.

    ``method='degree'``: degree-preserving double-edge swaps (Maslov & Sneppen 2002): a random
    ``fraction`` of the edges is drawn and paired; a pair ``(a, b), (c, d)`` becomes ``(a, d), (c, b)``
    (or ``(a, c), (b, d)``) when that creates no self loop or duplicate edge, each new edge keeping
    the importance of the edge it replaces; pairs with no valid swap stay (the achieved fraction is
    logged). ``method='random'``: each drawn edge is moved to a uniformly random absent node pair
    (degrees change). Self loops are kept. Returns the edges in both directions, like
    :func:`undirected_edges`. Deterministic given ``seed``. Raises :class:`ConfigError` for a
    fraction outside [0, 1] or an unknown method.
    """
    if not 0 <= fraction <= 1:
        raise ConfigError(f"rewiring fraction must be in [0, 1], got {fraction}.")
    if method not in ("degree", "random"):
        raise ConfigError(f"rewiring method must be 'degree' or 'random', not {method!r}.")
    src, tgt = edges["source"].to_numpy(str), edges["target"].to_numpy(str)
    w = edges["importance"].to_numpy(np.float64)
    loops = src == tgt
    a, b = np.where(src < tgt, src, tgt), np.where(src < tgt, tgt, src)
    und = (pd.DataFrame({"a": a[~loops], "b": b[~loops], "w": w[~loops]}).groupby(["a", "b"], sort=True)["w"]
           .max().reset_index())
    ea, eb, ew = und["a"].to_numpy(object), und["b"].to_numpy(object), und["w"].to_numpy()
    m = len(und)
    rng = np.random.default_rng([int(seed), 7])
    present = set(zip(ea, eb))
    n_target = int(round(fraction * m))
    pick = rng.permutation(m)[:n_target]
    changed = 0

    def key(x, y):
        return (x, y) if x < y else (y, x)

    if method == "degree":
        for i, j in zip(pick[0::2], pick[1::2]):
            p, q, r, t = ea[i], eb[i], ea[j], eb[j]
            for n1, n2 in (((p, t), (r, q)), ((p, r), (q, t))):
                k1, k2 = key(*n1), key(*n2)
                if n1[0] != n1[1] and n2[0] != n2[1] and k1 != k2 and k1 not in present and k2 not in present:
                    present.discard(key(p, q))
                    present.discard(key(r, t))
                    present.update([k1, k2])
                    (ea[i], eb[i]), (ea[j], eb[j]) = k1, k2
                    changed += 2
                    break
    else:
        nodes = np.unique(np.concatenate([ea, eb]))
        for i in pick:
            for _ in range(100):
                x, y = rng.choice(len(nodes), 2, replace=False)
                k = key(nodes[x], nodes[y])
                if k not in present:
                    present.discard(key(ea[i], eb[i]))
                    present.add(k)
                    ea[i], eb[i] = k
                    changed += 1
                    break
    log.info("rewired %d of %d undirected edges (%.1f%%, asked %.0f%%, %s)", changed, m, 100 * changed / max(m, 1),
             100 * fraction, method)
    out = pd.DataFrame({"source": np.concatenate([ea, eb, src[loops]]), "target": np.concatenate([eb, ea, tgt[loops]]),
                        "importance": np.concatenate([ew, ew, w[loops]])})
    return out.reset_index(drop=True)


def make_semisynthetic(config: SyntheticConfig | None = None, *, graph: GeneGraph | None = None,
                       devel_path: str | Path | None = None) -> SemiSynthetic:
    """Build the semi-synthetic benchmark set (see module docstring): the ground truth from
    ``config.seed`` and its draw ``config.seed`` (noise, test split); other draws by
    :meth:`SemiSynthetic.draw`. Deterministic.

    Raises :class:`ConfigError` if the graph cannot supply ``n_candidates`` genes around the readouts.
    """
    from ..perturbseq.models import symmetric_gcn_operator

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
    edges = undirected_edges(sub)
    genes = [str(g) for g in sub.genes]
    lonely = sorted(set(genes) - set(edges["source"]))  # no edge inside U: a weight-1 self loop, as gcn_normalize adds
    if lonely:
        edges = pd.concat([edges, pd.DataFrame({"source": lonely, "target": lonely, "importance": 1.0})],
                          ignore_index=True)
    true_graph = GeneGraph.from_edges(edges, genes)
    _, s = symmetric_gcn_operator(edges, nodes=genes)
    sd = ctrl.std(0) + 1e-3
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
    prop = z
    for _ in range(cfg.hops):
        prop = s @ prop
    delta = prop + cfg.own * e
    truth = SemiSynthetic(None, true_graph, edges, [], [], pd.DataFrame(delta, index=genes, columns=readouts), cfg,
                          control_cells=ctrl)
    out = truth.draw(cfg.seed)
    log.info("%s: %d genes (%d pool, %d test), %d readouts, %d edges", LABEL, n, len(out.pool), len(out.test), g,
             len(edges))
    return out
