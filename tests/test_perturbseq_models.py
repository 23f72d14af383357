"""Baselines, GEARS-style GNN and metrics on held-out Norman 2019 perturbations (real data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from netformer.errors import ConfigError, InputDataError
from netformer.perturbseq.data import read_perturbseq
from netformer.perturbseq.gears import GEARSConfig, GEARSModel, reference_forward
from netformer.perturbseq.metrics import METRICS, evaluate
from netformer.perturbseq.models import (
    Additive,
    NoChange,
    PerturbationModel,
    RidgeModel,
    TrainMean,
)
from netformer.perturbseq.splits import split_conditions

# doubles whose two singles are measured (combo_seen2 when all singles are in training)
SEEN2 = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny GEARS networks here run faster on one thread than on two busy ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def norman(shared_data):
    data = read_perturbseq(shared_data / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
    data.top_de_genes(20)  # cache once for the module
    return data


@pytest.fixture(scope="module")
def seen2_split(norman):
    return split_conditions(norman, "custom", test_conditions=SEEN2, val_frac=0)


def test_metrics_definitions(norman):
    conds = ["KLF1", "TMSB4X"]
    truth = norman.mean(conds)
    perfect = evaluate(truth, norman, conds)
    assert list(perfect.index) == conds + ["mean"] and set(METRICS) <= set(perfect.columns)
    assert np.allclose(perfect["mse_top20_de"], 0) and np.allclose(perfect["pearson_delta"], 1)
    assert np.allclose(perfect["direction_acc_top20_de"], 1)
    ctrl = norman.control_mean()
    flipped = evaluate(2 * ctrl - truth, norman, conds)  # change reversed
    assert np.allclose(flipped["pearson_delta"], -1) and np.allclose(flipped["direction_acc_top20_de"], 0)
    de = norman.de_indices(["KLF1"])[0]
    expect = np.mean(((2 * ctrl - truth)[0, de] - truth[0, de]) ** 2)
    assert flipped.loc["KLF1", "mse_top20_de"] == pytest.approx(expect)
    with pytest.raises(InputDataError, match="shape"):
        evaluate(truth[:, :10], norman, conds)


def test_additive_beats_no_change_on_held_out_doubles(norman, seen2_split):
    train, test = seen2_split.train, seen2_split.test
    add = Additive().fit(norman, train)
    none = NoChange().fit(norman, train)
    r_add, r_none = evaluate(add, norman, test), evaluate(none, norman, test)
    assert r_add.loc["mean", "pearson_delta"] > 0.6 > r_none.loc["mean", "pearson_delta"]
    assert (r_add.loc[test, "mse_top20_de"] < r_none.loc[test, "mse_top20_de"]).all()
    # the additive prediction is the sum of the measured single effects
    d = norman.delta(["KLF1", "MAP2K6"]).sum(0)
    np.testing.assert_allclose(add.predict(["MAP2K6+KLF1"])[0], norman.control_mean() + d)
    assert add.seen_genes("KLF1+SET") == 1


def test_baselines_on_unseen_singles(norman):
    split = split_conditions(norman, "unseen_single", seed=0, test_frac=0.3)
    results = {}
    for model in (NoChange(), TrainMean(), Additive(), RidgeModel(n_components=5)):
        assert isinstance(model, PerturbationModel)
        model.fit(norman, split.train)
        pred = model.predict(split.test)
        assert pred.shape == (len(split.test), norman.n_genes) and np.isfinite(pred).all()
        emb = model.embed(split.test)
        assert emb.shape[0] == len(split.test) and np.isfinite(emb).all()
        results[model.name] = evaluate(model, norman, split.test)
    tm = TrainMean().fit(norman, split.train)
    np.testing.assert_allclose(tm.predict_delta(["ANYGENE"])[0], norman.delta(split.train).mean(0))
    # unseen singles: the additive model falls back to the mean training single effect
    singles = [c for c in split.train if "+" not in c]
    add = Additive().fit(norman, split.train)
    np.testing.assert_allclose(add.predict_delta([split.test[0]])[0], norman.delta(singles).mean(0))
    assert set(results) == {"no_change", "train_mean", "additive", "ridge"}


def test_ridge_model(norman, seen2_split):
    ridge = RidgeModel(n_components=8, ridge=0.1).fit(norman, seen2_split.train)
    assert ridge.embed(["KLF1", "SGK1"]).shape[1] == len({g for c in ridge.train_conditions_ for g in c.split("+")} - {"IER5L"})
    fit = evaluate(ridge, norman, seen2_split.train)
    mean = evaluate(TrainMean().fit(norman, seen2_split.train), norman, seen2_split.train)
    assert fit.loc["mean", "mse"] < mean.loc["mean", "mse"]  # the linear model explains training effects
    pca = RidgeModel(pert_embedding="pca").fit(norman, seen2_split.train)
    assert np.isfinite(pca.predict(["TMSB4X"])).all()
    with pytest.raises(ConfigError):
        RidgeModel(pert_embedding="word2vec")


def test_interface_errors(norman):
    with pytest.raises(InputDataError, match="not fitted"):
        Additive().predict(["KLF1"])
    with pytest.raises(InputDataError, match="not in the data"):
        Additive().fit(norman, ["KLF1", "NOTAGENE"])
    with pytest.raises(InputDataError, match="list"):
        NoChange().fit(norman, ["KLF1"]).predict("KLF1")
    with pytest.raises(ConfigError):
        GEARSModel(batch_size=1)
    with pytest.raises(ConfigError):
        GEARSModel(hiddn=8)
    with pytest.raises(ConfigError, match="select_metric"):
        GEARSModel(select_metric="accuracy")
    with pytest.raises(InputDataError, match="also training"):
        GEARSModel(epochs=0).fit(norman, ["KLF1", "SGK1"], val_conditions=["SGK1"])


TINY = dict(hidden=16, epochs=3, max_cells_per_condition=16, batch_size=32, seed=7, device="cpu")


@pytest.fixture(scope="module")
def gears_fit(norman, seen2_split):
    return GEARSModel(GEARSConfig(**TINY)).fit(norman, seen2_split.train)


def test_gears_trains_and_predicts(norman, seen2_split, gears_fit):
    m = gears_fit
    assert len(m.history_) == 3 and m.history_[-1] < m.history_[0]  # training loss falls
    pred = m.predict(seen2_split.test)
    assert pred.shape == (5, norman.n_genes) and np.isfinite(pred).all()
    res = evaluate(m, norman, seen2_split.test)
    assert np.isfinite(res.loc["mean", list(METRICS)].astype(float)).all()
    emb = m.embed(["KLF1", "ctrl", "KLF1+MAP2K6"])
    assert emb.shape == (3, 16) and np.allclose(emb[1], 0) and not np.allclose(emb[0], emb[2])
    # a gene outside the fitted GO node set: no perturbation embedding -> the unperturbed prediction
    np.testing.assert_allclose(m.predict(["NOTAGENE"]), m.predict(["ctrl"]), atol=1e-6)


def test_gears_deterministic_and_matches_reference(norman, seen2_split, gears_fit):
    again = GEARSModel(**{**TINY, "epochs": 1}).fit(norman, seen2_split.train)
    first = GEARSModel(**{**TINY, "epochs": 1}).fit(norman, seen2_split.train)
    np.testing.assert_array_equal(again.predict(SEEN2), first.predict(SEEN2))
    net = gears_fit.network_
    ts = gears_fit.trainset_
    x = torch.from_numpy(ts.X[:12])
    nodes = torch.from_numpy(ts.cond_nodes[ts.cond[-12:]])
    net.train()
    try:
        torch.manual_seed(0)
        a = net(x, nodes)
        b = reference_forward(net, x, nodes)
    finally:
        net.eval()
    assert torch.allclose(a, b, atol=1e-5)


def test_gears_keeps_best_validation_epoch(norman, seen2_split):
    """With validation conditions the parameters of the best-validation epoch are kept (as GEARS does):
    exactly the model that training for that many epochs gives; the caller's random streams stay put."""
    val = ["FOXO4", "PTPN12+ZBTB10", "SGK1+TBX3"]
    train = [c for c in seen2_split.train if c not in val]
    cfg = {**TINY, "epochs": 4}
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    m = GEARSModel(**cfg).fit(norman, train, val_conditions=val)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))
    assert len(m.val_history_) == 4 and len(m.val_seconds_) == 4
    assert m.best_epoch_ == int(np.argmin(m.val_history_)) + 1
    assert m.best_epoch_ < 4  # this seed's validation curve is not monotonic, so the test means something
    kept = evaluate(m, norman, val).loc["mean", "mse_top20_de"]
    assert kept == pytest.approx(min(m.val_history_), abs=1e-12)
    short = GEARSModel(**{**cfg, "epochs": m.best_epoch_}).fit(norman, train)  # no validation: last epoch
    assert short.best_epoch_ == m.best_epoch_ and short.val_history_ == []
    np.testing.assert_array_equal(m.predict(SEEN2), short.predict(SEEN2))
    last = GEARSModel(**{**cfg, "select_metric": None}).fit(norman, train, val_conditions=val)
    assert last.best_epoch_ == 4 and last.history_ == m.history_  # same training, no selection
    assert not np.array_equal(last.predict(SEEN2), m.predict(SEEN2))


