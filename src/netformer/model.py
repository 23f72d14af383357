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
from .encoder import default_device
from .errors import ConfigError, CorruptFileError, DictionaryError
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


TOKENIZER_FILE = "netformer_tokenizer.json"


def save_model(model, path: str | Path, vocab: GeneVocab | None = None, overwrite: bool = False,
               tokenizer: dict | None = None) -> Path:
    """Save a model as a plain Hugging Face directory (``config.json`` + ``model.safetensors``), atomically.

    With ``vocab`` the directory also carries the complete :class:`GeneVocab` (token dictionary,
    gene medians, Ensembl mapping, name, digest; :meth:`GeneVocab.write_files`), and
    ``netformer_tokenizer.json`` records the tokenizer settings the model was trained with
    (``tokenizer``: at least ``model_input_size`` and ``special_tokens``; default: the model's input
    size and whether the dictionary has ``<cls>``/``<eos>``), so the model round-trips with its
    dictionary.

    Raises :class:`~netformer.errors.OutputExistsError` if ``path`` exists and not ``overwrite``;
    :class:`DictionaryError` if ``vocab`` does not fit the model.
    """
    if vocab is not None:
        vocab.check_model(model.config.vocab_size, model.config.pad_token_id)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if vocab is not None:
            vocab.write_files(tmp)
            settings = {"model_input_size": model.config.max_position_embeddings,
                        "special_tokens": vocab.has_cls_eos, **(tokenizer or {})}
            settings.update(vocab=vocab.name, vocab_digest=vocab.digest)
            (tmp / TOKENIZER_FILE).write_text(json.dumps(settings, indent=1, default=str))
    return Path(path)


def tokenizer_settings(model_dir: str | Path) -> dict | None:
    """The tokenizer settings saved with a model (``netformer_tokenizer.json``), or None."""
    path = Path(model_dir) / TOKENIZER_FILE
    return json.loads(path.read_text()) if path.exists() else None


