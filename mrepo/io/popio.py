"""Shared plumbing of the importers and exporters: population in a transaction,
name hygiene, lazy stacks of images, all-or-nothing commits.

Not a public API; :mod:`mrepo.io.warp_import`, :mod:`mrepo.io.relion_import`,
:mod:`mrepo.io.m_import` and the exporters use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from ..model import Population
from ..model.population import POPULATION_DOC, read_population

__all__ = [
    "load_population",
    "require_population",
    "safe_component",
    "LazyStack",
    "commit_or_discard",
]


def load_population(view: Any, name: str = "population", *, grids: bool = True) -> Population:
    """The population in ``view`` (Snapshot or Transaction), or an empty one named ``name``."""
    if view is None or view.get(f"docs/{POPULATION_DOC}") is None:
        return Population(name)
    return read_population(view, grids=grids)


def require_population(view: Any, what: str, *, grids: bool = False) -> Population:
    """The population in ``view`` (item grids only with ``grids=True``); a
    one-line error when there is none."""
    if view is None or view.get(f"docs/{POPULATION_DOC}") is None:
        raise NotFound(f"no population in this revision: {what}", POPULATION_DOC)
    return read_population(view, grids=grids)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def safe_component(text: str, what: str) -> str:
    """``text`` as one path component for an array/document name (unsafe characters → ``_``)."""
    s = _UNSAFE.sub("_", str(text).strip())
    s = s.lstrip("_") if s.startswith("__") else s
    if s in ("", ".", ".."):
        raise InvalidInput(f"{what} {text!r} gives no usable name")
    return s


class LazyStack:
    """A (n, y, x) array assembled on demand from n 2D images.

    ``getters[i]()`` returns image i as a (y, x) array. Supports the slicing
    that :func:`~mrepo.store.arrays.write_array` and
    :func:`~mrepo.model.digests.array_content_digest` use (a slice or a tuple
    of slices), so a tilt series of averages never has to sit in memory whole.
    """

    def __init__(self, getters: Sequence[Callable[[], np.ndarray]], shape: tuple[int, int], dtype: Any) -> None:
        self._get = list(getters)
        self.shape = (len(self._get), int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if key and key[0] is Ellipsis:
            key = (slice(None),) + key[1:]
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return np.asarray(self._get[int(first)](), dtype=self.dtype)[rest] if rest else np.asarray(self._get[int(first)](), dtype=self.dtype)
        idx = range(self.shape[0])[first]
        out = np.empty((len(idx), self.shape[1], self.shape[2]), dtype=self.dtype)
        for k, i in enumerate(idx):
            img = np.asarray(self._get[i]())
            if img.shape != self.shape[1:]:
                raise InvalidInput(f"image {i} is {img.shape}, expected {self.shape[1:]}")
            out[k] = img
        return out[(slice(None),) + rest] if rest else out


def commit_or_discard(txn: Any, message: str, metadata: dict[str, Any]) -> str:
    """Commit ``txn``; whatever happens, the transaction is gone afterwards."""
    try:
        return txn.commit(message, metadata=metadata)
    finally:
        txn.discard()
