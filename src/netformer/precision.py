"""Numeric precision of model jobs: ``fp32``, ``bf16`` or ``auto``, chosen from the hardware at run time.

One rule for every job (embedding, exact and screen perturbation, fine-tuning, pretraining):

- ``fp32``: float32 weights and activations (the reference; what upstream Geneformer runs).
- ``bf16``: bfloat16 where the hardware multiplies it natively: a CUDA device with bf16 support, or a
  CPU whose PyTorch build reports AMX-BF16 or AVX512-BF16 (``torch.cpu._is_amx_tile_supported``,
  ``torch.cpu._is_avx512_bf16_supported``). Elsewhere PyTorch would emulate bf16 at a fraction of the
  float32 speed, so asking for it there is a :class:`~netformer.errors.ConfigError`.
- ``auto``: ``bf16`` where it is native, ``fp32`` elsewhere; the choice is logged.

Inference (:func:`inference_model`) runs a bfloat16 *copy* of the model (weights cast once; the
caller's float32 model is untouched): on CPUs, autocast over float32 weights re-casts every weight at
every call and was measured slower than float32 (0.92x, issue 12), while cast weights use the bf16
matmul units. Training (:func:`autocast`) keeps float32 master weights and runs the forward pass under
``torch.autocast(dtype=torch.bfloat16)`` (mixed precision, Micikevicius et al. 2018; bf16 needs no loss
scaling).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_features() -> dict:
    """What the CPU and this PyTorch build offer: ``{"name", "capability", "amx_bf16", "avx512_bf16"}``.

    ``capability`` is PyTorch's kernel level (``torch.backends.cpu.get_cpu_capability()``, e.g.
    ``AVX2``, ``AVX512``); the flags come from PyTorch's own CPU probe, so they say what its kernels
    can use, not just what the CPU advertises.
    """
    probe = getattr(torch._C._cpu, "_get_cpu_capability", None)
    info = probe() if probe is not None else {}
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() and bool(info.get("amx_bf16", True))
    avx = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return {"name": str(info.get("cpu_name", "unknown CPU")), "capability": torch.backends.cpu.get_cpu_capability(),
            "amx_bf16": bool(amx), "avx512_bf16": bool(avx)}


def bf16_support(device: str | torch.device = "cpu") -> str | None:
    """The native bf16 unit on ``device`` (``"CUDA"``, ``"AMX"``, ``"AVX512-BF16"``, ...) or None."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "CUDA" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if dev.type == "mps":
        return "MPS" if hasattr(torch.backends, "mps") and torch.backends.mps.is_available() else None
    if dev.type != "cpu":
        return None
    f = cpu_features()
    return "AMX" if f["amx_bf16"] else "AVX512-BF16" if f["avx512_bf16"] else None


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` on ``device``.

    Raises
    ------
    ConfigError
        ``precision`` not one of :data:`PRECISIONS`; ``bf16`` on hardware without native bf16.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return "fp32"
    unit = bf16_support(device)
    if precision == "bf16" and unit is None:
        raise ConfigError(f"precision bf16 needs a GPU with bf16 or a CPU with AMX or AVX512-BF16; "
                          f"{_describe(device)} has neither: use --precision fp32 (or auto)")
    chosen = "bf16" if unit is not None else "fp32"
    if precision == "auto":
        log.info("precision auto -> %s (%s)", chosen, f"native bf16: {unit}" if unit else f"no native bf16 on {_describe(device)}")
    return chosen


def _describe(device) -> str:
    dev = torch.device(device)
    if dev.type == "cpu":
        f = cpu_features()
        return f"this CPU ({f['name']}, {f['capability']})"
    return f"device {dev}"


def torch_dtype(precision: str) -> torch.dtype:
    """``torch.float32`` or ``torch.bfloat16`` for a resolved precision."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def model_precision(model) -> str:
    """``"bf16"`` if the model's floating-point weights are bfloat16, else ``"fp32"``."""
    for p in model.parameters():
        if p.is_floating_point():
            return "bf16" if p.dtype == torch.bfloat16 else "fp32"
    return "fp32"


def inference_model(model, precision: str):
    """The model to run inference with at a resolved ``precision``.

    ``fp32`` (or a model already in bf16): the model itself. ``bf16``: a bfloat16 copy in eval mode
    (weights cast once; the caller's model is not changed). Activations then flow in bf16; callers
    pool and compare in float32 (``hidden.float()``).
    """
    if precision != "bf16" or model_precision(model) == "bf16":
        return model
    return copy.deepcopy(model).to(torch.bfloat16).eval()


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """Mixed-precision context for training: bf16 autocast on ``device`` for ``bf16``, nothing for ``fp32``."""
    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        yield


def describe_hardware(device: str | torch.device = "cpu") -> dict:
    """Provenance of the numeric setting: device, CPU name and capability, the native bf16 unit."""
    f = cpu_features()
    out = {"device": str(device), "cpu": f["name"], "cpu_capability": f["capability"],
           "bf16_unit": bf16_support(device)}
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out
