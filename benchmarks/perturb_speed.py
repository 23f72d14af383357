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

Peer cases, all genes of one real cell deleted, against upstream Geneformer's own
``InSilicoPerturber`` in the same run (``--upstream PATH``; benchmarks/upstream_peer.py runs it in
its own process):

- ``v1-cell``: ``geneformer-v1-10m`` (random weights, gc30M) on the pbmc3k cell of
  ``--v1-cell-length`` (1,101) tokens at 2,048;
- ``v2-kang`` (alias ``kang``): ``geneformer-v2-104m`` (random weights, gc104M, ``<cls>``/``<eos>``,
  4,096) on the Kang 2018 cell whose length is closest to ``--kang-length`` (128).

Both models are saved to disk (``save_model``) and both sides load them from there inside the timed
call. Upstream: ``InSilicoPerturber(perturb_type="delete", genes_to_perturb="all",
model_type="Pretrained", emb_layer=-1, cell_states_to_model=None, forward_batch_size=--peer-batch)
.perturb_data(...)`` with ``emb_mode="cell"`` for V1; a V2 cell starts with ``<cls>`` and upstream
then refuses ``"cell"``, so V2 runs ``emb_mode="cls_and_gene"``. Its per-gene output (read back from
the ``*_raw.pickle`` files it writes) is, without cell states, the mean over the cell's other genes
of the cosine between each gene's state at ``hidden_states[-2]`` before and after the deletion (for
V2 from the gene pickles, ``<cls>``/``<eos>`` left out; its ``<cls>`` cosines are compared with ours
in ``<cls>`` pooling under ``--v2-cls``). Ours: ``netformer.perturb.perturb(model_dir, dataset,
PerturbConfig(mode="exact" | "screen", gene_effects=True, layer=-2, batch_size=--peer-batch,
top_k=--top-k, precision=--precision))``; the mean of our ``gene_effects`` cosines per perturbed
gene is upstream's quantity (max abs diff and Spearman over all genes); the screen's estimate (of
``1 - cos`` of the cell embeddings) is ranked against ``1 -`` upstream's value. Each side first makes
one untimed call on a 24-gene cell. Without ``--upstream`` the peer is the self-written reference
:func:`reference_gene_cos` on ``--n-ref`` genes (one pass per perturbation, batch 1, which upstream
does not do: it batches, so that ratio overstates the one to upstream).

Printed in the same run: the CPU and the capability PyTorch detects, the float32 and bfloat16
2,048 x 2,048 matmul rates (before and after), and for each goal (exact >= 5x, screen >= 100x) whether
it is met or what bounds it (FLOPs of both sides against the matmul rate in the precision used).

