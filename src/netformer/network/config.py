"""Settings of a gene network: :class:`NetworkConfig` (round-trips to JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..precision import PRECISIONS

ALL = "all"


@dataclass
class NetworkConfig:
    """Settings of :func:`~netformer.network.attention_network` and of the edge tables of every network.

    Attributes
    ----------
    layers
        Encoder layers whose attention is used: ``"all"`` or encoder layer indices, 0-based
        (``0`` the first layer after the embeddings; negative counts from the end, ``-1`` the last,
        the default). Attention of several layers is averaged with equal weights.
    heads
        ``"all"`` (default) or head indices (0-based) of each chosen layer; averaged with equal weights.
    min_cells
        Attention network: a gene enters the network only if it is among the tokens of at least this
        many of the chosen cells (default 10); the genes left out are counted in ``info``.
        Perturbation network: a pair ``A -> B`` is kept only if it was measured in at least this many
        cells.
    min_pair_cells
        Attention network: a pair of kept genes is scored only if both occur together in at least
        this many cells (default 3: a mean over one or two cells is mostly noise and filled the top edges
        in a first run).
    max_cells
        Cells used, drawn reproducibly with ``seed`` (default 500; None: all).
    cell_filter
        ``{column: allowed values}``: only matching cells are used (as :func:`netformer.perturb.select_cells`).
    top_k
        Edge table: the ``top_k`` highest-scoring targets of every source (default 20; None: all).
    threshold
        Edge table: only edges with ``score >= threshold`` (default None: no threshold). With both,
        both apply.
    batch_size
        Cells per forward pass (attention: one layer's (batch, heads, L, L) probabilities are held).
    max_length
        Cells are truncated to this many tokens (default: the model's input size).
    seed
        Cell sampling (and the shuffles and permutations of the scores).
    device, precision
        As :class:`netformer.embed.EmbeddingConfig` (default ``fp32``: attention probabilities at full
        precision).
    """

    layers: Sequence[int] | str = (-1,)
    heads: Sequence[int] | str = ALL
    min_cells: int = 10
    min_pair_cells: int = 3
    max_cells: int | None = 500
    cell_filter: Mapping[str, Sequence] | None = None
    top_k: int | None = 20
    threshold: float | None = None
    batch_size: int = 8
    max_length: int | None = None
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.layers = _indices(self.layers, "layers")
        self.heads = _indices(self.heads, "heads")
        if self.min_cells < 1 or self.min_pair_cells < 1:
            raise ConfigError(f"min_cells and min_pair_cells must be >= 1, got {self.min_cells}, {self.min_pair_cells}")
        if self.max_cells is not None and self.max_cells < 1:
            raise ConfigError(f"max_cells must be a positive number of cells (or None for all), got {self.max_cells}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be a positive number of targets per source (or None for all), got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be positive")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    def to_dict(self) -> dict:
        """Plain JSON-able settings (:meth:`from_dict` gives the config back)."""
        d = asdict(self)
        if d["cell_filter"] is not None:
            d["cell_filter"] = {str(k): [str(v) for v in (vals if isinstance(vals, (list, tuple, set)) else [vals])]
                                for k, vals in dict(d["cell_filter"]).items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "NetworkConfig":
        """The config of :meth:`to_dict`; raises :class:`ConfigError` for unknown fields."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown NetworkConfig fields {sorted(unknown)}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "NetworkConfig":
        return cls.from_dict(json.loads(text))


def _indices(value, what: str) -> list[int] | str:
    """``"all"`` or a list of ints (from ints, a sequence, or a comma-separated string)."""
    if isinstance(value, str):
        if value.strip().lower() == ALL:
            return ALL
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        value = [value]
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be 'all' or integer indices such as 0,1 or -1; got {value!r}") from None
    if not out:
        raise ConfigError(f"{what} is empty; give 'all' or at least one index")
    return list(dict.fromkeys(out))


def resolve_indices(value: list[int] | str, n: int, what: str, unit: str) -> list[int]:
    """Non-negative indices (sorted) of ``value`` among ``n``; :class:`ConfigError` naming the valid range.

    ``what``: "layer" / "head"; ``unit``: how the model's count is named in the message.
    """
    if value == ALL:
        return list(range(n))
    bad = [i for i in value if not -n <= i < n]
    if bad:
        raise ConfigError(f"{what} {bad[0]} does not exist: the model has {n} {unit} "
                          f"(use 0..{n - 1}, or -{n}..-1 counted from the end, or 'all')")
    return sorted({i % n for i in value})
