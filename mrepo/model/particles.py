"""Particles of a species: a columnar table with pose trajectories.

Columns are numpy arrays (or lazily read ``zarr.Array`` for big sets):

=====================  ===========  =========================================
column                 shape        meaning
=====================  ===========  =========================================
``item``               (N,) int32   index into ``items`` (item data digests)
``coordinates``        (N, T, 3)    position x, y, z in Å in the item; T
                                    temporal samples (1-3 control points)
``angles``             (N, T, 3)    rot, tilt, psi in degrees (RELION ZYZ)
``half_set``           (N,) int8    1 or 2 (gold standard), 0 if unknown
extra columns          (N, ...)     anything else (defocus offsets, scores)
=====================  ===========  =========================================

Particles name their item by the item's data digest, never by file name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput

__all__ = ["Particles", "CORE_COLUMNS"]

CORE_COLUMNS = ("item", "coordinates", "angles", "half_set")


def _np(a: Any) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.asarray(a[...])


@dataclass
class Particles:
    items: list[str]
    item: Any
    coordinates: Any
    angles: Any
    half_set: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.item.shape[0])
        if self.coordinates.ndim == 2:
            self.coordinates = _np(self.coordinates)[:, None, :]
        if self.angles.ndim == 2:
            self.angles = _np(self.angles)[:, None, :]
        for name in ("coordinates", "angles"):
            a = getattr(self, name)
            if a.ndim != 3 or a.shape[0] != n or a.shape[2] != 3 or not 1 <= a.shape[1] <= 16:
                raise InvalidInput(f"particle column {name} must be (N, T, 3) with N={n}, got {tuple(a.shape)}")
        if tuple(self.half_set.shape) != (n,):
            raise InvalidInput(f"particle column half_set must be ({n},), got {tuple(self.half_set.shape)}")
        for k, v in self.extra.items():
            if int(v.shape[0]) != n:
                raise InvalidInput(f"particle column {k} has {v.shape[0]} rows, expected {n}")

    # -- construction ------------------------------------------------------------
    @classmethod
    def empty(cls, temporal_samples: int = 1) -> "Particles":
        return cls(
            [],
            np.zeros(0, np.int32),
            np.zeros((0, temporal_samples, 3), np.float32),
            np.zeros((0, temporal_samples, 3), np.float32),
            np.zeros(0, np.int8),
        )

    @classmethod
    def from_arrays(
        cls,
        item_digests: Any,
        coordinates: Any,
        angles: Any,
        half_set: Any | None = None,
        **extra: Any,
    ) -> "Particles":
        """Build from per-particle item digests (N,) and poses (N, 3) or (N, T, 3)."""
        digs = np.asarray(item_digests).astype(str)
        items, idx = np.unique(digs, return_inverse=True)
        n = len(digs)
        return cls(
            [str(x) for x in items],
            idx.astype(np.int32),
            np.asarray(coordinates, np.float32),
            np.asarray(angles, np.float32),
            np.zeros(n, np.int8) if half_set is None else np.asarray(half_set, np.int8),
            {k: np.asarray(v) for k, v in extra.items()},
        )

    # -- access ------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.item.shape[0])

    @property
    def temporal_samples(self) -> int:
        return int(self.coordinates.shape[1])

    def columns(self) -> dict[str, Any]:
        cols = {"item": self.item, "coordinates": self.coordinates, "angles": self.angles, "half_set": self.half_set}
        cols.update(self.extra)
        return cols

    def item_digest(self) -> np.ndarray:
        """(N,) item data digest of every particle."""
        return np.asarray(self.items, dtype=object)[_np(self.item)] if self.items else np.zeros(0, object)

    def load(self) -> "Particles":
        """A copy with every column read into memory."""
        return Particles(list(self.items), _np(self.item), _np(self.coordinates), _np(self.angles), _np(self.half_set),
                         {k: _np(v) for k, v in self.extra.items()})

    def select(self, mask: np.ndarray) -> "Particles":
        p = self.load()
        m = np.asarray(mask)
        return Particles(p.items, p.item[m], p.coordinates[m], p.angles[m], p.half_set[m], {k: v[m] for k, v in p.extra.items()})

    def in_item(self, digest: str) -> np.ndarray:
        """Indices of the particles in item ``digest``."""
        try:
            k = self.items.index(digest)
        except ValueError:
            return np.zeros(0, np.int64)
        return np.flatnonzero(_np(self.item) == k)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Particles):
            return NotImplemented
        a, b = self.load(), other.load()
        if list(a.item_digest()) != list(b.item_digest()) or set(a.extra) != set(b.extra):
            return False
        return all(np.array_equal(x, y) for x, y in zip(
            [a.coordinates, a.angles, a.half_set, *[a.extra[k] for k in sorted(a.extra)]],
            [b.coordinates, b.angles, b.half_set, *[b.extra[k] for k in sorted(b.extra)]],
        ))