Run: ``python benchmarks/perturb_speed.py`` (about 5 minutes on 2 CPU cores);
``python benchmarks/perturb_speed.py --upstream /work/upstream/Geneformer --cases v1-cell`` (the peer
cases); on a GPU:
``python benchmarks/perturb_speed.py --device cuda --v1-batch 32 --n-ref 32``; on a GPU machine
with only PyTorch and transformers: ``--export-inputs .devinputs`` here, then
``bash benchmarks/device_perturb_speed.sh`` there (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import upstream_peer as up  # noqa: E402

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


CASES = ("tiny", "trained", "v1", "v1-cell", "v2-kang")
ALIASES = {"small": "trained", "geneformer-v1-10m": "v1", "kang": "v2-kang"}
PEER_CASES = {  # case: (preset, dictionary folder, input size)
    "v1-cell": ("geneformer-v1-10m", "geneformer_gc30M", 2048),
    "v2-kang": ("geneformer-v2-104m", "geneformer_gc104M", 4096),
}
EXACT_GOAL, SCREEN_GOAL = 5.0, 100.0


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

    def peer_vocab(self, case: str) -> GeneVocab:
        folder = PEER_CASES[case][1]
        return GeneVocab.load((self.folder if self.folder else _shared() / "genes") / folder)

    def peer_cell(self, case: str, args) -> tuple[list[int], str]:
        """The cell of a peer case and where it comes from: ``v1-cell`` the first pbmc3k cell (file
        order) of ``--v1-cell-length`` tokens at 2,048 (gc30M); ``v2-kang`` the first Kang 2018 cell
        (file order) whose length at 4,096 (gc104M, ``<cls>``/``<eos>`` included) is closest to
        ``--kang-length``."""
        want = args.v1_cell_length if case == "v1-cell" else args.kang_length
        if self.folder:
            f = self.folder / f"{case}_{want}.npy"
            if not f.exists():
                raise SystemExit(f"{f} missing: export with --export-inputs and the same --v1-cell-length/--kang-length")
            return np.load(f).tolist(), f"exported {f.name}"
        import anndata as ad

        from netformer.tokenize import TranscriptomeTokenizer

        vocab = self.peer_vocab(case)
        name = "pbmc3k_raw_labeled.h5ad" if case == "v1-cell" else "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
        adata = ad.read_h5ad(_shared() / "scrna" / name)
        ds = TranscriptomeTokenizer(vocab, model_input_size=PEER_CASES[case][2]).tokenize(adata)
        lengths = np.asarray(ds["length"])
        i = int(np.argmin(np.abs(lengths - want)))  # first of the closest, in file order
        if case == "v1-cell" and lengths[i] != want:
            raise SystemExit(f"no pbmc3k cell has {want} tokens at 2,048")
        return [int(t) for t in ds[i]["input_ids"]], f"{name} cell {i} ({ds[i]['cell_id']})"

    def export(self, folder: str, args=None) -> None:
        import shutil

        out = Path(folder)
        vocab = self.vocab()
        for vdir in ("geneformer_gc30M", "geneformer_gc104M"):
            (out / vdir).mkdir(parents=True, exist_ok=True)
            for f in (_shared() / "genes" / vdir).iterdir():
                shutil.copyfile(f, out / vdir / f.name)
        if args is not None:
            for case in PEER_CASES:
                cell, _ = self.peer_cell(case, args)
                want = args.v1_cell_length if case == "v1-cell" else args.kang_length
                np.save(out / f"{case}_{want}.npy", np.asarray(cell, dtype=np.int64))
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


# ------------------------------------------------------------------------------------------------
# peer cases: all genes of one cell deleted, ours (exact, screen) vs upstream InSilicoPerturber (or,
# without --upstream, the self-written one-pass-per-perturbation reference on --n-ref genes)
# ------------------------------------------------------------------------------------------------
def reference_gene_cos(mlm, cell, genes, special, layer: int, device: str, batch_size: int = 8) -> tuple[dict, float]:
    """Upstream's quantity for deleting each of ``genes``, written from its description: the full
    masked-LM model with ``output_hidden_states``, the original cell once, the deleted variants (all of
    length ``L - 1``) in batches of ``batch_size`` as upstream's ``forward_batch_size``; the cosine of
    each remaining gene's state at ``hidden_states[layer]`` before and after the deletion, averaged
    over the remaining gene positions (special tokens left out). Returns ({token: mean cosine}, seconds)."""
    mlm = mlm.to(device).eval()
    special = set(int(t) for t in special)
    keep = torch.tensor([t not in special for t in cell], device=device)
    t0 = time.perf_counter()
    out = {}
    with torch.no_grad():
        def states(rows):
            ids = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
            return mlm(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[layer]

        h0 = states([cell])[0]
        for s in range(0, len(genes), batch_size):
            chunk = genes[s: s + batch_size]
            pos = [cell.index(g) for g in chunk]
            h1 = states([cell[:p] + cell[p + 1:] for p in pos])
            for r, (g, p) in enumerate(zip(chunk, pos)):
                idx = torch.cat([torch.arange(p, device=device), torch.arange(p + 1, len(cell), device=device)])
                k = keep[idx]
                cos = torch.nn.functional.cosine_similarity(h0[idx][k], h1[r][k], dim=-1)
                out[int(g)] = float(cos.mean())
    return out, time.perf_counter() - t0


def _dataset(cell: list[int]):
    """One tokenized cell as a ``datasets.Dataset`` (None where ``datasets`` is not installed)."""
    try:
        import datasets
    except ImportError:
        return None
    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"input_ids": [cell], "length": [len(cell)], "cell_id": ["cell"]})


