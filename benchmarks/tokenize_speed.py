"""Tokenizer throughput and peak memory: netformer vs upstream Geneformer itself, same run, same inputs.

Two settings, each with the dictionaries upstream ships for it:

- **V1**: gc30M dictionaries, input size 2,048, no special tokens;
- **V2**: gc104M dictionaries, input size 4,096, ``<cls>`` + top 4,094 genes + ``<eos>``.

Peers, each a fresh subprocess per (file, setting), writing a Hugging Face dataset to disk:

- **ours**: ``netformer.tokenize.TranscriptomeTokenizer(vocab, model_input_size=..., special_tokens=...)
  .write(path, out)`` (this venv's python);
- **upstream** (``--upstream PATH``, a checkout of upstream Geneformer, run only as a peer):
  ``geneformer.TranscriptomeTokenizer(model_version="V1"|"V2", nproc=..., use_h5ad_index=True)
  .tokenize_data(dir, out, prefix, file_format="h5ad")`` with the python of ``--upstream-python``
  (default ``/work/upstream/venv/bin/python``); ``dir`` holds a link to the same ``.h5ad``.
  Upstream reads ``var["ensembl_id"]`` (``use_h5ad_index=True`` takes the var index, the Ensembl ids
  of these files), ``obs["n_counts"]`` (present in every input) and ``obs["filter_pass"]`` (absent
  here: all cells are tokenized by both peers);
- **reference** (``--reference``, or when upstream is not available): an upstream-style tokenizer written
  here from the description of upstream's (not copied): whole-file ``scanpy.read_h5ad``, dense
  normalised chunks of 512 cells, a per-cell ``np.argsort(-x)`` loop, ``Dataset.from_dict(...).save_to_disk``.

Measured per subprocess: the tokenize call alone (``write`` / ``tokenize_data``, which include writing
the dataset), the whole process (start to exit: interpreter, imports, dictionaries, call), and the
peak RSS of the process (``VmHWM`` of ``/proc/PID/status`` read by the process at its end; the parent
also samples the summed RSS of the process tree every 0.2 s, which counts worker processes of
``nproc > 1``). Upstream runs are stopped after ``--upstream-timeout`` seconds ("did not finish in N s")
or when the tree's RSS passes ``--upstream-max-rss-gib`` (to protect a shared machine); when a setting did
not finish on a file, the larger files are not run for it. Outputs are compared cell by cell: identical
``input_ids``, or differing only by the order of genes with equal normalised value (ties, which upstream
orders arbitrarily).

The synthetic files come from ``benchmarks/make_synthetic_h5ad.py``. Run::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tokenize_speed.py --upstream /work/upstream/Geneformer \\
        --files /work/shared/data/scrna/pbmc3k_raw_labeled.h5ad /tmp/netformer_bench/synth_200k.h5ad \\
                /tmp/netformer_bench/synth_1m.h5ad \\
        --md benchmarks/results/tokenize_upstream.md --csv benchmarks/results/tokenize_upstream.csv
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402  (numpy is in both venvs; nothing else is imported at the top)

GENES = "/work/shared/data/genes"
PBMC3K = "/work/shared/data/scrna/pbmc3k_raw_labeled.h5ad"
UPSTREAM_PYTHON = "/work/upstream/venv/bin/python"
SETTINGS = {  # name: (dictionary folder, input size, special tokens)
    "V1": ("geneformer_gc30M", 2048, False),
    "V2": ("geneformer_gc104M", 4096, True),
}


def _status(field: str, pid: str = "self") -> float:
    """A memory field of ``/proc/PID/status`` in MiB (``VmRSS``, ``VmHWM``, ``RssAnon``)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _result(extra: dict, t0: float) -> None:
    print("RESULT " + json.dumps({**extra, "call_s": time.perf_counter() - t0, "peak_mib": _status("VmHWM")}),
          flush=True)


