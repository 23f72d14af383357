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


#: Interferon-stimulated genes (symbols): the ISGs of Schoggins et al. 2011 Nature 472:481 (the set of
#: interferon-induced effectors screened there) together with the genes up in interferon-beta-stimulated
#: PBMCs of Kang et al. 2018 Nat Biotechnol 36:89. Used to check results, never to make them: how many
#: top-ranked genes of an in silico treatment are ISGs (benchmarks/perturb_examples.py), and whether the
#: ISGs form a connected, central module of a gene network (:func:`netformer.network.module_score`).
INTERFERON_STIMULATED_GENES = frozenset({
    "ISG15", "ISG20", "IFI6", "IFI27", "IFI35", "IFI44", "IFI44L", "IFIT1", "IFIT2", "IFIT3", "IFIT5", "IFITM1",
    "IFITM2", "IFITM3", "MX1", "MX2", "OAS1", "OAS2", "OAS3", "OASL", "RSAD2", "LY6E", "IRF7", "IRF9", "STAT1",
    "STAT2", "XAF1", "BST2", "HERC5", "HERC6", "SAMD9", "SAMD9L", "EPSTI1", "PLSCR1", "CXCL10", "CXCL11",
    "TNFSF10", "GBP1", "GBP2", "GBP4", "GBP5", "IRF1", "SP100", "SP110", "PARP9", "PARP14", "DTX3L", "DDX58",
    "IFIH1", "DDX60", "APOBEC3A", "LGALS3BP", "TRIM22", "TRIM5", "USP18", "CMPK2", "EIF2AK2", "PSME2",
    "NT5C3A", "LAMP3", "CCL8", "CCL2", "SOCS1", "HSH2D", "RTP4", "LAP3", "SECTM1", "TYMP", "C19ORF66",
    "SIGLEC1", "IFI16", "UBE2L6", "PSMB9", "TAP1", "NMI", "ADAR", "ZBP1", "SPATS2L", "TMEM140", "FBXO6", "DYNLT1",
    "CD38", "IL1RN", "MT2A", "PLAAT4", "RARRES3", "TNFSF13B", "VAMP5", "SAT1", "SERPING1", "APOL6", "ISG20L2",
})


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
