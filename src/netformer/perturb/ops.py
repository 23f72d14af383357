"""Perturbations of a cell's rank value encoding (Geneformer ``InSilicoPerturber`` operations).

A cell is a list of token ids: genes in rank order (most highly expressed relative to the corpus
first), optionally wrapped as ``<cls>`` ... ``<eos>`` (Geneformer V2). Every operation keeps
``<cls>`` at position 0 and ``<eos>`` last, and acts on the gene region between them.

==============  ===========================================================================
operation       effect on the gene region (``n`` = number of gene tokens of the cell)
==============  ===========================================================================
``delete``      the genes' tokens are removed (upstream ``perturb_type="delete"``)
``overexpress`` the genes are moved to rank 0 (first after ``<cls>``), in the order given;
                genes not expressed in the cell are inserted there, and the lowest-ranked
                genes are dropped if the cell would exceed ``max_length`` (as upstream)
``inhibit``     each gene moves ``k = max(1, round(fraction * n))`` ranks down (toward the
                end), stopping at the last rank; upstream leaves this unimplemented
``activate``    each gene moves ``k`` ranks up (toward rank 0), stopping at rank 0
==============  ===========================================================================

``inhibit`` / ``activate`` of a gene that is not expressed in the cell do nothing (there is no
rank to move from); ``delete`` likewise. Joint perturbations apply the genes in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError

PERTURBATIONS = ("delete", "overexpress", "inhibit", "activate")


@dataclass(frozen=True)
class CellLayout:
    """Where the gene region of a cell lies: ``ids[start:stop]`` are gene tokens."""

    start: int
    stop: int

    @classmethod
    def of(cls, ids: Sequence[int], cls_id: int | None, eos_id: int | None) -> "CellLayout":
        start = 1 if (cls_id is not None and len(ids) and ids[0] == cls_id) else 0
        stop = len(ids) - 1 if (eos_id is not None and len(ids) > start and ids[-1] == eos_id) else len(ids)
        return cls(start, stop)


def shift_size(n_genes: int, fraction: float) -> int:
    """Ranks moved by ``inhibit`` / ``activate``: ``max(1, round(fraction * n_genes))``."""
    return max(1, int(round(fraction * n_genes)))


def perturb_cell(
    ids: Sequence[int],
    tokens: Sequence[int],
    kind: str = "delete",
    *,
    cls_id: int | None = None,
    eos_id: int | None = None,
    fraction: float = 0.25,
    max_length: int | None = None,
) -> list[int]:
    """Apply one (joint) perturbation to a cell's token ids and return the new id list.

    Parameters
    ----------
    ids
        The cell's rank value encoding, length ``L`` (special tokens included).
    tokens
        Token ids of the genes perturbed jointly (applied in this order).
    kind
        One of :data:`PERTURBATIONS`.
    cls_id, eos_id
        The vocabulary's ``<cls>`` / ``<eos>`` ids (None when absent); kept in place.
    fraction
        Fraction of the cell's gene count moved by ``inhibit`` / ``activate`` (default 0.25).
    max_length
        Model input size; ``overexpress`` of unexpressed genes truncates the lowest ranks to it.

    Raises
    ------
    ConfigError
        Unknown ``kind`` or ``fraction`` outside (0, 1].
    """
    if kind not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    lay = CellLayout.of(ids, cls_id, eos_id)
    head, genes, tail = list(ids[: lay.start]), list(ids[lay.start: lay.stop]), list(ids[lay.stop:])
    if kind == "delete":
        drop = set(int(t) for t in tokens)
        genes = [g for g in genes if g not in drop]
    elif kind == "overexpress":
        moved = list(dict.fromkeys(int(t) for t in tokens))
        drop = set(moved)
        genes = moved + [g for g in genes if g not in drop]
        if max_length is not None:
            genes = genes[: max(0, max_length - len(head) - len(tail))]
    else:
        k = shift_size(len(genes), fraction)
        for t in tokens:
            t = int(t)
            if t not in genes:
                continue
            i = genes.index(t)
            genes.pop(i)
            j = min(len(genes), i + k) if kind == "inhibit" else max(0, i - k)
            genes.insert(j, t)
    return head + genes + tail


def moved_position(position: int, layout: CellLayout, kind: str, fraction: float) -> int:
    """Index (in the full id list) a single gene at ``position`` moves to under ``kind``.

    ``delete`` returns -1. Used by the first-order screen to know which tokens shift.
    """
    n = layout.stop - layout.start
    if kind == "delete":
        return -1
    if kind == "overexpress":
        return layout.start
    k = shift_size(n, fraction)
    if kind == "inhibit":
        return min(layout.stop - 1, position + k)
    return max(layout.start, position - k)