def test_gears_batched_gradients_equal_per_cell_reference(gears_fit):
    """The decoder runs once per distinct perturbation with count-weighted BatchNorm and a hand-written
    backward: in float64 its output, gradients and running statistics equal the per-cell reference's."""
    import copy

    ts = gears_fit.trainset_
    rows = np.random.default_rng(0).choice(len(ts.X), 24, replace=False)  # mixed conditions, some repeated
    x = torch.from_numpy(ts.X[rows]).double()
    nodes = torch.from_numpy(ts.cond_nodes[ts.cond[rows]])
    assert 1 < len(set(ts.cond[rows])) < 24
    nets = [copy.deepcopy(gears_fit.network_).double().train() for _ in range(2)]
    outs = [nets[0](x, nodes), reference_forward(nets[1], x, nodes)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-10)
    for net, out in zip(nets, outs):
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10, msg=name)
    for (name, a), b in zip(nets[0].named_buffers(), nets[1].buffers()):
        if a.dtype.is_floating_point and a.layout == torch.strided:
            # the gene branch runs once per batch, not per cell: same statistics, but its running
            # variance's unbiasing factor counts n_genes rather than n_cells x n_genes rows
            once = name.startswith(("bn_emb", "emb_trans_v2"))
            torch.testing.assert_close(a, b, rtol=1e-3 if once else 0, atol=0 if once else 1e-12, msg=name)


