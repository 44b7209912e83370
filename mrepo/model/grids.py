"""Cubic-spline control grids (M's ``CubicGrid``): the deformation fields.

A grid has ``dims`` = (X, Y, Z) control points; for frame and tilt series Z
is time (frames or tilts). ``values`` are stored (Z, Y, X) in C order, as the
DESIGN conventions ask. Evaluation lives in :mod:`mrepo.refine` (torch); this
module only holds and validates the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput

__all__ = ["CubicGrid"]


@dataclass
class CubicGrid:
    """A grid of control points.

    Attributes
    ----------
    dims:
        (X, Y, Z) numbers of control points; Z is time for series.
    values:
        float32 array of shape (Z, Y, X).
    margins:
        (x, y, z) margins as fractions of the field of view (Warp's ``Margins``).
    unit:
        What the values are: ``"angstrom"`` (shifts, defocus), ``"degree"``,
        ``"um"`` (Warp defocus grids), ``"1"`` (weights, scales).
    """

    dims: tuple[int, int, int]
    values: np.ndarray
    margins: tuple[float, float, float] = (0.0, 0.0, 0.0)
    unit: str = "angstrom"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)  # type: ignore[assignment]
        if len(self.dims) != 3 or min(self.dims) < 1:
            raise InvalidInput(f"grid dims must be three positive integers, got {self.dims}")
        v = np.asarray(self.values, dtype=np.float32)
        want = (self.dims[2], self.dims[1], self.dims[0])
        if v.size != int(np.prod(want)):
            raise InvalidInput(f"grid values have {v.size} elements, dims {self.dims} need {int(np.prod(want))}")
        self.values = v.reshape(want)
        self.margins = tuple(float(m) for m in self.margins)  # type: ignore[assignment]

    @classmethod
    def zeros(cls, dims: tuple[int, int, int], unit: str = "angstrom") -> "CubicGrid":
        return cls(dims, np.zeros((dims[2], dims[1], dims[0]), np.float32), unit=unit)

    def to_meta(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "margins": list(self.margins), "unit": self.unit, **({"extra": self.extra} if self.extra else {})}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CubicGrid)
            and self.dims == other.dims
            and self.margins == other.margins
            and self.unit == other.unit
            and np.array_equal(self.values, other.values)
        )
