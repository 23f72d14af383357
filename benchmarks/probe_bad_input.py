"""Re-run the bad-input probe table against the CLI: one line per probe.

Each probe builds its input in a fresh folder (real cells from ../shared/data, a tiny model pretrained
here in a few seconds), runs ``python -m netformer ...`` as a user would, and reports the exit code, the
first line of the message and what was left on disk (files the probe did not create, hidden temporaries
included). Expected: exit 2 with one ``error:`` line and nothing left for bad input; exit 0 for the
inputs that must work (fallbacks, string flags, a single cell).

    python benchmarks/probe_bad_input.py [--only NAME,...] [--out benchmarks/results/probes.md]

About 5 minutes on 2 CPU cores (each probe is a fresh process: ~5 s of imports).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import anndata as ad
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
KANG = DATA / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
PBMC = DATA / "scrna" / "pbmc3k_raw_labeled.h5ad"
GC30M = DATA / "genes" / "geneformer_gc30M"
GC104M = DATA / "genes" / "geneformer_gc104M"


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "netformer", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


@dataclass
class Probe:
    name: str
    setup: Callable[[Path, "Shared"], list]  # returns the CLI arguments; may write inputs into the folder
    expect: int = 2


class Shared:
    """Inputs made once: Kang cells, a tokenized folder, a tiny pretrained model, a bare checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root = root
        a = ad.read_h5ad(KANG)[:120].copy()
        a.obs["n_counts"] = np.asarray(a.X.sum(1)).ravel().astype(float)
        self.h5ad = root / "kang120.h5ad"
        a.write_h5ad(self.h5ad)
        self.tokenized = root / "tokenized"
        run(cli("tokenize", self.h5ad, "--build-vocab", "--input-size", "64", "--obs-column", "condition",
                "--out", self.tokenized))
        self.run = root / "pretrain"
        run(cli("pretrain", self.tokenized, "--out", self.run, "--preset", "tiny", "--max-steps", "4",
                "--batch-size", "8", "--save-steps", "2", "--device", "cpu"))
        self.model = self.run / "model"
        self.bare = root / "bare"
        self.bare.mkdir()
        for f in ("config.json", "model.safetensors"):
            shutil.copy(self.model / f, self.bare / f)
        self.v1_tokenized = root / "v1_tokenized"
        run(cli("tokenize", self.h5ad, "--vocab", GC30M, "--input-size", "64", "--out", self.v1_tokenized))

    def adata(self) -> ad.AnnData:
        return ad.read_h5ad(self.h5ad)

    def model_copy(self, d: Path) -> Path:
        m = d / "model"
        shutil.copytree(self.model, m)
        return m


