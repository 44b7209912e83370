"""Deformation fields from cubic-spline control grids (M's ``CubicGrid``).

A grid with dims (X, Y, Z) holds control values at uniformly spaced nodes
over the normalised field of view [0, 1] along x and y, and over time
(frames or tilts, normalised to [0, 1]) along Z. Between the nodes the field
is a separable natural cubic spline (one node: constant, two: linear). The
value at a point is linear in the grid values, so the field and its
gradient with respect to the grid values are exact through autograd.

Frame series motion in M is a sum of such grids (a pyramid): coarse in
space and fine in time, down to fine in space and coarse in time. The
``MotionPyramid`` here evaluates that sum as (dx, dy) shifts in Å.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = ["spline_basis", "eval_grid", "MotionPyramid", "pyramid_shapes", "normalised_time", "grid_for_particles"]


@lru_cache(maxsize=64)
def _identity_splines(n: int):
    from scipy.interpolate import CubicSpline

    nodes = np.linspace(0.0, 1.0, n)
    return CubicSpline(nodes, np.eye(n), bc_type="natural", axis=0)


def spline_basis(coords, n_nodes: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(M, n_nodes) weights w such that field(coords) = w @ node_values.

    ``coords`` are normalised positions (M,) in [0, 1]; values outside are
    clamped to the ends (the field is held constant beyond the outer nodes).
    """
    c = np.clip(np.asarray(coords.detach().cpu() if isinstance(coords, torch.Tensor) else coords, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if n_nodes == 1:
        w = np.ones((c.size, 1))
    elif n_nodes == 2:
        w = np.stack([1.0 - c, c], axis=1)
    else:
        w = _identity_splines(n_nodes)(c)
    return torch.as_tensor(w, dtype=dtype, device=device)


def eval_grid(values: torch.Tensor, x, y, t) -> torch.Tensor:
    """Field of a grid at points.

    Parameters
    ----------
    values:
        (Z, Y, X) control values (a tensor; may require grad).
    x, y, t:
        (M,) normalised coordinates in [0, 1] (x, y over the field of view, t over time).

    Returns
    -------
    (M,) field values, in the grid's unit.
    """
    Z, Y, X = values.shape
    wx = spline_basis(x, X, device=values.device, dtype=values.dtype)
    wy = spline_basis(y, Y, device=values.device, dtype=values.dtype)
    wt = spline_basis(t, Z, device=values.device, dtype=values.dtype)
    return torch.einsum("mk,mj,mi,kji->m", wt, wy, wx, values)


def normalised_time(n: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n,) positions of n frames/tilts on the normalised time axis."""
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(0.0, 1.0, n, device=device, dtype=dtype)


def pyramid_shapes(levels: int, final: tuple[int, int, int], n_frames: int) -> list[tuple[int, int, int]]:
    """Grid dims (X, Y, Z) of an M-style pyramid.

    Level 0 is 1x1 in space with one node per frame (global drift, highest
    temporal resolution); the last level has ``final`` dims (e.g. 4x4x10: fine
    in space, coarse in time); levels in between interpolate geometrically.
    """
    fx, fy, fz = final
    out = []
    for i in range(levels):
        a = i / max(1, levels - 1)
        gx = max(1, int(round(fx**a)))
        gy = max(1, int(round(fy**a)))
        gz = max(2 if n_frames > 1 else 1, int(round(n_frames ** (1 - a) * fz**a)))
        out.append((gx, gy, min(gz, n_frames)))
    return out


def grid_for_particles(final: tuple[int, int, int], n_particles: int, *, per_node: float = 2.5) -> tuple[int, int, int]:
    """The finest pyramid level ``final`` (X, Y, Z), made coarser in space until each
    spatial node is supported by at least ``per_node`` particles on average.

    A grid with about one particle per node would give every particle its own
    motion, and with it the freedom to follow the noise of its own reference:
    the deformation must be shared to be determined.
    """
    x, y, z = (int(v) for v in final)
    while x * y > 1 and x * y * per_node > n_particles:
        if x >= y:
            x -= 1
        else:
            y -= 1
    return max(1, x), max(1, y), z


@dataclass
class MotionPyramid:
    """A sum of (x, y) shift grids in Å: the beam-induced motion of a series.

    ``grids`` is a list of (values_x, values_y) tensors, each (Z, Y, X).
    """

    grids: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def zeros(cls, shapes: list[tuple[int, int, int]], *, device=None, dtype=torch.float32) -> "MotionPyramid":
        return cls([
            (torch.zeros((z, y, x), device=device, dtype=dtype), torch.zeros((z, y, x), device=device, dtype=dtype))
            for x, y, z in shapes
        ])

    def parameters(self) -> list[torch.Tensor]:
        return [g for pair in self.grids for g in pair]

    def shifts(self, x, y, t) -> torch.Tensor:
        """(M, 2) shifts (dx, dy) in Å at normalised positions and times."""
        x = torch.as_tensor(x)
        if not self.grids:
            return torch.zeros(x.shape + (2,), dtype=torch.float32, device=x.device)
        dx = sum(eval_grid(gx, x, y, t) for gx, _ in self.grids)
        dy = sum(eval_grid(gy, x, y, t) for _, gy in self.grids)
        return torch.stack([dx, dy], dim=-1)
