"""LoRA against full fine-tuning of a V2-104M-config encoder: speed, peak memory and macro-F1 on the same folds.

pbmc3k published cell types (classes with >= 10 cells), ``--cells`` cells drawn with seed 0, tokenized
with the gc104M dictionary (special tokens) and truncated to ``--max-length`` tokens; k-fold
cross-validation (:func:`netformer.classify.cross_validate_cells`, the same stratified folds for every
variant) of:

- full fine-tuning (every weight trained), and
- LoRA (``FinetuneConfig(lora=rank)``: rank-r adapters on query/key/value + the head, through peft),

each in fp32 and, where the CPU or GPU multiplies bf16 natively, bf16 autocast. Each variant runs in its
own subprocess so that its peak RSS (``ru_maxrss``) is its own. The encoder is a saved
``geneformer-v2-104m`` model with random weights (``--model DIR`` for a pretrained one): the F1 figures
compare the variants with each other, not with published results.

    python benchmarks/lora_finetune.py [--cells 300] [--folds 3] [--max-length 256] [--epochs 1] [--rank 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PBMC = DATA / "scrna" / "pbmc3k_raw_labeled.h5ad"


def make_model(path: Path) -> Path:
    from netformer.genes import GeneVocab
    from netformer.model import model_config, new_model, save_model

    if not (path / "config.json").exists():
        vocab = GeneVocab.from_geneformer(DATA / "genes" / "geneformer_gc104M")
        save_model(new_model(model_config("geneformer-v2-104m", vocab=vocab), seed=0), path, vocab=vocab)
    return path


def worker(args) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from netformer.classify import FinetuneConfig, cross_validate_cells
    from netformer.classify.data import tokenize_cells
    from netformer.genes import model_vocab

    torch.set_num_threads(args.threads)
    vocab = model_vocab(args.model)
    data = tokenize_cells(PBMC, vocab, max_length=args.max_length, obs_columns=["cell_type"], n_cells=None)
    labels = pd.Series(data.dataset["cell_type"])
    keep = np.flatnonzero(labels.map(labels.value_counts()) >= 10)
    keep = np.sort(np.random.default_rng(0).choice(keep, size=min(args.cells, keep.size), replace=False))
    sample = labels.iloc[keep]
    keep = keep[sample.map(sample.value_counts()).to_numpy() >= 3 * args.folds]  # every class in every fold
    data = data.subset(keep)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=8, learning_rate=args.lr, device=args.device,
                         precision=args.precision, lora=args.rank if args.variant == "lora" else None, seed=0)
    t0 = time.perf_counter()
    res = cross_validate_cells(args.model, data, "cell_type", n_splits=args.folds, config=cfg, seed=0)
    seconds = time.perf_counter() - t0
    folds = res.folds
    out = {"variant": args.variant, "precision": args.precision, "seconds": seconds,
           "seconds_per_epoch": float(folds["seconds_per_epoch"].mean()),
           "macro_f1_folds": folds["model_macro_f1"].round(4).tolist(),
           "macro_f1": float(folds["model_macro_f1"].mean()),
           "baseline_macro_f1": float(folds["baseline_macro_f1"].mean()),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available() and args.device != "cpu":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/netformer_lora"))
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32,auto", help="comma list (auto = bf16 where native)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return worker(args)
    from netformer.precision import cpu_features, resolve_precision

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or make_model(args.work / "v2_104m_random")
    precs = sorted({resolve_precision(p, args.device) for p in args.precisions.split(",")}, key="fp32 bf16".split().index)
    f = cpu_features()
    print(f"CPU {f['name']} ({f['capability']}, AMX-BF16 {f['amx_bf16']}, AVX512-BF16 {f['avx512_bf16']}); "
          f"device {args.device}; precisions {precs}")
    rows = []
    for prec in precs:
        for variant in ("full", "lora"):
            cmd = [sys.executable, __file__, "--variant", variant, "--precision", prec, "--model", str(model),
                   "--cells", str(args.cells), "--folds", str(args.folds), "--max-length", str(args.max_length),
                   "--epochs", str(args.epochs), "--rank", str(args.rank), "--lr", str(args.lr),
                   "--threads", str(args.threads), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:])
                raise SystemExit(f"{variant} {prec} failed")
            rows.append(json.loads(line[-1][7:]))
            print(rows[-1])
    import pandas as pd

    df = pd.DataFrame(rows)
    print("\n" + df.to_string(index=False))
    for prec in precs:
        full = df[(df.variant == "full") & (df.precision == prec)].iloc[0]
        lora = df[(df.variant == "lora") & (df.precision == prec)].iloc[0]
        print(f"{prec}: LoRA / full time {lora.seconds / full.seconds:.2f}x, peak RSS {lora.peak_rss_mb:.0f} vs "
              f"{full.peak_rss_mb:.0f} MB, macro-F1 {lora.macro_f1:.3f} vs {full.macro_f1:.3f} "
              f"(baseline {full.baseline_macro_f1:.3f})")


if __name__ == "__main__":
    main()
