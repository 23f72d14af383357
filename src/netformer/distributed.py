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
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

log = logging.getLogger(__name__)

WAIT = datetime.timedelta(hours=24)
"""How long a rank waits for the others at a barrier (PyTorch's default, 10-30 min, is shorter than the
spread of a long screen's ranks)."""


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
        # ranks wait at a barrier for the slowest one (a rank that dies is stopped by torchrun, not by this)
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=WAIT)
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
    from .cluster import available_cpus

    if os.environ.get("NETFORMER_THREADS"):
        threads = int(os.environ["NETFORMER_THREADS"])
    else:
        threads = max(1, available_cpus() // max(w.local_size, 1))
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
    """This rank's items of ``items`` (round robin), every rank given the same number: the last
    ``len(items) % size`` items, which would leave the ranks unequal, are dropped (what each rank of a
    data-parallel training step takes; fewer items than ranks gives none to anyone)."""
    w = w or world()
    n = len(items) - len(items) % w.size
    return list(items[w.rank:n:w.size])


def refuse(what: str) -> None:
    """Raise :class:`~netformer.errors.ConfigError` under torchrun for a job that runs in one process."""
    w = world()
    if w.distributed:
        from .errors import ConfigError

        raise ConfigError(f"{what} runs in one process; it is not sharded over the {w.size} processes of this "
                          "torchrun job: run it without torchrun")


def from_main(make):
    """``make()`` called on rank 0 and its result given to every rank (``torch.distributed`` broadcast); an
    exception raised there is raised on every rank (as the same :mod:`netformer.errors` type when it is one).
    One process: ``make()``."""
    import torch.distributed as dist

    w = world()
    if not w.distributed:
        return make()
    init()
    box = [None]
    if w.is_main:
        try:
            box[0] = ("ok", make())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", type(exc).__name__, str(exc))
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "ok":
        return box[0][1]
    from . import errors

    cls = getattr(errors, box[0][1], None)
    raise (cls if isinstance(cls, type) and issubclass(cls, Exception) else RuntimeError)(box[0][2])


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