# ---------------------------------------------------------------------------------------------
# Workers (one subprocess each)
# ---------------------------------------------------------------------------------------------
def worker_ours(path: str, out: str, setting: str) -> None:
    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    from netformer.genes import GeneVocab
    from netformer.tokenize import TranscriptomeTokenizer

    import anndata as ad
    import datasets  # noqa: F401  (imported by write(); an import, as upstream's at `import geneformer`)

    folder, size, special = SETTINGS[setting]
    vocab = GeneVocab.from_geneformer(f"{GENES}/{folder}")
    tok = TranscriptomeTokenizer(vocab, model_input_size=size, special_tokens=special)
    # load the compiled kernel for this file's count type from numba's cache (like importing an extension)
    tok.tokenize(ad.read_h5ad(path, backed="r")[:8].to_memory())
    base = _status("VmRSS")
    t0 = time.perf_counter()
    s = tok.write(path, out, overwrite=True)
    _result({"cells": s.n_cells_out, "base_mib": base}, t0)


def worker_upstream(path: str, out: str, setting: str, upstream: str, nproc: int) -> None:
    """Runs under upstream's venv: imports only the standard library, numpy and geneformer."""
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    sys.path.insert(0, upstream)
    from geneformer import TranscriptomeTokenizer

    _, size, special = SETTINGS[setting]
    src = Path(tempfile.mkdtemp(prefix="upstream_in_", dir=Path(out).parent))
    (src / Path(path).name).symlink_to(Path(path).resolve())
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tk = TranscriptomeTokenizer(nproc=nproc, model_input_size=size, special_token=special, model_version=setting,
                                use_h5ad_index=True)  # loads the dictionaries (ours: GeneVocab, also untimed)
    base = _status("VmRSS")
    t0 = time.perf_counter()
    tk.tokenize_data(str(src), str(out), "tok", file_format="h5ad")
    import datasets

    n = len(datasets.load_from_disk(str(out / "tok.dataset")))
    _result({"cells": n, "base_mib": base}, t0)
    shutil.rmtree(src, ignore_errors=True)


