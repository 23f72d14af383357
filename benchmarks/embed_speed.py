"""Cell-embedding throughput of the geneformer-v1-10m preset: netformer vs plain Hugging Face eager.

Same random weights (``model_config("geneformer-v1-10m", vocab=gc30M)``, ``new_model(seed=0)``),
same cells, same run, CPU or CUDA (whatever ``netformer.encoder.default_device()`` gives):

- ours: ``netformer.embed.embed_cells`` (sdpa attention, length-sorted batches, encoder truncated at
  the requested layer, ``torch.inference_mode``), layer -2, mean over gene tokens;
- reference, as upstream ``EmbExtractor`` runs a model: ``BertModel`` with
  ``attn_implementation="eager"`` and ``output_hidden_states=True``, all layers run, batches of
  consecutive cells padded to the longest cell of the batch, ``torch.no_grad``, mean of
  ``hidden_states[-2]`` over non-padding tokens. (Upstream also sorts cells by length before
  batching; the script also times that variant (``--no-sorted-reference`` skips it), which isolates the effect of attention and
  truncation from that of padding.)

Inputs: (a) pbmc3k cells tokenized with the Geneformer gc30M dictionary at 2,048 tokens (real
cells are shorter: median ~800 tokens), (b) synthetic full-length cells of 2,048 distinct random
gene tokens. The embeddings of ours and the reference are compared (max abs difference).

Achieved fraction of the machine: model FLOPs per cell = layers run for the requested layer (5 of
6 for layer -2) x [2 L (4 H^2 + 2 H I) + 4 L^2 H] (Q, K, V, output and the two feed-forward
matmuls, plus QK^T and AV; 2 FLOPs per multiply-add; L = the cell's own length, not the padded
one), summed over cells, divided by the time and by the dense matmul rate measured by
``torch.matmul`` on two float32 ``--matmul-n`` square matrices (best of several, before and after).

Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/embed_speed.py            # ~5 min on 2 busy CPU cores
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

GC30M = "/work/shared/data/genes/geneformer_gc30M"
PBMC3K = "/work/shared/data/scrna/pbmc3k_raw_labeled.h5ad"


def matmul_rate(n: int, device: torch.device, reps: int = 5) -> float:
    """Best dense float32 matmul rate (FLOP/s) over ``reps`` products of n x n matrices."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops(lengths, layers: int, hidden: int, inter: int) -> float:
    """Encoder FLOPs (2 per multiply-add) for cells of the given lengths through ``layers`` layers."""
    L = np.asarray(lengths, dtype=np.float64)
    per_layer = 2 * L * (4 * hidden**2 + 2 * hidden * inter) + 4 * L**2 * hidden
    return float(layers * per_layer.sum())


