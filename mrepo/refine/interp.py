"""Trilinear interpolation and splatting on a padded 3D Fourier half grid, and its gridding correction.

Layouts
-------
A padded Fourier volume of ``P`` voxels a side (``P`` even) is, in the plain
rfft layout, a ``(P, P, P // 2 + 1)`` array indexed ``[qz mod P, qy mod P, qx]``
with ``0 <= qx <= P/2``. For interpolation it is stored in the *sampling
layout* ``(P + 1, P + 1, P // 2 + 1)``: the ``qz`` and ``qy`` axes are
fftshifted (frequency ``q`` at index ``q + P/2``) and closed by a copy of
their first slab (so the neighbour of ``+P/2 - ε`` exists without a modulo).
Points are restricted to ``|q| < P/2``, so the 8 neighbours of a point are
at constant offsets from its base index and always inside the array.

A point ``q = (qx, qy, qz)`` (padded-grid units, vectors ordered x, y, z)
with ``qx < 0`` is read from ``-q`` and complex-conjugated (Friedel symmetry
of the transform of a real map), as RELION's projector and back-projector do.

Interpolating (or splatting) with the trilinear kernel multiplies the
real-space map by the kernel's transform, ``sinc²(x/P) sinc²(y/P) sinc²(z/P)``
(``x, y, z`` in voxels from the box centre). :func:`gridding_correction_3d`
returns that factor so that callers can divide it out (RELION uses the radial
approximation ``sinc²(|r|/P)``; the separable form is exact for trilinear
interpolation).
"""

from __future__ import annotations

import torch

__all__ = [
    "sampling_shape",
    "to_sampling_layout",
    "from_sampling_layout",
    "hermitian_fold",
    "trilinear_base",
    "inside_sampling",
    "corner_offsets",
    "gridding_correction_3d",
    "symmetrize_half_planes",
]


def sampling_shape(padded_box: int) -> tuple[int, int, int]:
    """Shape ``(P + 1, P + 1, P // 2 + 1)`` of the sampling layout."""
    p = int(padded_box)
    return (p + 1, p + 1, p // 2 + 1)


def to_sampling_layout(grid: torch.Tensor) -> torch.Tensor:
    """``(P, P, P//2+1, ...)`` rfft layout -> ``(P+1, P+1, P//2+1, ...)`` sampling layout (a copy)."""
    g = torch.fft.fftshift(grid, dim=(0, 1))
    g = torch.cat([g, g[:1]], dim=0)
    return torch.cat([g, g[:, :1]], dim=1).contiguous()


def from_sampling_layout(grid: torch.Tensor, *, accumulate: bool) -> torch.Tensor:
    """Sampling layout -> rfft layout ``(P, P, P//2+1, ...)``.

    With ``accumulate`` (splatted sums), the closing slabs are added onto the
    slabs they duplicate (frequency ``+P/2`` is ``-P/2``); otherwise they are dropped.
    """
    p = grid.shape[0] - 1
    g = grid
    if accumulate:
        g = g.clone()
        g[0] += g[p]
        g[:, 0] += g[:, p]
    g = g[:p, :p]
    return torch.fft.ifftshift(g, dim=(0, 1))


def hermitian_fold(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map points with ``qx < 0`` to their Friedel mates.

    Parameters
    ----------
    coords: ``(..., 3)`` points ``(qx, qy, qz)`` in padded-grid units.

    Returns
    -------
    (folded coords ``(..., 3)`` with ``qx >= 0``, sign ``(...)``: -1 where the value must be conjugated).
    """
    sign = torch.where(coords[..., 0] < 0, -1.0, 1.0).to(coords.dtype).detach()
    return coords * sign.unsqueeze(-1), sign


def trilinear_base(coords: torch.Tensor, padded_box: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Base voxel and fractional offsets of folded points in the sampling layout.

    Parameters
    ----------
    coords: ``(..., 3)`` folded points with ``qx >= 0`` and ``|q| < P/2``, padded-grid units.
    padded_box: ``P``.

    Returns
    -------
    base: ``(...)`` long, flat index of the ``(floor qz, floor qy, floor qx)`` voxel.
    frac: ``(..., 3)`` ``(fx, fy, fz)`` in [0, 1), differentiable in ``coords``.
    """
    p = int(padded_box)
    _, h, w = sampling_shape(p)
    shifted = coords + torch.tensor([0.0, p / 2, p / 2], device=coords.device, dtype=coords.dtype)
    b = torch.floor(shifted.detach())
    frac = shifted - b
    b = b.long()
    base = (b[..., 2] * h + b[..., 1]) * w + b[..., 0]
    return base, frac


def inside_sampling(coords: torch.Tensor, padded_box: int) -> torch.Tensor:
    """``(...)`` bool: folded points whose 8 neighbours lie in the sampling layout
    (every component below ``P/2`` in magnitude). Rotations always give such points for
    ``|k| < n/2``; other matrices (an anisotropic magnification) can reach beyond."""
    return coords.detach().abs().amax(dim=-1) < padded_box / 2


def corner_offsets(padded_box: int) -> list[tuple[int, int, int, int]]:
    """The 8 neighbours as ``(flat offset, dz, dy, dx)`` in the sampling layout."""
    _, h, w = sampling_shape(padded_box)
    return [(dz * h * w + dy * w + dx, dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]


def gridding_correction_3d(box: int, padded_box: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Real-space apodisation of trilinear interpolation on a ``P``-voxel Fourier grid.

    Returns ``(box, box, box)``: ``sinc²(x/P) sinc²(y/P) sinc²(z/P)`` with
    ``x, y, z`` the offsets in voxels from the centre voxel ``box // 2`` and
    ``sinc(t) = sin(πt)/(πt)``.
    """
    ax = torch.arange(box, device=device, dtype=dtype) - box // 2
    s = torch.sinc(ax / padded_box) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def symmetrize_half_planes(grid: torch.Tensor, *, conjugate: bool) -> torch.Tensor:
    """Complete the self-mated planes ``qx = 0`` and ``qx = P/2`` of an rfft-layout accumulator.

    In those planes both ``(qy, qz)`` and ``(-qy, -qz)`` are stored but they
    are one Friedel pair: each receives the sum of the two (conjugated for
    complex data), as RELION's ``enforceHermitianSymmetry``.

    Parameters
    ----------
    grid: ``(P, P, P//2+1)`` accumulator (complex data or real weights), ``P`` even.
    conjugate: conjugate the mate (True for complex data).

    Returns a new tensor.
    """
    p = grid.shape[0]
    neg = torch.remainder(-torch.arange(p, device=grid.device), p)
    out = grid.clone()
    for xp in (0, p // 2):
        plane = grid[:, :, xp]
        mate = plane.index_select(0, neg).index_select(1, neg)
        out[:, :, xp] = plane + (mate.conj() if conjugate else mate)
    return out