def test_gears_two_forwards_before_backward(gears_fit):
    """The decoder's reusable buffers never mix two pending graphs: two forwards and one backward give
    the gradients of two forward-backward steps."""
    import copy

    ts = gears_fit.trainset_
    x = torch.from_numpy(ts.X[:20])
    nodes = [torch.from_numpy(ts.cond_nodes[ts.cond[r]]) for r in (np.arange(0, 20), np.arange(len(ts.X) - 20, len(ts.X)))]
    a, b = (copy.deepcopy(gears_fit.network_).train() for _ in range(2))
    (a(x, nodes[0]).sum() + a(x, nodes[1]).sum()).backward()
    b(x, nodes[0]).sum().backward()
    b(x, nodes[1]).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_sgc_closed_form_equals_gradient_descent():
    """SGC (Wu et al. 2019): the dual closed form equals gradient descent on the primal ridge problem,
    and an unmeasured gene with no measured neighbour within 2K hops gets only the training mean."""
    from netformer.perturbseq.data import PerturbData
    from netformer.perturbseq.models import SGCModel, symmetric_gcn_operator

    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(8)]
    # path G0-G1-...-G5 plus an isolated pair G6-G7
    edges = pd.DataFrame({"source": [f"G{i}" for i in range(5)] + ["G6"],
                          "target": [f"G{i + 1}" for i in range(5)] + ["G7"], "importance": 1.0})
    readouts = [f"R{j}" for j in range(4)]
    ctrl = rng.normal(size=4)
    X = np.vstack([ctrl + rng.normal(size=(9, 4)), ctrl])
    data = PerturbData.from_arrays(X, genes + ["G4+G5", "ctrl"], readouts)
    train = ["G0", "G1", "G3", "G4+G5"]
    m = SGCModel(hops=2, ridge=0.3, go_graph=edges).fit(data, train)
    nodes, S = symmetric_gcn_operator(edges)
    F = m.features(train).toarray()
    np.testing.assert_allclose(F[0], (S @ S).toarray()[list(nodes).index("G0")])
    Y = data.delta(train)
    W, b = np.zeros((F.shape[1], 4)), np.zeros(4)
    lr = 0.5 / (np.linalg.norm(F, 2) ** 2 + m.lambda_ + len(train))
    for _ in range(60_000):
        r = F @ W + b - Y
        W -= lr * 2 * (F.T @ r + m.lambda_ * W)
        b -= lr * 2 * r.sum(0)
    np.testing.assert_allclose(m.coef_, W, atol=1e-8)
    np.testing.assert_allclose(m.intercept_, b, atol=1e-8)
    test = ["G2", "G5", "G6", "G2+G6"]
    np.testing.assert_allclose(m.predict_delta(test), m.features(test).toarray() @ W + b, atol=1e-8)
    # G6 shares no node with any training gene: its prediction is the intercept b (no neighbour information)
    np.testing.assert_allclose(m.predict_delta(["G6"])[0], b, atol=1e-8)
    assert m.embed(test).shape == (4, len(train))
    with pytest.raises(ConfigError):
        SGCModel(hops=0)
