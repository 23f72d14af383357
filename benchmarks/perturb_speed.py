"""Perturbations evaluated per second: exact mode and screening vs the upstream-style reference.

Same model, cells and genes in one run:

- reference: one forward pass per perturbed cell, batch size 1, the full ``BertForMaskedLM`` (MLM
  head included) with ``output_hidden_states=True`` (as upstream ``InSilicoPerturber``)
  -> :func:`netformer.perturb.reference_embeddings`;
- exact: :class:`netformer.perturb.ExactEvaluator` (unpadded batches of equal-length perturbations,
  encoder truncated at the embedding layer, inference mode); shifts checked equal to the reference;
- screen: :func:`netformer.perturb.screen_cell` (one forward + one backward for all genes of a cell,
  plus ``--screen-anchors N`` forward passes without gradient for the exact position shifts of a
  deletion at ``N`` anchor positions) plus exact evaluation of the top ``K`` genes; rate = genes
  ranked per second. Measured twice in the same run, with ``anchors=0`` (the first-order rank-shift
  term, before anchors) and ``anchors=N`` (default 8, as ``PerturbConfig.screen_anchors``); where
  rank agreement is measured, both screens are scored against the same exact shifts.

Cases: ``tiny`` (random weights, gc30M dictionary) on real pbmc3k cells tokenized at 256 tokens
(where exact mode over all genes is affordable, so rank agreement is also measured); the ``small``
encoder pretrained by ``python benchmarks/finetune_pbmc.py pretrain`` on the same cells, when it is
cached (rank agreement on a trained model); ``geneformer-v1-10m`` (random weights, gc30M
dictionary) on synthetic 2,048-token cells. Deletion of single genes, shift toward a goal
embedding (mean of other cells).

Also printed: the matrix-multiply GFLOP of one pass on each path (:func:`forward_gflop`), the rate
each path sustains, and the rate of a plain float32 matrix multiply on the same device in the same
run; together they bound the speed-up any float32 pass doing exact mode's work can reach there.

Case names: ``tiny``, ``trained`` (alias ``small``), ``v1`` (alias ``geneformer-v1-10m``).

Run: ``python benchmarks/perturb_speed.py`` (about 5 minutes on 2 CPU cores); on a GPU:
``python benchmarks/perturb_speed.py --device cuda --v1-batch 32 --n-ref 32``; on a GPU machine
with only PyTorch and transformers: ``--export-inputs .devinputs`` here, then
``bash benchmarks/device_perturb_speed.sh`` there (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from netformer.genes import GeneVocab
from netformer.model import model_config, new_model
from netformer.perturb import ExactEvaluator, perturb_cell, rank_agreement, reference_embeddings, screen_cell
from netformer.perturb.engine import cosine

TRAINED = Path(__file__).resolve().parent / "results" / "tmp" / "pretrained_small" / "model"


def shifts(embs: np.ndarray, orig: np.ndarray, goal: np.ndarray) -> np.ndarray:
    return cosine(embs, goal) - cosine(orig[None], goal)[0]


def bench(name, model, vocab, cells, goal, n_ref, n_exact, top_k, batch_size, full_exact: bool,
          device: str = "cpu", anchors: int = 8) -> dict:
    """One case; screen figures without suffix are for ``anchors``, ``*_a0`` for ``anchors=0``."""
    special = vocab.special_ids
    cell = cells[0]
    special_set = set(special)
    genes = [t for t in cell if t not in special_set]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(genes), size=min(n_ref, len(genes)), replace=False)
    ref_vars = [perturb_cell(cell, [genes[i]], "delete") for i in pick]
    # reference
    t0 = time.perf_counter()
    ref = reference_embeddings(model, [cell] + ref_vars, special, layer=-2, device=device)
    t_ref = time.perf_counter() - t0
    ref_rate = len(ref_vars) / t_ref
    # exact, the same perturbations (check) then n_exact for the rate
    with ExactEvaluator(model, special, layer=-2, batch_size=batch_size, device=device) as ev:
        eff = ev.evaluate(cell, ref_vars)
        err = float(np.abs(shifts(eff.perturbed, eff.original, goal) - shifts(ref[1:], ref[0], goal)).max())
        sel = genes if full_exact else [genes[i] for i in rng.choice(len(genes), size=min(n_exact, len(genes)), replace=False)]
        t0 = time.perf_counter()
        eff = ev.evaluate(cell, [perturb_cell(cell, [g], "delete") for g in sel])
        t_ex = time.perf_counter() - t0
        exact_shift = shifts(eff.perturbed, eff.original, goal)
        ex_rate = len(sel) / t_ex
        # screen: all genes estimated, top-K exact; without anchors (first-order rank-shift term) and
        # with them, on the same cell
        # (one untimed call first: the first backward pass pays autograd's start-up)
        t_scr, est = {}, {}
        screen_cell(model, cell, special, "delete", goal, anchors=0)
        for a in dict.fromkeys((0, anchors)):
            t0 = time.perf_counter()
            pos, est[a] = screen_cell(model, cell, special, "delete", goal, anchors=a)
            top = np.argsort(-est[a])[:top_k]
            ev.evaluate(cell, [perturb_cell(cell, [cell[pos[i]]], "delete") for i in top])
            t_scr[a] = time.perf_counter() - t0
        # rank agreement on the other cells, in the same evaluator context as in perturb(): the
        # screen then differentiates the same truncated encoder (embedding layer -2) exact mode
        # evaluates; both screens against the same exact shifts (one exact evaluation per cell)
        pairs = {a: [(est[a], exact_shift)] for a in est}
        for c in cells[1:] if full_exact else ():
            eff = None
            for a in est:
                p2, e2 = screen_cell(model, c, special, "delete", goal, anchors=a)
                if eff is None:
                    eff = ev.evaluate(c, [perturb_cell(c, [c[p]], "delete") for p in p2])
                    x2 = shifts(eff.perturbed, eff.original, goal)
                pairs[a].append((e2, x2))
    out = {"case": name, "cell_length": len(cell), "ref_perturbations": len(ref_vars), "ref_per_s": ref_rate,
           "exact_per_s": ex_rate, "exact_speedup": ex_rate / ref_rate, "exact_max_abs_err": err,
           "screen_anchors": anchors, "top_k": top_k}
    for a, suffix in ((anchors, ""), (0, "_a0")):
        out[f"screen_genes_per_s{suffix}"] = len(pos) / t_scr[a]
        out[f"screen_speedup{suffix}"] = out[f"screen_genes_per_s{suffix}"] / ref_rate
    # work per perturbation: the reference runs every layer and the MLM head on L - 1 tokens; exact
    # mode the layers up to the embedding layer (-2) only
    cfg, n = model.config, len(cell) - 1
    out["ref_gflop"] = forward_gflop(cfg, n, cfg.num_hidden_layers, mlm_head=True)
    out["exact_gflop"] = forward_gflop(cfg, n, cfg.num_hidden_layers - 1, mlm_head=False)
    out["flop_ratio"] = out["ref_gflop"] / out["exact_gflop"]
    out["ref_gflop_per_s"] = out["ref_gflop"] * ref_rate
    out["exact_gflop_per_s"] = out["exact_gflop"] * ex_rate
    if full_exact:
        for a, suffix in ((anchors, ""), (0, "_a0")):
            agree = [rank_agreement(e, x, top=20, shortlists=RECALL_K) for e, x in pairs[a]]
            out[f"spearman{suffix}"] = float(np.mean([r["spearman"] for r in agree]))
            out[f"top20_overlap{suffix}"] = float(np.mean([r["top_overlap"] for r in agree]))
            # what screen mode returns: the screen's top K re-evaluated exactly; share of the exact
            # top 20 that it finds
            for k in RECALL_K:
                out[f"top20_recall_k{k}{suffix}"] = float(np.mean([r[f"recall_k{k}"] for r in agree]))
        out["agreement_cells"] = len(agree)
    return out


RECALL_K = (20, 50, 100)


def forward_gflop(config, length: int, layers: int, mlm_head: bool) -> float:
    """Matrix-multiply GFLOP (2 per multiply-add) of one ``length``-token pass through ``layers`` layers.

    Per layer: Q, K, V, output and the two feed-forward projections, ``2 L (4 H^2 + 2 H I)``, and
    attention scores and weighted values, ``4 L^2 H``; the MLM head adds its transform and decoder,
    ``2 L H (H + V)``. Embedding lookups, layer norms, softmax and GELU are left out (a few percent).
    The projection and head terms equal what ``torch.utils.flop_counter.FlopCounterMode`` counts for
    both passes (checked on v1-10m at 2,047 tokens: 39.79 and 10.73 GFLOP); it does not count
    the CPU's fused attention kernel, hence the formula.
    On a CPU that runs near its peak, the ratio of two such counts bounds the speed-up of one pass
    over another.
    """
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    per_layer = 2 * length * (4 * h * h + 2 * h * i) + 4 * length * length * h
    head = 2 * length * h * (h + v) if mlm_head else 0
    return (layers * per_layer + head) / 1e9


def matmul_gflop_per_s(device: str, n: int = 2048, reps: int = 5) -> float:
    """Rate of a plain ``n x n`` float32 matrix multiply on ``device``: what this processor sustains
    on dense work, the ceiling for any float32 pass, measured in the same run."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


