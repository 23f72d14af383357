"""A straightforward reference: one forward pass per perturbed cell, as upstream Geneformer does it.

Used to validate the exact engine (tests) and as the peer in ``benchmarks/perturb_speed.py``.
Each sequence (the original cell, then each perturbed variant) is run alone (batch size 1) through
the *full* model given (e.g. ``BertForMaskedLM``, MLM head included) with
``output_hidden_states=True``, and the embedding is read from ``hidden_states[layer]``, as
upstream's ``InSilicoPerturber`` (``get_embs`` with ``emb_layer``) does. Deliberately unoptimised,
and deliberately independent of :mod:`netformer.encoder` (its own pooling), so that it can check it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..encoder import default_device


def reference_embeddings(model, sequences: Sequence[Sequence[int]], special_ids: Sequence[int], layer: int = -2,
                         device=None) -> np.ndarray:
    """Mean-pooled embeddings of ``sequences`` at hidden-state index ``layer``, one pass each.

    Returns (n_sequences, hidden) float32.
    """
    dev = default_device(device)
    model.to(dev).eval()
    special = set(int(s) for s in special_ids)
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.as_tensor(np.asarray(seq, dtype=np.int64)).unsqueeze(0).to(dev)
            mask = torch.ones_like(ids)
            res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            h = res.hidden_states[layer][0].float()
            keep = torch.tensor([t not in special for t in seq], device=dev)
            out.append(h[keep].mean(0).cpu().numpy())
    return np.stack(out)