def run(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0:
        raise SystemExit(f"setup failed: {r.stderr[-2000:]}")


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


# -- the probe table -------------------------------------------------------------------------------
def p_n_counts(value, fallback=False):
    def setup(d, s):
        a = s.adata()
        col = a.obs["n_counts"].astype(str) if isinstance(value, str) else a.obs["n_counts"].copy()
        col.iloc[[2, 5]] = value
        a.obs["n_counts"] = col
        args = ["tokenize", write(a, d / "in.h5ad"), "--vocab", s.tokenized / "vocab", "--out", d / "out"]
        return args + (["--n-counts-fallback", "row-sum"] if fallback else [])
    return setup


def p_filter(values):
    def setup(d, s):
        a = s.adata()
        a.obs["filter_pass"] = values(a.n_obs)
        return ["tokenize", write(a, d / "in.h5ad"), "--vocab", s.tokenized / "vocab", "--out", d / "out"]
    return setup


def p_zero_cells(d, s):
    return ["tokenize", write(s.adata()[:0].copy(), d / "in.h5ad"), "--vocab", s.tokenized / "vocab", "--out", d / "out"]


def p_lognorm(layer):
    def setup(d, s):
        a = s.adata()
        a.layers["counts"] = a.X.copy()
        a.X = a.X.astype(np.float32).log1p()
        args = ["tokenize", write(a, d / "in.h5ad"), "--vocab", s.tokenized / "vocab", "--out", d / "out"]
        return args + (["--layer", "counts"] if layer else [])
    return setup


def p_readonly(d, s):
    if os.geteuid() == 0:  # root writes through 0555 folders: use a path below a regular file instead
        (d / "a_file").write_text("x")
        return ["tokenize", s.h5ad, "--vocab", s.tokenized / "vocab", "--out", d / "a_file" / "out"]
    ro = d / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    return ["tokenize", s.h5ad, "--vocab", s.tokenized / "vocab", "--out", ro / "out"]


def p_two_dicts(d, s):
    both = d / "dicts"
    both.mkdir()
    for src in (GC30M, GC104M):
        for f in src.glob("*.pkl"):
            shutil.copy(f, both / f.name)
    return ["tokenize", s.h5ad, "--vocab", both, "--out", d / "out"]


def p_dup_ids(d, s):
    a = s.adata()
    a.var.loc[a.var_names[1], "ensembl_id"] = a.var["ensembl_id"].iloc[0]
    return ["tokenize", write(a, d / "in.h5ad"), "--vocab", s.tokenized / "vocab", "--out", d / "out"]


def p_exists(d, s):
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("old")
    return ["tokenize", s.h5ad, "--vocab", s.tokenized / "vocab", "--out", d / "out"]


def p_pretrain(*extra):
    return lambda d, s: ["pretrain", s.tokenized, "--out", d / "run", "--preset", "tiny", "--max-steps", "2",
                         "--device", "cpu", *extra]


def p_pretrain_finished(*extra):
    def setup(d, s):
        shutil.copytree(s.run, d / "run")
        return ["pretrain", s.tokenized, "--out", d / "run", "--preset", "tiny", "--max-steps", "4", "--batch-size", "8",
                "--save-steps", "2", "--device", "cpu", *extra]
    return setup


def p_pretrain_other_preset(d, s):
    shutil.copytree(s.run, d / "run")
    shutil.rmtree(d / "run" / "model")  # as if killed after its last checkpoint
    return ["pretrain", s.tokenized, "--out", d / "run", "--preset", "small", "--max-steps", "4", "--device", "cpu"]


def p_pretrain_empty(d, s):
    import datasets

    empty = d / "empty"
    datasets.load_from_disk(str(s.tokenized)).select([]).save_to_disk(str(empty))
    shutil.copytree(s.tokenized / "vocab", empty / "vocab")
    return ["pretrain", empty, "--out", d / "run", "--preset", "tiny", "--max-steps", "2"]


def p_embed(*extra, model=None, data=None):
    def setup(d, s):
        extra_ = [str(d / a) if a.startswith("x.") else a for a in extra]  # outputs inside the probe's folder
        return ["embed", model(d, s) if model else s.model, data(d, s) if data else s.tokenized, *extra_]
    return setup


def no_vocab(d, s):
    t = d / "t"
    shutil.copytree(s.tokenized, t)
    shutil.rmtree(t / "vocab")
    return t


def truncated(d, s):
    m = s.model_copy(d)
    b = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(b[: len(b) // 2])
    return m


def no_weights(d, s):
    m = s.model_copy(d)
    (m / "model.safetensors").unlink()
    return m


def bad_config(d, s):
    m = s.model_copy(d)
    (m / "config.json").write_text("{not json")
    return m


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/netformer_probe_pwned",))


def malicious_bin(d, s):
    m = s.model_copy(d)
    (m / "model.safetensors").unlink()
    with open(m / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"weights": _Evil()}, fh)
    return m


def p_perturb(*extra, cells=None):
    def setup(d, s):
        data = s.tokenized
        if cells is not None:
            import datasets

            data = d / "one"
            datasets.load_from_disk(str(s.tokenized)).select(range(cells)).save_to_disk(str(data))
            shutil.copytree(s.tokenized / "vocab", data / "vocab")
        return ["perturb", s.model, data, "--out", d / "out", "--device", "cpu", *extra]
    return setup


def p_finetune(labels, folds="3"):
    def setup(d, s):
        a = s.adata()
        a.obs["label"] = labels(a.n_obs)
        return ["finetune", "cell", write(a, d / "in.h5ad"), s.model, "--out", d / "out", "--label-column", "label",
                "--folds", folds, "--epochs", "1", "--device", "cpu"]
    return setup


PROBES = [
    Probe("tokenize: missing input file", lambda d, s: ["tokenize", d / "nope.h5ad", "--vocab", s.tokenized / "vocab",
                                                        "--out", d / "out"]),
    Probe("tokenize: obs n_counts NaN for 2 cells", p_n_counts(np.nan)),
    Probe("tokenize: obs n_counts zero", p_n_counts(0.0)),
    Probe("tokenize: obs n_counts negative", p_n_counts(-3.0)),
    Probe("tokenize: obs n_counts a string", p_n_counts("many")),
    Probe("tokenize: n_counts NaN with --n-counts-fallback row-sum", p_n_counts(np.nan, True), 0),
    Probe("tokenize: every cell filtered out", p_filter(lambda n: np.zeros(n, int))),
    Probe("tokenize: filter_pass as strings True/False", p_filter(lambda n: ["True", "False"] * (n // 2)), 0),
    Probe("tokenize: filter_pass as other strings", p_filter(lambda n: ["maybe"] * n)),
    Probe("tokenize: zero cells", p_zero_cells),
    Probe("tokenize: log-normalised X", p_lognorm(False)),
    Probe("tokenize: log-normalised X, --layer counts", p_lognorm(True), 0),
    Probe("tokenize: unwritable output path (read-only folder; as root: below a file)", p_readonly),
    Probe("tokenize: two token dictionaries in --vocab", p_two_dicts),
    Probe("tokenize: duplicate gene ids (summed, warned)", p_dup_ids, 0),
    Probe("tokenize: --out exists", p_exists),
    Probe("pretrain: --batch-size 0", p_pretrain("--batch-size", "0")),
    Probe("pretrain: --preset huge", p_pretrain("--preset", "huge")),
    Probe("pretrain: empty dataset", p_pretrain_empty),
    Probe("pretrain: finished run, no --overwrite", p_pretrain_finished()),
    Probe("pretrain: finished run, --overwrite --seed 7", p_pretrain_finished("--overwrite", "--seed", "7"), 0),
    Probe("pretrain: unfinished run, other preset", p_pretrain_other_preset),
    Probe("pretrain: --vocab of another dictionary", p_pretrain("--vocab", GC30M)),
    Probe("embed: --umap-by nope", p_embed("--out", "x.parquet", "--umap-by", "nope")),
    Probe("embed: --out x.txt", p_embed("--out", "x.txt")),
    Probe("embed: --out x.csv", p_embed("--out", "x.csv"), 0),
    Probe("embed: V1-tokenized cells on our model", p_embed("--out", "x.parquet", data=lambda d, s: s.v1_tokenized)),
    Probe("embed: bare checkpoint, cells without dictionary",
          p_embed("--out", "x.parquet", model=lambda d, s: s.bare, data=no_vocab)),
    Probe("embed: bare checkpoint, --vocab", p_embed("--out", "x.parquet", "--vocab", "VOCAB", model=lambda d, s: s.bare,
                                                   data=no_vocab), 0),
    Probe("embed: truncated model.safetensors", p_embed("--out", "x.parquet", model=truncated)),
    Probe("embed: model folder without weights", p_embed("--out", "x.parquet", model=no_weights)),
    Probe("embed: corrupt config.json", p_embed("--out", "x.parquet", model=bad_config)),
    Probe("embed: malicious pytorch_model.bin", p_embed("--out", "x.parquet", model=malicious_bin)),
    Probe("embed: --layer 9", p_embed("--out", "x.parquet", "--layer", "9")),
    Probe("embed: --pooling max", p_embed("--out", "x.parquet", "--pooling", "max")),
    Probe("perturb: --max-cells 0", p_perturb("--max-cells", "0")),
    Probe("perturb: --layer 9", p_perturb("--layer", "9", "--max-cells", "2")),
    Probe("perturb: --mode bogus", p_perturb("--mode", "bogus")),
    Probe("perturb: unknown gene", p_perturb("-g", "NOT_A_GENE", "--max-cells", "2")),
    Probe("perturb: a single cell, exact", p_perturb("--mode", "exact", cells=1), 0),
    Probe("finetune: every label missing", p_finetune(lambda n: np.full(n, np.nan))),
    Probe("finetune: one class", p_finetune(lambda n: ["a"] * n)),
    Probe("finetune: a class smaller than the folds", p_finetune(lambda n: ["a"] * (n - 2) + ["b"] * 2)),
    Probe("select benchmark: --subset without =", lambda d, s: ["select", "benchmark", "--out", d / "out", "--data",
                                                              DATA / "perturbseq" / "devel.h5ad", "--subset", "dataset"]),
    Probe("select run: --budget 0", lambda d, s: ["select", "run", "--out", d / "out", "--budget", "0"]),
    Probe("select run: missing graph file", lambda d, s: ["select", "run", "--out", d / "out", "--budget", "5",
                                                        "--graph", d / "nope.csv"]),
    Probe("annotate: missing file", lambda d, s: ["annotate", d / "nope.h5ad", "--out", d / "x.csv"]),
]


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith(("error:", "Error:")) or "Error: " in line[:40]:
            return line.strip()[:160]
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Loading weights", "Saving the dataset", "Map", "Filter")) and "it/s]" not in line:
            return line[:160]
    return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated substrings of probe names")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "probes.md"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="netformer_probes_"))
    t0 = time.perf_counter()
    shared = Shared(root)
    rows = ["| probe | command | exit | expected | first line of the message | left on disk |", "|---|---|---|---|---|---|"]
    bad = 0
    probes = [p for p in PROBES if not args.only or any(k in p.name for k in args.only.split(","))]
    for i, probe in enumerate(probes):
        d = root / f"p{i:02d}"
        d.mkdir()
        argv = [str(a) for a in probe.setup(d, shared)]
        argv = [str(shared.tokenized / "vocab") if a == "VOCAB" else a for a in argv]
        before = snapshot(d)
        r = cli(*argv)
        os.chmod(d, 0o755)
        for p in d.rglob("*"):
            if p.is_dir():
                os.chmod(p, 0o755)
        left = sorted(snapshot(d) - before)
        msg = first_line(r.stderr) if r.returncode else first_line(r.stdout) or first_line(r.stderr)
        ok = r.returncode == probe.expect and (probe.expect == 0 or not left) and "Traceback" not in r.stderr
        bad += not ok
        cmd = "netformer " + " ".join(a.replace(str(d), "D").replace(str(root), "R").replace(str(DATA), "DATA")
                                      for a in argv)
        shown = ", ".join(left[:4]) + (" ..." if len(left) > 4 else "") if left else "nothing"
        line = f"| {probe.name} | `{cmd[:110]}` | {r.returncode} | {probe.expect} | {msg.replace('|', '/')} | {shown} |"
        rows.append(line)
        print(("OK  " if ok else "BAD ") + line, flush=True)
    pwned = Path("/tmp/netformer_probe_pwned").exists()
    summary = (f"\n{len(probes) - bad} of {len(probes)} probes as expected; malicious pickle executed: {pwned}; "
               f"{time.perf_counter() - t0:.0f} s")
    print(summary)
    Path(args.out).write_text("# Bad-input probes (`python benchmarks/probe_bad_input.py`)\n\n" + "\n".join(rows) + "\n"
                              + summary + "\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
