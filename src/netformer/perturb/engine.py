"""Exact evaluation of perturbed cells: every perturbed sequence goes through the encoder.

Speed comes from changing how the passes are organised, not what they compute:

- **Batched without padding.** The perturbations of one cell mostly share a length (all deletions
  of a cell of length ``L`` have length ``L - 1``; moves keep ``L``), so they are stacked into
  full batches with no padding and no attention mask.
- **Truncated encoder.** Layers after the embedding layer are skipped
  (:func:`netformer.encoder.truncated_encoder`); upstream runs the whole model, MLM head included,
  and keeps every layer's hidden states.
- **The original cell once.** Its hidden states are computed once per cell and reused by all of
  that cell's perturbations.
- ``torch.inference_mode``; any device (``device=None``: where the model is, the one device rule of
  :func:`netformer.encoder.model_device`). Pooling is :func:`netformer.encoder.pool`.

Results equal a one-forward-pass-per-perturbation reference
(:func:`netformer.perturb.reference.reference_shifts`) to floating-point tolerance.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..encoder import base_model, model_device, pool, truncated_encoder


@dataclass
class CellEffects:
    """Exact effects of a cell's perturbations.

    Attributes
    ----------
    original
        (hidden,) original cell embedding.
    perturbed
        (n_perturbations, hidden) perturbed cell embeddings.
    gene_cos
        Per perturbation, ``(token ids, cosine)`` of every other gene of the cell: cosine between
        its original and perturbed contextual embeddings; None unless requested.
    """

    original: np.ndarray
    perturbed: np.ndarray
    gene_cos: list[tuple[np.ndarray, np.ndarray]] | None = None


class ExactEvaluator:
    """Runs original and perturbed cells through an encoder truncated at ``layer``.

    Parameters
    ----------
    model
        ``BertModel`` or any Bert head model (its encoder is used).
    special_ids
        Token ids excluded from mean pooling (``vocab.special_ids``).
    layer
        Hidden-state index of the embedding (-1 last layer, -2 second to last (default, as
        upstream), 0 input embeddings).
    pooling
        ``"mean"`` over gene tokens or ``"cls"`` (the ``<cls>`` state; needs ``<cls>`` first).
    batch_size
        Perturbed sequences per forward pass.
    device
        Default: where the model is (moved, with a log line, only if another device is given).
    """

    def __init__(self, model, special_ids: Sequence[int], layer: int = -2, pooling: str = "mean",
                 batch_size: int = 64, device=None) -> None:
        self.base = base_model(model)
        self.device = model_device(self.base, device)
        self.base.eval()
        self.special = torch.tensor(sorted(set(int(s) for s in special_ids)), device=self.device)
        self.layer = layer
        self.pooling = pooling
        self.batch_size = batch_size
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ExactEvaluator":
        self._stack.enter_context(torch.inference_mode())
        self._stack.enter_context(truncated_encoder(self.base, self.layer))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    # -- primitives -------------------------------------------------------------------------------
    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) unpadded token ids -> (B, L, H) hidden states at the embedding layer."""
        return self.base(input_ids=ids.to(self.device)).last_hidden_state.float()

    def pool(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, L, H) hidden states -> (B, H) cell embeddings (mean over gene tokens, or <cls>)."""
        return pool(hidden, ids.to(self.device), self.special, self.pooling)

    def embed(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One cell -> ((L, H) hidden states, (H,) cell embedding)."""
        t = torch.as_tensor(np.asarray(ids, dtype=np.int64)).unsqueeze(0)
        h = self.hidden(t)
        return h[0], self.pool(h, t)[0]

    # -- a cell and its perturbations -------------------------------------------------------------
    def evaluate(self, ids: Sequence[int], variants: Sequence[Sequence[int]], gene_effects: bool = False,
                 perturbed_tokens: Sequence[Sequence[int]] | None = None) -> CellEffects:
        """Embed a cell and its perturbed variants.

        Variants of equal length are stacked into batches of ``batch_size`` with no padding.
        With ``gene_effects``, ``perturbed_tokens[i]`` (the genes perturbed in variant ``i``) are
        left out of that variant's gene cosines.
        """
        h0, e0 = self.embed(ids)
        out = torch.empty((len(variants), h0.shape[1]), device=self.device)
        gene_cos: list | None = [None] * len(variants) if gene_effects else None
        ids0 = np.asarray(ids, dtype=np.int64)
        order0 = np.argsort(ids0, kind="stable")
        sorted0 = ids0[order0]
        lengths = np.array([len(v) for v in variants])
        for n in np.unique(lengths):
            members = np.flatnonzero(lengths == n)
            for s in range(0, len(members), self.batch_size):
                idx = members[s: s + self.batch_size]
                t = torch.as_tensor(np.asarray([variants[i] for i in idx], dtype=np.int64))
                h = self.hidden(t)
                out[torch.as_tensor(idx, device=self.device)] = self.pool(h, t)
                if gene_effects:
                    for row, i in enumerate(idx):
                        gene_cos[i] = self._gene_cos(h0, sorted0, order0, np.asarray(variants[i]), h[row],
                                                     perturbed_tokens[i] if perturbed_tokens else ())
        return CellEffects(e0.cpu().numpy(), out.cpu().numpy(), gene_cos)

    def _gene_cos(self, h0, sorted0, order0, var_ids, hv, skip) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(sorted0, var_ids)
        pos = np.clip(pos, 0, len(sorted0) - 1)
        found = sorted0[pos] == var_ids
        special = np.isin(var_ids, self.special.cpu().numpy()) | np.isin(var_ids, np.asarray(skip, dtype=np.int64))
        ok = found & ~special
        vi = np.flatnonzero(ok)
        oi = order0[pos[ok]]
        a = h0[torch.as_tensor(oi, device=self.device)]
        b = hv[torch.as_tensor(vi, device=self.device)]
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        return var_ids[vi], cos.cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (n, H) and (H,) or (n, H) arrays (float64)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)
