"""GEARS-style training: seconds per epoch and test metrics of netformer against a peer, in one run.

Two peers (``--peer``):

* ``cell-gears`` (upstream GEARS, ``pip install cell-gears==0.1.2`` with torch_geometric, in its own
  virtual environment given by ``--gears-python``; run only as a peer, in a subprocess, never
  imported by netformer). For every seed both train on the same Norman 2019 K562 part of
  ../shared/data/perturbseq/devel.h5ad with the same train / validation / test perturbations
  (``split_conditions(kind, seed=seed, val_frac=...)``), the same GO graph (the edges of
  graphs/go_top20_jaccard_orgHsEgDb_3.16.csv.gz among netformer's GO node set, given to GEARS as
  ``G_go``), the same hyper-parameters (hidden 64, Adam lr 1e-3, weight decay 5e-4, batch 32,
  direction lambda 0.1) and the same number of epochs, and both keep the epoch with the best
  validation top-20 DE MSE. GEARS builds its PertData (DE genes, non-dropout genes, control
  pairing) and its co-expression graph itself, from an h5ad in its format written here from the
  same cells; nothing is downloaded (its gene2go file is written from graphs/gene2go_*.tsv.gz,
  its gene set is netformer's GO node set). Timed: the training pass of each epoch (both), and
  each one's whole epoch (GEARS: training pass plus its evaluation of the training and validation
  sets that ``GEARS.train`` runs every epoch; netformer: training pass plus validation scoring).
  Test metrics of both come from netformer's ``evaluate`` on the predicted means (GEARS: its own
  test-loader predictions averaged per perturbation, as GEARS reports them); GEARS's own
  ``mse_de`` and ``pearson_delta`` are printed beside them as a cross-check.
* ``reference`` (machines without cell-gears): the same netformer network trained one epoch with
  its batched forward and with a self-written per-cell forward (``reference_forward``: upstream
  GEARS's data flow - a copy of the gene embeddings and a dense co-expression graph pass per
  cell, a Python loop over each cell's perturbed genes, per-cell decoders); same initial weights,
  batches and loss; the two forwards agree to float rounding (checked before timing).

CPU seconds (process time; with one thread, the wall time minus the waits for a core) are the
primary figure, since other jobs share the machine; wall seconds are printed beside them.

Usage::

    python benchmarks/gears_epoch.py --peer cell-gears --gears-python /work/upstream/gears-venv/bin/python \\
        --seeds 0,1,2 --epochs 20 --threads 1
    python benchmarks/gears_epoch.py --peer reference [--threads 1] [--epochs 1] [--max-cells N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads are slow on a shared machine

import argparse
import copy
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_GEARS_PYTHON = "/work/upstream/gears-venv/bin/python"
HP = dict(hidden=64, lr=1e-3, weight_decay=5e-4, batch_size=32, direction_lambda=0.1)


# ------------------------------------------------------------------------------------------------
# netformer side
# ------------------------------------------------------------------------------------------------
def _load_norman():
    from netformer.datasets import shared_data_dir
    from netformer.perturbseq.data import read_perturbseq

    data = read_perturbseq(shared_data_dir() / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
    data.top_de_genes(20)
    return data


def run_reference(args) -> None:
    import torch

    from netformer.perturbseq.gears import EpochTrainer, GEARSModel, GEARSNetwork, reference_forward

    torch.set_num_threads(args.threads)
    data = _load_norman()
    model = GEARSModel(epochs=0, hidden=args.hidden, max_cells_per_condition=args.max_cells, device=args.device)
    model.fit(data, data.perturbations)  # builds graphs and the training set, no training
    ts, cfg, dev = model.trainset_, model.config, torch.device(args.device)
    torch.manual_seed(0)
    net0 = GEARSNetwork(data.n_genes, model.A_co_, model.A_go_, cfg).to(dev)

    # equivalence check on one batch
    x = torch.from_numpy(ts.X[:32]).to(dev)
    pn = torch.from_numpy(ts.cond_nodes[ts.cond[-32:]]).to(dev)
    chk = copy.deepcopy(net0).eval()
    with torch.no_grad():
        diff = (chk(x, pn) - reference_forward(chk, x, pn)).abs().max().item()
    print(f"data: {len(ts.X)} training cells x {data.n_genes} genes, {len(ts.conditions)} conditions, "
          f"{len(model.nodes_)} GO nodes, batch {cfg.batch_size}, hidden {cfg.hidden}, {args.threads} thread(s), {dev}")
    print(f"max |batched - reference| on one batch: {diff:.2e}")

    times = {}
    for name, fwd in (("batched", None), ("reference", reference_forward)):
        net = copy.deepcopy(net0)
        tr = EpochTrainer(net, ts, data.control_mean(), cfg, dev, forward=fwd)
        secs, loss = [], float("nan")
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            loss = tr.epoch()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)
        times[name] = float(np.median(secs))
        print(f"{name:9s}: {times[name]:8.2f} s/epoch (median of {args.epochs}), mean loss {loss:.5f}")
    print(f"speed-up (reference / batched): {times['reference'] / times['batched']:.1f}x")


def _gears_name(cond: str) -> str:
    return cond if "+" in cond or cond == "ctrl" else f"{cond}+ctrl"


def _canon_from_gears(name: str) -> str:
    from netformer.perturbseq.data import canonical_condition

    return canonical_condition(name)


def _export_inputs(data, nodes, work: Path) -> None:
    """Files cell-gears reads: its h5ad, gene2go, gene set and the GO edges among netformer's nodes."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from netformer.datasets import shared_data_dir
    from netformer.graphs import go_graph

    X, labels = data.cells()
    obs = pd.DataFrame({"condition": [_gears_name(c) for c in labels], "cell_type": "K562"},
                       index=[f"cell{i}" for i in range(len(labels))])
    var = pd.DataFrame({"gene_name": data.genes}, index=list(data.genes))
    ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var).write_h5ad(work / "norman_devel_gears.h5ad")
    node_set = set(nodes)
    g2g = pd.read_csv(shared_data_dir() / "graphs" / "gene2go_orgHsEgDb_3.16.tsv.gz", sep="\t", usecols=["symbol", "go_id"])
    g2g = g2g[g2g["symbol"].isin(node_set)]
    gene2go = {g: set(s) for g, s in g2g.groupby("symbol")["go_id"]}
    for g in node_set - set(gene2go):  # nodes without annotation (self loop only, as in netformer)
        gene2go[g] = set()
    (work / "gears_data").mkdir(exist_ok=True)
    with open(work / "gene2go_all.pkl", "wb") as f:
        pickle.dump(gene2go, f)
    with open(work / "gene_set.pkl", "wb") as f:
        pickle.dump(sorted(node_set), f)
    edges = go_graph(None)
    edges = edges[edges["source"].isin(node_set) & edges["target"].isin(node_set)]
    edges[["source", "target", "importance"]].to_csv(work / "go_edges.csv", index=False)


