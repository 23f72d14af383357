"""First-order screening: estimate the effect of perturbing every gene of a cell in two passes.

One forward and one backward pass through the encoder give, for all ``n`` genes of a cell at
once, a first-order (Taylor) estimate of the shift of the cell embedding toward a goal state,
``f(perturbed) - f(original)`` with ``f(e) = cos(e, goal)``. The estimate has three terms:

1. **Pooling (exact).** A deleted gene leaves the mean pool: ``e_-p = (n e - h_p) / (n - 1)``
   from the original hidden states ``h``; its contribution ``f(e_-p) - f(e)`` is computed exactly.
2. **Attention context (first order).** Each key position ``j`` carries a gate ``g_j`` (1 = present)
   that multiplies its attention weight in every layer and head (a bias ``log g_j`` on the
   attention logits; ``g_j = 0`` removes the token from every other token's context exactly). The
   context effect of deleting ``p`` is estimated as ``-df/dg_p`` at ``g = 1``.
3. **Rank shifts.** Moving a token changes position embeddings: deleting ``p`` moves every later
   token one position forward; moving ``p`` to rank ``q`` moves ``p`` and shifts the tokens in
   between by one. For deletion the effect of "every token after ``q`` one position forward" is
   computed exactly (a forward pass with those position ids) at ``anchors`` positions ``q`` spread
   over the cell and linearly interpolated to every gene's position (default 8 anchors, 8 extra
   forward passes without gradients). ``anchors=0`` uses the first-order estimate instead: with
   ``G_j = df/dx_j`` (``x`` the summed input embedding before the embedding LayerNorm),
   ``sum_j G_j . (P[new_j] - P[j])`` for all ``p`` by prefix sums. Moves (overexpress / inhibit /
   activate) always use the first-order estimate.

   Why anchors: the first-order shift term sums one-position linearisations over hundreds of
   tokens; measured on the tests' tiny pretrained model (Kang 2018 stim -> ctrl, 6 cells, layer -2)
   it was 5-6x too large and often anti-correlated with the exact shifts, giving Spearman -0.31 to
   0.92 (mean 0.2) between screen and exact; with 8 exact anchors 0.92-0.98 (see
   ``rank_agreement``; the pooling and context terms alone gave 0.63-0.83 on 5 of the 6 cells).

Delete uses terms 1-3; overexpress / inhibit / activate use term 3 (the gene stays expressed).
Without cell states the objective ``1 - cos(e, e_original)`` has zero gradient at the original
cell: the screen then sketches the size of the embedding change (the three terms as vectors,
projected on 16 random directions; :func:`_change_sketch`, delete only). Measured on the demo's
pretrained encoder this raised the screen's agreement with exact mode without cell states from the
pooling term alone to the figures in docs/precision.md. Exact evaluation of the top-K genes by
estimate follows in :func:`netformer.perturb.perturb` (``mode="screen"``).

The forward pass runs :func:`netformer.encoder.layer_forward` (the Hugging Face BERT layer, post-LayerNorm as
in Geneformer, on the model's own weights); at ``g = 1`` it equals the model's output to float tolerance (tested).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..encoder import base_model, layer_forward, masked_mean
from ..errors import ConfigError
from .ops import CellLayout, shift_size


def gated_forward(model, ids: Sequence[int], gate: torch.Tensor | None = None,
                  x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder forward of one cell with key gates, over the model's current encoder layers.

    Parameters
    ----------
    ids
        The cell's token ids, length ``L``.
    gate
        (L,) key gates (default ones); ``gate_j = 0`` removes token ``j`` from every context.
    x
        (L, H) summed input embeddings (word + position + token type) before the embedding
        LayerNorm; computed from ``ids`` when None.

    Returns ``(x, hidden)``: the input embeddings used (in the model's dtype) and the (L, H) last
    hidden state as float32.
    """
    base = base_model(model)
    emb = base.embeddings
    dev = emb.word_embeddings.weight.device
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev)
    if x is None:
        pos = torch.arange(len(t), device=dev)
        x = emb.word_embeddings(t) + emb.position_embeddings(pos) + emb.token_type_embeddings(torch.zeros_like(t))
    h = emb.LayerNorm(x)
    dt = h.dtype  # the model's (bf16 for a bf16 inference copy): gates enter in it, the state leaves as float32
    bias = torch.zeros(len(t), device=dev, dtype=dt) if gate is None else torch.log(gate).to(dt)
    for layer in base.encoder.layer:
        h = layer_forward(layer, h, bias)
    return x, h.float()


