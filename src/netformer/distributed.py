"""The processes of one model job under ``torch.distributed`` (``torchrun`` / ``accelerate launch``).

The one home of rank logic for the jobs that netformer shards itself (in silico perturbation,
embedding extraction, fine-tuning); pretraining leaves it to the Hugging Face Trainer, which reads
the same environment. A job started by ``torchrun --nproc_per_node N -m netformer ...`` sees
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment; without them it is one process of
a world of one, and every function here is a no-op.

- :func:`init` joins the process group (``nccl`` when the job runs on CUDA, else ``gloo``) and
  :func:`place` s the rank: GPU ``LOCAL_RANK`` when CUDA is present, otherwise ``cores // ranks`` CPU
  threads of its node (``NETFORMER_THREADS`` overrides).
- :func:`my_chunks` gives a rank its deterministic share of a job's chunks (chunk ``i`` belongs to
  rank ``i mod world size``). Chunks are fixed by the job's settings, never by the number of ranks,
  so a run killed with N ranks resumes with M, and the merged result equals a one-process run.
- :func:`barrier` waits for every rank (a no-op in one process).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that merges and writes the job's final outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The :class:`World` of this process, from the launcher's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, as set by torchrun and accelerate launch)."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    return World(rank=int(env.get("RANK", "0")), size=size, local_rank=int(env.get("LOCAL_RANK", "0")),
                 local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))))


def init(device: torch.device | str | None = None) -> World:
    """Join the job's process group (once) and place this rank: GPU ``LOCAL_RANK`` when the job runs on
    CUDA, else a share of the node's CPU threads. Returns :func:`world`; one process: nothing is done."""
    w = world()
    if not w.distributed:
        return w
    import torch.distributed as dist

    on_cuda = place(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
        log.info("rank %d of %d joined the process group (%s, %d CPU threads)", w.rank, w.size,
                 dist.get_backend(), torch.get_num_threads())
    return w


def place(device: torch.device | str | None = None) -> bool:
    """Put this rank on its GPU (``LOCAL_RANK``) when the job runs on CUDA, else give it ``cores // ranks on
    the node`` PyTorch threads (``NETFORMER_THREADS`` overrides; ``OMP_NUM_THREADS`` is not used, because
    torchrun sets it to 1 for every rank of a multi-process job). Returns whether the rank is on CUDA.
    One process: nothing is changed."""
    w = world()
    on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if not w.distributed:
        return on_cuda
    if on_cuda:
        torch.cuda.set_device(w.local_rank % torch.cuda.device_count())
        return True
    if os.environ.get("NETFORMER_THREADS"):
        threads = int(os.environ["NETFORMER_THREADS"])
    else:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        threads = max(1, cpus // max(w.local_size, 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return False


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def my_chunks(n_chunks: int, w: World | None = None) -> list[int]:
    """The chunk indices of ``range(n_chunks)`` that rank ``w.rank`` computes: ``rank, rank + size, ...``."""
    w = w or world()
    return list(range(w.rank, n_chunks, w.size))


def split_evenly(items: Sequence, w: World | None = None) -> list:
    """This rank's items of ``items`` (round robin), all ranks given the same number (the last items,
    which would leave ranks unequal, are dropped): what each rank of a data-parallel training step takes."""
    w = w or world()
    n = len(items) - len(items) % w.size if len(items) >= w.size else len(items)
    return list(items[w.rank:n:w.size])


def sync_gradients(net, step: bool):
    """Context of one micro-batch of a (possibly) ``DistributedDataParallel`` model: gradients are averaged
    over the ranks only on the micro-batch that ends an optimiser step (``step``), as gradient accumulation
    wants; a plain model: nothing."""
    if not step and isinstance(net, torch.nn.parallel.DistributedDataParallel):
        return net.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a CPU tensor; returned as is in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    if dist.get_backend() == "nccl":
        out = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(out)
        return out.cpu()
    out = t.clone()
    dist.all_reduce(out)
    return out