def ours_perturb(model_dir: Path, cell: list[int], vocab: GeneVocab, mode: str, args, pooling: str = "mean",
                 precision: str = "fp32") -> dict:
    """Ours on one cell, all genes deleted: ``netformer.perturb.perturb(model_dir, dataset,
    PerturbConfig(mode=...))`` (model loaded from disk inside the call, as upstream's), per-gene
    effects on (``gene_effects=True``: upstream's mean cosine of the other genes). Where ``datasets`` is
    missing (a bare GPU machine) the same engine is called directly (ExactEvaluator, screen_cell).
    Returns seconds, {token: mean gene cosine}, {token: cell_effect}, {token: screen estimate}."""
    from netformer.model import load_model
    from netformer.perturb import PerturbConfig, perturb

    cfg = PerturbConfig(mode=mode, genes="all", gene_effects=pooling == "mean", layer=-2, pooling=pooling,
                        batch_size=args.peer_batch, top_k=args.top_k, screen_anchors=args.screen_anchors,
                        device=args.device, **up.config_kwargs(PerturbConfig, precision))
    ds = _dataset(cell)
    tok = {g: int(t) for g, t in vocab.token_dict.items()}
    t0 = time.perf_counter()
    if ds is not None:
        res = perturb(str(model_dir), ds, cfg)
        secs = time.perf_counter() - t0
        r = res.results
        out = {"seconds": secs, "api": "perturb()",
               "cell_effect": {tok[g]: float(v) for g, v in zip(r["perturbed"], r["cell_effect"]) if v == v}}
        if "cell_effect_estimate" in r:
            out["estimate"] = {tok[g]: float(v) for g, v in zip(r["perturbed"], r["cell_effect_estimate"])}
        if res.gene_effects is not None:
            m = res.gene_effects.groupby("perturbed", sort=False)["cos_sim"].mean()
            out["gene_cos_mean"] = {tok[g]: float(v) for g, v in m.items()}
        return out
    # engine path: what perturb() runs per cell, without the dataset plumbing
    from netformer.perturb.engine import cosine

    base = load_model(model_dir, kind="base", device=args.device)
    if precision != "fp32":
        from netformer.precision import inference_model, resolve_precision

        base = inference_model(base, resolve_precision(precision, args.device))
    special = vocab.special_ids
    lay_genes = [t for t in cell if t not in set(special)]
    with ExactEvaluator(base, special, -2, pooling, args.peer_batch, args.device) as ev:
        est = None
        if mode == "screen":
            pos, est = screen_cell(base, cell, special, "delete", None, cls_id=vocab.cls_id, eos_id=vocab.eos_id)
            chosen = [int(cell[pos[i]]) for i in np.argsort(-est, kind="stable")[: args.top_k]]
        else:
            chosen = lay_genes
        variants = [perturb_cell(cell, [g], "delete", cls_id=vocab.cls_id, eos_id=vocab.eos_id) for g in chosen]
        eff = ev.evaluate(cell, variants, gene_effects=pooling == "mean", perturbed_tokens=[(g,) for g in chosen])
    secs = time.perf_counter() - t0
    out = {"seconds": secs, "api": "engine (no datasets package)",
           "cell_effect": dict(zip(chosen, (1 - cosine(eff.perturbed, eff.original)).tolist()))}
    if est is not None:
        out["estimate"] = {int(cell[p]): float(e) for p, e in zip(pos, est)}
    if eff.gene_cos is not None:
        out["gene_cos_mean"] = {g: float(np.mean(c)) for g, (_, c) in zip(chosen, eff.gene_cos)}
    return out