def reference_embed(model, seqs, layer: int, batch_size: int, pad_id: int, device, sort: bool = False) -> np.ndarray:
    """Upstream-style: eager BertModel, output_hidden_states, consecutive (or length-sorted) batches
    padded to their longest cell, mean over non-padding tokens of ``hidden_states[layer]``."""
    order = np.argsort([-len(s) for s in seqs], kind="stable") if sort else np.arange(len(seqs))
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            idx = order[i:i + batch_size]
            width = max(len(seqs[j]) for j in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            for r, j in enumerate(idx):
                ids[r, :len(seqs[j])] = torch.as_tensor(np.asarray(seqs[j], dtype=np.int64))
            mask = (ids != pad_id).long()
            hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
            h = hs[layer]
            m = mask.to(device).unsqueeze(-1).float()
            out[idx] = ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()
    return out


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-pbmc", type=int, default=96, help="first N pbmc3k cells (file order)")
    p.add_argument("--n-full", type=int, default=12, help="synthetic 2,048-token cells")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--layer", type=int, default=-2)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--no-sorted-reference", dest="sorted_reference", action="store_false",
                   help="skip the eager reference on length-sorted batches")
    p.add_argument("--device", default=None)
    args = p.parse_args()

    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    from transformers import BertModel

    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.genes import GeneVocab
    from netformer.encoder import default_device
    from netformer.model import model_config, new_model
    from netformer.tokenize import TranscriptomeTokenizer

    device = default_device(args.device)
    vocab = GeneVocab.from_geneformer(GC30M)
    config = model_config("geneformer-v1-10m", vocab=vocab)
    mlm = new_model(config, seed=0)
    ours_model = mlm.bert.to(device).eval()
    ref_config = model_config("geneformer-v1-10m", vocab=vocab)
    ref_config._attn_implementation = "eager"
    ref_model = BertModel(ref_config, add_pooling_layer=False)
    missing = ref_model.load_state_dict(ours_model.state_dict(), strict=False)
    assert not missing.missing_keys, missing
    ref_model.to(device).eval()

    ds = TranscriptomeTokenizer(vocab, model_input_size=2048).tokenize(PBMC3K)
    pbmc = [list(s) for s in ds.select(range(min(args.n_pbmc, len(ds))))["input_ids"]]
    rng = np.random.default_rng(0)
    genes = np.array(sorted(set(vocab.token_dict.values()) - set(vocab.special_ids)))
    full = [rng.choice(genes, 2048, replace=False).tolist() for _ in range(args.n_full)]

    rate0 = matmul_rate(args.matmul_n, device)
    n_layers = config.num_hidden_layers
    keep = args.layer if args.layer >= 0 else n_layers + 1 + args.layer
    cfg = EmbeddingConfig(layer=args.layer, batch_size=args.batch_size, device=str(device))
    # warm-up
    embed_cells(ours_model, pbmc[:2], cfg, vocab=vocab)
    reference_embed(ref_model, pbmc[:2], args.layer, args.batch_size, vocab.pad_id, device)

    rows = []
    for name, seqs in (("pbmc3k (gc30M, 2,048 max)", pbmc), ("synthetic full 2,048", full)):
        if not seqs:
            continue
        e_ours, t_ours = timed(lambda: embed_cells(ours_model, seqs, cfg, vocab=vocab))
        e_ref, t_ref = timed(lambda: reference_embed(ref_model, seqs, args.layer, args.batch_size, vocab.pad_id, device))
        t_sorted = None
        if args.sorted_reference:
            _, t_sorted = timed(lambda: reference_embed(ref_model, seqs, args.layer, args.batch_size, vocab.pad_id,
                                                        device, sort=True))
        flops = model_flops([len(s) for s in seqs], keep, config.hidden_size, config.intermediate_size)
        diff = float(np.abs(e_ours - e_ref).max())
        rows.append((name, len(seqs), float(np.mean([len(s) for s in seqs])), t_ours, t_ref, t_sorted, flops, diff))
        print(f"{name}: ours {t_ours:.1f} s, reference {t_ref:.1f} s"
              + (f", reference sorted {t_sorted:.1f} s" if t_sorted else "") + f", max |diff| {diff:.2e}", flush=True)
    rate1 = matmul_rate(args.matmul_n, device)
    rate = max(rate0, rate1)
    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, matmul {args.matmul_n}^2 float32: "
          f"{rate0 / 1e9:.1f} GFLOP/s before, {rate1 / 1e9:.1f} after (using {rate / 1e9:.1f}); "
          f"FLOPs counted for {keep} of {n_layers} layers (layer {args.layer})\n")
    print("| input | cells | mean length | ours cells/s | reference cells/s | ratio | ours % of matmul rate | reference % of matmul rate | max abs diff |")
    print("|" + "---|" * 9)
    for name, n, mean_len, t_ours, t_ref, t_sorted, flops, diff in rows:
        print(f"| {name} | {n} | {mean_len:.0f} | {n / t_ours:.2f} | {n / t_ref:.2f} | {t_ref / t_ours:.2f}x | "
              f"{100 * flops / t_ours / rate:.0f}% | {100 * flops / t_ref / rate:.0f}% | {diff:.1e} |")
    if args.sorted_reference:
        print("\n| input | eager, length-sorted batches cells/s | ours / that |")
        print("|---|---|---|")
        for name, n, _, t_ours, _, t_sorted, _, _ in rows:
            print(f"| {name} | {n / t_sorted:.2f} | {t_sorted / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
