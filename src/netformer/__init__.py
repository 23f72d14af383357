"""netformer: transfer learning in network biology.

Two halves sharing genes, graphs and data handling:

- a Geneformer-style single-cell foundation model (rank value encoding, masked gene pretraining,
  embeddings, fine-tuning, in silico perturbation), and
- design of Perturb-seq experiments (GEARS-style outcome models, baselines, one-shot GraphReach
  selection and active learning).

Front door, scanpy style::

    import netformer as nf
    nf.tl.embed(adata, "model_dir")            # adata.obsm["X_netformer"], adata.uns["X_netformer"]
    nf.pl.umap(adata, color="cell_type")

``nf.pp`` (dictionary, tokenization), ``nf.tl`` (embed cells/genes, annotate, classify, perturb into
the AnnData), ``nf.pl`` (UMAP, loss, ranked shifts, coverage; never switching the Matplotlib backend).
Names: ``perturb`` is in silico perturbation with the foundation model (Geneformer's term),
``perturbseq`` is measured Perturb-seq data and its outcome models, ``select`` chooses which
perturbations to measure.

Submodules are imported on first use so that ``import netformer`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The scanpy-style front door (``nf.pp``, ``nf.tl``, ``nf.pl``) and every submodule, imported on first use.
_LAZY = {
    "pp", "tl", "pl",
    "genes", "readers", "tokenize", "model", "encoder", "pretrain", "embed", "annotate", "datasets", "classify",
    "integration", "perturb", "perturbseq", "graphs", "select", "errors", "report",
}

__all__ = ["__version__", "demo", *sorted(_LAZY)]


def demo(*args, **kwargs):
    """Run the end-to-end demo; see :func:`netformer._demo.run_demo` (settings: :class:`netformer._demo.DemoConfig`)."""
    from ._demo import run_demo

    return run_demo(*args, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
