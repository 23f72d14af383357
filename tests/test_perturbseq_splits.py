"""Reproducible GEARS-style splits on the Norman 2019 perturbations."""

from __future__ import annotations

import pytest

from netformer.errors import ConfigError, InputDataError
from netformer.perturbseq.data import condition_genes, read_perturbseq
from netformer.perturbseq.splits import split_conditions


@pytest.fixture(scope="module")
def norman(shared_data):
    return read_perturbseq(shared_data / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})


@pytest.mark.parametrize("kind", ["unseen_single", "combo_seen0", "combo_seen1", "combo_seen2", "random"])
def test_split_reproducible_and_disjoint(norman, kind):
    a = split_conditions(norman, kind, seed=3, test_frac=0.4)
    b = split_conditions(norman, kind, seed=3, test_frac=0.4)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    parts = [set(a.train), set(a.val), set(a.test), set(a.excluded)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == len(norman.perturbations)
    assert "ctrl" not in set().union(*parts) and a.test
    seen = {c for c in a.train if "+" not in c}
    for c in a.test:  # subgroup = number of genes whose single is in train
        k = sum(g in seen for g in condition_genes(c))
        assert a.subgroup[c] == (f"combo_seen{k}" if "+" in c else ("seen_single" if k else "unseen_single"))
    if kind.startswith("combo_seen"):
        assert set(a.subgroup.values()) == {kind}
    if kind in ("unseen_single", "combo_seen0", "combo_seen1"):
        held = set(a.held_out_genes)
        assert held and not any(g in held for c in a.train + a.val for g in condition_genes(c))
    others = {tuple(split_conditions(norman, kind, seed=s, test_frac=0.4).test) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_custom_and_errors(norman):
    s = split_conditions(norman, "custom", test_conditions=["MAP2K6+KLF1"], val_conditions=["SGK1"])
    assert s.test == ["KLF1+MAP2K6"] and s.val == ["SGK1"] and s.subgroup["KLF1+MAP2K6"] == "combo_seen2"
    with pytest.raises(InputDataError):
        split_conditions(norman, "custom", test_conditions=["NOTAGENE"])
    with pytest.raises(ConfigError):
        split_conditions(norman, "leave_one_out")
    with pytest.raises(ConfigError):
        split_conditions(norman, "random", test_frac=1.5)
    with pytest.raises(InputDataError, match="combo_seen2"):
        split_conditions(norman.singles + ["BPGM+SAMD1"], "combo_seen2")