def worker_reference(path: str, out: str, setting: str, chunk_size: int = 512, target_sum: float = 10_000.0) -> None:
    """Upstream-style tokenization, written here from the description of upstream's algorithm."""
    import logging

    logging.disable(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp
    from datasets import Dataset

    from netformer.genes import GeneVocab

    folder, input_size, special = SETTINGS[setting]
    vocab = GeneVocab.from_geneformer(f"{GENES}/{folder}")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    adata = sc.read_h5ad(path)
    ids = adata.var["ensembl_id"] if "ensembl_id" in adata.var.columns else adata.var.index
    mapping = vocab.ensembl_mapping or {}
    collapsed = [mapping.get(str(g).upper()) for g in ids]
    in_vocab = [c for c in collapsed if c is not None and c in vocab.token_dict]
    if len(set(in_vocab)) < len(in_vocab):
        # duplicate collapsed ids summed: dense chunks, pandas groupby over the collapsed ids
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
    cells = np.arange(adata.n_obs)
    tokenized = []
    for i in range(0, len(cells), chunk_size):
        idx = cells[i:i + chunk_size]
        n_counts = adata[idx].obs["n_counts"].to_numpy()[:, None]
        x_norm = sp.csr_matrix(adata[idx, :].X[:, loc] / n_counts * target_sum / medians)  # dense, as upstream
        for j in range(x_norm.shape[0]):
            row = x_norm[j]
            tokenized.append(tokens[row.indices][np.argsort(-row.data)])
    if special:
        cls_id, eos_id = vocab.token_dict["<cls>"], vocab.token_dict["<eos>"]
        tokenized = [np.concatenate([[cls_id], t[: input_size - 2], [eos_id]]) for t in tokenized]
    else:
        tokenized = [t[:input_size] for t in tokenized]
    tokenized = [t.astype(np.int64) for t in tokenized if t.size]
    ds = Dataset.from_dict({"input_ids": tokenized, "length": [len(t) for t in tokenized]})
    ds.save_to_disk(out)
    _result({"cells": len(tokenized), "base_mib": base}, t0)


# ---------------------------------------------------------------------------------------------
# Running a worker
# ---------------------------------------------------------------------------------------------
def run(cmd: list[str], log: Path, timeout: float | None, max_rss_mib: float | None) -> dict:
    """Run ``cmd`` in its own process group; whole-process wall time, sampled tree RSS peak, its RESULT line."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        tree_peak, stopped = 0.0, None
        while p.poll() is None:
            rss = sum(_status("VmRSS", str(q)) for q in _tree(p.pid))
            tree_peak = max(tree_peak, rss)
            if timeout is not None and time.perf_counter() - t0 > timeout:
                stopped = f"did not finish in {timeout:.0f} s"
            elif max_rss_mib is not None and rss > max_rss_mib:
                stopped = f"stopped at {rss / 1024:.1f} GiB RSS after {time.perf_counter() - t0:.0f} s (memory cap)"
            if stopped:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                break
            time.sleep(0.2)
    whole = time.perf_counter() - t0
    if stopped:
        return {"stopped": stopped, "whole_s": whole, "tree_peak_mib": tree_peak}
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"stopped": f"failed (exit {p.returncode}): {text[-600:]}", "whole_s": whole, "tree_peak_mib": tree_peak}
    return {**json.loads(lines[-1][7:]), "whole_s": whole, "tree_peak_mib": tree_peak}


# ---------------------------------------------------------------------------------------------
# Output comparison
# ---------------------------------------------------------------------------------------------
def _normalised_values(path: str, vocab, rows: np.ndarray, target_sum: float = 10_000.0) -> list[dict]:
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


def compare(path: str, ours_dir: str, peer_dir: str, setting: str) -> str:
    """'N/N identical, T tie permutations, O other' (cells in the same order in both outputs)."""
    import datasets

    from netformer.genes import GeneVocab

    ours, peer = datasets.load_from_disk(ours_dir), datasets.load_from_disk(peer_dir)
    if len(ours) != len(peer):
        return f"cell counts differ ({len(ours)} vs {len(peer)})"
    diff = []
    for start in range(0, len(ours), 8192):
        a = ours.data.table.slice(start, 8192).column("input_ids").combine_chunks()
        b = peer.data.table.slice(start, 8192).column("input_ids").combine_chunks()
        la, lb = np.diff(a.offsets.to_numpy()), np.diff(b.offsets.to_numpy())
        va, vb = a.values.to_numpy().astype(np.int64), b.values.to_numpy().astype(np.int64)
        if np.array_equal(la, lb) and np.array_equal(va, vb):
            continue
        oa, ob = np.r_[0, np.cumsum(la)], np.r_[0, np.cumsum(lb)]
        diff += [start + i for i in range(len(la))
                 if la[i] != lb[i] or not np.array_equal(va[oa[i]:oa[i + 1]], vb[ob[i]:ob[i + 1]])]
    ties = other = 0
    if diff:
        folder, _, special = SETTINGS[setting]
        vocab = GeneVocab.from_geneformer(f"{GENES}/{folder}")
        names = __import__("anndata").read_h5ad(path, backed="r").obs_names
        pos = names.get_indexer(ours.select(diff)["cell_id"])
        inner = slice(1, -1) if special else slice(None)
        for i, v in zip(diff, _normalised_values(path, vocab, pos)):
            a = np.asarray(ours[i]["input_ids"])[inner]
            b = np.asarray(peer[i]["input_ids"])[inner]
            if len(a) == len(b) and np.array_equal([v[t] for t in a], [v[t] for t in b]):
                ties += 1
            else:
                other += 1
    return f"{len(ours) - len(diff):,}/{len(ours):,} identical, {ties} tie permutations, {other} other"


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def fmt_rate(cells: float, s: float) -> str:
    return f"{cells / s:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", nargs="+", default=[PBMC3K, "/tmp/netformer_bench/synth_200k.h5ad"])
    p.add_argument("--settings", nargs="+", default=["V1", "V2"], choices=sorted(SETTINGS))
    p.add_argument("--upstream", type=Path, default=None, help="checkout of upstream Geneformer (run as a peer)")
    p.add_argument("--upstream-python", default=UPSTREAM_PYTHON if Path(UPSTREAM_PYTHON).exists() else None,
                   help="python of a venv with upstream's dependencies (default: %(default)s)")
    p.add_argument("--upstream-nproc", type=int, default=1, help="upstream's nproc (its default: 1)")
    p.add_argument("--upstream-timeout", type=float, default=600, help="stop an upstream run after this many seconds")
    p.add_argument("--upstream-max-rss-gib", type=float, default=10.0,
                   help="stop an upstream run whose process tree passes this RSS (shared machine)")
    p.add_argument("--reference", action="store_true", help="also run the self-written upstream-style reference "
                   "(run anyway when upstream is not given)")
    p.add_argument("--reference-max-cells", type=int, default=20_000, help="run the reference only up to this size")
    p.add_argument("--work", type=Path, default=Path("/tmp/netformer_bench/tok_out"))
    p.add_argument("--md", type=Path, default=None, help="write the tables and the command as Markdown")
    p.add_argument("--csv", type=Path, default=None, help="write the rows as CSV")
    p.add_argument("--worker", choices=["ours", "upstream", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        setting = args.settings[0]
        if args.worker == "ours":
            worker_ours(args.files[0], args.out, setting)
        elif args.worker == "upstream":
            worker_upstream(args.files[0], args.out, setting, str(args.upstream), args.upstream_nproc)
        else:
            worker_reference(args.files[0], args.out, setting)
        return

    command = "OMP_WAIT_POLICY=PASSIVE python " + " ".join(shlex.quote(a) for a in sys.argv)
    use_upstream = args.upstream is not None and args.upstream_python is not None
    if args.upstream is not None and args.upstream_python is None:
        print(f"no --upstream-python (and {UPSTREAM_PYTHON} is absent): upstream not run", flush=True)
    use_reference = args.reference or not use_upstream
    args.work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    print(f"machine: {machine()}; load average at start {load()}", flush=True)

    # warm-up, untimed: our compiled kernel (from numba's cache, or compiled now) and upstream's imports
    for s in args.settings:
        run(me + ["--worker", "ours", "--settings", s, "--files", PBMC3K, "--out", str(args.work / "warmup")],
            args.work / "warmup.log", None, None)
    if use_upstream:
        subprocess.run([args.upstream_python, "-c", f"import sys; sys.path.insert(0, {str(args.upstream)!r}); "
                        "import geneformer"], capture_output=True)

    import anndata as ad

    rows, unfinished = [], {}
    for path in args.files:
        n_obs = ad.read_h5ad(path, backed="r").n_obs
        stem = Path(path).stem
        for s in args.settings:
            tag = f"{stem}_{s}"
            ours_dir = str(args.work / f"{tag}_ours")
            r_ours = run(me + ["--worker", "ours", "--settings", s, "--files", path, "--out", ours_dir],
                         args.work / f"{tag}_ours.log", None, None)
            print(f"{tag}: ours {r_ours} (load {load()})", flush=True)
            peers = {}
            if use_upstream:
                if s in unfinished:
                    peers["upstream"] = {"stopped": f"not run ({unfinished[s]})"}
                else:
                    up_dir = args.work / f"{tag}_upstream"
                    cmd = [args.upstream_python, str(Path(__file__).resolve()), "--worker", "upstream", "--settings", s,
                           "--files", path, "--out", str(up_dir), "--upstream", str(args.upstream),
                           "--upstream-nproc", str(args.upstream_nproc)]
                    r = run(cmd, args.work / f"{tag}_upstream.log", args.upstream_timeout,
                            args.upstream_max_rss_gib * 1024)
                    if "stopped" in r:
                        unfinished[s] = f"{r['stopped']} on {n_obs:,} cells"
                    else:
                        r["dir"] = str(up_dir / "tok.dataset")
                    peers["upstream"] = r
                    print(f"{tag}: upstream {r} (load {load()})", flush=True)
            if use_reference and n_obs <= args.reference_max_cells:
                ref_dir = str(args.work / f"{tag}_reference")
                r = run(me + ["--worker", "reference", "--settings", s, "--files", path, "--out", ref_dir],
                        args.work / f"{tag}_reference.log", args.upstream_timeout, args.upstream_max_rss_gib * 1024)
                if "stopped" not in r:
                    r["dir"] = ref_dir
                peers["reference"] = r
                print(f"{tag}: reference {r} (load {load()})", flush=True)
            for name, r in peers.items():
                if "dir" in r and "stopped" not in r_ours:
                    r["agreement"] = compare(path, ours_dir, r["dir"], s)
                    print(f"{tag}: ours vs {name}: {r['agreement']}", flush=True)
                    shutil.rmtree(Path(r["dir"]).parent if name == "upstream" else r["dir"], ignore_errors=True)
            rows.append({"file": Path(path).name, "cells": n_obs, "setting": s, "ours": r_ours, **peers})

    lines = report(rows, command)
    print("\n".join(lines))
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")
    if args.csv:
        import pandas as pd

        flat = []
        for r in rows:
            for peer in ("ours", "upstream", "reference"):
                if peer in r:
                    x = r[peer]
                    flat.append({"file": r["file"], "cells": r["cells"], "setting": r["setting"], "peer": peer,
                                 "call_s": x.get("call_s"), "whole_s": x.get("whole_s"),
                                 "peak_rss_mib": x.get("peak_mib"), "tree_peak_rss_mib": x.get("tree_peak_mib"),
                                 "base_rss_mib": x.get("base_mib"), "stopped": x.get("stopped", ""),
                                 "agreement": x.get("agreement", "")})
        pd.DataFrame(flat).to_csv(args.csv, index=False)


def report(rows: list[dict], command: str) -> list[str]:
    out = [f"Command: `{command}`", "", f"Machine: {machine()}; load average at the end {load()}", "",
           "| file | cells | setting | peer | call s | cells/s (call) | whole process s | cells/s (whole) "
           "| peak RSS MiB (after imports) | ours faster by: call, whole | output vs ours |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r["ours"]
        for peer in ("ours", "upstream", "reference"):
            if peer not in r:
                continue
            x = r[peer]
            head = f"| {r['file']} | {r['cells']:,} | {r['setting']} | {peer} |"
            if "stopped" in x:
                bound = (f"> {x['whole_s'] / o['whole_s']:.0f}x whole" if "whole_s" in x and "whole_s" in o
                         and x["whole_s"] > 60 else "")
                mem = f"tree (sampled) {x['tree_peak_mib']:,.0f}" if x.get("tree_peak_mib") else ""
                out.append(f"{head} {x['stopped']} | | | | {mem} | {bound} | |")
                continue
            n = x["cells"]
            ratio = "" if peer == "ours" else f"{x['call_s'] / o['call_s']:.1f}x, {x['whole_s'] / o['whole_s']:.1f}x"
            out.append(f"{head} {x['call_s']:.1f} | {fmt_rate(n, x['call_s'])} | {x['whole_s']:.1f} | "
                       f"{fmt_rate(n, x['whole_s'])} | {x['peak_mib']:,.0f} ({x['base_mib']:,.0f}) | {ratio} | "
                       f"{x.get('agreement', '')} |")
    return out


if __name__ == "__main__":
    main()