def case_peer(case: str, inputs: Inputs, args, peer, work: Path) -> list[dict]:
    """One peer case (``v1-cell`` or ``v2-kang``); see :func:`ours_perturb` and the module docstring."""
    from netformer.model import save_model

    preset, _, size = PEER_CASES[case]
    vocab = inputs.peer_vocab(case)
    cell, origin = inputs.peer_cell(case, args)
    special = set(vocab.special_ids)
    genes = [t for t in cell if t not in special]
    config = model_config(preset, vocab)
    model_dir = work / f"{case}_model"
    mlm = new_model(config, seed=0)
    if not (model_dir / "config.json").exists():
        save_model(mlm, model_dir, vocab=vocab)
    print(f"{case}: {preset}, {origin}: {len(cell)} tokens, {len(genes)} genes", flush=True)
    # the warm-up cell: the first 24 genes (wrapped like the cell)
    lead, tail = ([cell[0]], [cell[-1]]) if vocab.has_cls_eos else ([], [])
    warm = lead + genes[:24] + tail
    common = {"case": f"{preset} / {origin.split(' (')[0]}", "cell_length": len(cell), "n_genes": len(genes)}
    ours = {}
    for prec in args.precisions:
        o = ours[prec] = {}
        for mode in args.modes:
            ours_perturb(model_dir, warm, vocab, mode, args, precision=prec)
            o[mode] = ours_perturb(model_dir, cell, vocab, mode, args, precision=prec)
            print(f"{case}: ours {mode} ({prec}) {o[mode]['seconds']:.1f} s ({o[mode]['api']})", flush=True)
        if case == "v2-kang" and args.v2_cls and "exact" in args.modes:
            ours_perturb(model_dir, warm, vocab, "exact", args, pooling="cls", precision=prec)
            o["exact_cls"] = ours_perturb(model_dir, cell, vocab, "exact", args, pooling="cls", precision=prec)
            print(f"{case}: ours exact, cls pooling ({prec}) {o['exact_cls']['seconds']:.1f} s", flush=True)
    row = dict(common)
    if peer is not None:
        d = work / f"{case}_upstream"
        up.save_dataset({"input_ids": [cell], "length": [len(cell)]}, d / "cell.dataset")
        up.save_dataset({"input_ids": [warm], "length": [len(warm)]}, d / "warmup.dataset")
        # V2 cells start with <cls>: upstream then refuses emb_mode "cell" and takes "cls" or "cls_and_gene";
        # cls_and_gene writes both the <cls> cosines and every other gene's cosine (the V1 quantity)
        emb_mode = "cls_and_gene" if vocab.has_cls_eos else "cell"
        saved = Path(args.reuse_upstream) / f"{case}_result.json" if args.reuse_upstream else None
        if saved is not None and saved.exists():
            import json

            res = json.loads(saved.read_text())
            got = res["gene_cos_mean"] if vocab.has_cls_eos else res["cell_cos"]
            if {int(k) for k in got} != set(genes) or res.get("batch_size", args.peer_batch) != args.peer_batch:
                raise SystemExit(f"{saved} is not upstream's result for this cell and --peer-batch")
            print(f"{case}: upstream's result reused from {saved} (an earlier run, not this one)", flush=True)
            res["reused"] = True
        else:
            res = peer.run({"kind": "perturb", "model": str(model_dir), "data": str(d / "cell.dataset"),
                            "warmup_data": str(d / "warmup.dataset"), "batch_size": args.peer_batch, "emb_layer": -1,
                            "emb_mode": emb_mode, "model_version": "V2" if vocab.has_cls_eos else "V1"}, d / "run")
            res["batch_size"] = args.peer_batch
            if args.workdir:  # kept for --reuse-upstream
                import json

                (work / f"{case}_result.json").write_text(json.dumps(res))
        vals = res["gene_cos_mean"] if vocab.has_cls_eos else res["cell_cos"]
        row["peer"] = {"name": f"upstream InSilicoPerturber (emb_mode {emb_mode}, batch {args.peer_batch})"
                               + (", reused from an earlier run" if res.get("reused") else ""),
                       "seconds": res["call_s"], "n": len(vals), "values": {int(k): v for k, v in vals.items()},
                       "process_s": res.get("process_s", float("nan")), "pickles": len(res["pickles"]), "upstream": True}
        if vocab.has_cls_eos:
            row["peer"]["cls"] = {int(k): v for k, v in res["cell_cos"].items()}
        print(f"{case}: upstream perturb_data {res['call_s']:.1f} s (process {res.get('process_s', float('nan')):.1f} s, "
              f"{len(res['pickles'])} pickles read; transformers {res['transformers']}, device {res['upstream_device']})",
              flush=True)
    else:
        rng = np.random.default_rng(0)
        pick = [genes[i] for i in rng.choice(len(genes), size=min(args.n_ref, len(genes)), replace=False)]
        reference_gene_cos(mlm, warm, genes[:2], special, -2, args.device, args.peer_batch)
        vals, secs = reference_gene_cos(mlm, cell, pick, special, -2, args.device, args.peer_batch)
        row["peer"] = {"name": f"self-written reference (batch {args.peer_batch}, {len(pick)} of the genes)",
                       "seconds": secs, "n": len(pick), "values": vals, "upstream": False}
        print(f"{case}: reference {secs:.1f} s for {len(pick)} perturbations", flush=True)
    rows = []
    for prec, o in ours.items():
        r = {**row, **o, "precision": prec}
        rows.append(_peer_agreement(r, args, config, genes))
    return rows