CASES = ("tiny", "trained", "v1")
ALIASES = {"small": "trained", "geneformer-v1-10m": "v1"}


def _shared() -> Path:
    from netformer.datasets import shared_data_dir  # imports anndata: only where the shared data is read

    return shared_data_dir()


class Inputs:
    """Where the benchmark's inputs come from: ``../shared/data`` (tokenizing pbmc3k here), or a
    folder written by ``--export-inputs`` that needs neither the shared data nor anndata/datasets
    (for a GPU machine that has only PyTorch and transformers; see docs/benchmarks.md)."""

    def __init__(self, folder: str | None, trained_model: str):
        self.folder = Path(folder) if folder else None
        self.trained_model = Path(self.folder / "trained_model") if self.folder else Path(trained_model)

    def vocab(self) -> GeneVocab:
        if self.folder:
            return GeneVocab.load(self.folder / "geneformer_gc30M")
        return GeneVocab.load(_shared() / "genes" / "geneformer_gc30M")

    def pbmc_cells(self, vocab: GeneVocab, name: str, n: int) -> list[list[int]]:
        """The first ``n`` pbmc3k cells, tokenized at 256 tokens, that fill all 256."""
        if self.folder:
            return np.load(self.folder / f"pbmc3k_256_{name}.npy").tolist()
        from netformer.tokenize import TranscriptomeTokenizer

        ds = TranscriptomeTokenizer(vocab, model_input_size=256).tokenize(
            _shared() / "scrna" / "pbmc3k_raw_labeled.h5ad")
        return [list(map(int, c)) for c in ds.select(range(n))["input_ids"] if len(c) == 256]

    def export(self, folder: str) -> None:
        import shutil

        out = Path(folder)
        vocab = self.vocab()
        vocab_dir = out / "geneformer_gc30M"
        vocab_dir.mkdir(parents=True, exist_ok=True)
        for f in (_shared() / "genes" / "geneformer_gc30M").iterdir():
            shutil.copyfile(f, vocab_dir / f.name)
        np.save(out / "pbmc3k_256_gc30M.npy", np.asarray(self.pbmc_cells(vocab, "gc30M", 40), dtype=np.int64))
        if (self.trained_model / "config.json").exists():
            shutil.copytree(self.trained_model, out / "trained_model", dirs_exist_ok=True)
            tvocab = GeneVocab.load(self.trained_model)
            np.save(out / "pbmc3k_256_trained.npy",
                    np.asarray(self.pbmc_cells(tvocab, "trained", 60), dtype=np.int64))
        print(f"wrote {out}: run `python benchmarks/perturb_speed.py --inputs {out} ...` where it is")


