"""GEARS-style training time per epoch: batched netformer implementation vs a per-cell reference.

Both train the same network (same initial weights, same batches, same loss) on the Norman 2019
K562 part of ../shared/data/perturbseq/devel.h5ad; only the forward computation differs:

* batched (``GEARSNetwork.forward``): gene branch computed once per batch, GO propagation as one
  sparse matmul, the batch as one (B, n_genes, h) tensor, einsum decoders;
* reference (``reference_forward``): upstream GEARS's data flow, one cell at a time - a copy of the
  gene embeddings and a dense co-expression graph pass per cell, a Python loop over each cell's
  perturbed genes, per-cell decoders (layers with BatchNorm see the whole batch, as upstream).

The two forwards agree to float rounding (checked here before timing). Prints seconds per epoch
for both and the ratio.

Usage: python benchmarks/gears_epoch.py [--threads 1] [--epochs 1] [--max-cells N] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from netformer.datasets import shared_data_dir
from netformer.perturbseq.data import read_perturbseq
from netformer.perturbseq.gears import EpochTrainer, GEARSModel, GEARSNetwork, reference_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-cells", type=int, default=None, help="cap on training cells per condition")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = read_perturbseq(shared_data_dir() / "perturbseq" / "devel.h5ad", subset={"dataset": "norman19"})
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
    losses = {}
    for name, fwd in (("batched", None), ("reference", reference_forward)):
        net = copy.deepcopy(net0)
        tr = EpochTrainer(net, ts, data.control_mean(), cfg, dev, forward=fwd)
        secs = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            losses[name] = tr.epoch()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)
        times[name] = float(np.median(secs))
        print(f"{name:9s}: {times[name]:8.2f} s/epoch (median of {args.epochs}), mean loss {losses[name]:.5f}")
    print(f"speed-up (reference / batched): {times['reference'] / times['batched']:.1f}x")


if __name__ == "__main__":
    main()
