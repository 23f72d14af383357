"""Gene networks (netformer.network) on the tiny model pretrained on real pbmc3k / Kang cells."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch

from netformer.errors import ConfigError, InputDataError
from netformer.model import load_model
from netformer.network import (
    NetworkConfig,
    attention_network,
    centrality,
    centrality_labels,
    go_scores,
    iter_attention,
    module_score,
    perturbation_network,
    perturbation_network_from_model,
)


def _cli(capsys, *args) -> tuple[int, str]:
    from netformer.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def test_attention_is_the_models_own_and_rows_sum_to_one(tiny_pretrained):
    """Our per-layer probabilities (SDPA model, computed from each layer's input) equal the eager model's
    output_attentions, padding masked; one cell's network equals its eager attention with the special
    columns dropped and each row renormalised; every source row of a network sums to 1."""
    t = tiny_pretrained
    sdpa = load_model(t.model_dir, device="cpu")
    eager = load_model(t.model_dir, device="cpu", attn_implementation="eager")
    cells = [list(t.pbmc[i]["input_ids"][:64]) for i in (0, 1)]
    cells[1] = cells[1][:40]  # a shorter cell: padded in the batch
    with torch.no_grad():
        want = [eager(input_ids=torch.tensor([c]), output_attentions=True).attentions for c in cells]
    n_layers, n_heads = len(want[0]), want[0][0].shape[1]
    for layers, heads in (([0], [1]), ([n_layers - 1], list(range(n_heads))), (list(range(n_layers)), [0, 2])):
        for idx, att, _, mask in iter_attention(sdpa, cells, layers, heads, batch_size=2):
            for row, i in enumerate(idx):
                n = len(cells[i])
                ref = torch.stack([want[i][layer][0, heads] for layer in layers]).mean((0, 1))
                torch.testing.assert_close(att[row, :n, :n], ref, atol=1e-5, rtol=1e-4)
                assert float(att[row, :, n:].abs().sum()) == 0.0  # padded keys get no attention

    # one cell: score(i -> j) = a(i, j) / sum of a(i, j') over the other gene tokens j' (last layer, all heads)
    one = t.pbmc.select([0])
    net = attention_network(t.model_dir, one, NetworkConfig(min_cells=1, min_pair_cells=1, max_length=64))
    ids = np.array(one[0]["input_ids"][:64])
    a = want[0][-1][0].mean(0).numpy().astype(np.float64)
    genes = ~np.isin(ids, t.vocab.special_ids)
    a = a[np.ix_(genes, genes)]
    np.fill_diagonal(a, 0.0)
    a /= a.sum(1, keepdims=True)
    names = [t.vocab.token_to_gene(x) for x in ids[genes]]
    ref = pd.DataFrame(a, index=names, columns=names).stack().rename("ref")
    got = net.pairs.set_index(["source", "target"])["score"]
    np.testing.assert_allclose(got.to_numpy(), ref.loc[got.index].to_numpy(), atol=1e-5)
    assert len(got) == genes.sum() * (genes.sum() - 1)

    net = attention_network(sdpa, t.pbmc, NetworkConfig(layers="all", heads=[0, 1], min_cells=5, max_cells=24,
                                                        max_length=96))
    np.testing.assert_allclose(net.pairs.groupby("source")["score"].sum(), 1.0, atol=1e-9)
    assert net.info["genes_left_out"] > 0 and net.info["n_genes"] == len(net.genes)
    assert (net.pairs.groupby("source").size() >= 1).all()
    edges = net.edges(top_k=5)
    assert edges.groupby("source").size().max() == 5
    assert (edges.groupby("source")["score"].sum() <= 1 + 1e-9).all()  # cut after the normalisation

    # centrality as a gene task: the labels are the {ensembl_id: label} mapping the gene classifier takes
    from netformer.classify.data import resolve_gene_labels

    labels = centrality_labels(centrality(edges), quantile=0.25)
    assert resolve_gene_labels(labels, t.vocab, on_missing="raise") == labels
    assert sorted(pd.Series(labels).value_counts().tolist()) == [int(np.ceil(0.25 * len(set(edges["source"]) |
                                                                                       set(edges["target"]))))] * 2


def test_perturbation_network_equals_what_perturb_wrote(tiny_pretrained, tmp_path, capsys):
    """The network equals an independent aggregation of the gene_effects.parquet that the deletion
    screen wrote for the same cells; the CLI writes the same edges."""
    t = tiny_pretrained
    cfg = NetworkConfig(min_cells=2, max_cells=3, max_length=48, seed=1)
    run = tmp_path / "screen"
    net = perturbation_network_from_model(t.model_dir, t.kang, cfg, out_dir=run)
    effects = pd.read_parquet(run / "gene_effects.parquet")
    assert effects["cell_index"].nunique() == 3
    sums, cells = {}, {}
    for r in effects.itertuples():
        key = (r.perturbed, r.gene)
        sums[key] = sums.get(key, 0.0) + (1.0 - r.cos_sim)
        cells.setdefault(key, set()).add(r.cell_index)
    want = {k: (sums[k] / len(c), len(c)) for k, c in cells.items() if len(c) >= 2}
    got = net.pairs.set_index(["source", "target"])
    assert set(got.index) == set(want)
    np.testing.assert_allclose(got["score"].to_numpy(), [want[k][0] for k in got.index], rtol=1e-6)
    assert got["n_cells"].tolist() == [want[k][1] for k in got.index]
    assert net.info["pairs_left_out"] == len(cells) - len(want)
    assert perturbation_network(run, min_cells=2).pairs.equals(net.pairs)

    out = tmp_path / "net"
    code, err = _cli(capsys, "network", "perturbation", run, "--out", out, "--min-cells", 2, "--top-k", 3, "--no-go")
    assert code == 0, err
    edges = pd.read_csv(out / "edges.csv")
    np.testing.assert_allclose(edges["score"], net.edges(top_k=3)["score"], rtol=1e-6)
    assert {"centrality.csv", "network.png", "scores.json", "config.json", "pairs.parquet"} <= {p.name for p in
                                                                                            out.iterdir()}
    with pytest.raises(InputDataError, match="min_cells=4"):
        perturbation_network(effects, min_cells=4)


def test_centrality_agrees_with_networkx():
    """Direction and weights: edges point source -> target with weight = score."""
    edges = pd.DataFrame({"source": ["A", "B", "C", "D", "A", "C", "E"],
                          "target": ["B", "C", "A", "A", "D", "D", "A"],
                          "score": [0.5, 1.0, 2.0, 0.25, 0.75, 1.5, 3.0]})
    g = nx.DiGraph()
    g.add_weighted_edges_from(edges.itertuples(index=False))
    u = nx.Graph()
    for s, t_, w in g.edges(data="weight"):
        u.add_edge(s, t_, weight=u[s][t_]["weight"] + w if u.has_edge(s, t_) else w)
    table = centrality(edges).set_index("gene")
    pr, ev = nx.pagerank(g, weight="weight"), nx.eigenvector_centrality(u, weight="weight", max_iter=1000, tol=1e-6)
    for n in g:
        assert table.loc[n, "pagerank"] == pytest.approx(pr[n])
        assert table.loc[n, "eigenvector"] == pytest.approx(ev[n])
        assert table.loc[n, "in_degree"] == pytest.approx(g.in_degree(n, weight="weight"))
        assert table.loc[n, "out_degree"] == pytest.approx(g.out_degree(n, weight="weight"))
    assert table.index[0] == "A"  # most weight flows into A
    assert table.loc["E", "in_degree"] == 0 and table.loc["E", "out_degree"] == 3.0
    labels = centrality_labels(table.reset_index(), by="in_degree", quantile=0.4)
    assert labels == {"A": "central", "D": "central", "E": "peripheral", "B": "peripheral"}
    with pytest.raises(ConfigError, match="quantile"):
        centrality_labels(table.reset_index(), quantile=0.7)


def test_go_and_module_scores_on_a_known_graph():
    from sklearn.metrics import average_precision_score

    go = pd.DataFrame({"source": ["A", "B", "C", "A"], "target": ["B", "A", "D", "A"]})  # A-B, C-D; a self loop
    pairs = pd.DataFrame({"source": ["A", "B", "A", "C", "D", "B", "X"], "target": ["B", "A", "C", "D", "A", "D", "A"],
                          "score": [0.9, 0.1, 0.8, 0.7, 0.2, 0.3, 1.0]})
    base = pairs.assign(score=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    s = go_scores(pairs, go, baseline=base, n_shuffles=5)
    y = [1, 1, 0, 1, 0, 0]  # X is not in GO
    assert s["n_pairs"] == 6 and s["n_positive"] == 3 and s["base_rate"] == 0.5
    assert s["auprc"] == pytest.approx(average_precision_score(y, [0.9, 0.1, 0.8, 0.7, 0.2, 0.3]))
    assert s["baseline_auprc"] == pytest.approx(average_precision_score(y, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))
    edges = pd.DataFrame({"source": ["A", "B", "C", "E"], "target": ["B", "C", "D", "F"], "score": 1.0})
    table = pd.DataFrame({"gene": list("ABCDEF"), "symbol": list("ABCDEF"),
                          "pagerank": [0.3, 0.25, 0.2, 0.1, 0.1, 0.05]})
    m = module_score(edges, table, ["a", "B", "C", "Z"], n_permutations=200)
    assert m["n_set"] == 3 and m["lcc_fraction"] == 1.0 and m["n_edges_within"] == 2
    assert m["mean_pagerank_percentile"] == pytest.approx(100 * np.mean([6, 5, 4]) / 6)


def test_a_layer_or_head_that_does_not_exist(tiny_pretrained, tmp_path, capsys, scrna):
    t = tiny_pretrained
    with pytest.raises(ConfigError, match=r"layer 5 does not exist: the model has \d encoder layers \(use 0\.\."):
        attention_network(t.model_dir, t.pbmc, NetworkConfig(layers=[5]))
    with pytest.raises(ConfigError, match="head 9 does not exist"):
        attention_network(t.model_dir, t.pbmc, NetworkConfig(heads="0,9"))
    with pytest.raises(ConfigError, match="layers must be 'all' or integer"):
        NetworkConfig(layers="last")
    with pytest.raises(InputDataError, match="min_cells=1000"):
        attention_network(t.model_dir, t.pbmc, NetworkConfig(min_cells=1000, max_cells=20))
    out = tmp_path / "net"
    for bad in (["--layers", "7"], ["--heads", "0,99"], ["--layers", "first"]):
        code, err = _cli(capsys, "network", "attention", t.model_dir, scrna / "pbmc3k_raw_labeled.h5ad",
                         "--out", out, *bad)
        lines = [x for x in err.splitlines() if x.strip() and "Loading weights" not in x]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert not out.exists()
    assert NetworkConfig.from_json(NetworkConfig(layers=[0, -1], cell_filter={"c": "x"}).to_json()) == \
        NetworkConfig(layers=[0, -1], cell_filter={"c": ["x"]})


def test_coexpression_is_abs_pearson_of_log_normalised_counts(scrna):
    import anndata as ad

    from netformer.network import coexpression_network

    adata = ad.read_h5ad(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad")[:200].copy()
    # ISG15, IFITM1, S100A9, FTL and an id absent from the counts
    genes = ["ENSG00000187608", "ENSG00000185885", "ENSG00000163220", "ENSG00000087086", "ENSG00000000000"]
    net = coexpression_network(adata, genes=genes)
    assert net.info["genes_absent"] == 1 and net.info["n_genes"] == 4
    cols = [list(adata.var["ensembl_id"]).index(g) for g in genes[:4]]
    X = np.asarray(adata.X[:, cols].todense(), dtype=np.float64)
    X = np.log1p(X / np.asarray(adata.X.sum(1)) * 1e4)
    r = np.abs(np.corrcoef(X.T))
    both = (X[:, :, None] > 0) & (X[:, None, :] > 0)
    for row in net.pairs.itertuples():
        i, j = genes.index(row.source), genes.index(row.target)
        assert row.score == pytest.approx(r[i, j]) and row.n_cells == both[:, i, j].sum()
    assert len(net.pairs) == sum(both[:, i, j].any() for i in range(4) for j in range(4) if i != j)