def case_tiny(inputs: Inputs, vocab: GeneVocab, args) -> dict:
    """tiny preset (random weights), real pbmc3k cells (gc30M dictionary, 256 tokens)."""
    ids = inputs.pbmc_cells(vocab, "gc30M", 40)
    tiny = new_model(model_config("tiny", vocab), seed=0).eval()
    with ExactEvaluator(tiny, vocab.special_ids, batch_size=64, device=args.device) as ev:
        goal = np.mean([ev.embed(c)[1].cpu().numpy() for c in ids[10:30]], axis=0)
    return bench("tiny / pbmc3k 256 tokens", tiny, vocab, ids[:4], goal, n_ref=255, n_exact=255, top_k=20,
                 batch_size=64, full_exact=True, device=args.device, anchors=args.screen_anchors)


def case_trained(inputs: Inputs, args) -> dict | None:
    """A pretrained encoder on real cells: random weights say little about how well a first-order
    estimate ranks genes, so rank agreement is also measured on a trained model."""
    if not (inputs.trained_model / "config.json").exists():
        print(f"no pretrained model at {inputs.trained_model}: trained-model agreement case skipped", flush=True)
        return None
    from netformer.genes import model_vocab
    from netformer.model import load_model

    tvocab = model_vocab(inputs.trained_model)
    trained = load_model(inputs.trained_model, kind="mlm", device=args.device).eval()
    tids = inputs.pbmc_cells(tvocab, "trained", 60)
    with ExactEvaluator(trained, tvocab.special_ids, batch_size=64, device=args.device) as ev:
        tgoal = np.mean([ev.embed(c)[1].cpu().numpy() for c in tids[20:40]], axis=0)
    return bench(f"trained {trained.config.num_hidden_layers}-layer / pbmc3k 256 tokens", trained, tvocab,
                 tids[: args.agreement_cells], tgoal, n_ref=255, n_exact=255, top_k=20, batch_size=64,
                 full_exact=True, device=args.device, anchors=args.screen_anchors)