def _fit_ours(data, split, seed: int, args):
    from netformer.perturbseq.gears import GEARSModel
    from netformer.perturbseq.metrics import evaluate

    import netformer.perturbseq.gears as ng

    model = GEARSModel(epochs=args.epochs, seed=seed, device=args.device, max_cells_per_condition=args.max_cells, **HP)
    cpu = {"train": [], "val": []}  # CPU seconds of this process (1 thread: wall time without the waits)
    orig_epoch, orig_score = ng.EpochTrainer.epoch, ng.GEARSModel._score

    def cpu_timed(fn, key):
        def wrapper(*a, **k):
            t = time.process_time()
            out = fn(*a, **k)
            cpu[key].append(time.process_time() - t)
            return out
        return wrapper

    ng.EpochTrainer.epoch, ng.GEARSModel._score = cpu_timed(orig_epoch, "train"), cpu_timed(orig_score, "val")
    try:
        t0 = time.perf_counter()
        model.fit(data, split.train, val_conditions=split.val)
        total = time.perf_counter() - t0
    finally:
        ng.EpochTrainer.epoch, ng.GEARSModel._score = orig_epoch, orig_score
    res = evaluate(model, data, split.test).loc["mean"]
    train = np.array(model.epoch_seconds_)
    whole = train + np.array(model.val_seconds_)
    return dict(train_s=float(np.median(cpu["train"])), epoch_s=float(np.median(np.add(cpu["train"], cpu["val"]))),
                train_wall=float(np.median(train)), epoch_wall=float(np.median(whole)), fit_s=total,
                best_epoch=model.best_epoch_, mse_top20_de=float(res["mse_top20_de"]),
                pearson_delta=float(res["pearson_delta"]), nodes=list(model.nodes_), n_train_cells=len(model.trainset_.X),
                gemm_flop=_epoch_gemm_flop(model, seed))


def _epoch_gemm_flop(model, seed: int) -> float:
    """Dense matmul FLOPs of one of our training epochs (forward + backward, the first epoch's batches):
    the shared MLP's first layer over (distinct perturbations x genes) rows and the cross-gene layer
    over cells; the graph layers and the gene branch (n_genes rows) are left out (< 3%)."""
    ts, cfg = model.trainset_, model.config
    order = np.random.default_rng(seed + 1).permutation(len(ts.X))  # EpochTrainer's first permutation
    G, h = len(ts.gene_mask[0]), cfg.hidden
    flop = 0.0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        U = len({tuple(ts.cond_nodes[c]) for c in ts.cond[idx]})
        flop += 3 * 2 * (U * G * h * 2 * h + len(idx) * G * h)
    return flop