def screen_cell(
    model,
    ids: Sequence[int],
    special_ids: Sequence[int],
    kind: str = "delete",
    goal: np.ndarray | None = None,
    fraction: float = 0.25,
    cls_id: int | None = None,
    eos_id: int | None = None,
    anchors: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimates of the effect of perturbing each gene of one cell alone (see the module docstring).

    Parameters
    ----------
    ids
        The cell's token ids (special tokens in place), length ``L``.
    kind
        ``delete``, ``overexpress``, ``inhibit`` or ``activate``.
    goal
        (H,) goal-state embedding; the estimate is of ``cos(perturbed, goal) - cos(original, goal)``.
        None: estimate of ``1 - cos(original, perturbed)`` from the pooling term (delete only).
    anchors
        Deletion with a goal: exact position-shift effects at this many anchor positions,
        interpolated (0: the first-order estimate).

    Returns
    -------
    positions, estimates
        Positions (in ``ids``) of the gene tokens and the (n_genes,) estimates, float64.

    Raises
    ------
    ConfigError
        ``kind`` other than delete without a goal.
    """
    lay = CellLayout.of(ids, cls_id, eos_id)
    special = set(int(s) for s in special_ids)
    positions = np.array([i for i in range(lay.start, lay.stop) if int(ids[i]) not in special])
    if goal is None and kind != "delete":
        raise ConfigError("screening without cell states supports perturbation='delete' only; "
                          "give cell states or use mode='exact'")
    base = base_model(model)
    gene_mask = torch.tensor([int(t) not in special for t in ids], dtype=torch.float32,
                             device=base.embeddings.word_embeddings.weight.device)
    if goal is None:
        return positions, _change_sketch(base, ids, gene_mask, positions, anchors)
    g = torch.as_tensor(goal, device=gene_mask.device, dtype=torch.float32)
    h, f, d_gate, d_x = _shift_gradients(base, ids, gene_mask, g)
    with torch.no_grad():
        cd, cu, P = _position_shift_sums(base, d_x)
        if kind == "delete":
            pool = _pooled_deletion(h, gene_mask, positions, g).double().cpu().numpy() - float(f)
            ctx = -d_gate[positions].double().cpu().numpy()
            if anchors > 0:
                shift = _anchored_shift(base, ids, gene_mask, g, positions, float(f), anchors)
            else:
                shift = cd[len(ids)] - cd[positions + 1]  # tokens p+1..L-1 move forward
            return positions, pool + ctx + shift
        return positions, _move_estimates(kind, positions, lay, fraction, d_x, P, cd, cu)


def _shift_gradients(base, ids, gene_mask: torch.Tensor, goal: torch.Tensor):
    """One forward and one backward pass: hidden states ``h`` (L, H), ``f = cos(cell embedding, goal)``
    and its gradients with respect to each token's gate (L,) and input embedding (L, H)."""
    with torch.inference_mode(False), torch.enable_grad():
        # called inside exact mode's inference_mode: tensors made there cannot enter autograd, copies can
        gene_mask, goal = gene_mask.clone(), goal.clone()
        gate = torch.ones(len(ids), device=gene_mask.device, requires_grad=True)
        x0, _ = gated_forward(base, ids)
        x = x0.detach().requires_grad_(True)
        _, h = gated_forward(base, ids, gate=gate, x=x)
        e = masked_mean(h, gene_mask)
        f = torch.nn.functional.cosine_similarity(e, goal, dim=0)
        d_gate, d_x = torch.autograd.grad(f, (gate, x), allow_unused=True)
        if d_gate is None:  # no encoder layer kept (layer=0): no token sees another, the context term is zero
            d_gate = torch.zeros_like(gate)
    return h.detach(), f.detach(), d_gate.float(), d_x.float()


PROBES = 16  # random projections of the embedding change in the no-goal screen


def _change_sketch(base, ids, gene_mask: torch.Tensor, positions: np.ndarray, anchors: int,
                   probes: int = PROBES, seed: int = 0) -> np.ndarray:
    """Without a goal: estimates of ``1 - cos(e, e_-p)`` for deleting each gene ``p``, (n_genes,) float64.

    The change of the cell embedding, ``d_p = e_-p - e``, is the sum of the three terms of the module
    docstring as vectors (pooling exact; context ``-de/dg_p``; rank shifts exact at ``anchors``
    positions and interpolated, or first order with ``anchors=0``). Its size is sketched with
    ``probes`` Gaussian directions ``r`` orthogonal to ``e`` (Johnson-Lindenstrauss / Hutchinson):
    ``|d_p,perp|^2 ~ mean_r (r . d_p)^2``, each ``r . d_p`` for all ``p`` from one backward pass of
    ``r . e``. Then ``1 - cos(e, e + d) ~ |d_perp|^2 / (2 |e|^2)`` (second order in ``d``). Cost:
    one forward and ``probes`` backward passes plus ``anchors`` forward passes, for all genes.
    """
    dev = gene_mask.device
    L = len(ids)
    with torch.inference_mode(False), torch.enable_grad():
        gene_mask = gene_mask.clone()
        gate = torch.ones(L, device=dev, requires_grad=True)
        x0, _ = gated_forward(base, ids)
        x = x0.detach().requires_grad_(True)
        _, h = gated_forward(base, ids, gate=gate, x=x)
        e = masked_mean(h, gene_mask)
        gen = torch.Generator().manual_seed(seed)
        R = torch.randn(probes, e.shape[0], generator=gen, dtype=torch.float32).to(dev)
        u = (e / e.norm()).detach()
        R = R - (R @ u)[:, None] * u[None, :]
        proj = R @ e
        d_gate, d_x = [], []
        for i in range(probes):
            g, dx = torch.autograd.grad(proj[i], (gate, x), retain_graph=i < probes - 1, allow_unused=True)
            d_gate.append(torch.zeros_like(gate) if g is None else g.float())
            d_x.append(dx.float())
    h, e = h.detach(), e.detach()
    with torch.no_grad():
        n = gene_mask.sum()
        pos_t = torch.as_tensor(positions, device=dev)
        pool = (R @ e)[None, :] - h[pos_t] @ R.T  # (n_genes, probes): r . (e - h_p), / (n - 1) below
        d = pool / (n - 1) - torch.stack([g[pos_t] for g in d_gate], 1)
        if anchors > 0:
            shift = _anchored_change(base, ids, gene_mask, e, R, positions, anchors)
        else:
            shift = np.stack([(lambda cd: cd[L] - cd[positions + 1])(_position_shift_sums(base, dx)[0])
                              for dx in d_x], 1)
        d = d.double().cpu().numpy() + shift
    return (d ** 2).mean(1) / (2 * float(e.double().norm()) ** 2)


def _shifted_embeddings(base, ids, gene_mask: torch.Tensor, positions: np.ndarray, anchors: int):
    """Anchor positions ``qs`` (``anchors`` of them, spread evenly over the genes) and, for each, the exact
    cell embedding (H,) when every token after ``q`` moves one position forward (what deleting the
    gene at ``q`` does to the others' positions)."""
    emb = base.embeddings
    dev = gene_mask.device
    t = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=dev)
    words = emb.word_embeddings(t) + emb.token_type_embeddings(torch.zeros_like(t))
    qs = np.unique(np.linspace(positions[0], positions[-1], min(anchors, len(positions))).round().astype(int))
    out = []
    for q in qs:
        pos = torch.arange(len(t), device=dev)
        pos[q + 1:] -= 1
        _, h = gated_forward(base, ids, x=words + emb.position_embeddings(pos))
        out.append(masked_mean(h, gene_mask))
    return qs, out