def case_v1(vocab: GeneVocab, args) -> dict:
    """geneformer-v1-10m (random weights), synthetic 2,048-token cells."""
    v1 = new_model(model_config("geneformer-v1-10m", vocab), seed=0).eval()
    rng = np.random.default_rng(0)
    genes = np.array(sorted(set(vocab.token_dict.values()) - set(vocab.special_ids)))
    cells = [rng.choice(genes, 2048, replace=False).tolist() for _ in range(3)]
    with ExactEvaluator(v1, vocab.special_ids, batch_size=args.v1_batch, device=args.device) as ev:
        goal = np.mean([ev.embed(c)[1].cpu().numpy() for c in cells[1:]], axis=0)
    return bench("geneformer-v1-10m / 2,048 tokens", v1, vocab, cells[:1], goal, n_ref=args.n_ref, n_exact=16,
                 top_k=20, batch_size=args.v1_batch, full_exact=False, device=args.device,
                 anchors=args.screen_anchors)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ref", type=int, default=6, help="reference perturbations for v1-10m (slow)")
    ap.add_argument("--model", default=str(TRAINED),
                    help="a pretrained model directory for the rank-agreement case on real cells "
                         "(default: the encoder cached by `python benchmarks/finetune_pbmc.py pretrain`; "
                         "the case is skipped when it is absent)")
    ap.add_argument("--agreement-cells", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both modes and the reference run there)")
    ap.add_argument("--v1-batch", type=int, default=8, help="exact-mode batch for the 2,048-token cells")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated subset of {', '.join(CASES)} "
                         f"(aliases: {', '.join(f'{k} = {v}' for k, v in ALIASES.items())})")
    ap.add_argument("--screen-anchors", type=int, default=8, metavar="N",
                    help="anchor positions of the screen's exact position-shift term (screen_cell(anchors=N), "
                         "as PerturbConfig.screen_anchors); the screen is also measured with 0 (first-order term)")
    ap.add_argument("--inputs", help="read inputs from a folder written by --export-inputs instead of ../shared/data")
    ap.add_argument("--export-inputs", metavar="FOLDER",
                    help="write the inputs (dictionary, tokenized cells, the trained model) to FOLDER and stop")
    args = ap.parse_args()
    inputs = Inputs(args.inputs, args.model)
    if args.export_inputs:
        inputs.export(args.export_inputs)
        return
    if args.screen_anchors < 0:
        ap.error(f"--screen-anchors must be >= 0, got {args.screen_anchors}")
    cases = [ALIASES.get(c.strip(), c.strip()) for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    vocab = inputs.vocab()
    rows = []
    for case in cases:
        row = case_tiny(inputs, vocab, args) if case == "tiny" else (
            case_trained(inputs, args) if case == "trained" else case_v1(vocab, args))
        if row is not None:
            rows.append(row)
            print(row, flush=True)
    print()
    n = args.screen_anchors
    print(f"screen with anchors=0 (first-order rank-shift term) and anchors={n} (exact position shifts at "
          f"{n} anchors), same run:")
    print(f"{'case':36s} {'ref/s':>8s} {'exact/s':>8s} {'x':>6s} {'anchors':>7s} {'screen/s':>9s} {'x':>7s} "
          f"{'spearman':>8s} {'top20':>6s} {'max|err|':>9s}")
    nan = float("nan")
    for r in rows:
        for i, (a, sfx) in enumerate(((0, "_a0"), (n, ""))):
            head = (f"{r['case']:36s} {r['ref_per_s']:8.2f} {r['exact_per_s']:8.2f} {r['exact_speedup']:6.1f}"
                    if i == 0 else f"{'':36s} {'':8s} {'':8s} {'':6s}")
            tail = f" {r['exact_max_abs_err']:9.1e}" if i == 0 else ""
            print(f"{head} {a:7d} {r[f'screen_genes_per_s{sfx}']:9.1f} {r[f'screen_speedup{sfx}']:7.1f} "
                  f"{r.get(f'spearman{sfx}', nan):8.2f} {r.get(f'top20_overlap{sfx}', nan):6.2f}{tail}")
    peak = matmul_gflop_per_s(args.device)
    print()
    print("work per perturbation (matrix-multiply GFLOP) and the rate each path sustains:")
    print(f"{'case':36s} {'ref GFLOP':>9s} {'exact':>7s} {'ratio':>6s} {'ref GFLOP/s':>11s} {'exact GFLOP/s':>13s}")
    for r in rows:
        print(f"{r['case']:36s} {r['ref_gflop']:9.3f} {r['exact_gflop']:7.3f} {r['flop_ratio']:6.2f} "
              f"{r['ref_gflop_per_s']:11.1f} {r['exact_gflop_per_s']:13.1f}")
    print(f"a 2,048 x 2,048 float32 matrix multiply runs at {peak:.1f} GFLOP/s here ({args.threads} thread(s), "
          f"{args.device}). An exact float32 pass can beat the reference by at most its FLOP ratio times "
          "(this rate / the reference's rate):")
    for r in rows:
        print(f"{r['case']:36s} ceiling {r['flop_ratio'] * peak / r['ref_gflop_per_s']:5.1f}x, "
              f"measured {r['exact_speedup']:5.1f}x")
    print()
    print("screen mode returns the screen's top K re-evaluated exactly; share of the exact top 20 it contains:")
    for r in rows:
        if "spearman" in r:
            for a, sfx in ((0, "_a0"), (n, "")):
                print(f"{r['case']:36s} anchors={a:<3d} "
                      + "  ".join(f"K={k}: {r[f'top20_recall_k{k}{sfx}']:.2f}" for k in RECALL_K)
                      + f"  (over {r['agreement_cells']} cells)")


if __name__ == "__main__":
    main()
