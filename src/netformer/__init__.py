"""netformer: transfer learning in network biology.

Two halves sharing genes, graphs and data handling:

- a Geneformer-style single-cell foundation model (rank value encoding, masked gene pretraining,
  embeddings, fine-tuning, in silico perturbation), and
- design of Perturb-seq experiments (GEARS-style outcome models, baselines, one-shot GraphReach
  selection and active learning).

Submodules are imported on first use so that ``import netformer`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "genes", "tokenize", "model", "pretrain", "embed", "annotate", "datasets", "classify",
    "perturb", "perturbseq", "select", "errors", "report",
}


def demo(*args, **kwargs):
    """Run the end-to-end demo; see :func:`netformer._demo.run_demo` (settings: :class:`netformer._demo.DemoConfig`)."""
    from ._demo import run_demo

    return run_demo(*args, **kwargs)


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'netformer' has no attribute {name!r}")
