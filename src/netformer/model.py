"""BERT encoders for rank value encodings: presets, creation, save/load, device handling.

Models are Hugging Face ``BertForMaskedLM`` (pretraining) or ``BertModel`` (embeddings) with ReLU
activations, as Geneformer's. Checkpoints are plain Hugging Face model directories
(``config.json`` + ``model.safetensors``), so published Geneformer checkpoints load here and ours
load in upstream code. A netformer model directory also holds the gene vocabulary it was trained
with (``token_dictionary.json``, ``gene_median_dictionary.json``) so that tokenization and model
always agree.

Presets (Theodoris et al. 2023 for V1; Chen et al. 2024 for V2; each Geneformer preset is field for
field the upstream ``config.json`` in ``shared/data/models/geneformer_configs``):

============================  ======  ======  =====  ============  =====  =======  =======  ==========
preset                        layers  hidden  heads  intermediate  input  vocab    dropout  positions
============================  ======  ======  =====  ============  =====  =======  =======  ==========
``geneformer-v1-10m``         6       256     4      512           2,048  25,426   0.02     learned
``geneformer-v2-104m``        12      768     12     3,072         4,096  20,275   0.1      learned
``geneformer-v2-316m``        18      1,152   18     4,608         4,096  20,275   0.1      learned
``netformer-seed``            6       512     8      2,048         2,048  any      0.1      sinusoidal
``small`` (CPU)               4       128     4      256           2,048  any      0.02     learned
``tiny`` (CPU, tests)         2       64      4      128           512    any      0.02     learned
============================  ======  ======  =====  ============  =====  =======  =======  ==========

``netformer-seed`` is the model of the project's founding specification: fixed sinusoidal position
encodings (Vaswani et al. 2017, "Attention is all you need", section 3.5), stored in the position
embedding table and frozen (``config.position_encoding = "sinusoidal"``; the checkpoint stays a plain
BERT that upstream code loads). Upstream's released Geneformer models use learned positions. Its
pretraining defaults are AdamW with lr 1e-4 and weight decay 0.01 (:data:`PRESET_TRAINING`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_dir
from .encoder import base_model, default_device
from .errors import ConfigError, CorruptFileError, DictionaryError, MissingFileError
from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, is_adapter_dir, is_peft, load_adapter
from .genes import GeneVocab, load_pickle_dict

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

_V2 = dict(max_position_embeddings=4096, vocab_size=20275, hidden_dropout_prob=0.1,
           attention_probs_dropout_prob=0.1)

PRESETS: dict[str, dict[str, Any]] = {
    "geneformer-v1-10m": dict(num_hidden_layers=6, hidden_size=256, num_attention_heads=4,
                              intermediate_size=512, max_position_embeddings=2048, vocab_size=25426),
    "geneformer-v2-104m": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                               intermediate_size=3072, **_V2),
    "geneformer-v2-316m": dict(num_hidden_layers=18, hidden_size=1152, num_attention_heads=18,
                               intermediate_size=4608, **_V2),
    "netformer-seed": dict(num_hidden_layers=6, hidden_size=512, num_attention_heads=8, intermediate_size=2048,
                           max_position_embeddings=2048, hidden_dropout_prob=0.1,
                           attention_probs_dropout_prob=0.1, position_encoding="sinusoidal"),
    "small": dict(num_hidden_layers=4, hidden_size=128, num_attention_heads=4,
                  intermediate_size=256, max_position_embeddings=2048),
    "tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=512),
}

# Pretraining defaults of a preset (``PretrainConfig`` fields left unset take these): upstream's
# published recipes for the Geneformer presets (V1: lr 1e-3, weight decay 0.001, linear decay; V2:
# lr 2e-4, cosine decay), the specification's AdamW settings for ``netformer-seed``.
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "geneformer-v1-10m": dict(learning_rate=1e-3, weight_decay=0.001, lr_scheduler="linear"),
    "geneformer-v2-104m": dict(learning_rate=2e-4, weight_decay=0.001, lr_scheduler="cosine"),
    "geneformer-v2-316m": dict(learning_rate=2e-4, weight_decay=0.001, lr_scheduler="cosine"),
    "netformer-seed": dict(learning_rate=1e-4, weight_decay=0.01, lr_scheduler="linear"),
}
POSITION_ENCODINGS = ("learned", "sinusoidal")


def sinusoidal_positions(n_positions: int, dim: int) -> torch.Tensor:
    """(n_positions, dim) float32 table: ``PE[p, 2i] = sin(p / 10000^(2i/dim))``, ``PE[p, 2i+1] = cos(...)``
    (Vaswani et al. 2017, section 3.5)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * rate)
    table[:, 1::2] = torch.cos(pos * rate[: dim // 2])
    return table.float()


def fix_positions(model, fill: bool = False):
    """Freeze the position table of a model whose config says ``position_encoding="sinusoidal"``
    (``fill``: first write :func:`sinusoidal_positions` into it). Other models are returned unchanged.

    Raises :class:`ConfigError` for an unknown ``position_encoding``.
    """
    kind = getattr(model.config, "position_encoding", "learned")
    if kind not in POSITION_ENCODINGS:
        raise ConfigError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {kind!r}")
    if kind == "sinusoidal":
        table = base_model(model).embeddings.position_embeddings.weight
        if fill:
            with torch.no_grad():
                table.copy_(sinusoidal_positions(*table.shape).to(table.dtype))
        table.requires_grad_(False)
    return model


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
    """A randomly initialised ``BertForMaskedLM`` (seeded); sinusoidal positions filled and frozen where
    the config asks for them (:func:`fix_positions`)."""
    from transformers import BertForMaskedLM

    from ._state import preserved_rng

    config._attn_implementation = attn_implementation
    with preserved_rng(seed):  # seeded initialisation; the caller's random streams are left alone
        return fix_positions(BertForMaskedLM(config), fill=True)


TOKENIZER_FILE = "netformer_tokenizer.json"


@contextlib.contextmanager
def quiet_library_bars():
    """transformers' own progress bars ("Writing model shards") off for the duration, then restored: netformer
    shows one bar at a time (:mod:`netformer.progress`)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


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
    with atomic_dir(path, overwrite=overwrite) as tmp, quiet_library_bars():
        model.save_pretrained(tmp, safe_serialization=True)
        if is_peft(model):  # adapter files only: the classifier's config beside them (lora.load_adapter)
            model.get_base_model().config.save_pretrained(tmp)
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


def model_input_size(model_dir: str | Path) -> int:
    """Tokens per cell to tokenize for a model: the input size it was trained with (its tokenizer
    settings), capped at its ``max_position_embeddings``; a checkpoint without settings (published
    Geneformer) uses ``max_position_embeddings`` (V1 2,048, V2 4,096, as upstream)."""
    limit = int(json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"])
    size = (tokenizer_settings(model_dir) or {}).get("model_input_size") or limit
    return min(int(size), limit)


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

# The files of one model folder that are fetched from the Hub: Hugging Face's config and weights
# (single or sharded safetensors, or pytorch_model.bin) and a netformer model's dictionary files.
HUB_MODEL_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin",
    "token_dictionary.json", "gene_median_dictionary.json", "ensembl_mapping_dict.json.gz", "vocab_info.json",
    TOKENIZER_FILE,
)
# The dictionary pickles GeneVocab.from_geneformer reads, in each of PUBLISHED_VOCAB_FOLDERS.
_PUBLISHED_VOCAB_FILES = ("token_dictionary*.pkl", "gene_median_dictionary*.pkl", "ensembl_mapping_dict*.pkl")


def published_vocab_for(model_dir: str | Path) -> GeneVocab | None:
    """The dictionary that ships beside a published checkpoint in its Hub repository, or None.

    Geneformer's repository (``ctheodoris/Geneformer``) holds the models in subfolders
    (``Geneformer-V2-104M``, ``Geneformer-V1-10M``, ...) and the dictionaries in ``geneformer/``
    (gc104M, V2) and ``geneformer/gene_dictionaries_30m/`` (gc30M, V1). Looking up from
    ``model_dir`` (itself, its parent and grandparent: the Hub snapshot or a clone of the repository),
    the first of :data:`PUBLISHED_VOCAB_FOLDERS` whose token dictionary has the model's ``vocab_size``
    is used.
    """
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return None
    try:
        vocab_size = int(json.loads(cfg_path.read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for root in [model_dir, *model_dir.parents][:3]:
        for sub in PUBLISHED_VOCAB_FOLDERS:
            folder = root / sub
            tokens = sorted(folder.glob("token_dictionary*.pkl")) if folder.is_dir() else []
            # read the (small) token dictionary first; the larger median and mapping pickles only on a match
            if len(tokens) == 1 and len(load_pickle_dict(tokens[0])) == vocab_size:
                return _read_published(folder)
    return None


# Published dictionaries already read, by folder and the size and time of its pickles: a command asks
# for the model's dictionary several times, and gc104M takes about half a second to read.
_PUBLISHED: dict[tuple, GeneVocab] = {}


def _read_published(folder: Path) -> GeneVocab:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.glob("*.pkl"))]
    key = (str(folder.resolve()), tuple(stats))
    if key not in _PUBLISHED:
        vocab = GeneVocab.from_geneformer(folder)
        log.info("using the dictionary %s that ships with the checkpoint (%s)", vocab.describe(), folder)
        _PUBLISHED[key] = vocab
    return _PUBLISHED[key]


def hub_allow_patterns(subfolder: str | None = None) -> list[str]:
    """The ``allow_patterns`` of :func:`huggingface_hub.snapshot_download` for one model of a repository.

    The model's files (:data:`HUB_MODEL_FILES`, in ``subfolder`` or the repository root) and the
    published dictionaries (:data:`PUBLISHED_VOCAB_FOLDERS`). Names are exact because the Hub's
    ``*`` matches across ``/`` (``"*.safetensors"`` would fetch every model of the repository).
    """
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    return [prefix + f for f in HUB_MODEL_FILES] + [f"{d}/{f}" for d in PUBLISHED_VOCAB_FOLDERS
                                                    for f in _PUBLISHED_VOCAB_FILES]


_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when the Hub must not be contacted: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set,
    read when called (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in _TRUE


def hub_cache_dir(cache_dir: str | Path | None = None) -> str:
    """The Hub cache folder: ``cache_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME/hub`` (environment read when
    called), else huggingface_hub's default."""
    from huggingface_hub import constants

    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return str(constants.HF_HUB_CACHE)


def _models_in(root: Path) -> list[str]:
    """Folders of a repository snapshot (up to two levels deep) that hold a ``config.json``."""
    found = [p.parent.relative_to(root).as_posix() for pattern in ("*/config.json", "*/*/config.json")
             for p in root.glob(pattern)]
    return sorted(found)


def resolve_checkpoint(path: str | Path, subfolder: str | None = None, revision: str | None = None,
                       cache_dir: str | Path | None = None) -> Path:
    """A local model directory for ``path``: a folder on disk, or a Hugging Face Hub repository id.

    ``path`` is used as given when it is an existing directory (``subfolder`` joined to it).
    Otherwise it is taken as a Hub repository id (e.g. ``"ctheodoris/Geneformer"``) and resolved
    with :func:`huggingface_hub.snapshot_download`, fetching only the model's files in ``subfolder``
    and the published dictionaries (:func:`hub_allow_patterns`). With ``HF_HUB_OFFLINE=1`` (checked
    when called, :func:`hub_offline`) nothing is fetched: the snapshot in the local Hub cache
    (``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME``, :func:`hub_cache_dir`) is used.

    Raises :class:`ConfigError` (one line) if the folder does not exist and the id cannot be
    resolved, or the snapshot has no model in ``subfolder``.
    """
    local = Path(path)
    if local.is_dir():
        return local / subfolder if subfolder else local
    repo = str(path)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")) or not all(repo.split("/")):
        raise ConfigError(f"{path} is not a model directory (it does not exist) nor a Hugging Face Hub id "
                          "like 'ctheodoris/Geneformer'")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    cache = hub_cache_dir(cache_dir)
    what = f"{repo!r}{f' (subfolder {subfolder!r})' if subfolder else ''}"
    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=hub_allow_patterns(subfolder),
                                      cache_dir=cache, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises many types (offline, not found, network)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        where = (f"it is not in the Hub cache {cache} and HF_HUB_OFFLINE is set" if offline
                 else f"{type(exc).__name__}: {first}")
        raise ConfigError(f"{path} is no local folder, and the Hub model {what} cannot be resolved: {where}. "
                          "Download it once with network access (it is then read from the Hub cache, also with "
                          "HF_HUB_OFFLINE=1), or pass a local model directory") from None
    out = root / subfolder if subfolder else root
    if not (out / "config.json").exists():
        models = _models_in(root)
        hint = (f"models in the {'cached ' if offline else ''}snapshot: {', '.join(models)}" if models
                else "name the model's subfolder, e.g. subfolder='Geneformer-V2-104M'")
        raise ConfigError(f"the Hub model {repo!r} has no config.json in {f'subfolder {subfolder!r}' if subfolder else 'its root'}"
                          f"{' (offline: only the Hub cache was searched)' if offline else ''}; {hint}")
    return out


def load_model(
    path: str | Path,
    kind: str = "base",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
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
    subfolder, revision, cache_dir
        The model's folder inside the directory or Hub repository (e.g. ``"Geneformer-V2-104M"``), the
        Hub revision, and the Hub cache folder (default ``HF_HUB_CACHE``; :func:`resolve_checkpoint`).

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
    path = resolve_checkpoint(path, subfolder, revision, cache_dir)
    check_model_dir(path)
    if kind == "base":
        kwargs.setdefault("add_pooling_layer", False)  # embeddings never use BERT's pooler
    # Loading an encoder out of a head checkpoint leaves the head's weights unused by design; keep
    # transformers' load report for real problems only.
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:  # without transformers' "Loading weights" bar: one bar at a time (netformer.progress)
        with quiet_library_bars():
            if is_adapter_dir(path):  # a LoRA classifier: its base checkpoint, the adapter merged in
                kwargs.pop("add_pooling_layer", None)
                model = load_adapter(path, kind, classes, attn_implementation=attn_implementation, **kwargs)
            else:
                model = classes[kind].from_pretrained(str(path), attn_implementation=attn_implementation, **kwargs)
    except (MissingFileError, ConfigError):
        raise
    except Exception as exc:  # transformers / safetensors / torch.load raise many types on damaged files
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if "weights only" in msg.lower() or "weights_only" in msg.lower():
            raise CorruptFileError(f"cannot load the model in {path}: its pytorch_model.bin holds more than tensors "
                                   "and is refused (it could run code); convert weights you trust to "
                                   "model.safetensors") from None
        raise CorruptFileError(f"cannot load the model in {path}: {type(exc).__name__}: {msg}; the weights or "
                               "config.json are damaged or not a BERT checkpoint (copy or download the model "
                               "again)") from None
    finally:
        transformers.logging.set_verbosity(previous)
    return fix_positions(model).to(default_device(device)).eval()


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
    if not any((path / f).exists() for f in WEIGHT_FILES) and not (
            (path / ADAPTER_CONFIG).exists() and any((path / f).exists() for f in ADAPTER_WEIGHTS)):
        raise CorruptFileError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES[::2])}); copy the complete "
                               "model folder")
    return path
