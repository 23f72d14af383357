"""LoRA adapters for fine-tuning large encoders (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models"), through Hugging Face ``peft``.

A LoRA classifier trains rank-``r`` updates of the attention projections and the whole classification
head (for cells with BERT's pooler, which masked-LM checkpoints lack); the pretrained weights stay frozen. It is saved as a peft adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``, the head included) beside the classifier's
``config.json``, the dictionary and ``netformer_classifier.json``; the adapter names the base
checkpoint by absolute path. :func:`netformer.model.load_model` reads such a folder by loading the
base checkpoint, applying the adapter and merging it (:func:`load_adapter`), so a LoRA classifier
works wherever a fully fine-tuned one does (prediction, embeddings, in silico perturbation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, MissingFileError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# Defaults: rank 8, alpha 16 (scale alpha / r = 2), dropout 0.05 on the query / key / value projections.
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["query", "key", "value"]}
_TASKS = {"cell": "SEQ_CLS", "gene": "TOKEN_CLS"}


def lora_settings(value: int | Mapping | None) -> dict | None:
    """The complete LoRA settings for ``FinetuneConfig.lora``: None (full fine-tuning), a rank, or a mapping
    with any of ``r``, ``alpha``, ``dropout``, ``target_modules`` (the rest from :data:`LORA_DEFAULTS`).

    Raises :class:`ConfigError` for an unknown key, a rank < 1, alpha <= 0 or dropout outside [0, 1).
    """
    if value is None:
        return None
    given = {"r": value} if isinstance(value, int) and not isinstance(value, bool) else dict(value) \
        if isinstance(value, Mapping) else None
    if given is None:
        raise ConfigError(f"lora must be None, a rank or a mapping of LoRA settings; got {value!r}")
    unknown = set(given) - set(LORA_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown LoRA settings {sorted(unknown)}; known: {sorted(LORA_DEFAULTS)}")
    out = {**LORA_DEFAULTS, **given}
    out["target_modules"] = list(out["target_modules"])
    if int(out["r"]) < 1 or not out["alpha"] > 0 or not 0 <= out["dropout"] < 1 or not out["target_modules"]:
        raise ConfigError(f"LoRA needs rank >= 1, alpha > 0, dropout in [0, 1) and target modules; got {out}")
    out["r"] = int(out["r"])
    return out


def add_lora(model, settings: Mapping, task: str, base_dir: str | Path):
    """Wrap a Bert classifier (``task`` ``cell`` or ``gene``) in a peft LoRA model: adapters on the
    target projections, the classification head trained in full, everything else frozen."""
    from peft import LoraConfig, get_peft_model

    # the head: the classifier, and for cells BERT's pooler, which a masked-LM checkpoint does not hold
    # (initialised afresh, so it must be trained and saved with the adapter)
    head = ["classifier", "pooler"] if getattr(model.bert, "pooler", None) is not None else ["classifier"]
    cfg = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                     target_modules=list(settings["target_modules"]), modules_to_save=head,
                     task_type=_TASKS[task], base_model_name_or_path=str(Path(base_dir).resolve()))
    return get_peft_model(model, cfg)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def load_adapter(path: str | Path, kind: str, classes: Mapping, **kwargs):
    """The merged model of a LoRA adapter folder: the base checkpoint it names, loaded as the
    adapter's classifier (its ``config.json``), with the adapter applied and merged into the weights.
    ``kind="base"`` gives the merged encoder.

    Raises
    ------
    MissingFileError
        The base checkpoint the adapter names is not there.
    ConfigError
        ``kind`` is another head than the adapter's (``mlm``, or cell vs gene).
    """
    import transformers
    from peft import PeftModel

    path = Path(path)
    acfg = json.loads((path / ADAPTER_CONFIG).read_text())
    base_dir = Path(acfg.get("base_model_name_or_path") or "")
    if not (base_dir / "config.json").exists():
        raise MissingFileError(f"{path} holds LoRA adapters of the checkpoint {base_dir}, which is not there; "
                               "put the base checkpoint back at that path or fine-tune again")
    config = transformers.AutoConfig.from_pretrained(str(path))
    own = {"SEQ_CLS": "cell", "TOKEN_CLS": "gene"}.get(acfg.get("task_type"), "cell")
    if kind not in ("base", own):
        raise ConfigError(f"{path} holds LoRA adapters of a {own} classifier; load it as kind='{own}' or 'base'")
    model = classes[own].from_pretrained(str(base_dir), config=config, **kwargs)
    merged = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return merged.bert if kind == "base" else merged