def _anchored_change(base, ids, gene_mask: torch.Tensor, e: torch.Tensor, R: torch.Tensor, positions: np.ndarray,
                     anchors: int) -> np.ndarray:
    """Projections ``R . (e_q - e)`` of the exact position-shift change of the cell embedding at the
    anchors (:func:`_shifted_embeddings`), interpolated to every gene position; (n_genes, probes) float64."""
    qs, shifted = _shifted_embeddings(base, ids, gene_mask, positions, anchors)
    vals = np.asarray([(R @ (eq - e)).double().cpu().numpy() for eq in shifted])  # (anchors, probes)
    return np.stack([np.interp(positions, qs, vals[:, i]) for i in range(vals.shape[1])], 1)


def _anchored_shift(base, ids, gene_mask: torch.Tensor, goal: torch.Tensor, positions: np.ndarray, f0: float,
                    anchors: int) -> np.ndarray:
    """Exact effect on ``cos(cell, goal)`` of the position shift at the anchors (:func:`_shifted_embeddings`),
    linearly interpolated to every gene position; (n_genes,) float64."""
    qs, shifted = _shifted_embeddings(base, ids, gene_mask, positions, anchors)
    vals = [float(torch.nn.functional.cosine_similarity(eq, goal, dim=0)) - f0 for eq in shifted]
    return np.interp(positions, qs, np.asarray(vals))