def _peer_agreement(row: dict, args, config, genes) -> dict:
    """Agreement with the peer and the rates of one precision's row."""
    cell_len = row["cell_length"]
    # agreement with the peer, on the genes the peer evaluated
    pv = row["peer"]["values"]
    keys = sorted(pv)
    peer_vals = np.array([pv[k] for k in keys])
    nan = float("nan")
    for k in ("exact_max_abs_diff", "exact_spearman", "cell_effect_spearman", "screen_spearman",
              "screen_topk_max_abs_diff", "screen_top20_recall", "exact_per_s", "screen_per_s"):
        row.setdefault(k, nan)
    if "exact" in row:
        ex = row["exact"]["gene_cos_mean"]
        missing = [k for k in keys if k not in ex]
        if missing:
            raise SystemExit(f"{row['case']}: ours has no result for {len(missing)} gene(s) the peer perturbed")
        ours_vals = np.array([ex[k] for k in keys])
        row["exact_max_abs_diff"] = float(np.abs(ours_vals - peer_vals).max())
        row["exact_spearman"] = up.spearman(ours_vals, peer_vals)
        ce = row["exact"]["cell_effect"]
        # how closely our cell-embedding effect (1 - cos of the mean-pooled cells) ranks like upstream's
        # mean gene cosine: the ceiling for a screen that estimates the former
        row["cell_effect_spearman"] = up.spearman([ce[k] for k in keys], 1 - peer_vals)
        row["exact_per_s"] = len(genes) / row["exact"]["seconds"]
    if "screen" in row:
        est = row["screen"]["estimate"]
        row["screen_spearman"] = up.spearman([est[k] for k in keys], 1 - peer_vals)
        top = [k for k in row["screen"]["gene_cos_mean"] if k in pv]
        row["screen_topk_max_abs_diff"] = float(max(abs(row["screen"]["gene_cos_mean"][k] - pv[k]) for k in top)) if top else nan
        n20 = min(20, len(keys))
        peer_top = set(np.array(keys)[np.argsort(peer_vals, kind="stable")[:n20]].tolist())  # lowest cosine = largest effect
        row["screen_top20_recall"] = len(peer_top & set(row["screen"]["gene_cos_mean"])) / n20
        row["screen_per_s"] = len(genes) / row["screen"]["seconds"]
    if "cls" in row["peer"] and "exact_cls" in row:
        pc = row["peer"]["cls"]
        oc = row["exact_cls"]["cell_effect"]
        ks = sorted(pc)
        row["cls_max_abs_diff"] = float(max(abs((1 - oc[k]) - pc[k]) for k in ks))
        row["cls_spearman"] = up.spearman([1 - oc[k] for k in ks], [pc[k] for k in ks])
    # rates and work
    n_peer = row["peer"]["n"]
    row["peer_per_s"] = n_peer / row["peer"]["seconds"]
    n_layers = config.num_hidden_layers
    L = cell_len - 1
    row["peer_gflop"] = up.encoder_gflop(config, L, n_layers, mlm_head=True)
    row["exact_gflop"] = up.encoder_gflop(config, L, n_layers - 1, mlm_head=False)
    # screen without states: the original and the top-K perturbed cells exactly, plus one pass for the
    # estimate; a lower bound (the sketch of 6796a48 adds a backward pass and anchor passes, not counted)
    row["screen_gflop"] = (2 + min(args.top_k, len(genes))) * up.encoder_gflop(config, L, n_layers - 1, False) / len(genes)
    return row


