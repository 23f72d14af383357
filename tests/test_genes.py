"""Gene vocabularies: Geneformer dictionaries read safely, our own JSON round trip, id mapping."""

from __future__ import annotations

import pickle

import pytest

from netformer.errors import DictionaryError
from netformer.genes import GeneVocab, ensembl_to_symbol, load_pickle_dict, looks_like_ensembl, symbol_to_ensembl

GAPDH = "ENSG00000111640"


def test_geneformer_v1_dictionaries(v1):
    assert v1.vocab_size == 25_426
    assert v1.pad_id == 0 and v1.mask_id == 1
    assert not v1.has_cls_eos
    assert v1.token_dict[GAPDH] == 3906
    assert len(v1.genes) == 25_424
    assert all(v1.gene_median[g] > 0 for g in v1.genes)


def test_geneformer_v2_dictionaries(v2):
    assert v2.vocab_size == 20_275
    assert (v2.pad_id, v2.mask_id, v2.cls_id, v2.eos_id) == (0, 1, 2, 3)
    assert v2.token_dict[GAPDH] == 3880
    # the V2 mapping resolves symbols and aliases to Ensembl ids of the token dictionary
    assert list(v2.map_ids(["GAPDH", "gapdh", GAPDH, "NOT_A_GENE"])) == [GAPDH, GAPDH, GAPDH, None]
    assert all(v in v2.token_dict for v in v2.ensembl_mapping.values())


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "token_dictionary_evil.pkl"
    path.write_bytes(pickle.dumps({"<pad>": Evil()}))
    with pytest.raises(DictionaryError, match="refusing to unpickle"):
        load_pickle_dict(path)


def test_truncated_pickle_is_a_clear_error(tmp_path, shared_data):
    data = (shared_data / "genes" / "geneformer_gc30M" / "token_dictionary_gc30M.pkl").read_bytes()
    path = tmp_path / "token_dictionary_cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match="not a readable"):
        load_pickle_dict(path)


def test_json_round_trip(v2, tmp_path):
    v2.save(tmp_path / "v2")
    back = GeneVocab.load(tmp_path / "v2")
    assert back.token_dict == v2.token_dict
    assert back.gene_median == v2.gene_median
    assert back.ensembl_mapping == v2.ensembl_mapping
    assert back.name == "gc104M"


def test_model_vocab_mismatch(v1, v2):
    v1.check_model(25_426, 0)
    with pytest.raises(DictionaryError, match="vocab_size"):
        v2.check_model(25_426)


def test_broken_dictionaries_are_rejected():
    with pytest.raises(DictionaryError, match="no gene median"):
        GeneVocab({"<pad>": 0, "<mask>": 1, "ENSG1": 2}, {})
    with pytest.raises(DictionaryError, match="same token id"):
        GeneVocab({"<pad>": 0, "ENSG1": 0}, {"ENSG1": 1.0})


def test_gencode_mapping():
    ids = symbol_to_ensembl(["GAPDH", "cd3e", "NOPE"])
    assert ids["GAPDH"] == GAPDH and ids["cd3e"] == "ENSG00000198851" and ids["NOPE"] is None
    assert ensembl_to_symbol([GAPDH + ".12"]).iloc[0] == "GAPDH"
    mouse = symbol_to_ensembl(["Ins1"], species="mouse")
    assert mouse.iloc[0].startswith("ENSMUSG")
    assert looks_like_ensembl([GAPDH, "ENSG00000198851"]) and not looks_like_ensembl(["GAPDH", "CD3E"])
