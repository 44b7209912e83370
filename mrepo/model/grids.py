"""Cubic-spline control grids (M's ``CubicGrid``): the deformation fields.

A grid has ``dims`` = (X, Y, Z) control points; for frame and tilt series Z
is time (frames or tilts). ``values`` are stored (Z, Y, X) in C order, as the
DESIGN conventions ask. Between its control points a grid is the natural
cubic spline through them (Warp's ``CubicGrid``, einspline with natural
boundary conditions), the points evenly spaced on ``[margin, 1 − margin]``
along each normalised axis; :meth:`CubicGrid.evaluate` gives it in numpy
(the refinement's differentiable torch version is
:func:`mrepo.refine.deformation.eval_grid`).

Motion (Warp, ``Movie.GetPositionInAllFrames``): the particle at ``c`` sits in
frame f at ``c − Σ G(c/D, t_f)``, summed over the motion grids
(:func:`motion_grid_pairs`: ``GridMovementX/Y``, ``GridLocalMovementX/Y`` and
every ``PyramidShiftX/Y_i``), with ``D`` the frame's size in Å (width and
height × pixel size) and ``t_f = f / (n − 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInput

__all__ = ["CubicGrid", "natural_spline_weights", "motion_grid_pairs", "motion_shifts", "MOTION_GRID_PAIRS", "pyramid_grid_names"]

#: Motion grids Warp subtracts from a particle's position, in its order; then ``PyramidShiftX/Y_i``.
MOTION_GRID_PAIRS = (("GridMovementX", "GridMovementY"), ("GridLocalMovementX", "GridLocalMovementY"))


def natural_spline_weights(n: int, margin: float, t: np.ndarray) -> np.ndarray:
    """(len(t), n) weights W with ``f(t) = W @ values`` for the natural cubic spline
    through n control points at ``linspace(margin, 1 - margin, n)`` (clamped outside;
    one point: constant; two: linear)."""
    t = np.asarray(t, np.float64).reshape(-1)
    if n == 1:
        return np.ones((len(t), 1))
    x = np.linspace(margin, 1.0 - margin, n)
    if not np.all(np.diff(x) > 0):
        raise InvalidInput(f"grid margin {margin} leaves no room for {n} control points")
    tc = np.clip(t, x[0], x[-1])
    if n == 2:
        u = (tc - x[0]) / (x[1] - x[0])
        return np.stack([1.0 - u, u], axis=1)
    from scipy.interpolate import CubicSpline

    return np.asarray(CubicSpline(x, np.eye(n), bc_type="natural")(tc))


def pyramid_grid_names(index: int) -> tuple[str, str]:
    """Names of the ``index``-th pyramid grid pair, as Warp/M write them (``PyramidShiftX[i]``)."""
    return f"PyramidShiftX_{index}", f"PyramidShiftY_{index}"


def motion_grid_pairs(grids: Any) -> list[tuple["CubicGrid", "CubicGrid"]]:
    """The (x, y) motion grid pairs among ``grids`` (name -> CubicGrid), in Warp's order."""
    out = [(grids[a], grids[b]) for a, b in MOTION_GRID_PAIRS if a in grids and b in grids]
    idx = sorted(int(n.rsplit("_", 1)[1]) for n in grids if n.startswith("PyramidShiftX_") and n.rsplit("_", 1)[1].isdigit())
    for i in idx:
        a, b = pyramid_grid_names(i)
        if b in grids:
            out.append((grids[a], grids[b]))
    return out


def motion_shifts(pairs: Any, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, 2) summed (x, y) values (Å) of motion grid pairs at normalised points: what
    Warp subtracts from the particle positions there."""
    out = np.zeros((len(np.asarray(x).reshape(-1)), 2))
    for gx, gy in pairs:
        out[:, 0] += gx.evaluate(x, y, t)
        out[:, 1] += gy.evaluate(x, y, t)
    return out


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

    def evaluate(self, x: Any, y: Any, z: Any) -> np.ndarray:
        """(N,) float64 values at normalised positions (each in [0, 1]; z is time)."""
        gx, gy, gz = self.dims
        mx, my, mz = self.margins
        wx = natural_spline_weights(gx, mx, x)
        wy = natural_spline_weights(gy, my, y)
        wz = natural_spline_weights(gz, mz, z)
        return np.einsum("zyx,nz,ny,nx->n", self.values.astype(np.float64), wz, wy, wx, optimize=True)

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
