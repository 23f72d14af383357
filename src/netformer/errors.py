"""Typed exceptions raised by netformer.

Every error raised on bad input is a subclass of :class:`NetformerError`, so callers can catch
one type. Each also derives from the built-in exception a user would expect (``ValueError`` for
bad values, ``FileExistsError`` for outputs that would be overwritten, ...), and its message names
the problem and the fix.
"""

from __future__ import annotations


class NetformerError(Exception):
    """Base class of all errors raised by netformer on bad input or state."""


class InputDataError(NetformerError, ValueError):
    """The input data (counts, AnnData layout, obs/var columns) cannot be used as given."""


class MissingFileError(InputDataError, FileNotFoundError):
    """An input file or folder does not exist."""


class GeneIdError(InputDataError):
    """Gene identifiers are of the wrong kind (symbols instead of Ensembl ids), duplicated or unmapped."""


class DictionaryError(NetformerError, ValueError):
    """A token / median / mapping dictionary is missing, malformed, or does not match a model."""


class OutputExistsError(NetformerError, FileExistsError):
    """The output path already holds results; pass ``overwrite=True`` (CLI: ``--overwrite``)."""


class OutputPathError(NetformerError, OSError):
    """The output cannot be written where asked (read-only, no permission, a file in the way); keeps
    ``errno`` and ``filename`` as an ``OSError``."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}; write the output elsewhere (--out) or fix the permissions"


class CorruptFileError(NetformerError, OSError):
    """An input file is truncated or not in the format its extension promises."""


class ConfigError(NetformerError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class ClusterError(NetformerError, ConnectionError):
    """A Dask cluster cannot be reached (``--scheduler``), or its workers keep dying on a task."""
