"""Gene knowledge from the foundation model for selection: static gene embeddings of a real (tiny,
pretrained) checkpoint, its kNN cosine gene graph, the fm / fm+go selection graphs, coverage fallback
and the CLI's bad-input exit."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from netformer.cli import main
from netformer.graphs import GeneGraph, embedding_graph
from netformer.select import Selector
from netformer.select.priors import CoverageError, selection_edges, union_edges


@pytest.fixture(scope="module")
def static(tiny_pretrained):
    from netformer.embed import static_gene_embeddings
    from netformer.model import load_model

    model = load_model(tiny_pretrained.model_dir, device="cpu")
    return model, static_gene_embeddings(model)


def test_embedding_graph_equals_brute_force_cosine_knn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    genes = [f"G{i}" for i in range(40)]
    k = 5
    edges = embedding_graph(X, k, genes=genes, min_similarity=-1)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = U @ U.T
    want = []
    for t in range(40):
        order = [s for s in np.argsort(-C[t], kind="stable") if s != t][:k]
        want += [(genes[t], genes[t], 1.0)] + [(genes[s], genes[t], C[t, s]) for s in order]
    want = pd.DataFrame(want, columns=["source", "target", "importance"])
    key = ["target", "source"]
    got, exp = edges.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key], exp[key])
    np.testing.assert_allclose(got["importance"], exp["importance"].clip(0, 1), atol=1e-9)
    # the default keeps positive similarities only, the self loop first in every target's block
    pos = embedding_graph(X, k, genes=genes)
    assert (pos["importance"] > 0).all() and len(pos) == len(edges) - int(((C < 0) & _knn_mask(C, k)).sum())
    assert (pos.groupby("target").head(1).eval("source == target")).all()


def _knn_mask(C, k):
    m = np.zeros_like(C, dtype=bool)
    for t in range(len(C)):
        m[t, [s for s in np.argsort(-C[t], kind="stable") if s != t][:k]] = True
    return m


def test_static_embeddings_and_lazy_equals_plain_greedy_on_fm_graph(static, tiny_pretrained):
    model, emb = static
    vocab = tiny_pretrained.vocab
    assert len(emb) == len(vocab.genes) and emb.index[0].startswith("ENSG") and "symbol" in emb
    w = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(emb.filter(like="dim_").to_numpy(), w[[vocab.token_dict[g] for g in emb.index]])
    edges = embedding_graph(emb.iloc[:1500], 10)
    assert list(edges.columns) == ["source", "target", "importance"]
    sel = Selector(GeneGraph.from_edges(edges), sorted(set(edges["target"]))[:300])
    for method in ("graphreach", "maxspec"):
        lazy, plain = sel.select(30, method=method), sel.select(30, method=method, lazy=False)
        assert lazy.genes == plain.genes and lazy.n_evaluations < plain.n_evaluations
        np.testing.assert_allclose(lazy.objective, plain.objective)


def test_embedding_table_by_symbol_matches_the_graph_nodes(static):
    from netformer.graphs import embedding_table
    from netformer.errors import InputDataError

    emb = static[1]
    table = embedding_table(emb)
    dims = [c for c in emb.columns if c.startswith("dim_")]
    assert table.index.is_unique and list(table.columns) == dims
    first = emb[emb["symbol"].notna()].drop_duplicates("symbol")      # first row of each symbol
    assert len(table) == len(first)
    np.testing.assert_array_equal(table.to_numpy(), first[dims].to_numpy(np.float64))
    g = embedding_graph(emb.iloc[:300], k=5)
    assert set(g["source"]) | set(g["target"]) <= set(embedding_table(emb.iloc[:300]).index)
    by_id = embedding_table(emb, names="index")
    assert by_id.index.equals(emb.index.astype(str).rename("gene"))
    with pytest.raises(InputDataError, match="dim_"):
        embedding_table(emb[["symbol"]])


def _go_like(covered):
    """A small GO-style graph over 6 covered genes and 2 genes no dictionary holds."""
    genes = list(covered) + ["NOTAGENE1", "NOTAGENE2"]
    rows = [(g, g, 1.0) for g in genes] + [(genes[0], "NOTAGENE1", 0.5), ("NOTAGENE2", genes[1], 0.3),
                                           (genes[2], genes[3], 0.9)]
    return pd.DataFrame(rows, columns=["source", "target", "importance"]), genes


def test_coverage_fallback_logs_and_keeps_go_edges(static, caplog):
    emb = static[1].iloc[:800]
    covered = sorted(emb["symbol"].dropna().unique())[:6]
    go, cands = _go_like(covered)
    with caplog.at_level(logging.INFO, logger="netformer.select.priors"):
        fm = selection_edges("fm", cands, embeddings=emb, go=go, k=5)
    assert "covers 6 of 8 candidate genes" in caplog.text
    g = GeneGraph.from_edges(fm)
    assert all(c in g for c in cands)       # the uncovered two kept their GO edges
    assert {("NOTAGENE2", covered[1]), (covered[0], "NOTAGENE1")} <= set(zip(fm["source"], fm["target"]))
    both = selection_edges("fm+go", cands, embeddings=emb, go=go, k=5)
    assert both.equals(union_edges(selection_edges("fm", covered, embeddings=emb, go=go, k=5), go))
    assert not both.duplicated(["source", "target"]).any() and (both["importance"] <= 1).all()
    with pytest.raises(CoverageError, match="covers 6 of 8"):
        selection_edges("fm", cands, embeddings=emb, go=go, min_coverage=0.9)


def test_cli_fm_prior(static, tiny_pretrained, tmp_path, capsys):
    _, emb = static
    go, cands = _go_like(sorted(emb["symbol"].dropna().unique())[:6])
    go.to_csv(tmp_path / "go.csv", index=False)
    (tmp_path / "cands.txt").write_text("\n".join(cands))
    args = ["select", "run", "--prior", "fm", "--model-dir", tiny_pretrained.model_dir, "--graph", tmp_path / "go.csv",
            "--candidates", tmp_path / "cands.txt", "--budget", "3", "--no-compare"]
    with pytest.raises(SystemExit) as exc:   # bad input: coverage 6/8 below the asked 90%
        main([str(a) for a in args + ["--min-coverage", "0.9", "-o", tmp_path / "a"]])
    assert exc.value.code == 2 and "covers 6 of 8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:   # fm without a checkpoint
        main(["select", "run", "--prior", "fm", "--budget", "3", "-o", str(tmp_path / "b")])
    assert exc.value.code == 2 and "--model-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:   # falls back to GO for the two uncovered
        main([str(a) for a in args + ["-o", tmp_path / "c"]])
    assert exc.value.code in (0, None), capsys.readouterr().err
    sel = pd.read_csv(tmp_path / "c" / "selection.csv")
    assert len(sel) == 3


def test_prior_uses_replace_go_only_where_named(tiny_pretrained, caplog):
    """On the real Norman 2019 devel cells: ``kernel`` changes only IterPert's graph kernel, ``model``
    only the outcome model's gene graph; each equals the same step done by hand with the FM graph."""
    from netformer.datasets import shared_data_dir
    from netformer.graphs import go_graph
    from netformer.perturbseq.data import read_perturbseq
    from netformer.perturbseq.metrics import evaluate
    from netformer.perturbseq.models import RidgeModel
    from netformer.select.active import ActiveConfig, graph_kernel, run_active_learning
    from netformer.select.benchmark import BenchmarkConfig, benchmark_file, prior_edges
    from netformer.errors import ConfigError

    path = shared_data_dir() / "perturbseq" / "devel.h5ad"
    sub = {"dataset": "norman19"}
    kw = dict(budgets=(2, 4, 6), seeds=(0,), oneshot=("graphreach",), strategies=("iterpert",),
              positive_control=False)
    go = benchmark_file(path, BenchmarkConfig(**kw), subset=sub)
    fm = dict(prior="fm", model_dir=str(tiny_pretrained.model_dir))
    kern = benchmark_file(path, BenchmarkConfig(**kw, **fm, prior_uses=("kernel",)), subset=sub)
    model = benchmark_file(path, BenchmarkConfig(**kw, **fm, prior_uses=("model",)), subset=sub)
    assert set(kern["prior"]) == {"fm[kernel]"} and set(model["prior"]) == {"fm[model]"}
    cols = ["kind", "method", "budget", "chosen", "mse_top20_de"]
    one = lambda df: df[df["kind"] == "one-shot"][cols].reset_index(drop=True)
    act = lambda df: df[df["kind"] == "active"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(one(kern), one(go))          # selection and model untouched
    assert one(model)["chosen"].equals(one(go)["chosen"])       # same selection, ...

    data = read_perturbseq(path, subset=sub)
    go_e = go_graph(None)
    singles = sorted(c for c in data.singles if c in set(go_e["target"]))
    fm_e = prior_edges(BenchmarkConfig(**kw, **fm), singles, go_e)
    go_test = _test_singles(singles)
    pool = sorted(set(singles) - set(go_test))
    assert f"({len(pool)} pool / {len(go_test) + len(data.doubles)} test)" in model["setting"].iloc[0]
    for row in one(model).itertuples():                         # ... another model graph, fitted by hand
        m = RidgeModel(go_graph=fm_e).fit(data, row.chosen.split(";"))
        ref = evaluate(m, data, go_test + sorted(data.doubles)).loc["mean", "mse_top20_de"]
        assert row.mse_top20_de == pytest.approx(ref, rel=1e-9)
    assert not np.allclose(one(model)["mse_top20_de"], one(go)["mse_top20_de"])

    ev = lambda m: {"mse_top20_de": float(evaluate(m, data, go_test + sorted(data.doubles)).loc["mean", "mse_top20_de"])}
    by_hand = run_active_learning(data, pool, lambda: RidgeModel(), ActiveConfig("iterpert", schedule=(2, 4, 6), seed=0),
                                  prior_kernels={"fm": graph_kernel(GeneGraph.from_edges(fm_e), pool)}, evaluate_fn=ev)
    assert list(act(kern)["chosen"]) == [";".join(sorted(r.labeled)) for r in by_hand.rounds]
    assert act(kern)["mse_top20_de"].tolist() == pytest.approx([r.metrics["mse_top20_de"] for r in by_hand.rounds])
    with pytest.raises(ConfigError, match="prior uses"):
        BenchmarkConfig(**fm, prior_uses=("graph",))
    cfg = BenchmarkConfig(**kw, **fm, prior_uses=("model", "selection"))
    assert cfg.prior_uses == ("selection", "model") and BenchmarkConfig.from_json(cfg.to_json()) == cfg
    assert BenchmarkConfig(**fm, prior_uses="kernel").prior_uses == ("kernel",)   # a bare name, not letters
    idle = BenchmarkConfig(**{**kw, "strategies": ("random",)}, **fm, prior_uses=("kernel",), models=("additive",))
    with caplog.at_level(logging.WARNING, logger="netformer.select.benchmark"):
        idle.warn_idle_uses()
    assert "['kernel'] change nothing here" in caplog.text


def _test_singles(singles, seed=0, fraction=0.2):
    """benchmark_file's documented test split: a seeded ``fraction`` of the singles."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(singles, size=max(1, int(round(fraction * len(singles)))), replace=False).tolist())