def _matmul_rate(threads: int) -> float:
    """float32 GFLOP/s of a 1,024 x 1,024 matmul on ``threads`` threads (best of 5)."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best / 1e9


def _run_gears(data, split, seed: int, args, work: Path) -> dict:
    import pandas as pd

    from netformer.perturbseq.metrics import evaluate

    run = work / f"seed{seed}"
    run.mkdir()
    sets = {"train": ["ctrl"] + [_gears_name(c) for c in split.train],
            "val": [_gears_name(c) for c in split.val], "test": [_gears_name(c) for c in split.test]}
    with open(run / "split.pkl", "wb") as f:
        pickle.dump(sets, f)
    job = dict(work=str(work), run=str(run), seed=seed, epochs=args.epochs, threads=args.threads, **HP)
    (run / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    with open(run / "log.txt", "w") as log:
        p = subprocess.run([args.gears_python, os.path.abspath(__file__), "--cell-gears-child", str(run / "job.json")],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run)
    if p.returncode != 0:
        sys.exit(f"cell-gears failed (exit {p.returncode}); see {run / 'log.txt'}:\n" + (run / "log.txt").read_text()[-3000:])
    out = json.loads((run / "result.json").read_text())
    pred = np.load(run / "test_pred.npz", allow_pickle=False)
    df = pd.DataFrame(pred["mean"], index=[_canon_from_gears(c) for c in pred["conditions"]], columns=pred["genes"])
    res = evaluate(df, data, split.test).loc["mean"]
    out.update(mse_top20_de=float(res["mse_top20_de"]), pearson_delta=float(res["pearson_delta"]))
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def run_cell_gears(args) -> None:
    import torch

    from netformer.perturbseq.splits import split_conditions

    torch.set_num_threads(args.threads)
    if not Path(args.gears_python).exists():
        sys.exit(f"--gears-python {args.gears_python} does not exist; install cell-gears==0.1.2 into a venv "
                 "(torch==2.13.0 first) or use --peer reference.")
    ver = subprocess.run([args.gears_python, "-c", "import importlib.metadata as m, torch;"
                          "print(m.version('cell-gears'), m.version('torch_geometric'), torch.__version__)"],
                         capture_output=True, text=True)
    if ver.returncode != 0:
        sys.exit(f"cell-gears is not importable by {args.gears_python}:\n{ver.stderr[-2000:]}")
    gears_v, pyg_v, gtorch_v = ver.stdout.split()
    data = _load_norman()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gears_epoch_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs visible, {args.threads} thread(s) per run; torch {torch.__version__}")
    print(f"peer: cell-gears {gears_v} (torch_geometric {pyg_v}, torch {gtorch_v}) via {args.gears_python}")
    print(f"data: Norman 2019 K562 of devel.h5ad, {data}; split {args.split}, val_frac {args.val_frac}, "
          f"test_frac {args.test_frac}; {args.epochs} epochs; work folder {work}")
    rows = []
    for seed in seeds:
        split = split_conditions(data, args.split, seed=seed, test_frac=args.test_frac, val_frac=args.val_frac)
        ours = _fit_ours(data, split, seed, args)
        if seed == seeds[0]:
            _export_inputs(data, ours["nodes"], work)
            print(f"inputs: {ours['n_train_cells']} training cells (seed {seed}), {len(ours['nodes'])} GO nodes")
        print(f"seed {seed}: train {len(split.train)}, val {split.val}, test {split.test}", flush=True)
        print(f"  netformer : train pass {ours['train_s']:6.2f} CPU s/epoch ({ours['train_wall']:6.2f} wall), epoch "
              f"{ours['epoch_s']:6.2f} CPU s ({ours['epoch_wall']:6.2f} wall), best epoch "
              f"{ours['best_epoch']:2d}, test mse_top20_de {ours['mse_top20_de']:.4f}, pearson_delta {ours['pearson_delta']:.4f}", flush=True)
        up = _run_gears(data, split, seed, args, work)
        print(f"  cell-gears: train pass {up['train_s']:6.2f} CPU s/epoch ({up['train_wall']:6.2f} wall), epoch "
              f"{up['epoch_s']:6.2f} CPU s ({up['epoch_wall']:6.2f} wall), best epoch "
              f"{up['best_epoch']:2d}, test mse_top20_de {up['mse_top20_de']:.4f}, pearson_delta {up['pearson_delta']:.4f} "
              f"(its own: mse_de {up['own_mse_de']:.4f}, pearson_delta {up['own_pearson_delta']:.4f})", flush=True)
        print(f"  ratio train pass {up['train_s'] / ours['train_s']:.1f}x CPU ({up['train_wall'] / ours['train_wall']:.1f}x wall), "
              f"epoch {up['epoch_s'] / ours['epoch_s']:.1f}x CPU ({up['epoch_wall'] / ours['epoch_wall']:.1f}x wall)", flush=True)
        rows.append((seed, ours, up))

    def ms(key, side):
        v = np.array([r[side][key] for r in rows], dtype=float)
        return v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0)

    print(f"\nsummary over seeds {args.seeds} ({args.epochs} epochs, {args.threads} thread(s); mean ± sd over seeds):")
    print("| | train pass, CPU s/epoch | (wall) | epoch incl. per-epoch evaluation, CPU s | (wall) | best epoch "
          "| test mse_top20_de | test pearson_delta |")
    print("|---|---|---|---|---|---|---|---|")
    for side, name in ((1, "netformer"), (2, "cell-gears 0.1.2")):
        v = [ms(k, side) for k in ("train_s", "train_wall", "epoch_s", "epoch_wall", "mse_top20_de", "pearson_delta")]
        best = ", ".join(str(r[side]["best_epoch"]) for r in rows)
        print(f"| {name} | {v[0][0]:.2f} ± {v[0][1]:.2f} | {v[1][0]:.2f} | {v[2][0]:.2f} ± {v[2][1]:.2f} | {v[3][0]:.2f} "
              f"| {best} | {v[4][0]:.4f} ± {v[4][1]:.4f} | {v[5][0]:.4f} ± {v[5][1]:.4f} |")
    r_train = np.median([r[2]["train_s"] / r[1]["train_s"] for r in rows])
    r_epoch = np.median([r[2]["epoch_s"] / r[1]["epoch_s"] for r in rows])
    w_train = np.median([r[2]["train_wall"] / r[1]["train_wall"] for r in rows])
    w_epoch = np.median([r[2]["epoch_wall"] / r[1]["epoch_wall"] for r in rows])
    print(f"ratio cell-gears / netformer (median over seeds): train pass {r_train:.1f}x CPU ({w_train:.1f}x wall), "
          f"whole epoch {r_epoch:.1f}x CPU ({w_epoch:.1f}x wall)")
    ours_mse, up_mse = ms("mse_top20_de", 1)[0], ms("mse_top20_de", 2)[0]
    met = r_train >= 5 and ours_mse <= up_mse
    print(f"goal (epoch >= 5x at equal or better test mse_top20_de): {'met' if met else 'not met'} "
          f"(train pass {r_train:.1f}x, mse_top20_de {ours_mse:.4f} vs {up_mse:.4f})")
    rate = _matmul_rate(args.threads)
    flop = np.mean([r[1]["gemm_flop"] for r in rows])
    train = ms("train_s", 1)[0]
    print(f"bound: our epoch's dense matmuls are {flop / 1e9:.1f} GFLOP (float32); at this machine's measured "
          f"{rate:.0f} GFLOP/s (1,024^3 matmul, {args.threads} thread(s)) that is {flop / 1e9 / rate:.2f} s of our "
          f"{train:.2f} CPU s training pass; the rest is memory-bound elementwise work (BatchNorm, ReLU, Adam) and Python")


# ------------------------------------------------------------------------------------------------
# cell-gears side (runs with the peer's python; imports nothing from netformer)
# ------------------------------------------------------------------------------------------------
def _child(job_path: str) -> None:
    import random

    import torch

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    work, run, seed = Path(job["work"]), Path(job["run"]), job["seed"]
    import anndata as ad
    import pandas as pd

    import gears.gears as gg
    from gears import GEARS, PertData
    from gears.inference import compute_metrics, deeper_analysis

    random.seed(seed)
    np.random.seed(seed)  # GEARS pairs cells with controls through np.random
    torch.manual_seed(seed)  # initialisation and DataLoader shuffling
    data_path = run / "gears_data"
    data_path.mkdir()
    os.symlink(work / "gene2go_all.pkl", data_path / "gene2go_all.pkl")  # no download
    pdat = PertData(str(data_path), gene_set_path=str(work / "gene_set.pkl"), default_pert_graph=False)
    pdat.new_data_process(dataset_name="norman_devel", adata=ad.read_h5ad(work / "norman_devel_gears.h5ad"))
    pdat.prepare_split(split="custom", seed=seed, split_dict_path=str(run / "split.pkl"))
    pdat.get_dataloader(batch_size=job["batch_size"], test_batch_size=128)
    edges = pd.read_csv(work / "go_edges.csv")
    nmap = pdat.node_map_pert
    missing = sorted(set(edges["source"]) - set(nmap) | set(edges["target"]) - set(nmap))
    if missing:
        raise SystemExit(f"GO nodes unknown to GEARS's perturbation list: {missing[:10]}")
    G_go = torch.tensor([[nmap[s] for s in edges["source"]], [nmap[t] for t in edges["target"]]], dtype=torch.long)
    G_w = torch.tensor(edges["importance"].to_numpy(), dtype=torch.float32)
    model = GEARS(pdat, device="cpu")
    model.model_initialize(hidden_size=job["hidden"], direction_lambda=job["direction_lambda"], G_go=G_go, G_go_weight=G_w)

    marks, results = [], []
    orig = gg.evaluate

    def now():
        return np.array([time.perf_counter(), time.process_time()])  # wall, CPU seconds

    def timed_evaluate(loader, net, uncertainty, device):  # GEARS.train calls it for train, val (per epoch), test
        t0 = now()
        res = orig(loader, net, uncertainty, device)
        marks.append((t0, now()))
        results.append(res)
        return res

    gg.evaluate = timed_evaluate
    t_start = now()
    model.train(epochs=job["epochs"], lr=job["lr"], weight_decay=job["weight_decay"])
    t_end = now()
    gg.evaluate = orig
    E = job["epochs"]
    train_s, epoch_s, val_mse = [], [], []  # (wall, CPU) pairs
    prev = t_start
    for k in range(E):
        (a, _), (_, b) = marks[2 * k], marks[2 * k + 1]
        train_s.append((a - prev).tolist())
        epoch_s.append((b - prev).tolist())
        prev = b
        val_mse.append(float(compute_metrics(results[2 * k + 1])[0]["mse_de"]))
    best = int(np.argmin(val_mse)) + 1  # GEARS keeps the first epoch with the lowest val mse_de
    test_res = results[2 * E]  # GEARS.train's own test evaluation of its best model
    own = compute_metrics(test_res)[0]
    deep = deeper_analysis(model.adata, test_res)
    conds = sorted(set(test_res["pert_cat"]))
    mean = np.stack([test_res["pred"][test_res["pert_cat"] == c].mean(0) for c in conds])
    np.savez(run / "test_pred.npz", conditions=np.array(conds), genes=np.array(model.gene_list), mean=mean)
    tr, ep = np.array(train_s), np.array(epoch_s)
    out = dict(train_s=float(np.median(tr[:, 1])), epoch_s=float(np.median(ep[:, 1])),
               train_wall=float(np.median(tr[:, 0])), epoch_wall=float(np.median(ep[:, 0])), train_s_all=train_s,
               epoch_s_all=epoch_s, val_mse_de=val_mse, best_epoch=best, own_mse_de=float(own["mse_de"]),
               own_pearson_delta=float(np.mean([v["pearson_delta"] for v in deep.values()])),
               train_total_s=(t_end - t_start).tolist())
    (run / "result.json").write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", choices=("reference", "cell-gears"), default="reference")
    ap.add_argument("--gears-python", default=os.environ.get("NETFORMER_GEARS_PYTHON", DEFAULT_GEARS_PYTHON),
                    help="python of a venv with cell-gears==0.1.2 and torch_geometric (--peer cell-gears)")
    ap.add_argument("--seeds", default="0,1,2", help="--peer cell-gears: split and training seeds")
    ap.add_argument("--split", default="unseen_single", help="--peer cell-gears: split kind (split_conditions)")
    ap.add_argument("--val-frac", type=float, default=0.2)
    ap.add_argument("--test-frac", type=float, default=0.25)
    ap.add_argument("--workdir", default=None, help="--peer cell-gears: folder for GEARS's files (default: a new temp folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: 1 (reference), 20 (cell-gears)")
    ap.add_argument("--max-cells", type=int, default=None, help="cap on training cells per condition (netformer only)")
    ap.add_argument("--hidden", type=int, default=64, help="--peer reference")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cell-gears-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell_gears_child:
        return _child(args.cell_gears_child)
    if args.peer == "reference":
        args.epochs = args.epochs or 1
        return run_reference(args)
    if args.max_cells is not None:
        sys.exit("--max-cells applies to --peer reference only (cell-gears trains on every cell).")
    args.epochs = args.epochs or 20
    return run_cell_gears(args)


if __name__ == "__main__":
    main()