def print_peer_rows(rows: list[dict], args, machine: dict) -> None:
    print()
    print("all genes of one cell deleted (the peer in fp32):")
    print("| case | precision | cell length | genes | peer | peer perturbations/s | ours exact /s | exact / peer | "
          "exact max abs diff | exact Spearman | ours screen genes/s | screen / peer | screen Spearman | "
          "screen top-K max abs diff | screen top-K recall of peer top 20 |")
    print("|" + "---|" * 15)
    for r in rows:
        p = r["peer"]
        print(f"| {r['case']} | {r['precision']} | {r['cell_length']} | {r['n_genes']} | {p['name']} | {r['peer_per_s']:.2f} | "
              f"{r['exact_per_s']:.2f} | {r['exact_per_s'] / r['peer_per_s']:.2f}x | {r['exact_max_abs_diff']:.1e} | "
              f"{r['exact_spearman']:.6f} | {r['screen_per_s']:.1f} | {r['screen_per_s'] / r['peer_per_s']:.1f}x | "
              f"{r['screen_spearman']:.3f} | {r['screen_topk_max_abs_diff']:.1e} | {r['screen_top20_recall']:.2f} |")
    print()
    print("agreement measures: the peer's per-gene value is upstream's, the mean over the cell's other genes of the "
          "cosine between their states before and after the deletion (hidden_states[-2]); exact = ours from "
          "gene_effects=True, same quantity; screen Spearman = its estimate of 1 - cos(cell embeddings) against "
          "1 - the peer's value over all genes (ranking only); for reference, our exact 1 - cos(cell embeddings) "
          "ranks against it with Spearman:")
    for r in rows:
        extra = ""
        if "cls_spearman" in r:
            extra = (f"; <cls> pooling, exact: max abs diff {r['cls_max_abs_diff']:.1e}, Spearman {r['cls_spearman']:.6f} "
                     f"vs upstream's <cls> cosines ({r['exact_cls']['seconds']:.1f} s)")
        print(f"  {r['case']} ({r['precision']}): {r['cell_effect_spearman']:.3f}{extra}")
    print()
    print(f"goals (ratios to upstream, {args.threads} thread(s)): exact >= {EXACT_GOAL:g}x with shifts equal to 1e-5 "
          f"in fp32 (Spearman >= 0.999 in bf16), screen >= {SCREEN_GOAL:g}x")
    for r in rows:
        prec = r["precision"]
        rate = machine["bf16_gflops" if prec == "bf16" else "fp32_gflops"]
        ps = 1 / r["peer_per_s"]
        if not r["peer"]["upstream"]:
            print(f"{r['case']}: the peer is the self-written reference, not upstream: no goal is judged "
                  f"(exact {r['exact_per_s'] / r['peer_per_s']:.2f}x, screen {r['screen_per_s'] / r['peer_per_s']:.1f}x it; "
                  f"exact max abs diff {r['exact_max_abs_diff']:.1e})")
            continue
        if "exact" in r:
            print(up.bound_line(f"{r['case']} exact ({prec})", r["exact_per_s"] / r["peer_per_s"], EXACT_GOAL,
                                r["exact_gflop"], 1 / r["exact_per_s"], r["peer_gflop"], ps, rate, prec))
            ok = r["exact_max_abs_diff"] <= 1e-5 if prec == "fp32" else r["exact_spearman"] >= 0.999
            print(f"{r['case']} exact agreement ({prec}): max abs diff {r['exact_max_abs_diff']:.1e}, "
                  f"Spearman {r['exact_spearman']:.6f}: " + ("met" if ok else "missed"))
        if "screen" in r:
            print(up.bound_line(f"{r['case']} screen ({prec})", r["screen_per_s"] / r["peer_per_s"], SCREEN_GOAL, r["screen_gflop"],
                                1 / r["screen_per_s"], r["peer_gflop"], ps, rate, prec))


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
    ap.add_argument("--cases", default=None,
                    help=f"comma-separated subset of {', '.join(CASES)} "
                         f"(aliases: {', '.join(f'{k} = {v}' for k, v in ALIASES.items())}); default "
                         "tiny,trained,v1, or v1-cell,v2-kang with --upstream")
    ap.add_argument("--screen-anchors", type=int, default=8, metavar="N",
                    help="anchor positions of the screen's exact position-shift term (screen_cell(anchors=N), "
                         "as PerturbConfig.screen_anchors); the screen is also measured with 0 (first-order term)")
    ap.add_argument("--v1-cell-length", type=int, default=1101, help="v1-cell: the pbmc3k cell of this many tokens")
    ap.add_argument("--kang-length", type=int, default=128,
                    help="v2-kang: the Kang cell whose length (<cls>/<eos> included) is closest to this")
    ap.add_argument("--peer-batch", type=int, default=8,
                    help="v1-cell/v2-kang: perturbations per forward pass, ours and upstream's forward_batch_size")
    ap.add_argument("--top-k", type=int, default=20, help="v1-cell/v2-kang: genes the screen evaluates exactly")
    ap.add_argument("--v2-cls", action="store_true",
                    help="v2-kang: also ours exact with <cls> pooling against upstream's <cls> cosines")
    ap.add_argument("--precision", default="fp32",
                    help="v1-cell/v2-kang: ours, fp32, bf16 or auto; several comma-separated (fp32,bf16) run ours "
                         "once each against one peer run (the peer runs fp32)")
    ap.add_argument("--workdir", help="v1-cell/v2-kang: model folders and upstream's files (default: temporary)")
    ap.add_argument("--modes", default="exact,screen", help="v1-cell/v2-kang: ours in these modes (exact, screen)")
    ap.add_argument("--reuse-upstream", metavar="DIR",
                    help="v1-cell/v2-kang: take upstream's result from DIR/<case>_result.json (kept by an earlier run "
                         "with --workdir DIR) instead of running upstream again; said so in the output")
    up.add_arguments(ap)
    ap.add_argument("--inputs", help="read inputs from a folder written by --export-inputs instead of ../shared/data")
    ap.add_argument("--export-inputs", metavar="FOLDER",
                    help="write the inputs (dictionary, tokenized cells, the trained model) to FOLDER and stop")
    args = ap.parse_args()
    inputs = Inputs(args.inputs, args.model)
    if args.export_inputs:
        inputs.export(args.export_inputs, args)
        return
    if args.screen_anchors < 0:
        ap.error(f"--screen-anchors must be >= 0, got {args.screen_anchors}")
    args.precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    if not args.precisions or set(args.precisions) - {"fp32", "bf16", "auto"}:
        ap.error(f"--precision takes fp32, bf16, auto or a comma-separated list of them, got {args.precision!r}")
    args.precisions = list(dict.fromkeys(up.resolved_precision(x, args.device) for x in args.precisions))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"exact", "screen"}:
        ap.error(f"--modes takes exact, screen or both, got {args.modes}")
    default = "v1-cell,v2-kang" if args.upstream else "tiny,trained,v1"
    cases = [ALIASES.get(c.strip(), c.strip()) for c in (args.cases or default).split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    torch.set_num_threads(args.threads)
    import logging
    import os

    os.environ["TQDM_DISABLE"] = "1"
    logging.disable(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    machine = up.machine_rates(args.device)
    print(up.machine_line(machine), flush=True)
    peer = up.UpstreamPeer(args.upstream, args.upstream_python, args.threads, args.device) if args.upstream else None
    if peer:
        print(peer.describe(), flush=True)
    vocab = inputs.vocab()
    rows, peer_rows = [], []
    tmp = tempfile.TemporaryDirectory(prefix="perturb_speed_") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    for case in cases:
        if case in PEER_CASES:
            peer_rows.extend(case_peer(case, inputs, args, peer, work))
            continue
        row = case_tiny(inputs, vocab, args) if case == "tiny" else (
            case_trained(inputs, args) if case == "trained" else case_v1(vocab, args))
        if row is not None:
            rows.append(row)
            print(row, flush=True)
    if peer_rows:
        after = up.machine_rates(args.device)
        print(f"after the run: float32 {after['fp32_gflops']:.1f} GFLOP/s, bfloat16 {after['bf16_gflops']:.1f} GFLOP/s")
        best = {k: max(machine[k], after[k]) for k in ("fp32_gflops", "bf16_gflops")}
        print_peer_rows(peer_rows, args, {**machine, **best})
    if tmp is not None:
        tmp.cleanup()
    if not rows:
        return
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
