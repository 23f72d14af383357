"""Tokenizer throughput and peak memory: netformer vs an upstream-style reference, same run.

Both tokenize the same .h5ad files with the Geneformer gc104M dictionaries at input size 4,096
(``<cls>`` + top 4,094 genes + ``<eos>``) and save a Hugging Face dataset to disk.

- ours: ``netformer.tokenize.TranscriptomeTokenizer(vocab, model_input_size=4096).write(path, out)``
  (backed h5ad read in row chunks, sparse normalisation, one ``lexsort`` per chunk, Arrow writer).
- reference, written from the description of upstream Geneformer's ``TranscriptomeTokenizer``
  (not copied): ``scanpy.read_h5ad`` of the whole file (not backed); duplicate collapsed Ensembl ids
  summed with a pandas ``groupby`` over dense chunks when present; per chunk of 512 cells a dense
  normalised matrix ``X / n_counts * target_sum / medians``; then a per-cell Python loop of
  ``np.argsort(-x)`` over the cell's non-zeros; the token lists go into ``Dataset.from_dict`` and
  ``save_to_disk``.

Every run is a fresh subprocess (``OMP_WAIT_POLICY=PASSIVE``); its peak memory is the process's
RSS high-water mark (``VmHWM`` of ``/proc/self/status``); ``base`` is the RSS after
imports, before the work. Time is the wall time of the work (reading, tokenizing, saving),
imports excluded. The heap peak (``RssAnon`` sampled every 20 ms) is also given: the
high-water mark counts pages of memory-mapped Arrow files read while saving, which the heap
peak leaves out. Outputs are compared cell by cell: sequences that differ must hold, at every
rank, genes with the same normalised value (ties, which upstream orders arbitrarily).

Run (the synthetic files come from ``benchmarks/make_synthetic_h5ad.py``)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tokenize_speed.py \\
        --files /work/shared/data/scrna/pbmc3k_raw_labeled.h5ad /tmp/netformer_bench/synth_20k.h5ad \\
                /tmp/netformer_bench/synth_200k.h5ad --reference-max-cells 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

GC104M = "/work/shared/data/genes/geneformer_gc104M"
PBMC3K = "/work/shared/data/scrna/pbmc3k_raw_labeled.h5ad"


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its high-water mark (``VmHWM``), MiB.

    ``VmHWM`` is used for the peak rather than ``getrusage(...).ru_maxrss``: Linux carries
    ``ru_maxrss`` over from the parent across fork + exec, so a child of a large parent would
    report the parent's peak; ``VmHWM`` belongs to the child's own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Reference (upstream-style)
# ---------------------------------------------------------------------------------------------
def reference_tokenize(path: str, vocab, out_dir: str, input_size: int = 4096, chunk_size: int = 512,
                       target_sum: float = 10_000.0) -> int:
    """Tokenize ``path`` the way upstream Geneformer does; returns the number of cells written."""
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp
    from datasets import Dataset

    adata = sc.read_h5ad(path)
    ids = adata.var["ensembl_id"] if "ensembl_id" in adata.var.columns else adata.var.index
    mapping = vocab.ensembl_mapping or {}
    collapsed = [mapping.get(str(g).upper()) for g in ids]
    in_vocab = [c for c in collapsed if c is not None and c in vocab.token_dict]
    if len(set(in_vocab)) < len(in_vocab):
        # upstream sum_ensembl_ids: dense chunks, pandas groupby over the collapsed ids
        keys = pd.Index([c if c is not None else "__unmapped__" for c in collapsed])
        parts = []
        for i in range(0, adata.n_obs, chunk_size):
            df = pd.DataFrame(adata.X[i:i + chunk_size].toarray(), columns=keys)
            parts.append(sp.csr_matrix(df.T.groupby(level=0).sum().T.to_numpy()))
        names = df.T.groupby(level=0).sum().index
        import anndata as ad

        adata = ad.AnnData(sp.vstack(parts).tocsr(), obs=adata.obs, var=pd.DataFrame(index=names))
        collapsed = list(names)
    loc = np.array([c is not None and c in vocab.token_dict for c in collapsed])
    genes = [c for c, ok in zip(collapsed, loc) if ok]
    tokens = np.array([vocab.token_dict[g] for g in genes])
    medians = np.array([vocab.gene_median[g] for g in genes])
    loc = np.flatnonzero(loc)
    if "filter_pass" in adata.obs.columns:
        cells = np.flatnonzero(adata.obs["filter_pass"].to_numpy() == 1)
    else:
        cells = np.arange(adata.n_obs)
    tokenized, cell_ids = [], []
    names = adata.obs_names.to_numpy()
    for i in range(0, len(cells), chunk_size):
        idx = cells[i:i + chunk_size]
        n_counts = adata[idx].obs["n_counts"].to_numpy()[:, None]
        x_view = adata[idx, :].X[:, loc]
        x_norm = sp.csr_matrix(x_view / n_counts * target_sum / medians)  # dense intermediate, as upstream
        for j in range(x_norm.shape[0]):
            row = x_norm[j]
            tokenized.append(tokens[row.indices][np.argsort(-row.data)])
        cell_ids.extend(names[idx])
    cls_id, eos_id = vocab.token_dict["<cls>"], vocab.token_dict["<eos>"]
    tokenized = [np.concatenate([[cls_id], t[: input_size - 2], [eos_id]]).astype(np.int64) for t in tokenized]
    ds = Dataset.from_dict({"input_ids": tokenized, "length": [len(t) for t in tokenized], "cell_id": cell_ids})
    ds.save_to_disk(out_dir)
    return len(tokenized)


def ours_tokenize(path: str, vocab, out_dir: str, input_size: int = 4096, chunk_size: int = 1024) -> int:
    from netformer.tokenize import TranscriptomeTokenizer

    tok = TranscriptomeTokenizer(vocab, model_input_size=input_size, chunk_size=chunk_size)
    return tok.write(path, out_dir, overwrite=True).n_cells_out


class _AnonPeak:
    """Samples ``RssAnon`` (heap memory, not file pages) every 20 ms in a thread; ``.peak`` in MiB.

    The high-water mark ``VmHWM`` also counts pages of memory-mapped files that were read (the
    Arrow files ``datasets`` maps while saving); ``RssAnon`` shows what the process allocated.
    """

    def __init__(self) -> None:
        import threading

        self.peak = _rss_mib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib("RssAnon"))
        return self.peak


def worker(which: str, path: str, out_dir: str, input_size: int, chunk_size: int) -> None:
    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    import datasets  # noqa: F401
    import scanpy  # noqa: F401

    from netformer.genes import GeneVocab

    vocab = GeneVocab.from_geneformer(GC104M)
    base = _rss_mib()
    anon = _AnonPeak()
    t = time.perf_counter()
    if which == "ours":
        n = ours_tokenize(path, vocab, out_dir, input_size, chunk_size)
    else:
        n = reference_tokenize(path, vocab, out_dir, input_size)
    dt = time.perf_counter() - t
    peak = _rss_mib("VmHWM")
    print("RESULT " + json.dumps({"cells": n, "seconds": dt, "peak_mib": peak, "base_mib": base,
                                  "peak_anon_mib": anon.stop()}))


def run_worker(which: str, path: str, out_dir: str, args) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    cmd = [sys.executable, __file__, "--worker", which, "--files", path, "--out", out_dir,
           "--input-size", str(args.input_size), "--chunk-size", str(args.chunk_size)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=args.reference_timeout if which == "ref" else None)
    except subprocess.TimeoutExpired:
        print(f"{which} on {path}: stopped after {args.reference_timeout} s", flush=True)
        return None
    if p.returncode != 0:
        raise RuntimeError(f"{which} on {path} failed:\n{p.stderr[-3000:]}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


# ---------------------------------------------------------------------------------------------
# Output comparison
# ---------------------------------------------------------------------------------------------
def normalised_values(path: str, vocab, rows: np.ndarray, target_sum: float = 10_000.0) -> list[dict]:
    """{token id: x_g} of the given cells (duplicate collapsed ids summed), for the tie check."""
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    ids = a.var["ensembl_id"] if "ensembl_id" in a.var.columns else a.var.index
    mapping = vocab.ensembl_mapping or {}
    collapsed = [mapping.get(str(g).upper()) for g in ids]
    n_counts = a.obs["n_counts"].to_numpy()
    out = []
    for r in rows:
        x = a.X[int(r):int(r) + 1]
        counts: dict[str, float] = {}
        for j, c in zip(x.indices, x.data):
            g = collapsed[j]
            if g is not None and g in vocab.token_dict:
                counts[g] = counts.get(g, 0.0) + float(c)
        out.append({vocab.token_dict[g]: c / n_counts[r] * target_sum / vocab.gene_median[g] for g, c in counts.items()})
    return out


def _paired_ids(a, b, batch: int = 4096):
    """Yield (index, ids_a, ids_b) over two datasets, a batch at a time (bounded memory)."""
    for start in range(0, len(a), batch):
        stop = min(start + batch, len(a))
        xa = a.data.table.slice(start, stop - start).column("input_ids").to_pylist()
        xb = b.data.table.slice(start, stop - start).column("input_ids").to_pylist()
        for k, (u, v) in enumerate(zip(xa, xb)):
            yield start + k, u, v


def compare(path: str, ours_dir: str, ref_dir: str, vocab) -> dict:
    """Cells identical / differing only within ties / differing otherwise."""
    import datasets

    ours = datasets.load_from_disk(ours_dir)
    ref = datasets.load_from_disk(ref_dir)
    if ours["cell_id"] != ref["cell_id"]:
        return {"same_cells": False}
    diff = [i for i, a, b in _paired_ids(ours, ref) if len(a) != len(b) or not np.array_equal(a, b)]
    ties, other = 0, 0
    if diff:
        import anndata as ad

        names = ad.read_h5ad(path, backed="r").obs_names
        pos = names.get_indexer(np.asarray(ours.select(diff)["cell_id"]))
        vals = normalised_values(path, vocab, pos)
        for i, v in zip(diff, vals):
            a, b = np.asarray(ours[i]["input_ids"])[1:-1], np.asarray(ref[i]["input_ids"])[1:-1]
            va = np.array([v[t] for t in a])
            vb = np.array([v[t] for t in b])
            if len(a) == len(b) and np.array_equal(va, vb):
                ties += 1
            else:
                other += 1
    return {"same_cells": True, "cells": len(ours), "identical": len(ours) - len(diff), "tie_permutations": ties,
            "other_differences": other}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", nargs="+", default=[PBMC3K, "/tmp/netformer_bench/synth_20k.h5ad"])
    p.add_argument("--reference-max-cells", type=int, default=20_000,
                   help="run the reference only on files with at most this many cells")
    p.add_argument("--reference-timeout", type=float, default=600, help="stop the reference after this many seconds")
    p.add_argument("--input-size", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=1024, help="netformer's chunk size (cells)")
    p.add_argument("--work", type=Path, default=Path("/tmp/netformer_bench/tok_out"))
    p.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    p.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.files[0], args.out, args.input_size, args.chunk_size)
        return

    import anndata as ad

    from netformer.genes import GeneVocab

    vocab = GeneVocab.from_geneformer(GC104M)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.files:
        n = ad.read_h5ad(path, backed="r").n_obs
        stem = Path(path).stem
        ours_dir, ref_dir = str(args.work / f"{stem}_ours"), str(args.work / f"{stem}_ref")
        shutil.rmtree(ref_dir, ignore_errors=True)
        ours = run_worker("ours", path, ours_dir, args)
        print(f"{stem}: ours {ours}", flush=True)
        ref, cmp = None, None
        if n <= args.reference_max_cells:
            ref = run_worker("ref", path, ref_dir, args)
            print(f"{stem}: reference {ref}", flush=True)
        if ref is not None:
            cmp = compare(path, ours_dir, ref_dir, vocab)
            print(f"{stem}: comparison {cmp}", flush=True)
        rows.append(dict(
            file=Path(path).name, cells=ours["cells"],
            ours_cells_s=ours["cells"] / ours["seconds"],
            ref_cells_s=(ref["cells"] / ref["seconds"]) if ref else float("nan"),
            ours_peak_mib=ours["peak_mib"], ours_base_mib=ours["base_mib"], ours_peak_anon_mib=ours["peak_anon_mib"],
            ref_peak_anon_mib=ref["peak_anon_mib"] if ref else float("nan"),
            ref_peak_mib=ref["peak_mib"] if ref else float("nan"),
            ref_base_mib=ref["base_mib"] if ref else float("nan"),
            identical=(f"{cmp['identical']}/{cmp['cells']} identical, {cmp['tie_permutations']} tie perms, "
                       f"{cmp['other_differences']} other" if cmp and cmp.get("same_cells") else
                       ("cell sets differ" if cmp else "reference not run")),
        ))
    print()
    head = ("| file | cells | ours cells/s | reference cells/s | ratio | ours peak RSS MiB (base; heap peak) "
            "| reference peak RSS MiB (base; heap peak) | output |")
    print(head)
    print("|" + "---|" * 8)
    for r in rows:
        ratio = r["ours_cells_s"] / r["ref_cells_s"] if r["ref_cells_s"] == r["ref_cells_s"] else float("nan")
        print(f"| {r['file']} | {r['cells']:,} | {r['ours_cells_s']:,.0f} | {r['ref_cells_s']:,.0f} | {ratio:.1f}x | "
              f"{r['ours_peak_mib']:.0f} ({r['ours_base_mib']:.0f}; {r['ours_peak_anon_mib']:.0f}) | "
              f"{r['ref_peak_mib']:.0f} ({r['ref_base_mib']:.0f}; {r['ref_peak_anon_mib']:.0f}) | "
              f"{r['identical']} |")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
