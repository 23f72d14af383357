"""Gene labels from Gene Ontology annotations, e.g. transcription factors vs other genes.

The example gene classification task of the issue: transcription factors are genes annotated with
GO:0003700 (DNA-binding transcription factor activity). Under GO's true-path rule a gene annotated
with a more specific child term also has GO:0003700; the direct-annotation table
(``gene2go_orgHsEgDb_3.16.tsv.gz``, Bioconductor org.Hs.eg.db) does not propagate, so the is_a
descendants of GO:0003700 are included by default (:data:`TF_GO_TERMS`). Negatives are genes
with at least one GO annotation and none of these terms, so that unannotated genes are not taken for
non-TFs.
"""

from __future__ import annotations

import logging
from typing import Iterable

import pandas as pd

from ..genes import GeneVocab, symbol_to_ensembl
from ..graphs import read_gene2go

log = logging.getLogger(__name__)

#: GO:0003700 and its is_a descendants (GO release 2022-07): RNA polymerase II-specific TF activity
#: (GO:0000981), its activator/repressor children (GO:0001228, GO:0001227), activator/repressor
#: activity (GO:0001216, GO:0001217) and ligand-activated TF activity (GO:0098531).
TF_GO_TERMS = ("GO:0003700", "GO:0000981", "GO:0001228", "GO:0001227", "GO:0001216", "GO:0001217", "GO:0098531")


def go_gene_set(go_ids: Iterable[str], gene2go: pd.DataFrame) -> set[str]:
    """Symbols annotated with any of ``go_ids``; ``gene2go`` has columns ``gene, go_id``
    (:func:`netformer.graphs.read_gene2go`)."""
    return set(gene2go.loc[gene2go["go_id"].isin(list(go_ids)), "gene"].astype(str))


def tf_gene_labels(vocab: GeneVocab, gene2go: pd.DataFrame | None = None, terms: Iterable[str] = TF_GO_TERMS,
                   species: str = "human") -> dict[str, str]:
    """Labels ``"TF"`` / ``"non-TF"`` for the genes of ``vocab`` that carry GO annotations.

    Symbols are mapped to the vocabulary's Ensembl ids with GENCODE
    (:func:`netformer.genes.symbol_to_ensembl`). ``gene2go``: DataFrame ``gene, go_id``, default
    :func:`netformer.graphs.read_gene2go` of the shared data folder's org.Hs.eg.db table (raises
    :class:`~netformer.errors.InputDataError` if that folder is not found). Returns ``{ensembl_id: label}``; restrict to
    expressed genes by fitting on tokenized cells (genes that never occur are left out there).
    """
    gene2go = read_gene2go() if gene2go is None else gene2go
    tf = go_gene_set(terms, gene2go)
    annotated = set(gene2go["gene"].astype(str))
    ens = symbol_to_ensembl(sorted(annotated), species=species)
    out: dict[str, str] = {}
    for sym, e in ens.items():
        if e is not None and e in vocab.token_dict:
            out.setdefault(e, "TF" if sym in tf else "non-TF")
    n_tf = sum(v == "TF" for v in out.values())
    log.info("%d TF and %d non-TF genes of the vocabulary carry GO annotations", n_tf, len(out) - n_tf)
    return out
