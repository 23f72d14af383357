"""Cell-embedding throughput: netformer vs upstream Geneformer's ``EmbExtractor`` (same run) and vs a
self-written reference (for machines without upstream).

Models (``--models``), random weights saved to disk as Hugging Face directories
(``model_config(preset, vocab)``, ``new_model(seed=0)``, ``save_model``):

- ``v1``: preset ``geneformer-v1-10m``, gc30M dictionary, cells tokenized at 2,048 (no special tokens);
- ``v2``: preset ``geneformer-v2-104m``, gc104M dictionary, cells wrapped in ``<cls>`` ... ``<eos>`` at
  4,096 (upstream V2's tokenization).

Cells: the first ``--n-pbmc`` (200) pbmc3k cells in file order; for ``v1`` and the self-written
reference also ``--n-full`` synthetic cells of 2,048 distinct random gene tokens.

Sides, on the same cells and the same weights:

- ours: ``netformer.model.load_model(dir)`` + ``netformer.embed.embed_cells`` (sdpa attention,
  length-sorted batches, encoder truncated at the layer, inference mode), ``--layer -2``, mean over
  the gene tokens (special tokens excluded), at ``--precision`` (fp32 by default);
- upstream (``--upstream PATH``): ``EmbExtractor(model_type="Pretrained", emb_mode="cell",
  emb_layer=-1, max_ncells=None, forward_batch_size=--upstream-batch).extract_embs(dir, dataset, ...)``
  in upstream's own Python process (benchmarks/upstream_peer.py), on a ``save_to_disk`` folder of the
  same cells. Upstream loads the ``BertForMaskedLM`` with ``output_hidden_states=True``, sorts cells
  by length, pads each batch to its longest cell and takes ``hidden_states[n_layers + emb_layer]``:
  ``emb_layer=-1`` there is the second-to-last layer, our ``layer=-2`` (``emb_layer=0`` is our
  ``-1``). It averages the non-padding positions; when the dictionary has ``<cls>``/``<eos>`` (V2)
  it drops position 0 and averages the first ``length - 2`` of the rest, i.e. ``<cls>`` and
  ``<eos>`` are excluded, as ours excludes the dictionary's special tokens: the same positions. Its
  time is the ``extract_embs`` call (model load, dataset load, the forward passes, the CSV it
  writes), after an untimed warm-up call on 2 cells; ours is ``load_model`` + ``embed_cells`` after
  an untimed warm-up on 2 cells, likewise;
- reference (default when ``--upstream`` is not given; ``--reference`` adds it): Hugging Face
  ``BertModel`` with eager attention and ``output_hidden_states=True``, all layers, batches of
  consecutive cells padded to their longest cell, ``torch.no_grad``, mean of ``hidden_states[layer]``
  over non-padding, non-special positions (also timed on length-sorted batches unless
  ``--no-sorted-reference``), written from the description of upstream's ``EmbExtractor``.

Printed in the same run: the machine (CPU and the capability PyTorch detects, native bf16 unit),
the 2,048 x 2,048 ``torch.matmul`` rate in float32 and bfloat16, cells/s of every side, the ratios,
the max abs difference of the embeddings, the achieved fraction of the matmul rate in the precision
used (model FLOPs: layers run x [2 L (4 H^2 + 2 H I) + 4 L^2 H], plus upstream's MLM head 2 L H (H +
V); L = each cell's own length), and for the goal (ours >= 5x upstream) whether it is met or what
bounds it.

Run::

    python benchmarks/embed_speed.py                                   # v1, self-written reference
    python benchmarks/embed_speed.py --upstream /work/upstream/Geneformer --models v1,v2
    python benchmarks/embed_speed.py --export-inputs .devinputs        # then on a GPU machine:
    python benchmarks/embed_speed.py --inputs .devinputs --device cuda --models v1,v2 --reference
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import upstream_peer as up  # noqa: E402

MODELS = {  # name: (preset, dictionary folder, input size)
    "v1": ("geneformer-v1-10m", "geneformer_gc30M", 2048),
    "v2": ("geneformer-v2-104m", "geneformer_gc104M", 4096),
}
EMBED_GOAL = 5.0


def model_flops(lengths, layers: int, config, mlm_head: bool = False) -> float:
    """Encoder FLOPs (2 per multiply-add) for cells of the given lengths through ``layers`` layers."""
    return 1e9 * sum(up.encoder_gflop(config, float(n), layers, mlm_head) for n in lengths)


def reference_embed(model, seqs, layer: int, batch_size: int, pad_id: int, special, device,
                    sort: bool = False) -> np.ndarray:
    """Upstream-style: eager BertModel, output_hidden_states, consecutive (or length-sorted) batches
    padded to their longest cell, mean over non-padding, non-special positions of ``hidden_states[layer]``."""
    order = np.argsort([-len(s) for s in seqs], kind="stable") if sort else np.arange(len(seqs))
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    special = torch.as_tensor(sorted(special), dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            idx = order[i:i + batch_size]
            width = max(len(seqs[j]) for j in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, j in enumerate(idx):
                ids[r, :len(seqs[j])] = torch.as_tensor(np.asarray(seqs[j], dtype=np.int64))
                mask[r, :len(seqs[j])] = 1
            hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
            h = hs[layer]
            m = (mask.bool() & ~torch.isin(ids, special)).to(device).unsqueeze(-1).float()
            out[idx] = ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()
    return out


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


class Inputs:
    """Dictionaries and tokenized cells: from ``../shared/data`` (tokenizing pbmc3k here) or from a
    folder written by ``--export-inputs`` (needs neither the shared data nor anndata)."""

    def __init__(self, folder: str | None):
        self.folder = Path(folder) if folder else None

    def _shared(self) -> Path:
        from netformer.datasets import shared_data_dir

        return shared_data_dir()

    def vocab(self, name: str):
        from netformer.genes import GeneVocab

        folder = MODELS[name][1]
        return GeneVocab.load((self.folder if self.folder else self._shared() / "genes") / folder)

    def pbmc(self, name: str, n: int) -> list[list[int]]:
        if self.folder:
            z = np.load(self.folder / f"pbmc3k_{name}.npz")
            cells = np.split(z["ids"], z["offsets"][1:-1])
            if len(cells) < n:
                raise SystemExit(f"{self.folder} holds {len(cells)} {name} cells; export with --n-pbmc {n}")
            return [c.tolist() for c in cells[:n]]
        from netformer.tokenize import TranscriptomeTokenizer

        import anndata as ad

        adata = ad.read_h5ad(self._shared() / "scrna" / "pbmc3k_raw_labeled.h5ad")
        ds = TranscriptomeTokenizer(self.vocab(name), model_input_size=MODELS[name][2]).tokenize(adata[:n].copy())
        return [list(map(int, s)) for s in ds["input_ids"]]

    def export(self, folder: str, n: int) -> None:
        import shutil

        out = Path(folder)
        for name, (_, vdir, _) in MODELS.items():
            (out / vdir).mkdir(parents=True, exist_ok=True)
            for f in (self._shared() / "genes" / vdir).iterdir():
                shutil.copyfile(f, out / vdir / f.name)
            cells = self.pbmc(name, n)
            offsets = np.cumsum([0] + [len(c) for c in cells])
            np.savez(out / f"pbmc3k_{name}.npz", ids=np.concatenate(cells).astype(np.int32), offsets=offsets)
        print(f"wrote {out}: run `python benchmarks/embed_speed.py --inputs {out} ...` where it is")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated subset of v1, v2 (default: v1; v1,v2 with --upstream)")
    p.add_argument("--n-pbmc", type=int, default=200, help="first N pbmc3k cells (file order)")
    p.add_argument("--n-v2", type=int, default=None, help="first N pbmc3k cells for v2 (default: --n-pbmc)")
    p.add_argument("--n-full", type=int, default=12, help="synthetic 2,048-token cells (v1, reference only)")
    p.add_argument("--batch-size", type=int, default=8, help="ours and the reference")
    p.add_argument("--upstream-batch", type=int, default=None, help="upstream's forward_batch_size (default: --batch-size)")
    p.add_argument("--layer", type=int, default=-2, help="hidden-state index; -2 = upstream emb_layer=-1, -1 = emb_layer=0")
    p.add_argument("--precision", default="fp32",
                   help="ours: fp32, bf16 or auto; several comma-separated (fp32,bf16) are measured in the same run "
                        "against the same peers (upstream runs fp32)")
    p.add_argument("--reference", dest="reference", action="store_true", default=None,
                   help="also time the self-written reference (default: only when --upstream is not given)")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--no-sorted-reference", dest="sorted_reference", action="store_false",
                   help="skip the eager reference on length-sorted batches")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", help="where model folders and upstream's files go (default: a temporary folder)")
    p.add_argument("--inputs", help="read dictionaries and cells from a folder written by --export-inputs")
    p.add_argument("--export-inputs", metavar="FOLDER", help="write dictionaries and tokenized cells to FOLDER and stop")
    up.add_arguments(p)
    args = p.parse_args()

    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    inputs = Inputs(args.inputs)
    if args.export_inputs:
        inputs.export(args.export_inputs, args.n_pbmc)
        return
    import transformers
    from transformers import BertModel

    transformers.utils.logging.disable_progress_bar()

    from netformer.embed import EmbeddingConfig, embed_cells
    from netformer.encoder import default_device
    from netformer.model import load_model, model_config, new_model, save_model

    torch.set_num_threads(args.threads)
    device = default_device(args.device)
    models = [m.strip() for m in (args.models or ("v1,v2" if args.upstream else "v1")).split(",") if m.strip()]
    bad = sorted(set(models) - set(MODELS))
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    reference = (not args.upstream) if args.reference is None else args.reference
    peer = None
    if args.upstream:
        if args.layer not in (-1, -2):
            p.error("upstream's EmbExtractor takes emb_layer -1 or 0: use --layer -2 or -1")
        peer = up.UpstreamPeer(args.upstream, args.upstream_python, args.threads, str(device))
    ub = args.upstream_batch or args.batch_size
    precisions = [x.strip() for x in args.precision.split(",") if x.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16", "auto"}:
        p.error(f"--precision takes fp32, bf16, auto or a comma-separated list of them, got {args.precision!r}")
    precisions = list(dict.fromkeys(up.resolved_precision(x, device) for x in precisions))
    ecfgs = {pr: EmbeddingConfig(layer=args.layer, batch_size=args.batch_size, device=str(device),
                                 **up.config_kwargs(EmbeddingConfig, pr)) for pr in precisions}
    tmp = tempfile.TemporaryDirectory(prefix="embed_speed_") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    machine0 = up.machine_rates(str(device), args.matmul_n)
    print(up.machine_line(machine0), flush=True)
    if peer:
        print(peer.describe(), flush=True)

    rows = []  # (model, input, n, mean len, peer, precision, ours_s, peer_s, diff, min cos, ours_flops, peer_flops)
    for name in models:
        preset, _, size = MODELS[name]
        vocab = inputs.vocab(name)
        config = model_config(preset, vocab=vocab)
        n_layers = config.num_hidden_layers
        keep = args.layer if args.layer >= 0 else n_layers + 1 + args.layer
        model_dir = work / f"{name}_model"
        if not (model_dir / "config.json").exists():
            save_model(new_model(config, seed=0), model_dir, vocab=vocab)
        pbmc = inputs.pbmc(name, args.n_v2 if name == "v2" and args.n_v2 else args.n_pbmc)
        sets = [(f"pbmc3k ({vocab.name}, {size:,} max)", pbmc)]
        if reference and name == "v1" and args.n_full:
            rng = np.random.default_rng(0)
            genes = np.array(sorted(set(vocab.token_dict.values()) - set(vocab.special_ids)))
            sets.append(("synthetic full 2,048", [rng.choice(genes, 2048, replace=False).tolist()
                                                  for _ in range(args.n_full)]))

        def ours(seqs, prec):
            base = load_model(model_dir, kind="base", device=device)
            return embed_cells(base, seqs, ecfgs[prec], vocab=vocab)

        for pr in precisions:
            ours(pbmc[:2], pr)  # warm-up
        ref_model = None
        if reference:
            ref_model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                                  add_pooling_layer=False).to(device).eval()
            reference_embed(ref_model, pbmc[:2], args.layer, args.batch_size, vocab.pad_id, vocab.special_ids, device)
        for label, seqs in sets:
            lengths = [len(s) for s in seqs]
            mean_len = float(np.mean(lengths))
            runs = {}
            for pr in precisions:
                runs[pr] = timed(lambda: ours(seqs, pr))
                print(f"{name} / {label}: ours ({pr}) {runs[pr][1]:.1f} s ({len(seqs) / runs[pr][1]:.2f} cells/s)", flush=True)
            ours_flops = model_flops(lengths, keep, config)
            peers = []  # (name, seconds, embeddings, flops)
            if peer and label.startswith("pbmc3k"):
                d = work / f"{name}_upstream"
                up.save_dataset({"input_ids": seqs, "length": lengths, "cell_index": list(range(len(seqs)))},
                                d / "cells.dataset")
                up.save_dataset({"input_ids": seqs[:2], "length": lengths[:2], "cell_index": [0, 1]},
                                d / "warmup.dataset")
                res = peer.run({"kind": "embed", "model": str(model_dir), "data": str(d / "cells.dataset"),
                                "warmup_data": str(d / "warmup.dataset"), "batch_size": ub,
                                "emb_layer": -1 if args.layer == -2 else 0,
                                "model_version": "V1" if name == "v1" else "V2"}, d / "run")
                peers.append((f"upstream EmbExtractor (batch {ub})", res["call_s"], np.load(res["embeddings"]),
                              model_flops(lengths, n_layers, config, mlm_head=True)))
                print(f"{name} / {label}: upstream extract_embs {res['call_s']:.1f} s (process {res['process_s']:.1f} s, "
                      f"import {res['import_s']:.1f} s; transformers {res['transformers']}, upstream device "
                      f"{res['upstream_device']})", flush=True)
            if ref_model is not None:
                e_ref, t_ref = timed(lambda: reference_embed(ref_model, seqs, args.layer, args.batch_size, vocab.pad_id,
                                                             vocab.special_ids, device))
                peers.append((f"reference eager (batch {args.batch_size})", t_ref, e_ref,
                              model_flops(lengths, n_layers, config)))
                print(f"{name} / {label}: reference {t_ref:.1f} s", flush=True)
                if args.sorted_reference:
                    _, t_sorted = timed(lambda: reference_embed(ref_model, seqs, args.layer, args.batch_size,
                                                                vocab.pad_id, vocab.special_ids, device, sort=True))
                    peers.append(("reference eager, length-sorted batches", t_sorted, e_ref,
                                  model_flops(lengths, n_layers, config)))
                    print(f"{name} / {label}: reference sorted {t_sorted:.1f} s", flush=True)
            for peer_name, t_peer, e_peer, pf in peers:
                for pr, (e_ours, t_ours) in runs.items():
                    diff = float(np.abs(e_ours - e_peer).max())
                    cos = float((np.sum(e_ours * e_peer, 1) / np.linalg.norm(e_ours, axis=1)
                                 / np.linalg.norm(e_peer, axis=1)).min())
                    rows.append((name, label, len(seqs), mean_len, peer_name, pr, t_ours, t_peer, diff, cos,
                                 ours_flops, pf))
        del ref_model
    machine1 = up.machine_rates(str(device), args.matmul_n)
    best = {k: max(machine0[k], machine1[k]) for k in ("fp32_gflops", "bf16_gflops")}
    print()
    print(f"after the run: float32 {machine1['fp32_gflops']:.1f} GFLOP/s, bfloat16 {machine1['bf16_gflops']:.1f} GFLOP/s; "
          f"fractions below against the best matmul rate of the precision each side used (float32 "
          f"{best['fp32_gflops']:.1f}, bfloat16 {best['bf16_gflops']:.1f} GFLOP/s; upstream and the reference run "
          f"float32); every side embeds hidden state {args.layer}")
    print()
    print("| model | input | cells | mean length | peer | ours precision | ours cells/s | peer cells/s | ours / peer | "
          "ours % of matmul rate | peer % of fp32 matmul rate | max abs diff | min cosine |")
    print("|" + "---|" * 13)
    for name, label, n, mean_len, peer_name, pr, t_ours, t_peer, diff, cos, of, pf in rows:
        rate = best["bf16_gflops" if pr == "bf16" else "fp32_gflops"]
        print(f"| {MODELS[name][0]} | {label} | {n} | {mean_len:.0f} | {peer_name} | {pr} | {n / t_ours:.2f} | "
              f"{n / t_peer:.2f} | {t_peer / t_ours:.2f}x | {100 * of / 1e9 / t_ours / rate:.0f}% | "
              f"{100 * pf / 1e9 / t_peer / best['fp32_gflops']:.0f}% | {diff:.1e} | {cos:.7f} |")
    ups = [r for r in rows if r[4].startswith("upstream")]
    if ups:
        print()
        print(f"goal: embedding >= {EMBED_GOAL:g}x upstream ({args.threads} thread(s)):")
        for name, label, n, _, _, pr, t_ours, t_peer, _, _, of, pf in ups:
            rate = best["bf16_gflops" if pr == "bf16" else "fp32_gflops"]
            print(up.bound_line(f"{MODELS[name][0]} / {label} ({pr})", t_peer / t_ours, EMBED_GOAL, of / 1e9 / n,
                                t_ours / n, pf / 1e9 / n, t_peer / n, rate, pr))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
