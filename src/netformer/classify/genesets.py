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
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import InputDataError
from ..genes import GeneVocab, symbol_to_ensembl

log = logging.getLogger(__name__)

#: GO:0003700 and its is_a descendants (GO release 2022-07): RNA polymerase II-specific TF activity
#: (GO:0000981), its activator/repressor children (GO:0001228, GO:0001227), activator/repressor
#: activity (GO:0001216, GO:0001217) and ligand-activated TF activity (GO:0098531).
TF_GO_TERMS = ("GO:0003700", "GO:0000981", "GO:0001228", "GO:0001227", "GO:0001216", "GO:0001217", "GO:0098531")


def read_gene2go(path: str | Path | None = None) -> pd.DataFrame:
    """Read a gene -> GO table (tab-separated, columns ``symbol``, ``go_id``, ...). Default: the
    shared ``graphs/gene2go_orgHsEgDb_3.16.tsv.gz``."""
    if path is None:
        from ..datasets import shared_data_dir

        path = shared_data_dir() / "graphs" / "gene2go_orgHsEgDb_3.16.tsv.gz"
    df = pd.read_csv(path, sep="\t")
    if not {"symbol", "go_id"} <= set(df.columns):
        raise InputDataError(f"{path} needs columns symbol and go_id; it has {list(df.columns)}")
    return df


def go_gene_set(go_ids: Iterable[str], gene2go: pd.DataFrame) -> set[str]:
    """Symbols annotated with any of ``go_ids``."""
    return set(gene2go.loc[gene2go["go_id"].isin(list(go_ids)), "symbol"].astype(str))


def tf_gene_labels(vocab: GeneVocab, gene2go: pd.DataFrame | None = None, terms: Iterable[str] = TF_GO_TERMS,
                   species: str = "human") -> dict[str, str]:
    """Labels ``"TF"`` / ``"non-TF"`` for the genes of ``vocab`` that carry GO annotations.

    Symbols are mapped to the vocabulary's Ensembl ids with GENCODE
    (:func:`netformer.genes.symbol_to_ensembl`). Returns ``{ensembl_id: label}``; restrict to
    expressed genes by fitting on tokenized cells (genes that never occur are left out there).
    """
    gene2go = read_gene2go() if gene2go is None else gene2go
    tf = go_gene_set(terms, gene2go)
    annotated = set(gene2go["symbol"].astype(str))
    ens = symbol_to_ensembl(sorted(annotated), species=species)
    out: dict[str, str] = {}
    for sym, e in ens.items():
        if e is not None and e in vocab.token_dict:
            out.setdefault(e, "TF" if sym in tf else "non-TF")
    n_tf = sum(v == "TF" for v in out.values())
    log.info("%d TF and %d non-TF genes of the vocabulary carry GO annotations", n_tf, len(out) - n_tf)
    return out