def _pooled_deletion(h: torch.Tensor, gene_mask: torch.Tensor, positions: np.ndarray, goal: torch.Tensor):
    """Pooling term of deleting each gene: the mean without its own hidden state, the others unchanged;
    (n_genes,) cosine of that mean with the goal (the no-goal screen sketches it as a vector,
    :func:`_change_sketch`)."""
    n = gene_mask.sum()
    e = masked_mean(h, gene_mask)
    ep = (e[None, :] * n - h[positions]) / (n - 1)
    return torch.nn.functional.cosine_similarity(ep, goal[None, :], dim=-1)


def _position_shift_sums(base, d_x: torch.Tensor):
    """Prefix sums of the first-order effect of moving each token one position forward (``cd``) or
    back (``cu``), float64 arrays of length L + 1, and the (L, H) position embeddings used."""
    L = d_x.shape[0]
    dev = d_x.device
    P = base.embeddings.position_embeddings.weight[:L].float()
    # D_down[j]: effect of token j moving one position forward (j -> j-1); D_up: j -> j+1
    D_down = torch.zeros(L, device=dev)
    D_down[1:] = (d_x[1:] * (P[: L - 1] - P[1:L])).sum(1)
    D_up = torch.zeros(L, device=dev)
    D_up[: L - 1] = (d_x[: L - 1] * (P[1:L] - P[: L - 1])).sum(1)
    cd = torch.cat([torch.zeros(1, device=dev), D_down.cumsum(0)]).double().cpu().numpy()
    cu = torch.cat([torch.zeros(1, device=dev), D_up.cumsum(0)]).double().cpu().numpy()
    return cd, cu, P


def _move_estimates(kind: str, positions: np.ndarray, lay: CellLayout, fraction: float, d_x, P, cd, cu) -> np.ndarray:
    """Estimates of moving each gene (overexpress / inhibit / activate): its own new position plus
    the one-position shift of every token it passes."""
    k = shift_size(lay.stop - lay.start, fraction)
    est = np.zeros(len(positions))
    for i, p in enumerate(positions):
        if kind == "overexpress":
            q = lay.start
        elif kind == "inhibit":
            q = min(lay.stop - 1, p + k)
        else:
            q = max(lay.start, p - k)
        own = float((d_x[p] * (P[q] - P[p])).sum())
        if q < p:  # tokens q..p-1 move back by one
            others = cu[p] - cu[q]
        elif q > p:  # tokens p+1..q move forward by one
            others = cd[q + 1] - cd[p + 1]
        else:
            others = 0.0
        est[i] = own + others
    return est


def rank_agreement(estimate: Sequence[float], exact: Sequence[float], top: int = 20,
                   shortlists: Sequence[int] = ()) -> dict[str, float]:
    """Agreement of a screen with exact mode over the same genes of a cell.

    Parameters
    ----------
    estimate, exact
        (n_genes,) screen estimates and exact shifts of the same genes, larger = stronger.
    top
        Size of the exact top list (default 20, as the issue's figure).
    shortlists
        Shortlist sizes ``K``: screen mode re-evaluates the screen's top ``K`` genes exactly, so what
        it returns contains ``recall_k{K}`` = the fraction of the exact top-``top`` genes among the
        estimate's top ``K``. ``K = top`` gives ``top_overlap``.

    Returns
    -------
    dict with ``spearman`` (Spearman rank correlation over all genes; NaN below 3 genes),
    ``top_overlap`` (fraction of the exact top-``top`` genes also in the estimate's top-``top``),
    ``n_genes``, and ``recall_k{K}`` for each shortlist size.

    Raises
    ------
    ValueError
        If the two arrays differ in length.
    """
    from scipy.stats import spearmanr

    a = np.asarray(estimate, dtype=np.float64)
    b = np.asarray(exact, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"estimate has {a.shape} values but exact has {b.shape}: pass the same genes, in the same order")
    rho = float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")
    by_estimate = np.argsort(-a, kind="stable")
    best = np.argsort(-b, kind="stable")[:min(top, len(b))]

    def recall(k: int) -> float:
        return float(np.isin(best, by_estimate[:k]).mean()) if len(best) else float("nan")

    out = {"spearman": rho, "top_overlap": recall(min(top, len(a))), "n_genes": len(a)}
    out.update({f"recall_k{k}": recall(k) for k in shortlists})
    return out
