"""bf16 against fp32 on real cells: agreement and speed of embeddings, exact and screen perturbation, fine-tuning.

Everything runs twice in the same process, ``precision="fp32"`` and ``precision="bf16"``
(:mod:`netformer.precision`), on the same cells and model:

- cell embeddings (Kang 2018 PBMCs): cosine of each cell's bf16 embedding to its fp32 one; cells/s;
- exact in silico deletion of every expressed gene of N stimulated Kang cells, without cell states
  (``cell_effect``) and as in silico treatment toward control (``shift_goal``): Spearman of the
  per-gene shifts over all genes of each cell, bf16 vs fp32, and the top-20 overlap of the treatment
  ranking (genes ranked by their mean shift toward the goal over the cells); perturbations/s;
- screen mode (``mode="screen"``): the same bf16-vs-fp32 agreement, and screen-vs-exact agreement
  (Spearman over all genes of a cell) with and without cell states, in both precisions;
- fine-tuning (pbmc3k cell types, a stratified 80/20 split): macro-F1 of fp32 vs bf16 autocast training.

Plus the random-weight Geneformer shapes (``geneformer-v1-10m``, ``geneformer-v2-104m``, 3 layers kept
as in issue 12) on real pbmc3k cells: embedding cosine and speed-up, and the machine's float32 and
bfloat16 matmul rates with the CPU capability PyTorch reports.

The encoder (``--model``): any netformer model directory; by default the ``small`` preset
pretrained here (``--pretrain-steps``, cached under ``--work``).

    python benchmarks/precision_agreement.py [--model DIR] [--cells 8] [--work /tmp/netformer_precision]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scrna"
PBMC, KANG = DATA / "pbmc3k_raw_labeled.h5ad", DATA / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"


def matmul_rates(n: int = 2048, reps: int = 5) -> dict:
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        out[name] = reps * 2 * n ** 3 / (time.perf_counter() - t) / 1e9
    return out


def pretrained_small(work: Path, steps: int, length: int) -> Path:
    """The ``small`` preset pretrained ``steps`` steps on pbmc3k + Kang cells (cached)."""
    import datasets

    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import TranscriptomeTokenizer, build_vocab

    run = work / f"small_{steps}_{length}"
    if (run / "model" / "config.json").exists():
        return run / "model"
    vocab = build_vocab([PBMC, KANG], min_cells=5, name="pbmc-kang")
    parts = [TranscriptomeTokenizer(vocab, model_input_size=length).tokenize(p).select_columns(["input_ids", "length"])
             for p in (PBMC, KANG)]
    cfg = PretrainConfig(preset="small", max_length=length, max_steps=steps, batch_size=16, learning_rate=1e-3,
                         warmup_steps=50, save_steps=steps, logging_steps=20, seed=0, device="cpu")
    return pretrain(datasets.concatenate_datasets(parts), vocab, run, cfg).model_dir


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def per_cell_spearman(x: pd.DataFrame, y: pd.DataFrame, col_x: str, col_y: str) -> np.ndarray:
    from scipy.stats import spearmanr

    keys = ["cell_index", "perturbed"]
    m = x[keys + [col_x]].rename(columns={col_x: "a"}).merge(y[keys + [col_y]].rename(columns={col_y: "b"}), on=keys)
    cx, cy = "a", "b"
    return np.array([spearmanr(g[cx], g[cy]).statistic for _, g in m.groupby("cell_index") if len(g) > 2])


def top_overlap(x: pd.DataFrame, y: pd.DataFrame, col: str, k: int = 20) -> float:
    a = x.groupby("perturbed")[col].mean().sort_values(ascending=False).index[:k]
    b = y.groupby("perturbed")[col].mean().sort_values(ascending=False).index[:k]
    return len(set(a) & set(b)) / k


def section_perturb(model, kang, cells: int, rows: list) -> dict:
    from netformer.perturb import CellStates, PerturbConfig, perturb

    states = CellStates("condition", start="stim", goal="ctrl")
    base = dict(max_cells=cells, seed=0, max_state_cells=64, chunk_cells=4, device="cpu")
    runs = {}
    for mode in ("exact", "screen"):
        for with_states in (False, True):
            for prec in ("fp32", "bf16"):
                res, sec = timed(lambda: perturb(model, kang, PerturbConfig(mode=mode, precision=prec, **base),
                                                 states=states if with_states else None).results)
                runs[mode, with_states, prec] = res
                n_eval = len(res) if mode == "exact" else int(res["exact"].sum()) if "exact" in res else len(res)
                rows.append({"what": f"{mode} perturbation, {'toward ctrl' if with_states else 'no states'}",
                             "precision": prec, "seconds": sec, "perturbations": len(res),
                             "per_second": len(res) / sec, "exact_evaluated": n_eval})
    agree = {}
    for with_states in (False, True):
        col = "shift_goal" if with_states else "cell_effect"
        key = "toward ctrl" if with_states else "no states"
        ex32, ex16 = runs["exact", with_states, "fp32"], runs["exact", with_states, "bf16"]
        agree[f"exact {key}: Spearman bf16 vs fp32 (per cell, all genes)"] = per_cell_spearman(ex32, ex16, col, col)
        if with_states:
            agree[f"exact {key}: top-20 overlap of the treatment ranking"] = np.array([top_overlap(ex32, ex16, col)])
        est = "shift_estimate" if with_states else "cell_effect_estimate"
        for prec in ("fp32", "bf16"):
            sc = runs["screen", with_states, prec]
            agree[f"screen vs exact {key}, {prec}: Spearman (per cell, all genes)"] = per_cell_spearman(
                sc, runs["exact", with_states, prec], est, col)
        agree[f"screen {key}: Spearman of estimates bf16 vs fp32"] = per_cell_spearman(
            runs["screen", with_states, "fp32"], runs["screen", with_states, "bf16"], est, est)
    return agree


def section_finetune(model_dir: Path, n_cells: int, epochs: int, rows: list) -> dict:
    from sklearn.model_selection import train_test_split

    from netformer.classify import CellClassifier, FinetuneConfig
    from netformer.genes import model_vocab
    from netformer.model import model_input_size
    from netformer.tokenize import TranscriptomeTokenizer

    vocab = model_vocab(model_dir)
    ds = TranscriptomeTokenizer(vocab, model_input_size=model_input_size(model_dir),
                                obs_columns=["cell_type"]).tokenize(PBMC)
    labels = np.asarray(ds["cell_type"])
    keep = np.flatnonzero(pd.Series(labels).map(pd.Series(labels).value_counts()) >= 10)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(keep, size=min(n_cells, keep.size), replace=False))
    tr, te = train_test_split(keep, test_size=0.2, stratify=labels[keep], random_state=0)
    out = {}
    from sklearn.metrics import f1_score

    for prec in ("fp32", "bf16"):
        clf = CellClassifier(model_dir, FinetuneConfig(epochs=epochs, precision=prec, device="cpu", seed=0))
        _, sec = timed(lambda: clf.fit(ds.select(tr.tolist()), "cell_type"))
        pred = clf.predict_labels(ds.select(te.tolist()))
        out[prec] = f1_score(labels[te], pred, average="macro")
        rows.append({"what": f"fine-tuning ({len(tr)} cells x {epochs} epochs)", "precision": prec,
                     "seconds": sec, "per_second": len(tr) * epochs / sec, "macro_f1": out[prec]})
    return out


def section_shapes(rows: list, n_cells: int, layers: int) -> dict:
    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.genes import GeneVocab
    from netformer.model import model_config, new_model
    from netformer.tokenize import TranscriptomeTokenizer

    shared = DATA.parent / "genes"
    out = {}
    for preset, folder, size in (("geneformer-v1-10m", "geneformer_gc30M", 2048),
                                 ("geneformer-v2-104m", "geneformer_gc104M", 4096)):
        vocab = GeneVocab.from_geneformer(shared / folder)
        cfg = model_config(preset, vocab=vocab, num_hidden_layers=layers) if layers else model_config(preset, vocab=vocab)
        model = new_model(cfg, seed=0).bert.eval()
        import anndata as ad

        adata = ad.read_h5ad(PBMC)[:n_cells].copy()
        ds = TranscriptomeTokenizer(vocab, model_input_size=size).tokenize(adata)
        embs = {}
        for prec in ("fp32", "bf16"):
            ecfg = EmbeddingConfig(layer=-1, batch_size=4, precision=prec)
            embed_cells(model, ds.select(range(4)), ecfg, vocab=vocab)  # warm-up
            embs[prec], sec = timed(lambda: embed_cells(model, ds, ecfg, vocab=vocab))
            rows.append({"what": f"embedding, {preset} shape ({cfg.num_hidden_layers} layers, random weights)",
                         "precision": prec, "seconds": sec, "per_second": len(ds) / sec})
        out[preset] = cosines(embs["fp32"], embs["bf16"])
    return out


def main() -> None:
    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.genes import model_vocab
    from netformer.model import load_model, model_input_size
    from netformer.precision import cpu_features
    from netformer.tokenize import TranscriptomeTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: pretrain 'small' here)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/netformer_precision"))
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-length", type=int, default=512)
    ap.add_argument("--cells", type=int, default=8, help="stimulated Kang cells perturbed")
    ap.add_argument("--embed-cells", type=int, default=400)
    ap.add_argument("--finetune-cells", type=int, default=800)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--shape-cells", type=int, default=16)
    ap.add_argument("--shape-layers", type=int, default=3, help="encoder layers of the Geneformer shapes (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: perturb,finetune,shapes")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    args.work.mkdir(parents=True, exist_ok=True)

    feats = cpu_features()
    rates = matmul_rates()
    print(f"CPU: {feats['name']}, PyTorch capability {feats['capability']}, AMX-BF16 {feats['amx_bf16']}, "
          f"AVX512-BF16 {feats['avx512_bf16']}, {args.threads} threads")
    print(f"matmul 2048x2048: fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s "
          f"({rates['bf16'] / rates['fp32']:.2f}x)")
    model_dir = args.model or pretrained_small(args.work, args.pretrain_steps, args.pretrain_length)
    print(f"encoder: {model_dir}")
    vocab = model_vocab(model_dir)
    size = model_input_size(model_dir)
    kang = TranscriptomeTokenizer(vocab, model_input_size=size, obs_columns=["condition"]).tokenize(KANG)
    model = load_model(model_dir, kind="base", device="cpu")
    rows, agree = [], {}

    sub = kang.select(range(min(args.embed_cells, len(kang))))
    embs = {}
    for prec in ("fp32", "bf16"):
        embs[prec], sec = timed(lambda: embed_cells(model, sub, EmbeddingConfig(precision=prec, batch_size=32)))
        rows.append({"what": f"embedding, pretrained encoder ({len(sub)} Kang cells)", "precision": prec,
                     "seconds": sec, "per_second": len(sub) / sec})
    agree["cell embedding cosine bf16 vs fp32 (pretrained encoder)"] = cosines(embs["fp32"], embs["bf16"])
    if "perturb" not in skip:
        agree.update(section_perturb(model, kang, args.cells, rows))
    f1 = section_finetune(model_dir, args.finetune_cells, args.finetune_epochs, rows) if "finetune" not in skip else {}
    if f1:
        agree["fine-tuned macro-F1, bf16 minus fp32"] = np.array([f1["bf16"] - f1["fp32"]])
    if "shapes" not in skip:
        for preset, cos in section_shapes(rows, args.shape_cells, args.shape_layers).items():
            agree[f"cell embedding cosine bf16 vs fp32 ({preset} shape, random weights)"] = cos

    speed = pd.DataFrame(rows)
    print("\n## Speed (same run)\n")
    print(speed.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    pairs = speed.pivot_table(index="what", columns="precision", values="per_second", sort=False)
    print("\nbf16 / fp32 speed:")
    for what, r in pairs.iterrows():
        print(f"  {what}: {r['bf16'] / r['fp32']:.2f}x")
    print("\n## Agreement\n")
    table = pd.DataFrame([{"measure": k, "n": len(v), "mean": float(np.mean(v)), "min": float(np.min(v))}
                          for k, v in agree.items()])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    if args.json:
        args.json.write_text(json.dumps({"cpu": feats, "matmul_gflops": rates, "speed": rows,
                                         "agreement": table.to_dict("records")}, indent=1, default=float))


if __name__ == "__main__":
    main()