def attach_vocab(checkpoint: str | Path, vocab: GeneVocab, path: str | Path, overwrite: bool = False) -> Path:
    """A netformer model directory made from a checkpoint that has no dictionary beside it.

    Published Geneformer checkpoints hold only ``config.json`` and weights. This loads the checkpoint
    (masked-LM head kept), checks that ``vocab`` fits it and saves both to ``path`` (a copy of the
    weights, as safetensors, written atomically).

    Raises
    ------
    DictionaryError
        If the model's vocabulary size or ``<pad>`` id differ from ``vocab``'s.
    OutputExistsError
        If ``path`` exists and not ``overwrite``.
    """
    model = load_model(checkpoint, kind="mlm", device="cpu")
    return save_model(model, path, vocab=vocab, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------
# published checkpoints (Hugging Face Hub)
# ------------------------------------------------------------------------------------------------
# Where Geneformer's Hub repository keeps its dictionaries, relative to the repository root.
PUBLISHED_VOCAB_FOLDERS = ("geneformer", "geneformer/gene_dictionaries_30m")


def published_vocab_for(model_dir: str | Path) -> GeneVocab | None:
    """The dictionary that ships beside a published checkpoint in its Hub repository, or None.

    Geneformer's repository (``ctheodoris/Geneformer``) holds the models in subfolders
    (``Geneformer-V2-104M``, ``Geneformer-V1-10M``, ...) and the dictionaries in ``geneformer/``
    (gc104M, V2) and ``geneformer/gene_dictionaries_30m/`` (gc30M, V1). Looking up from
    ``model_dir`` to the repository snapshot, the folder whose token dictionary has the model's
    ``vocab_size`` is used.
    """
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return None
    try:
        vocab_size = int(json.loads(cfg_path.read_text())["vocab_size"])
    except (ValueError, KeyError):
        return None
    for root in [model_dir, *model_dir.parents][:3]:
        for sub in PUBLISHED_VOCAB_FOLDERS:
            folder = root / sub
            if folder.is_dir() and any(folder.glob("token_dictionary*.pkl")):
                vocab = GeneVocab.from_geneformer(folder)
                if vocab.vocab_size == vocab_size:
                    log.info("using the dictionary %s that ships with the checkpoint (%s)", vocab.describe(), folder)
                    return vocab
    return None


def resolve_checkpoint(path: str | Path, subfolder: str | None = None, revision: str | None = None) -> Path:
    """A local model directory for ``path``: a folder on disk, or a Hugging Face Hub repository id.

    ``path`` is used as given when it is an existing directory (``subfolder`` joined to it).
    Otherwise it is taken as a Hub repository id (e.g. ``"ctheodoris/Geneformer"``) and resolved
    with :func:`huggingface_hub.snapshot_download`, fetching only ``subfolder`` and the
    dictionaries (:data:`PUBLISHED_VOCAB_FOLDERS`); with ``HF_HUB_OFFLINE=1`` only the local Hub cache
    is used (``HF_HUB_CACHE`` / ``HF_HOME``).

    Raises :class:`ConfigError` if the folder does not exist and the id cannot be resolved.
    """
    local = Path(path)
    if local.is_dir():
        return local / subfolder if subfolder else local
    repo = str(path)
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise ConfigError(f"{path} is not a model directory (it does not exist) nor a Hugging Face Hub id "
                          "like 'ctheodoris/Geneformer'")
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*" if subfolder else "*.json", "*.json"]
    patterns += [f"{sub}/*.pkl" for sub in PUBLISHED_VOCAB_FOLDERS]
    if not subfolder:
        patterns += ["*.safetensors", "*.bin"]
    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # huggingface_hub raises many types (offline, not found, network)
        raise ConfigError(f"cannot resolve the Hub model {repo!r}{f' (subfolder {subfolder!r})' if subfolder else ''}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Download it once "
                          "with network access (it is then read from the Hub cache, also with HF_HUB_OFFLINE=1), "
                          "or pass a local model directory") from None
    out = root / subfolder if subfolder else root
    if not (out / "config.json").exists():
        raise ConfigError(f"the Hub model {repo!r} has no config.json in {subfolder or 'its root'}; "
                          "name the model's subfolder (e.g. subfolder='Geneformer-V2-104M')")
    return out


MODEL_KINDS = ("base", "mlm", "cell", "gene")


def load_model(
    path: str | Path,
    kind: str = "base",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    subfolder: str | None = None,
    revision: str | None = None,
    **kwargs,
):
    """Load a model directory (ours or a published Geneformer checkpoint), or a model on the Hub.

    Parameters
    ----------
    path
        Directory with ``config.json`` and weights (safetensors, or ``pytorch_model.bin`` read with
        ``weights_only``), or a Hugging Face Hub id such as ``"ctheodoris/Geneformer"`` (see
        :func:`resolve_checkpoint`; offline with ``HF_HUB_OFFLINE=1`` from the Hub cache).
    kind
        ``"base"`` (``BertModel``, for embeddings), ``"mlm"`` (``BertForMaskedLM``),
        ``"cell"`` (``BertForSequenceClassification``) or ``"gene"`` (``BertForTokenClassification``).
    device
        Target device; default CUDA when available, else CPU (:func:`netformer.encoder.default_device`).
    subfolder, revision
        The model's folder inside the directory or Hub repository (e.g. ``"Geneformer-V2-104M"``) and
        the Hub revision.

    Returns the model in eval mode on ``device``; its ``name_or_path`` is the local directory, where
    :func:`netformer.genes.model_vocab` finds its dictionary (for published Geneformer checkpoints,
    the one that ships in the same repository).

    Raises
    ------
    ConfigError
        Unknown ``kind``; not a model directory (no ``config.json``) nor a resolvable Hub id.
    CorruptFileError
        ``config.json`` or the weights cannot be read (truncated, not the format, unsafe pickle), or
        no weights file.
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
    path = resolve_checkpoint(path, subfolder, revision)
    check_model_dir(path)
    if kind == "base":
        kwargs.setdefault("add_pooling_layer", False)  # embeddings never use BERT's pooler
    # Loading an encoder out of a head checkpoint leaves the head's weights unused by design; keep
    # transformers' load report for real problems only.
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = classes[kind].from_pretrained(str(path), attn_implementation=attn_implementation, **kwargs)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"cannot load the model in {path}: {msg}; the weights or config.json are "
                               "damaged or not a BERT checkpoint (copy or download the model again)") from None
    finally:
        transformers.logging.set_verbosity(previous)
    return model.to(default_device(device)).eval()


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_dir(path: str | Path) -> Path:
    """Check that ``path`` holds a readable ``config.json`` and a weights file, before anything is loaded.

    Raises :class:`ConfigError` (no such directory / no ``config.json``) or :class:`CorruptFileError`
    (``config.json`` not JSON, no weights).
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConfigError(f"{path} is not a model directory (no config.json); pass a folder written by "
                          "netformer pretrain/finetune or a Geneformer checkpoint folder")
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path / 'config.json'} is not valid JSON ({exc}); restore the model's config.json") from None
    if not isinstance(cfg, dict) or "vocab_size" not in cfg:
        raise CorruptFileError(f"{path / 'config.json'} is not a BERT model configuration (no vocab_size)")
    if not any((path / f).exists() for f in WEIGHT_FILES):
        raise CorruptFileError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES[::2])}); copy the complete "
                               "model folder")
    return path
