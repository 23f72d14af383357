"""Gene networks from the model on real cells, scored against GO and beside co-expression (issue 14, parts 2-3).

For pbmc3k (all cells) and Kang 2018 (interferon-beta stimulated and control cells separately):

- attention networks (:func:`netformer.network.attention_network`, all heads; the last layer, and all layers
  averaged, ``--attention-layers``) of ``--attention-cells`` cells, and perturbation network (:func:`netformer.network.perturbation_network_from_model`: every expressed
  gene of ``--perturb-cells`` cells deleted, gene embeddings at the second-to-last layer);
- the co-expression network (Pearson |r| of log-normalised counts) of the same cells and genes;
- GO AUPRC of every scored pair (pairs with both genes in the GO graph; a GO edge in either direction is a
  positive) for the model network, the same pairs with shuffled scores (mean of 20) and the co-expression
  scores of the same pairs; and of the top-20 edges per source;
- the interferon-stimulated-gene module (:data:`netformer.classify.genesets.INTERFERON_STIMULATED_GENES`) in
  the top-20 edge table: fraction of the set's network genes in the largest connected component of their
  induced subgraph, mean PageRank percentile, permutation p-values (1,000 random sets of the same size),
  for the model network and the co-expression network (top-20 |r| per gene) of the same cells.

Run: ``python benchmarks/gene_network.py --figures [--model DIR]`` (1 thread; about 15 minutes on a shared CPU).
Writes benchmarks/results/gene_network.md and gene_network.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
RESULTS = HERE / "results"
DEFAULT_MODEL = RESULTS / "tmp" / "pretrained_small" / "model"


def run_group(model, vocab, data, name: str, cell_filter, args) -> list[dict]:
    from netformer.classify.genesets import INTERFERON_STIMULATED_GENES
    from netformer.network import (
        NetworkConfig,
        attention_network,
        coexpression_network,
        network_cells,
        network_report,
        perturbation_network_from_model,
    )
    from netformer.perturb import PerturbConfig

    rows = []
    kinds = [("attention", layers, args.attention_cells, args.attention_min_cells) for layers in args.attention_layers]
    kinds += [("perturbation", "-", args.perturb_cells, args.perturb_min_cells)] if args.perturb_cells else []
    for kind, layers, n_cells, min_cells in kinds:
        cfg = NetworkConfig(layers=layers if kind == "attention" else (-1,), max_cells=n_cells, min_cells=min_cells,
                            cell_filter=cell_filter, max_length=args.max_length, seed=args.seed, top_k=20)
        t0 = time.perf_counter()
        if kind == "attention":
            net = attention_network(model, data.dataset, cfg, vocab=vocab)
        else:
            pcfg = PerturbConfig(max_cells=n_cells, seed=args.seed, max_length=args.max_length, cell_filter=cell_filter,
                                 batch_size=64)
            net = perturbation_network_from_model(model, data.dataset, cfg, pcfg, vocab=vocab)
        seconds = time.perf_counter() - t0
        cells = data.adata[network_cells(data.dataset, cfg)]
        co = coexpression_network(cells, vocab, genes=net.genes)
        rep = network_report(net, cfg, baseline=co)
        co_rep = network_report(co, cfg, go=False)
        label = f"attention (layers {layers})" if kind == "attention" else kind
        row = {"data": name, "kind": label, "n_cells": net.info["n_cells"], "n_genes": len(net.genes),
               "min_cells": min_cells, "n_pairs": len(net.pairs), "seconds": round(seconds, 1),
               "info": net.info, "scores": rep.scores,
               "coexpression_module": co_rep.scores["module_interferon_stimulated_genes"]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("info",)}, default=str)[:1500], flush=True)
        if args.figures and name.startswith("Kang"):
            from netformer.network import plot_top_subnetwork

            tag = name.split()[-1]
            if kind == "attention" and layers != args.attention_layers[0]:
                continue
            plot_top_subnetwork(rep.edges, rep.centrality, RESULTS / f"gene_network_kang_{tag}_{kind}.png",
                                title=f"{kind} network, Kang {tag} ({net.info['n_cells']} cells)",
                                highlight=INTERFERON_STIMULATED_GENES, highlight_label="interferon-stimulated genes")
    return rows


def _f(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(rows: list[dict], args, model: Path, command: str, total: float) -> str:
    lines = ["# Gene networks on real cells: GO AUPRC and the interferon module", "",
             f"Command: `{command}`", "",
             f"Model: `{model}`. Cells truncated to {args.max_length} tokens; 1 CPU thread; total {total / 60:.1f} min.",
             "Attention: the layers named in the table (-1 the last), all heads, genes in >= min_cells cells, pairs co-occurring in >= 3 cells, "
             "row-normalised. Perturbation: every expressed gene deleted, mean 1 - cos of the other genes' "
             "embeddings (layer -2), pairs measured in >= min_cells cells. Co-expression: |Pearson r| of "
             "log-normalised counts of the same cells and genes.", "",
             "## GO: all scored pairs with both genes in GO", "",
             "| data | network | cells | genes | pairs in GO | GO edges | base rate | AUPRC model | AUPRC shuffled | "
             "AUPRC co-expression | model / co-expression | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"].get("go_all_pairs", {})
        if "auprc" not in s:
            lines.append(f"| {r['data']} | {r['kind']} | {r['n_cells']} | {r['n_genes']} | skipped: {s.get('skipped')} |")
            continue
        lines.append(f"| {r['data']} | {r['kind']} | {r['n_cells']} | {r['n_genes']} | {s['n_pairs']:,} | "
                     f"{s['n_positive']:,} | {_f(s['base_rate'])} | {_f(s['auprc'])} | {_f(s['auprc_shuffled'])} | "
                     f"{_f(s['baseline_auprc'])} | {s['auprc'] / s['baseline_auprc']:.2f} | {r['seconds']} |")
    lines += ["", "## GO: the top-20 edges per source gene", "",
              "| data | network | edges in GO | GO edges | base rate | AUPRC model | AUPRC shuffled | AUPRC co-expression |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"].get("go_edges", {})
        if "auprc" in s:
            lines.append(f"| {r['data']} | {r['kind']} | {s['n_pairs']:,} | {s['n_positive']:,} | {_f(s['base_rate'])} | "
                         f"{_f(s['auprc'])} | {_f(s['auprc_shuffled'])} | {_f(s['baseline_auprc'])} |")
    lines += ["", "## Interferon-stimulated genes in the top-20 edge table", "",
              "ISGs among the network's genes (n), fraction of them in the largest connected component of their induced "
              "subgraph (random sets of the same size: mean), mean PageRank percentile (random: ~50), one-sided "
              "permutation p-values (1,000 random gene sets); the co-expression network of the same cells and genes "
              "(top-20 |r| per gene) beside it.", "",
              "| data | network | ISGs in network | LCC fraction (random) | p | mean PageRank pct | p | "
              "co-expr. LCC fraction (random) | p | co-expr. PageRank pct | p |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, c = r["scores"]["module_interferon_stimulated_genes"], r["coexpression_module"]
        if "lcc_fraction" not in m:
            lines.append(f"| {r['data']} | {r['kind']} | skipped: {m.get('skipped')} |")
            continue
        cm = (f"{c['lcc_fraction']:.2f} ({c['lcc_fraction_random']:.2f}) | {c['lcc_p']:.3f} | "
              f"{c['mean_pagerank_percentile']:.1f} | {c['pagerank_p']:.3f}") if "lcc_fraction" in c else "- | - | - | -"
        lines.append(f"| {r['data']} | {r['kind']} | {m['n_set']} | {m['lcc_fraction']:.2f} "
                     f"({m['lcc_fraction_random']:.2f}) | {m['lcc_p']:.3f} | {m['mean_pagerank_percentile']:.1f} | "
                     f"{m['pagerank_p']:.3f} | {cm} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the small encoder of "
                                                             f"benchmarks/finetune_pbmc.py, {DEFAULT_MODEL}; the "
                                                             "demo's: netformer_demo/pretrain/model)")
    p.add_argument("--attention-cells", type=int, default=300)
    p.add_argument("--attention-min-cells", type=int, default=10)
    p.add_argument("--attention-layers", nargs="+", default=["-1", "all"],
                   help="attention networks to build: encoder layers of each (-1 the last, all, or 0,1,...)")
    p.add_argument("--perturb-cells", type=int, default=40, help="0: no perturbation network")
    p.add_argument("--perturb-min-cells", type=int, default=5)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", action="store_true", help="also write the Kang top-subnetwork PNGs")
    p.add_argument("--out", type=Path, default=RESULTS / "gene_network.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)

    from netformer.classify.data import tokenize_cells
    from netformer.datasets import shared_data_dir
    from netformer.genes import model_vocab
    from netformer.model import load_model

    model_dir = args.model or DEFAULT_MODEL
    if not (model_dir / "token_dictionary.json").exists():
        p.error(f"{model_dir} holds no netformer model; pass --model DIR (e.g. netformer_demo/pretrain/model of "
                "`netformer demo`)")
    vocab = model_vocab(model_dir)
    model = load_model(model_dir, kind="base", device="cpu")
    scrna = shared_data_dir() / "scrna"
    t0 = time.perf_counter()
    rows = []
    pbmc = tokenize_cells(scrna / "pbmc3k_raw_labeled.h5ad", vocab, max_length=args.max_length)
    rows += run_group(model, vocab, pbmc, "pbmc3k", None, args)
    kang = tokenize_cells(scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad", vocab, max_length=args.max_length,
                          obs_columns=["condition"])
    for cond in ("stim", "ctrl"):
        rows += run_group(model, vocab, kang, f"Kang {cond}", {"condition": [cond]}, args)
    total = time.perf_counter() - t0
    command = "python benchmarks/gene_network.py " + " ".join(sys.argv[1:])
    text = markdown(rows, args, model_dir, command.strip(), total)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
