"""Kang 2018 in silico treatment with a fine-tuned ctrl/stim cell classifier (its encoder).

Fine-tunes the pretrained ``small`` model of ``perturb_model.py`` (``--model``) as a
``BertForSequenceClassification`` (ctrl vs stim, all 2,000 Kang cells, 256 tokens, AdamW lr 5e-4,
``--steps`` steps of batch 16, seed 0), saves it, then runs exact in silico treatment of
``--cells`` stimulated cells toward ctrl with the classifier's encoder (``load_model(kind="base")``),
embeddings from the last layer (``layer=-1``; upstream reads fine-tuned models at the last layer).

Run: ``python benchmarks/perturb_kang_classifier.py --model DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from perturb_examples import KNOWN_ISGS, RESULTS, TMP, prepare_model  # noqa: E402


def finetune(model_dir: Path, ds, steps: int, out: Path) -> float:
    from transformers import BertForSequenceClassification

    from netformer.embed import pad_batch
    from netformer.model import load_vocab_for, save_model

    torch.manual_seed(0)
    vocab = load_vocab_for(model_dir)
    clf = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=2, attn_implementation="sdpa")
    clf.train()
    y = np.array([1 if c == "stim" else 0 for c in ds["condition"]])
    ids = ds["input_ids"]
    opt = torch.optim.AdamW(clf.parameters(), lr=5e-4, weight_decay=0.01)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    for step in range(steps):
        b = order[(step * 16) % len(order):][:16]
        x, m = pad_batch([ids[i] for i in b], vocab.pad_id, 256)
        loss = clf(input_ids=x, attention_mask=m, labels=torch.as_tensor(y[b])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            logging.info("step %d loss %.3f", step, float(loss))
    clf.eval()
    # training accuracy on a held-back-free check (all cells, quick)
    correct = 0
    with torch.no_grad():
        for s in range(0, len(ids), 64):
            x, m = pad_batch(ids[s:s + 64], vocab.pad_id, 256)
            correct += int((clf(input_ids=x, attention_mask=m).logits.argmax(-1).numpy() == y[s:s + 64]).sum())
    save_model(clf, out, vocab=vocab, overwrite=True)
    return correct / len(ids)


def main() -> None:
    from netformer.datasets import shared_data_dir
    from netformer.model import load_vocab_for
    from netformer.perturb import CellStates, PerturbConfig, StatsConfig, gene_stats, perturb, write_stats
    from netformer.tokenize import TranscriptomeTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--cells", type=int, default=100)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(2)
    model_dir = prepare_model(args.model)
    vocab = load_vocab_for(model_dir)
    path = shared_data_dir() / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
    ds = TranscriptomeTokenizer(vocab, model_input_size=256, obs_columns=["condition"]).tokenize(path)
    clf_dir = TMP / "kang_classifier"
    t0 = time.perf_counter()
    acc = finetune(model_dir, ds, args.steps, clf_dir) if not (clf_dir / "config.json").exists() else float("nan")
    t_ft = time.perf_counter() - t0
    cfg = PerturbConfig(genes="all", mode="exact", layer=-1, max_cells=args.cells, seed=0, chunk_cells=10, device="cpu")
    t0 = time.perf_counter()
    res = perturb(clf_dir, ds, cfg, states=CellStates("condition", "stim", "ctrl"), out_dir=TMP / "isp_kang_classifier")
    t_run = time.perf_counter() - t0
    table = gene_stats(res.results, StatsConfig(seed=0, min_cells=5))
    title = "Kang 2018, fine-tuned ctrl/stim classifier: delete each gene in stim cells, shift toward ctrl"
    out = RESULTS / "perturb_kang_classifier"
    write_stats(table, out, res.results, title=title)
    tested = table[table["n_cells"] >= 5].reset_index(drop=True)
    isg_rank = tested.index[tested["symbol"].isin(KNOWN_ISGS)].to_numpy() + 1
    top = table.head(20)
    summary = {"train_accuracy": acc, "finetune_steps": args.steps, "finetune_seconds": round(t_ft, 1),
               "cells": int(res.results["cell_index"].nunique()), "perturbations": int(len(res.results)),
               "run_seconds": round(t_run, 1), "genes_tested": int(len(tested)),
               "known_isgs_in_top20": int(top["symbol"].isin(KNOWN_ISGS).sum()),
               "known_isgs_tested": int(len(isg_rank)),
               "known_isg_median_rank": float(np.median(isg_rank)) if len(isg_rank) else None,
               "skipped": res.skipped}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = [f"# {title}", "", "```", json.dumps(summary, indent=1), "```", "",
          "| rank | symbol | ensembl_id | n_cells | mean_shift | fdr_vs_pooled | fdr_vs_null | known ISG |",
          "|---|---|---|---|---|---|---|---|"]
    for i, r in top.iterrows():
        md.append(f"| {i + 1} | {r['symbol']} | {r['ensembl_id']} | {r['n_cells']} | {r['mean_shift']:.3g} | "
                  f"{r['fdr_vs_pooled']:.3g} | {r['fdr_vs_null']:.3g} | {'yes' if r['symbol'] in KNOWN_ISGS else ''} |")
    (out / "top20.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
