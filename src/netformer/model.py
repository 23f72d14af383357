"""BERT encoders for rank value encodings: presets, creation, save/load, device handling.

Models are Hugging Face ``BertForMaskedLM`` (pretraining) or ``BertModel`` (embeddings) with ReLU
activations, as Geneformer's. Checkpoints are plain Hugging Face model directories
(``config.json`` + ``model.safetensors``), so published Geneformer checkpoints load here and ours
load in upstream code. A netformer model directory also holds the gene vocabulary it was trained
with (``token_dictionary.json``, ``gene_median_dictionary.json``) so that tokenization and model
always agree.

Presets (Theodoris et al. 2023; Chen et al. 2024 for V2):

============================  ======  ======  =====  ============  =========  =======
preset                        layers  hidden  heads  intermediate  input      vocab
============================  ======  ======  =====  ============  =========  =======
``geneformer-v1-10m``         6       256     4      512           2,048      25,426
``geneformer-v2-104m``        12      768     12     3,072         4,096      20,275
``small`` (CPU)               4       128     4      256           2,048      any
``tiny`` (CPU, tests)         2       64      4      128           512        any
============================  ======  ======  =====  ============  =========  =======
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_dir
from .errors import ConfigError, DictionaryError
from .genes import GeneVocab

log = logging.getLogger(__name__)

_COMMON = dict(
    hidden_act="relu",
    hidden_dropout_prob=0.02,
    attention_probs_dropout_prob=0.02,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    pad_token_id=0,
    type_vocab_size=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    "geneformer-v1-10m": dict(num_hidden_layers=6, hidden_size=256, num_attention_heads=4,
                              intermediate_size=512, max_position_embeddings=2048, vocab_size=25426),
    "geneformer-v2-104m": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                               intermediate_size=3072, max_position_embeddings=4096, vocab_size=20275),
    "small": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=2048),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512),
}


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_config(preset: str = "small", vocab: GeneVocab | None = None, **overrides) -> "BertConfig":  # noqa: F821
    """A :class:`transformers.BertConfig` for a preset.

    Parameters
    ----------
    preset
        One of :data:`PRESETS`.
    vocab
        If given, ``vocab_size`` and ``pad_token_id`` are taken from it (a preset's own vocab size
        must then match, else :class:`DictionaryError`).
    **overrides
        Any BertConfig field (e.g. ``max_position_embeddings=1024``).
    """
    from transformers import BertConfig

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    kw = {**_COMMON, **PRESETS[preset]}
    if vocab is not None:
        if "vocab_size" in PRESETS[preset] and PRESETS[preset]["vocab_size"] != vocab.vocab_size and "vocab_size" not in overrides:
            raise DictionaryError(
                f"preset {preset} has vocab_size {PRESETS[preset]['vocab_size']} but the dictionary "
                f"'{vocab.name}' has {vocab.vocab_size} tokens; use that preset's Geneformer dictionary "
                "or pass vocab_size explicitly"
            )
        kw["vocab_size"] = vocab.vocab_size
        kw["pad_token_id"] = vocab.pad_id
    kw.update(overrides)
    if "vocab_size" not in kw:
        raise ConfigError(f"preset {preset!r} needs a vocabulary: pass vocab=GeneVocab(...) or vocab_size=")
    return BertConfig(**kw)


def new_model(config, seed: int = 0, attn_implementation: str = "sdpa") -> "BertForMaskedLM":  # noqa: F821
    """A randomly initialised ``BertForMaskedLM`` (seeded)."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    return BertForMaskedLM(config)


def save_model(model, path: str | Path, vocab: GeneVocab | None = None, overwrite: bool = False) -> Path:
    """Save a model as a plain Hugging Face directory (safetensors), plus its vocabulary, atomically."""
    with atomic_dir(path, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if vocab is not None:
            (tmp / "token_dictionary.json").write_text(json.dumps(vocab.token_dict))
            (tmp / "gene_median_dictionary.json").write_text(json.dumps(vocab.gene_median))
            (tmp / "vocab_info.json").write_text(json.dumps({"name": vocab.name}))
    return Path(path)


def attach_vocab(checkpoint: str | Path, vocab: GeneVocab, path: str | Path, overwrite: bool = False) -> Path:
    """A netformer model directory made from a checkpoint that has no dictionary beside it.

    Published Geneformer checkpoints hold only ``config.json`` and weights; fine-tuning and the CLI
    need the token dictionary the model was trained with. This loads the checkpoint (masked-LM head
    kept), checks that ``vocab`` fits it and saves both to ``path`` (a copy of the weights, as
    safetensors, written atomically).

    Raises
    ------
    DictionaryError
        If the model's vocabulary size or ``<pad>`` id differ from ``vocab``'s.
    OutputExistsError
        If ``path`` exists and not ``overwrite``.
    """
    model = load_model(checkpoint, kind="mlm", device="cpu")
    vocab.check_model(model.config.vocab_size, model.config.pad_token_id)
    return save_model(model, path, vocab=vocab, overwrite=overwrite)


def load_vocab_for(model_dir: str | Path) -> GeneVocab | None:
    """The vocabulary saved beside a model, or None (e.g. a published Geneformer checkpoint)."""
    model_dir = Path(model_dir)
    if (model_dir / "token_dictionary.json").exists():
        return GeneVocab.load(model_dir)
    return None


def load_model(
    path: str | Path,
    kind: str = "base",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    **kwargs,
):
    """Load a model directory (ours or a published Geneformer checkpoint).

    Parameters
    ----------
    path
        Directory with ``config.json`` and weights (safetensors or ``pytorch_model.bin``).
    kind
        ``"base"`` (``BertModel``, for embeddings), ``"mlm"`` (``BertForMaskedLM``),
        ``"cell"`` (``BertForSequenceClassification``) or ``"gene"`` (``BertForTokenClassification``).
    device
        Target device; default CUDA when available, else CPU.

    Returns the model in eval mode on ``device``.
    """
    import transformers

    classes = {
        "base": transformers.BertModel,
        "mlm": transformers.BertForMaskedLM,
        "cell": transformers.BertForSequenceClassification,
        "gene": transformers.BertForTokenClassification,
    }
    if kind not in classes:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {sorted(classes)}")
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"{path} is not a model directory (no config.json)")
    if kind == "base":
        kwargs.setdefault("add_pooling_layer", False)  # embeddings never use BERT's pooler
    # Loading an encoder out of a head checkpoint leaves the head's weights unused by design; keep
    # transformers' load report for real problems only.
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = classes[kind].from_pretrained(str(path), attn_implementation=attn_implementation, **kwargs)
    finally:
        transformers.logging.set_verbosity(previous)
    return model.to(get_device(device)).eval()
