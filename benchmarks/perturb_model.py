"""Pretrain the model used by the in silico perturbation examples (cached, git-ignored).

A ``small`` preset BERT (4 layers, hidden 128) is pretrained by masked gene prediction on the pooled
real human PBMC cells of ``../shared/data/scrna`` (pbmc3k, Kang 2018 ctrl+stim, three 10x batches;
about 5,600 cells) with our own vocabulary (genes detected in >= 10 cells), cells truncated to 256
tokens. The model goes to ``benchmarks/results/tmp/perturb_model/model`` and is reused by
``perturb_kang.py`` and ``perturb_pbmc3k_mono.py``.

Run: ``python benchmarks/perturb_model.py [--epochs 1]``  (about 10-20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from netformer.datasets import shared_data_dir

OUT = Path(__file__).parent / "results" / "tmp" / "perturb_model"
MAX_LENGTH = 256


def pbmc_files() -> list[Path]:
    scrna = shared_data_dir() / "scrna"
    return [scrna / "pbmc3k_raw_labeled.h5ad", scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad",
            *sorted((scrna / "pbmc_10x_3batches").glob("*.h5ad"))]


def model_dir() -> Path:
    return OUT / "model"


def main() -> None:
    import datasets

    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import TranscriptomeTokenizer, build_vocab

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    files = pbmc_files()
    vocab = build_vocab(files, min_cells=10, name="pbmc-pooled")
    tok = TranscriptomeTokenizer(vocab, model_input_size=MAX_LENGTH)
    parts = [tok.tokenize(f).select_columns(["input_ids", "length"]) for f in files]
    pooled = datasets.concatenate_datasets(parts)
    cfg = PretrainConfig(preset="small", max_length=MAX_LENGTH, epochs=args.epochs, batch_size=16,
                         learning_rate=1e-3, warmup_steps=30, save_steps=50, logging_steps=10, seed=0)
    res = pretrain(pooled, vocab, OUT, cfg)
    print(f"model: {res.model_dir}  cells {res.n_cells}  steps {res.n_steps}  {res.train_seconds:.0f} s")
    print("loss first/last:", res.loss_history[0]["loss"], res.loss_history[-1]["loss"])


if __name__ == "__main__":
    main()
