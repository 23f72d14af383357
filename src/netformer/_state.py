"""Library calls must not change the caller's global state; helpers for the libraries that do."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def preserved_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block (scanpy's ``rank_genes_groups`` changes it
    through its numba / threadpool set-up). A no-op when torch is not imported."""
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and n is not None and torch.get_num_threads() != n:
            torch.set_num_threads(n)


@contextlib.contextmanager
def preserved_rng(seed: int | None = None) -> Iterator[None]:
    """Run the block with the global random generators (Python ``random``, NumPy's legacy global,
    torch's CPU and CUDA generators) seeded with ``seed`` (if given), and put the caller's states back
    afterwards: training code that seeds globally (our loops, the Hugging Face Trainer's ``set_seed``)
    leaves the caller's random streams where they were."""
    import random

    import numpy as np
    import torch

    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
