"""Upstream Geneformer as a peer in a benchmark run, and the machine's own rates.

Two halves:

- In the benchmark's process (netformer's environment): :class:`UpstreamPeer` runs one upstream job
  (``EmbExtractor.extract_embs`` or ``InSilicoPerturber.perturb_data``) in a *separate* Python process,
  with upstream's own environment (``--upstream-python``, default ``/work/upstream/venv/bin/python``)
  and the checkout given by ``--upstream PATH`` on its ``sys.path``. Nothing of upstream is imported
  here and nothing of it is copied into this repository: upstream runs only as a peer.
  :func:`machine_rates` measures the 2,048 x 2,048 ``torch.matmul`` rate in float32 and bfloat16 and
  reads the CPU capability PyTorch detects; :func:`encoder_gflop` counts the matrix-multiply work of
  a pass and :func:`bound_line` says what bounds a ratio that misses its goal.
- In upstream's process: ``python benchmarks/upstream_peer.py JOB.json`` (what :class:`UpstreamPeer`
  starts) imports ``geneformer``, sets the thread count, runs one untimed warm-up call on a small
  input, then the timed call, and writes ``result.json`` beside the job: the call's seconds, the
  import's, and the outputs converted to plain arrays/JSON (embeddings in dataset order; the
  cosine similarities that ``InSilicoPerturber`` pickles, read back from its ``*_raw.pickle`` files).

Upstream's checkout hard-codes ``"cuda"`` in a few places; the benchmarks expect it patched there
only (a ``DEVICE`` variable, CUDA when available, else CPU); docs/benchmarks.md lists the patches.
This module imports only the standard library and torch at module level, so it runs in either
environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PYTHON = "/work/upstream/venv/bin/python"


# ------------------------------------------------------------------------------------------------
# benchmark side
# ------------------------------------------------------------------------------------------------
def add_arguments(ap) -> None:
    """``--upstream PATH`` and ``--upstream-python`` on an argparse parser."""
    ap.add_argument("--upstream", metavar="PATH",
                    help="a checkout of upstream Geneformer (its 'geneformer' package inside), run as a peer in "
                         "its own process in the same run")
    ap.add_argument("--upstream-python", default=DEFAULT_PYTHON, metavar="PYTHON",
                    help=f"the Python with upstream's dependencies (default {DEFAULT_PYTHON})")


class UpstreamError(RuntimeError):
    pass


class UpstreamPeer:
    """Runs upstream jobs in a subprocess (see the module docstring)."""

    def __init__(self, path: str, python: str = DEFAULT_PYTHON, threads: int = 2, device: str = "cpu",
                 timeout: float = 3600):
        self.path = Path(path).resolve()
        self.python = python
        self.threads = threads
        self.device = device
        self.timeout = timeout
        if not (self.path / "geneformer" / "__init__.py").is_file():
            raise UpstreamError(f"{self.path} holds no geneformer/ package: pass a checkout of upstream Geneformer")
        if not Path(python).exists():
            raise UpstreamError(f"no Python at {python}: pass --upstream-python")

    def describe(self) -> str:
        rev = "?"
        try:
            rev = subprocess.run(["git", "-C", str(self.path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, timeout=30).stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            pass
        return f"upstream {self.path} (commit {rev}), {self.python}"

    def run(self, job: dict, workdir: str | Path) -> dict:
        """Run one job; returns the driver's result plus ``process_s`` (the whole subprocess)."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        job = {**job, "threads": self.threads, "out": str(workdir / "out")}
        (workdir / "job.json").write_text(json.dumps(job, indent=1))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads), TQDM_DISABLE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if not str(self.device).startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = ""  # upstream uses CUDA whenever it sees one
        t0 = time.perf_counter()
        with open(workdir / "upstream.log", "w") as log:
            proc = subprocess.run([self.python, str(Path(__file__).resolve()), str(workdir / "job.json")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, timeout=self.timeout,
                                  cwd=str(workdir))
        process_s = time.perf_counter() - t0
        if proc.returncode != 0 or not (workdir / "result.json").exists():
            tail = (workdir / "upstream.log").read_text()[-3000:]
            raise UpstreamError(f"upstream {job['kind']} job failed (exit {proc.returncode}); log tail:\n{tail}")
        res = json.loads((workdir / "result.json").read_text())
        res["process_s"] = process_s
        return res


def save_dataset(rows: dict, path: str | Path) -> Path:
    """A ``datasets`` folder (``save_to_disk``) with the given columns, the input upstream reads."""
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# the machine: matmul rates, CPU capability, FLOP counts and bounds
# ------------------------------------------------------------------------------------------------
def matmul_rate(device: str = "cpu", dtype=None, n: int = 2048, reps: int = 5) -> float:
    """Best rate (GFLOP/s) of an ``n x n`` ``torch.matmul`` in ``dtype`` over ``reps`` products."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def hardware(device: str = "cpu") -> dict:
    """CPU name and the capability PyTorch detects (``torch.backends.cpu.get_cpu_capability()``), the
    native bf16 unit (AMX / AVX512-BF16 / CUDA), the GPU name on CUDA, threads."""
    import platform

    import torch

    out = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
           "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())}
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out["cpu"] = name
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
        out["bf16_unit"] = "CUDA" if torch.cuda.is_bf16_supported() else None
    else:
        out["bf16_unit"] = "AMX" if out["amx"] else "AVX512-BF16" if out["avx512_bf16"] else None
    return out


def machine_rates(device: str = "cpu", n: int = 2048) -> dict:
    """fp32 and bf16 ``torch.matmul`` rates (GFLOP/s) and :func:`hardware`, measured now."""
    import torch

    hw = hardware(device)
    hw["fp32_gflops"] = matmul_rate(device, torch.float32, n)
    hw["bf16_gflops"] = matmul_rate(device, torch.bfloat16, n)
    hw["matmul_n"] = n
    return hw


def machine_line(m: dict) -> str:
    where = m.get("gpu") or m["cpu"]
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    return (f"machine: {where}{load}; device {m['device']}, {m['threads']} torch thread(s), torch {m['torch']}; "
            f"CPU capability {m['cpu_capability']} (AMX {'yes' if m['amx'] else 'no'}, AVX512-BF16 "
            f"{'yes' if m['avx512_bf16'] else 'no'}; native bf16: {m['bf16_unit'] or 'none'}); "
            f"{m['matmul_n']}x{m['matmul_n']} torch.matmul: float32 {m['fp32_gflops']:.1f} GFLOP/s, "
            f"bfloat16 {m['bf16_gflops']:.1f} GFLOP/s")


def encoder_gflop(config, length: float, layers: int, mlm_head: bool) -> float:
    """Matrix-multiply GFLOP (2 per multiply-add) of one ``length``-token pass through ``layers``
    layers: ``2 L (4 H^2 + 2 H I) + 4 L^2 H`` per layer, plus ``2 L H (H + V)`` for the MLM head
    (transform and decoder). Layer norms, softmax, activations and lookups are left out."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    per_layer = 2 * length * (4 * h * h + 2 * h * i) + 4 * length * length * h
    head = 2 * length * h * (h + v) if mlm_head else 0
    return (layers * per_layer + head) / 1e9


def bound_line(what: str, ratio: float, goal: float, ours_gflop: float, ours_s: float, peer_gflop: float,
               peer_s: float, rate: float, precision: str, peer: str = "upstream") -> str:
    """One line: goal met, or what bounds it (work of both sides against the measured matmul rate in
    the precision ours used)."""
    if ratio >= goal:
        return f"{what}: {ratio:.2f}x >= {goal:g}x: goal met"
    floor_s = ours_gflop / rate  # ours at the full matmul rate
    ceiling = peer_s / floor_s
    return (f"{what}: {ratio:.2f}x < {goal:g}x: goal missed. Per item ours does {ours_gflop:.2f} GFLOP in "
            f"{ours_s * 1e3:.1f} ms ({ours_gflop / ours_s:.1f} GFLOP/s, {100 * ours_gflop / ours_s / rate:.0f}% of the "
            f"{precision} matmul rate {rate:.1f} GFLOP/s); {peer} does {peer_gflop:.2f} GFLOP in {peer_s * 1e3:.1f} ms "
            f"({peer_gflop / peer_s:.1f} GFLOP/s). Work ratio {peer_gflop / ours_gflop:.2f}x; even at the full {precision} "
            f"matmul rate ours would take {floor_s * 1e3:.1f} ms: ceiling {ceiling:.2f}x"
            + (" (below the goal: the FLOPs bound it)" if ceiling < goal else
               " (above the goal: ours runs below the matmul rate)"))


def config_kwargs(cls, precision: str) -> dict:
    """``precision=`` for a netformer config dataclass that has the field; only fp32 where it has not."""
    import dataclasses

    if "precision" in {f.name for f in dataclasses.fields(cls)}:
        return {"precision": precision}
    if precision != "fp32":
        raise SystemExit(f"--precision {precision}: this netformer has no precision setting (fp32 only)")
    return {}


def resolved_precision(precision: str, device) -> str:
    """What ``precision`` resolves to on ``device`` (``auto`` by netformer's rule)."""
    if precision != "auto":
        return precision
    from netformer.precision import resolve_precision

    return resolve_precision("auto", device)


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    import numpy as np
    import pandas as pd

    ra = pd.Series(np.asarray(a, dtype=np.float64)).rank().to_numpy()
    rb = pd.Series(np.asarray(b, dtype=np.float64)).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ------------------------------------------------------------------------------------------------
# upstream side (runs under upstream's Python, geneformer importable)
# ------------------------------------------------------------------------------------------------
def _read_pickles(folder: Path, pattern: str) -> dict:
    """Merge upstream's ``*_raw.pickle`` outputs (dicts of lists) matching ``pattern``."""
    import pickle

    merged: dict = {}
    files = sorted(folder.glob(pattern))
    for f in files:
        with open(f, "rb") as fh:  # our own run's output, written a moment ago by upstream
            d = pickle.load(fh)
        for k, v in d.items():
            merged.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return merged


def _driver(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    workdir = Path(job_path).parent
    import numpy as np
    import torch

    torch.set_num_threads(int(job["threads"]))
    t0 = time.perf_counter()
    import geneformer  # noqa: F401
    import transformers
    from geneformer import perturber_utils as pu

    import_s = time.perf_counter() - t0
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    res = {"import_s": import_s, "torch": torch.__version__, "transformers": transformers.__version__,
           "threads": torch.get_num_threads(), "upstream_device": getattr(pu, "DEVICE", "unpatched")}
    if job["kind"] == "embed":
        from geneformer import EmbExtractor

        def extractor():
            return EmbExtractor(model_type="Pretrained", emb_mode="cell", emb_layer=job["emb_layer"],
                                max_ncells=None, forward_batch_size=job["batch_size"], nproc=1,
                                model_version=job["model_version"], emb_label=["cell_index"])

        (out / "warmup").mkdir(exist_ok=True)
        extractor().extract_embs(job["model"], job["warmup_data"], str(out / "warmup"), "warmup")
        ex = extractor()
        t = time.perf_counter()
        df = ex.extract_embs(job["model"], job["data"], str(out), "embs")
        res["call_s"] = time.perf_counter() - t
        order = np.argsort(df["cell_index"].to_numpy())
        emb = df.drop(columns=["cell_index"]).to_numpy(np.float32)[order]
        np.save(workdir / "embeddings.npy", emb)
        res["embeddings"] = str(workdir / "embeddings.npy")
        res["n_cells"] = int(len(df))
    elif job["kind"] == "perturb":
        from geneformer import InSilicoPerturber

        def perturber():
            return InSilicoPerturber(perturb_type="delete", genes_to_perturb="all", model_type="Pretrained",
                                     emb_mode=job["emb_mode"], cell_states_to_model=None, max_ncells=None,
                                     emb_layer=job["emb_layer"], forward_batch_size=job["batch_size"], nproc=1,
                                     model_version=job["model_version"])

        (out / "warmup").mkdir(exist_ok=True)
        perturber().perturb_data(job["model"], job["warmup_data"], str(out / "warmup"), "warmup")
        isp = perturber()
        t = time.perf_counter()
        isp.perturb_data(job["model"], job["data"], str(out), "bench")
        res["call_s"] = time.perf_counter() - t
        cell = _read_pickles(out, "*_dict_cell_embs_*_raw.pickle")
        res["cell_cos"] = {str(k[0]): float(np.mean(v)) for k, v in cell.items()}
        genes = _read_pickles(out, "*_dict_gene_embs_*_raw.pickle")
        if genes:
            per: dict = {}
            for (perturbed, _affected), v in genes.items():
                per.setdefault(perturbed, []).extend(v)
            res["gene_cos_mean"] = {str(k): float(np.mean(v)) for k, v in per.items()}
        res["pickles"] = sorted(p.name for p in out.glob("*_raw.pickle"))
    else:
        raise SystemExit(f"unknown job kind {job['kind']!r}")
    (workdir / "result.json").write_text(json.dumps(res))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/upstream_peer.py JOB.json (started by UpstreamPeer.run)")
    _driver(sys.argv[1])
