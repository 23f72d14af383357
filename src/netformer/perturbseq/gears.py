"""GEARS-style graph neural network for perturbation outcome prediction, batched and vectorised.

Architecture after GEARS (Roohani, Huang and Leskovec, "Predicting transcriptional outcomes of
novel multigene perturbations with GEARS", Nat Biotechnol 2024; upstream ``gears/model.py``):

1. Gene embeddings ``E`` (n_genes x h), plus ``0.2 x`` a positional embedding smoothed by graph
   layers over the co-expression graph (:func:`~netformer.graphs.coexpression_graph`,
   |Pearson| > 0.4, top 20), then an MLP.
2. Perturbation embeddings over the GO graph's nodes, propagated by graph layers over the GO graph
   (:func:`~netformer.graphs.go_graph`, Jaccard > 0.1, top 20 + self). A cell's
   perturbation embedding is the sum over its perturbed genes, passed through an MLP
   (``pert_fuse``) and added to every gene's embedding.
3. A shared MLP, then gene-specific linear decoders (one weight vector per gene), a cross-gene MLP
   over all genes' outputs whose state is fed back to gene-specific decoders, and a residual:
   predicted expression = decoder output + the input control cell's expression.

Graph layers are SGConv with K = 1 (``H' = Linear(A_hat H)``, ``A_hat`` GCN-normalised by
:func:`~netformer.graphs.gcn_normalize`, the operator one-shot selection uses too). Loss: GEARS's
autofocus loss ``mean |pred - y|^(2 + gamma)`` over the perturbation's non-dropout genes (genes with
non-zero mean in that condition), averaged per perturbation within the batch, plus a direction term
``lambda * mean (sign(mean_c - ctrl) - tanh((pred - ctrl) / tau))^2``. Two changes from upstream,
which uses ``(sign(y - ctrl) - sign(pred - ctrl))^2``: ``sign(pred - ctrl)`` has zero gradient, so
upstream's term never trains; the ``tanh`` surrogate does (``tau -> 0`` recovers the sign). And
the target direction is that of the condition's mean change ``mean_c - ctrl`` rather than of the
single cell ``y``, whose sign is mostly dropout noise (a zero count reads as "down" for every
expressed gene). Training pairs each perturbed cell with a random control
cell as input (control cells are paired with themselves), as upstream; the partner is redrawn
every epoch (upstream draws it once, when it builds its dataset).

Other differences from cell-gears 0.1.2's code, kept as they are: upstream's ``MLP`` ignores its
``last_layer_act`` argument and ends every MLP with BatchNorm and no ReLU, whereas ``emb_trans_v2``
and ``pert_fuse`` here end with a ReLU and ``recovery_w`` / ``cross_gene_state`` end with the
linear layer; upstream's gene, positional and perturbation embeddings renormalise rows to norm 1
(``max_norm=True``) and its gene-specific decoder biases start random rather than at 0.

Vectorisation (what differs from upstream's PyG code, which copies the gene graph once per cell
and loops over perturbations in Python): the gene-embedding branch depends on no input, so it is
computed once per batch (BatchNorm statistics over genes are the same as over the copies); GO
propagation is one sparse matmul. Before the residual, a cell's gene states depend only on its
perturbation, so the decoder runs once per distinct perturbation of the batch (BatchNorm
statistics weighted by the number of cells sharing it: the same function, gradients and running
statistics as per cell); the first BatchNorm's statistics over the gene x perturbation grid come
from those of the two factors; the shared MLP's last linear layer is folded into the
gene-specific decoder (one contraction), and that layer's linear map, BatchNorm, ReLU and
contraction are one autograd function with a hand-written backward whose large tensors live in
buffers reused across steps; the cross-gene MLP runs per cell. Training follows
GEARS's recipe: Adam, gradients clipped elementwise to 1, learning rate halved after every epoch,
and (with validation conditions) the best-validation epoch kept. Prediction needs no sampling: the input cell enters only through the residual, so the
mean prediction over control cells is the control mean plus the network's output (upstream
averages 300 sampled control cells to estimate the same quantity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import ConfigError, InputDataError
from ..graphs import GeneGraph, coexpression_graph, gcn_normalize, go_graph
from .data import CONTROL, PerturbData, condition_genes
from .models import PerturbationModel

log = logging.getLogger(__name__)

__all__ = ["EpochTrainer", "GEARSConfig", "GEARSModel", "GEARSNetwork", "gears_loss", "reference_forward"]


@dataclass
class GEARSConfig:
    """Hyper-parameters of :class:`GEARSModel` (defaults: GEARS's).

    hidden: embedding width h (64). epochs (20), lr (1e-3), weight_decay (5e-4), batch_size (32):
    Adam training. lr_decay (0.5): the learning rate is multiplied by it after every epoch, as
    GEARS's ``StepLR(step_size=1, gamma=0.5)`` (1.0: constant). grad_clip (1.0): every gradient
    element is clipped to [-grad_clip, grad_clip] before each step, as GEARS's
    ``clip_grad_value_`` (None: no clipping). gamma: autofocus exponent 2 + gamma (2). direction_lambda (0.1) and
    direction_tau (0.1): direction term weight and tanh temperature. num_go_layers /
    num_gene_layers: graph layers (1 each). pos_weight: weight of the co-expression branch (0.2).
    coexpress_threshold / coexpress_k: co-expression graph (0.4, 20). coexpress_max_cells:
    subsample of training cells used for correlations (20,000). max_cells_per_condition: cap on
    training cells per condition (None: all). seed: initialisation, shuffling and pairing.
    device: ``None`` -> CUDA if available, else CPU. progress: tqdm bar per epoch.

    select_metric: best-epoch selection on the validation split, as GEARS does (``'mse_top20_de'``).
    When :meth:`GEARSModel.fit` is given ``val_conditions``, the model is scored after every epoch
    on them by this column of :func:`netformer.perturbseq.metrics.evaluate` (mean over the
    validation conditions, NaNs skipped), and the parameters of the best epoch are kept - the
    lowest value for ``'mse_top20_de'`` / ``'mse'``, the highest for ``'pearson_delta'``,
    ``'pearson_delta_top20_de'``, ``'direction_acc_top20_de'``; the earliest epoch on ties.
    Upstream GEARS keeps the epoch with the lowest validation top-20 DE MSE (``mse_de``, the same
    quantity on its sampled-control predictions). ``None``, or no validation conditions: the last
    epoch's parameters. Scoring does not touch any random stream, so the kept model is exactly the
    one that training for ``best_epoch_`` epochs gives.
    """

    hidden: int = 64
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 5e-4
    batch_size: int = 32
    lr_decay: float = 0.5
    grad_clip: float | None = 1.0
    gamma: float = 2.0
    direction_lambda: float = 0.1
    direction_tau: float = 0.1
    num_go_layers: int = 1
    num_gene_layers: int = 1
    pos_weight: float = 0.2
    coexpress_threshold: float = 0.4
    coexpress_k: int = 20
    coexpress_max_cells: int = 20_000
    max_cells_per_condition: int | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = False
    select_metric: str | None = "mse_top20_de"

    def __post_init__(self):
        checks = {
            "hidden": self.hidden >= 1,
            "epochs": self.epochs >= 0,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "batch_size": self.batch_size >= 2,
            "lr_decay": 0 < self.lr_decay <= 1,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "gamma": self.gamma >= 0,
            "direction_tau": self.direction_tau > 0,
            "num_go_layers": self.num_go_layers >= 1,
            "num_gene_layers": self.num_gene_layers >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"GEARSConfig values out of range: {bad} (batch_size >= 2 for BatchNorm).")
        if self.select_metric is not None and self.select_metric not in _SELECT_DIRECTION:
            raise ConfigError(
                f"select_metric must be one of {sorted(_SELECT_DIRECTION)} or None, not {self.select_metric!r}."
            )


# +1: higher is better, -1: lower is better (columns of metrics.evaluate)
_SELECT_DIRECTION = {
    "mse_top20_de": -1, "mse": -1, "pearson_delta": 1, "pearson_delta_top20_de": 1, "direction_acc_top20_de": 1,
}


def _mlp(sizes: Sequence[int], last_act: bool) -> nn.Sequential:
    """GEARS's MLP: Linear -> BatchNorm -> ReLU between layers; ReLU after the last if ``last_act``."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.BatchNorm1d(sizes[i + 1]), nn.ReLU()]
    if last_act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _bn_stats(bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics BatchNorm normalises with: the batch's (biased ``var`` over ``n`` rows; running
    statistics updated as ``bn`` would) in training mode, the running ones in eval mode."""
    if not bn.training:
        return bn.running_mean, bn.running_var
    with torch.no_grad():
        m = bn.momentum
        bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
        bn.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        bn.num_batches_tracked.add_(1)
    return mean, var


class _Workspace:
    """Reusable buffers for the decoder's large (G, U, 2h) tensors of one training step.

    Fresh multi-megabyte tensors cost page faults on every batch (the allocator hands the memory
    back to the system between steps), as much as the arithmetic on them; the buffers are taken by
    a forward pass and given back by its backward. A forward while they are taken (two forwards
    before a backward, or a graph dropped without backward) allocates fresh tensors instead.
    """

    def __init__(self):
        self.flat: dict[str, torch.Tensor] = {}
        self.busy = False

    def get(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        n = int(np.prod(shape))
        buf = self.flat.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.flat[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


class _DecoderLayer(torch.autograd.Function):
    """``out[g, u] = sum_c relu(BN(Y W^T + b)[g, u, c]) * V[g, c]`` for ``Y`` (G, U, h): the shared
    MLP's first layer, train-mode BatchNorm whose statistics weight column ``u`` by ``w[u]`` (the
    cells sharing it), ReLU and the folded gene decoder, with a hand-written backward (a third of
    autograd's passes over the (G, U, 2h) tensors, in reused buffers). Returns ``out`` (G, U) and
    the batch mean and biased variance (2h,) for the running statistics."""

    @staticmethod
    def forward(ctx, Y, W, b, w, gamma, beta, V, eps, ws):
        G, U, h = Y.shape
        C = W.shape[0]
        ws = ws if ws is not None and not ws.busy else None
        take = (lambda name: ws.get(name, (G, U, C), Y)) if ws is not None else (lambda name: Y.new_empty(G, U, C))
        if ws is not None:
            ws.busy = True
        D = take("D")
        torch.addmm(b, Y.reshape(G * U, h), W.T, out=D.view(G * U, C))  # P = lin1(Y)
        n = w.sum() * G
        mean = w @ D.sum(0) / n
        D.sub_(mean)  # D = P - mean
        Z = take("Z")
        var = w @ torch.mul(D, D, out=Z).sum(0) / n
        s = torch.rsqrt(var + eps)
        k = gamma * s
        torch.addcmul(beta, D, k, out=Z).relu_()
        out = torch.linalg.vecdot(Z, V[:, None, :])
        ctx.save_for_backward(Y, W, D, Z, w, V, s, k, n)
        ctx.ws = ws
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, g_out, _g_mean, _g_var):
        Y, W, D, Z, w, V, s, k, n = ctx.saved_tensors
        ws = ctx.ws
        G, U, h = Y.shape
        C = W.shape[0]
        take = (lambda name: ws.get(name, (G, U, C), Y)) if ws is not None else (lambda name: Y.new_empty(G, U, C))
        gZ, H = take("gZ"), take("H")
        torch.mul(g_out[..., None], V[:, None, :], out=gZ)
        torch.ops.aten.threshold_backward.grad_input(gZ, Z, 0, grad_input=gZ)  # ReLU's (bool masks are slow on CPU)
        gV = torch.mul(Z, g_out[..., None], out=H).sum(1)
        sG = gZ.sum((0, 1))  # d/d beta
        sGD = torch.mul(gZ, D, out=H).sum((0, 1))  # d/d gamma = s * sGD
        # BatchNorm input gradient with weighted statistics: k * (gZ - w/n * (sG + xhat * sum(gZ * xhat)))
        torch.addcmul(sG, D, s * s * sGD, out=H).mul_(k * (w / n)[:, None])
        gP = gZ.mul_(k).sub_(H).view(G * U, C)
        gY = (gP @ W).view(G, U, h)
        gW = gP.T @ Y.reshape(G * U, h)
        gb = gP.sum(0)
        if ws is not None:
            ws.busy = False
        return gY, gW, gb, None, s * sGD, sG, gV, None, None


def _sparse(A) -> torch.Tensor:
    A = A.tocoo()
    idx = torch.from_numpy(np.vstack([A.row, A.col]).astype(np.int64))
    vals = torch.from_numpy(A.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, vals, A.shape, check_invariants=False).coalesce()


class GEARSNetwork(nn.Module):
    """The GEARS network; see the module docstring.

    ``A_coexpress`` (n_genes x n_genes) and ``A_go`` (n_nodes x n_nodes): GCN-normalised scipy
    sparse operators. ``forward(x, pert_nodes)``: ``x`` (B, n_genes) control expression,
    ``pert_nodes`` (B, m) long indices of perturbed GO nodes, padded with ``n_nodes`` (no gene);
    returns (B, n_genes) predicted expression.
    """

    def __init__(self, n_genes: int, A_coexpress, A_go, cfg: GEARSConfig):
        super().__init__()
        h = cfg.hidden
        self.n_genes, self.n_nodes, self.cfg = n_genes, A_go.shape[0], cfg
        self.register_buffer("A_co", _sparse(A_coexpress), persistent=False)
        self.register_buffer("A_go", _sparse(A_go), persistent=False)
        self.gene_emb = nn.Embedding(n_genes, h)
        self.emb_pos = nn.Embedding(n_genes, h)
        self.pert_emb = nn.Embedding(self.n_nodes, h)
        self.bn_emb = nn.BatchNorm1d(h)
        self.gene_layers = nn.ModuleList(nn.Linear(h, h) for _ in range(cfg.num_gene_layers))
        self.go_layers = nn.ModuleList(nn.Linear(h, h) for _ in range(cfg.num_go_layers))
        self.emb_trans_v2 = _mlp([h, h, h], last_act=True)
        self.pert_fuse = _mlp([h, h, h], last_act=True)
        self.bn_pert_base = nn.BatchNorm1d(h)
        self.recovery_w = _mlp([h, 2 * h, h], last_act=False)
        self.indv_w1 = nn.Parameter(torch.empty(n_genes, h))
        self.indv_b1 = nn.Parameter(torch.zeros(n_genes))
        self.cross_gene_state = _mlp([n_genes, h, h], last_act=False)
        self.indv_w2 = nn.Parameter(torch.empty(n_genes, h + 1))
        self.indv_b2 = nn.Parameter(torch.zeros(n_genes))
        nn.init.xavier_normal_(self.indv_w1)
        nn.init.xavier_normal_(self.indv_w2)
        self._ws = _Workspace()

    # -- branches shared by every cell of a batch ------------------------------------------------
    def gene_base(self) -> torch.Tensor:
        """Gene embeddings after the co-expression branch, (n_genes, h)."""
        base = torch.relu(self.bn_emb(self.gene_emb.weight))
        pos = self.emb_pos.weight
        for i, layer in enumerate(self.gene_layers):
            pos = layer(torch.sparse.mm(self.A_co, pos))
            if i < len(self.gene_layers) - 1:
                pos = torch.relu(pos)
        return self.emb_trans_v2(base + self.cfg.pos_weight * pos)

    def go_embeddings(self) -> torch.Tensor:
        """Perturbation embeddings of all GO nodes after graph propagation, (n_nodes + 1, h); last row 0."""
        pg = self.pert_emb.weight
        for i, layer in enumerate(self.go_layers):
            pg = layer(torch.sparse.mm(self.A_go, pg))
            if i < len(self.go_layers) - 1:
                pg = torch.relu(pg)
        return torch.cat([pg, pg.new_zeros(1, pg.shape[1])])

    def perturbation_embedding(self, pert_nodes: torch.Tensor, go: torch.Tensor | None = None) -> torch.Tensor:
        """Fused embedding of each cell's perturbation, (B, h); zero rows for control cells."""
        go = self.go_embeddings() if go is None else go
        summed = go[pert_nodes].sum(1)
        has = (pert_nodes < self.n_nodes).any(1)
        fused = summed.new_zeros(summed.shape)
        idx = torch.nonzero(has).squeeze(1)
        if len(idx) == 1 and self.training:  # BatchNorm needs two rows (upstream duplicates too)
            fused[idx] = self.pert_fuse(summed[idx].repeat(2, 1))[:1]
        elif len(idx):
            fused[idx] = self.pert_fuse(summed[idx])
        return fused

    def decode(self, base: torch.Tensor, fused: torch.Tensor, x: torch.Tensor, counts: torch.Tensor | None = None,
               inverse: torch.Tensor | None = None) -> torch.Tensor:
        """Gene-specific and cross-gene decoders; adds the residual ``x`` (B, n_genes).

        The state of gene ``g`` in a cell with fused perturbation embedding ``f`` is
        ``base[g] + f`` (``base`` (n_genes, h) from :meth:`gene_base`). ``fused`` (U, h) holds the
        distinct perturbation embeddings of the batch: cell ``b`` has ``fused[inverse[b]]``
        (default: U = B, the cells' own) and ``counts[u]`` cells share row ``u``; BatchNorm
        statistics weight each row by its count, so the result (and its gradients and the running
        statistics) equals decoding the B cells one by one. Two exact rewrites keep the work small:
        the first BatchNorm's statistics over the ``base[g] + f[u]`` grid are those of ``base`` plus
        those of ``fused`` (mean and variance add over a product grid), and the shared MLP's last
        linear layer and the gene-specific first decoder are one contraction
        (``w1[g] . (W z + b) = (w1[g] W) . z + w1[g] . b``).
        """
        G, U = base.shape[0], fused.shape[0]
        w = fused.new_ones(U) if counts is None else counts.to(fused.dtype)
        N = w.sum()
        bn0 = self.bn_pert_base
        mb = base.mean(0)
        mf = w @ fused / N
        mean, var = _bn_stats(bn0, mb + mf, base.var(0, unbiased=False) + w @ (fused - mf) ** 2 / N, N * G)
        scale = torch.rsqrt(var + bn0.eps) * bn0.weight
        a = (base - mb) * scale  # a[g] + c[u] = BN(base[g] + fused[u])
        c = (fused - (mean - mb)) * scale + bn0.bias
        Y = torch.relu(a[:, None, :] + c[None, :, :])  # (G, U, h)
        lin1, bn1, lin2 = self.recovery_w[0], self.recovery_w[1], self.recovery_w[3]
        V = self.indv_w1 @ lin2.weight  # (G, 2h): gene decoder folded into the last layer
        if bn1.training:
            out, m1, v1 = _DecoderLayer.apply(Y, lin1.weight, lin1.bias, w, bn1.weight, bn1.bias, V, bn1.eps, self._ws)
            _bn_stats(bn1, m1, v1, N * G)
        else:
            Z = torch.relu(torch.addcmul(bn1.bias, lin1(Y) - bn1.running_mean, torch.rsqrt(bn1.running_var + bn1.eps) * bn1.weight))
            out = torch.linalg.vecdot(Z, V[:, None, :])
        out = out.T + (self.indv_w1 @ lin2.bias + self.indv_b1)  # (U, G)
        if inverse is not None:
            out = out[inverse]
        cross = self.cross_gene_state(out)  # (B, h), per cell
        out = out * self.indv_w2[:, 0] + cross @ self.indv_w2[:, 1:].T + self.indv_b2
        return out + x

    def forward(self, x: torch.Tensor, pert_nodes: torch.Tensor) -> torch.Tensor:
        base = self.gene_base()
        fused = self.perturbation_embedding(pert_nodes)
        # cells with the same perturbation have the same states before the residual: decode each once
        uniq, inverse, counts = torch.unique(pert_nodes, dim=0, return_inverse=True, return_counts=True)
        first = torch.full((len(uniq),), len(inverse), dtype=inverse.dtype, device=inverse.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")
        return self.decode(base, fused[first], x, counts, inverse)


def gears_loss(
    pred: torch.Tensor,
    y: torch.Tensor,
    ctrl: torch.Tensor,
    cond_ids: torch.Tensor,
    gene_mask: torch.Tensor,
    direction: torch.Tensor,
    is_ctrl: torch.Tensor,
    cfg: GEARSConfig,
) -> torch.Tensor:
    """GEARS loss of a batch: autofocus + direction term, averaged per condition then over conditions.

    ``pred``, ``y``: (B, n_genes); ``ctrl``: (n_genes,) control mean; ``cond_ids``: (B,) condition
    index of each cell; ``gene_mask``: (B, n_genes) non-dropout genes of the cell's condition (all
    genes for control); ``direction``: (B, n_genes) sign of the condition's mean change;
    ``is_ctrl``: (B,) bool (no direction term for control cells).
    """
    m = gene_mask.to(pred.dtype)
    n = m.sum(1).clamp_min(1.0)
    focal = ((pred - y).abs() ** (2.0 + cfg.gamma) * m).sum(1) / n
    soft_dir = torch.tanh((pred - ctrl) / cfg.direction_tau)
    dir_term = cfg.direction_lambda * (((direction - soft_dir) ** 2) * m).sum(1) / n
    per_cell = focal + torch.where(is_ctrl, torch.zeros_like(dir_term), dir_term)
    uniq, inv = torch.unique(cond_ids, return_inverse=True)
    sums = per_cell.new_zeros(len(uniq)).index_add_(0, inv, per_cell)
    counts = per_cell.new_zeros(len(uniq)).index_add_(0, inv, torch.ones_like(per_cell))
    return (sums / counts).mean()


@dataclass
class _TrainSet:
    X: np.ndarray  # (n_cells, n_genes) float32 expression
    cond: np.ndarray  # (n_cells,) index into conditions
    conditions: list[str]
    ctrl_rows: np.ndarray  # rows of control cells
    gene_mask: np.ndarray  # (n_conditions, n_genes) bool, non-dropout genes
    direction: np.ndarray  # (n_conditions, n_genes) sign of the mean change from control
    cond_nodes: np.ndarray  # (n_conditions, m) long GO node indices, padded with n_nodes
    extras: dict = field(default_factory=dict)


class EpochTrainer:
    """One GEARS training epoch at a time: shuffled mini-batches, random control partners, Adam
    (gradients clipped to ``grad_clip``), the learning rate times ``lr_decay`` after each epoch.

    ``forward(net, x, pert_nodes)`` defaults to the batched network; the benchmark passes
    :func:`reference_forward` to time the per-cell implementation on identical batches.
    ``epoch()`` returns the mean batch loss.
    """

    def __init__(self, net: GEARSNetwork, ts: _TrainSet, control: np.ndarray, cfg: GEARSConfig, device, forward=None):
        self.net, self.ts, self.cfg, self.dev = net, ts, cfg, device
        self.forward = forward or (lambda n, x, p: n(x, p))
        try:  # one fused kernel per parameter (CPU and CUDA); the per-tensor loop elsewhere
            self.opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.X = torch.from_numpy(ts.X).to(device)
        self.cond = torch.from_numpy(ts.cond).to(device)
        self.mask = torch.from_numpy(ts.gene_mask).to(device)
        self.direction = torch.from_numpy(ts.direction).to(device)
        self.cnodes = torch.from_numpy(ts.cond_nodes).to(device)
        self.ctrl = torch.from_numpy(np.asarray(control, dtype=np.float32)).to(device)

    def epoch(self, max_batches: int | None = None) -> float:
        ts, cfg, net = self.ts, self.cfg, self.net
        net.train()
        n = len(ts.X)
        order = self.rng.permutation(n)
        partner = ts.ctrl_rows[self.rng.integers(0, len(ts.ctrl_rows), size=n)]
        partner = np.where(ts.cond == 0, np.arange(n), partner)  # control cells: input = itself
        order_t = torch.from_numpy(order).to(self.dev)
        partner_t = torch.from_numpy(partner).to(self.dev)
        total, batches = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order_t[start : start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one cell
                continue
            c = self.cond[idx]
            pred = self.forward(net, self.X[partner_t[idx]], self.cnodes[c])
            loss = gears_loss(pred, self.X[idx], self.ctrl, c, self.mask[c], self.direction[c], c == 0, cfg)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_value_(net.parameters(), cfg.grad_clip)
            self.opt.step()
            total += float(loss.detach())
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
        for group in self.opt.param_groups:  # GEARS's per-epoch StepLR
            group["lr"] *= cfg.lr_decay
        return total / max(batches, 1)


def reference_forward(net: GEARSNetwork, x: torch.Tensor, pert_nodes: torch.Tensor) -> torch.Tensor:
    """The same network computed the straightforward way, one cell at a time (for benchmarks/tests).

    Mirrors upstream GEARS's data flow: every cell gets its own copy of the gene embeddings and its
    own pass of the co-expression graph layer (dense adjacency), the perturbation embedding of each
    cell is summed in a Python loop over its genes, and the gene-specific decoders run cell by cell.
    Layers with BatchNorm see the concatenated batch, as upstream's PyG batch does, so the output
    equals ``net(x, pert_nodes)`` (train and eval mode) up to float rounding.
    """
    B, G = x.shape
    h = net.cfg.hidden
    A_co = net.A_co.to_dense()
    A_go = net.A_go.to_dense()
    embs, poss = [], []
    for _ in range(B):  # per-cell copies of the gene branch
        pos = net.emb_pos.weight
        for i, layer in enumerate(net.gene_layers):
            pos = layer(A_co @ pos)
            if i < len(net.gene_layers) - 1:
                pos = torch.relu(pos)
        embs.append(net.gene_emb.weight)
        poss.append(pos)
    base = torch.relu(net.bn_emb(torch.cat(embs)))
    base = net.emb_trans_v2(base + net.cfg.pos_weight * torch.cat(poss))
    pg = net.pert_emb.weight
    for i, layer in enumerate(net.go_layers):
        pg = layer(A_go @ pg)
        if i < len(net.go_layers) - 1:
            pg = torch.relu(pg)
    sums, owners = [], []
    for b in range(B):  # Python loop over each cell's perturbed genes
        s = None
        for node in pert_nodes[b].tolist():
            if node < net.n_nodes:
                s = pg[node] if s is None else s + pg[node]
        if s is not None:
            sums.append(s)
            owners.append(b)
    rows = list(base.split(G))
    if sums:
        stacked = torch.stack(sums)
        fused = net.pert_fuse(stacked.repeat(2, 1))[:1] if len(sums) == 1 and net.training else net.pert_fuse(stacked)
        for k, b in enumerate(owners):
            rows[b] = rows[b] + fused[k]
    H = torch.relu(net.bn_pert_base(torch.cat(rows)))
    H = net.recovery_w(H).reshape(B, G, h)
    outs = [(H[b] * net.indv_w1).sum(1) + net.indv_b1 for b in range(B)]  # per-cell decoders
    cross = net.cross_gene_state(torch.stack(outs))
    final = [outs[b] * net.indv_w2[:, 0] + net.indv_w2[:, 1:] @ cross[b] + net.indv_b2 + x[b] for b in range(B)]
    return torch.stack(final)


class GEARSModel(PerturbationModel):
    """GEARS-style GNN with the :class:`PerturbationModel` interface.

    Parameters
    ----------
    config
        :class:`GEARSConfig` (defaults GEARS's); keyword overrides are applied on top, e.g.
        ``GEARSModel(epochs=5, seed=1)``.
    go_graph
        GO graph: edge DataFrame, edge-list / annotation file, or ``None`` for the precomputed
        ``go_top20_jaccard_orgHsEgDb_3.16`` graph of the shared data folder (see
        :func:`netformer.graphs.go_graph`).
    candidate_genes
        Genes whose perturbations may later be predicted besides those in the data; they are
        added as GO nodes at fit time. Genes unknown at predict time get a zero perturbation
        embedding (warned), i.e. the prediction of an unperturbed cell.

    After ``fit``: ``history_`` (mean training loss per epoch), ``epoch_seconds_`` (training pass of
    each epoch), ``network_``, ``best_epoch_`` (1-based epoch whose parameters were kept; the last
    without selection) and, with validation conditions, ``val_history_`` (the ``select_metric``
    after each epoch) and ``val_seconds_`` (time of each validation scoring).
    ``embed`` returns the fused perturbation embedding (n, hidden) that GEARS adds to every gene.

    Raises
    ------
    ConfigError
        Out-of-range configuration values.
    InputDataError
        No training perturbation, or no control cells; validation conditions not in the data or
        among the training perturbations.
    """

    name = "gears"

    def __init__(self, config: GEARSConfig | None = None, *, go_graph: object = None, candidate_genes: Sequence[str] = (), **overrides):
        cfg = config or GEARSConfig()
        if overrides:
            unknown = sorted(set(overrides) - set(asdict(cfg)))
            if unknown:
                raise ConfigError(f"unknown GEARSConfig fields {unknown}.")
            cfg = GEARSConfig(**{**asdict(cfg), **overrides})
        self.config = cfg
        self.go_graph = go_graph
        self.candidate_genes = list(candidate_genes)

    def __repr__(self) -> str:
        return f"GEARSModel(hidden={self.config.hidden}, epochs={self.config.epochs}, seed={self.config.seed})"

    # ---- setup -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        dev = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(dev)

    def _go_nodes(self, edges: pd.DataFrame, wanted: list[str]) -> tuple[list[str], object]:
        """L-hop in-neighbourhood closure of ``wanted`` in the GO graph and its GCN operator.

        The operator is normalised on the whole graph and then restricted, which is exact for the
        ``wanted`` rows after ``num_go_layers`` layers (their inputs lie inside the closure).
        """
        all_nodes = pd.unique(np.concatenate([edges["source"].to_numpy(str), edges["target"].to_numpy(str), np.asarray(wanted, dtype=str)]))
        A = gcn_normalize(GeneGraph.from_edges(edges, all_nodes).adjacency)
        index = pd.Index(all_nodes)
        keep = set(index.get_indexer(wanted))
        frontier = np.array(sorted(keep))
        for _ in range(self.config.num_go_layers):
            nbrs = np.unique(A[frontier].indices) if len(frontier) else np.array([], int)
            new = np.setdiff1d(nbrs, np.fromiter(keep, int))
            keep.update(new.tolist())
            frontier = new
        keep_idx = np.array(sorted(keep))
        return [all_nodes[i] for i in keep_idx], A[keep_idx][:, keep_idx].tocsr()

    def _build(self, data: PerturbData, train: list[str]) -> _TrainSet:
        cfg = self.config
        if not train:
            raise InputDataError("GEARSModel needs at least one training perturbation.")
        rng = np.random.default_rng(cfg.seed)
        X, labels = data.cells([CONTROL] + train)
        if cfg.max_cells_per_condition:
            keep = []
            for c in [CONTROL] + train:
                rows = np.flatnonzero(labels == c)
                if len(rows) > cfg.max_cells_per_condition:
                    rows = np.sort(rng.choice(rows, cfg.max_cells_per_condition, replace=False))
                keep.append(rows)
            keep = np.concatenate(keep)
            X, labels = X[keep], labels[keep]
        # co-expression graph on training cells
        sub = X if len(X) <= cfg.coexpress_max_cells else X[np.sort(rng.choice(len(X), cfg.coexpress_max_cells, replace=False))]
        co_edges = coexpression_graph(sub, data.genes, threshold=cfg.coexpress_threshold, k=cfg.coexpress_k)
        A_co = gcn_normalize(GeneGraph.from_edges(co_edges, data.genes).adjacency)
        # GO graph over the genes that can be perturbed
        edges = go_graph(self.go_graph)
        wanted = list(dict.fromkeys(data.perturbed_genes + [g for c in train for g in condition_genes(c)] + self.candidate_genes))
        absent = sorted(set(wanted) - set(edges["source"]) - set(edges["target"]))
        if absent:
            log.warning("%d perturbed genes are not in the gene graph (self loop only): %s", len(absent), absent[:10])
        nodes, A_go = self._go_nodes(edges, wanted)
        self.nodes_ = pd.Index(nodes)
        self.A_co_, self.A_go_, self.coexpress_edges_ = A_co, A_go, co_edges
        conditions = [CONTROL] + train
        cond_index = {c: i for i, c in enumerate(conditions)}
        cond = np.array([cond_index[c] for c in labels])
        means = np.zeros((len(conditions), data.n_genes), dtype=np.float32)
        np.add.at(means, cond, X)
        means /= np.bincount(cond, minlength=len(conditions))[:, None]
        gene_mask = means != 0
        gene_mask[0] = True
        return _TrainSet(
            X=X.astype(np.float32, copy=False), cond=cond, conditions=conditions,
            ctrl_rows=np.flatnonzero(cond == 0), gene_mask=gene_mask,
            direction=np.sign(means - self.control_[None, :]).astype(np.float32),
            cond_nodes=self._cond_nodes(conditions),
        )

    def _cond_nodes(self, conditions: Sequence[str]) -> np.ndarray:
        width = max([1] + [len(condition_genes(c)) for c in conditions])
        pad = len(self.nodes_)
        out = np.full((len(conditions), width), pad, dtype=np.int64)
        unknown = set()
        for i, c in enumerate(conditions):
            for j, g in enumerate(condition_genes(c)):
                k = self.nodes_.get_indexer([g])[0]
                if k < 0:
                    unknown.add(g)
                else:
                    out[i, j] = k
        if unknown:
            log.warning("genes unknown to the fitted GO node set get no perturbation embedding: %s", sorted(unknown)[:10])
        return out

    # ---- training ----------------------------------------------------------------------------
    def fit(self, data: PerturbData, train_conditions: Sequence[str], *, val_conditions: Sequence[str] | None = None) -> "GEARSModel":
        """Train on ``train_conditions`` (plus control); returns self.

        ``val_conditions``: held-out perturbations (e.g. ``split.val``) scored after every epoch;
        the parameters of the best epoch by ``config.select_metric`` are kept (see
        :class:`GEARSConfig`). Without them the last epoch's parameters are kept.
        """
        if isinstance(val_conditions, str):
            raise InputDataError("val_conditions must be a list of names, not a single string.")
        self._val_request = list(val_conditions or [])
        try:
            return super().fit(data, train_conditions)
        finally:
            del self._val_request

    def _fit(self, data, train):
        from .._state import preserved_rng

        val = [c for c in dict.fromkeys(data.check_conditions(self._val_request)) if c != CONTROL]
        both = sorted(set(val) & set(train))
        if both:
            raise InputDataError(f"validation conditions {both[:8]} are also training perturbations.")
        self.val_conditions_ = val

        with preserved_rng(self.config.seed):  # the caller's random streams are left alone
            return self._fit_seeded(data, train)

    def _fit_seeded(self, data, train):
        cfg = self.config
        ts = self._build(data, train)
        net = GEARSNetwork(data.n_genes, self.A_co_, self.A_go_, cfg).to(self.device)
        trainer = EpochTrainer(net, ts, self.control_, cfg, self.device)
        self.history_, self.epoch_seconds_ = [], []
        self.network_, self.trainset_ = net, ts
        metric = cfg.select_metric if self.val_conditions_ else None
        self.val_history_, self.val_seconds_ = [], []
        if metric:
            data.de_indices(self.val_conditions_)  # DE genes (scanpy) once, before training
        sign = _SELECT_DIRECTION.get(metric, 0)
        best_score, best_epoch, best_state = None, cfg.epochs, None
        bar = None
        if cfg.progress:
            from ..progress import Progress

            bar = Progress(cfg.epochs, "GEARS training", unit="epoch", logger=log)
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            self.history_.append(trainer.epoch())
            self.epoch_seconds_.append(time.perf_counter() - t0)
            note = ""
            if metric:
                t1 = time.perf_counter()
                score = self._score(data, metric)  # eval mode, no grad, no random draws
                self.val_seconds_.append(time.perf_counter() - t1)
                self.val_history_.append(score)
                if np.isfinite(score) and (best_score is None or sign * score > sign * best_score):
                    best_score, best_epoch = score, epoch + 1
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                note = f" val {metric} {score:.5f}"
            log.info("GEARS epoch %d/%d loss %.5f%s (%.1fs)", epoch + 1, cfg.epochs, self.history_[-1], note, self.epoch_seconds_[-1])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if best_state is not None:
            net.load_state_dict(best_state)
            log.info("GEARS keeps epoch %d of %d (val %s %.5f)", best_epoch, cfg.epochs, metric, best_score)
        elif metric and cfg.epochs:
            log.warning("no finite validation %s in %d epochs: the last epoch is kept.", metric, cfg.epochs)
        self.best_epoch_ = best_epoch
        net.eval()

    def _score(self, data: PerturbData, metric: str) -> float:
        """Mean ``metric`` of the current network on the validation conditions."""
        from .metrics import evaluate

        return float(evaluate(self, data, self.val_conditions_).loc["mean", metric])

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_delta(self, conditions):
        net = self.network_
        net.eval()
        dev = self.device
        nodes = torch.from_numpy(self._cond_nodes(conditions)).to(dev)
        base = net.gene_base()
        go = net.go_embeddings()
        out = []
        zero = torch.zeros(1, self.data_.n_genes, device=dev)
        for start in range(0, len(conditions), 256):
            pn = nodes[start : start + 256]
            fused = net.perturbation_embedding(pn, go)
            pred = net.decode(base, fused, zero.expand(len(pn), -1))
            out.append(pred.double().cpu().numpy())
        # the input enters only through the residual: mean over control cells = control mean + out
        return np.concatenate(out) if out else np.zeros((0, self.data_.n_genes))

    @torch.no_grad()
    def embed(self, conditions):
        """Fused perturbation embedding (n_conditions, hidden), float64; zeros for ``'ctrl'``."""
        self._check_fitted()
        net = self.network_
        net.eval()
        nodes = torch.from_numpy(self._cond_nodes(self._canon(conditions))).to(self.device)
        return net.perturbation_embedding(nodes).double().cpu().numpy()
