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
