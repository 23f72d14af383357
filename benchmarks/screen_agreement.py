"""Agreement of screen mode with exact mode on a pretrained encoder, with and without the anchored shift term.

In silico treatment of Kang 2018 stimulated PBMCs toward control: every expressed gene of N
stimulated cells is deleted in exact mode, and screen mode estimates the same shifts with
``screen_anchors=0`` (the first-order rank-shift term) and ``screen_anchors=8`` (exact position
shifts at 8 anchors, the default). Printed per cell and on average: Spearman correlation of the
estimates with the exact shifts over all genes of the cell.

The encoder: the tests' fixture recipe (the ``tiny`` preset pretrained 200 steps on pooled pbmc3k + Kang
cells, 256 tokens; about a minute on 2 CPU cores), or ``--model DIR``.

    python benchmarks/screen_agreement.py [--cells 12] [--layer -2] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scrna"
PBMC, KANG = DATA / "pbmc3k_raw_labeled.h5ad", DATA / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"


def tiny_model(root: Path) -> Path:
    import datasets

    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import TranscriptomeTokenizer, build_vocab

    vocab = build_vocab([PBMC, KANG], min_cells=5, name="test-pbmc")
    parts = [TranscriptomeTokenizer(vocab, model_input_size=256).tokenize(p).select_columns(["input_ids", "length"])
             for p in (PBMC, KANG)]
    cfg = PretrainConfig(preset="tiny", max_length=256, max_steps=200, batch_size=16, learning_rate=2e-3,
                         warmup_steps=30, save_steps=200, logging_steps=10, seed=0)
    return pretrain(datasets.concatenate_datasets(parts), vocab, root / "run", cfg).model_dir


def main() -> None:
    from netformer.genes import model_vocab
    from netformer.perturb import CellStates, PerturbConfig, perturb, rank_agreement
    from netformer.tokenize import TranscriptomeTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--layer", type=int, default=-2)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model = Path(args.model) if args.model else tiny_model(Path(tempfile.mkdtemp()))
    vocab = model_vocab(model)
    kang = TranscriptomeTokenizer(vocab, model_input_size=256, obs_columns=["condition"]).tokenize(KANG)
    states = CellStates("condition", start="stim", goal="ctrl")
    base = dict(max_cells=args.cells, seed=0, max_state_cells=64, chunk_cells=4, device="cpu", layer=args.layer)
    exact = perturb(model, kang, PerturbConfig(**base), states=states).results
    rows = {}
    for anchors in (0, 8):
        scr = perturb(model, kang, PerturbConfig(mode="screen", top_k=10, screen_anchors=anchors, **base),
                      states=states).results
        rhos = []
        for cell, g in scr.groupby("cell_index"):
            e = exact[exact["cell_index"] == cell].set_index("perturbed").loc[g["perturbed"], "shift_goal"].to_numpy()
            rhos.append(rank_agreement(g["shift_estimate"].to_numpy(), e, top=10)["spearman"])
        rows[anchors] = rhos
        print(f"screen_anchors={anchors}: mean Spearman {np.mean(rhos):.3f} over {len(rhos)} cells "
              f"(min {np.min(rhos):.2f}, max {np.max(rhos):.2f}); per cell {np.round(rhos, 2).tolist()}", flush=True)


if __name__ == "__main__":
    main()
