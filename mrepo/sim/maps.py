"""Pseudo-atomic maps: many Gaussian 'atoms' on chains folded into domains, with point symmetry.

A species' model is built as a protein's would look at a few Å: chains of
pseudo-atoms 3.8 Å apart (a Cα trace) wander, as persistent random walks,
through a few compact domains of one asymmetric unit; the point group's
rotations (:func:`mrepo.refine.symmetry.symmetry_matrices`, RELION's axes:
Cn about z, Dn with a 2-fold about x) then copy that unit. The asymmetric
unit is the wedge ``0 <= azimuth < 2π/n`` (and ``z >= 0`` for Dn), so the
copies touch but do not overlap. The map is the sum of isotropic Gaussians
of standard deviation ``sigma`` (Å) and peak value ~1 (weights 0.8–1.2, the
same scale for every species, so that bigger species give more contrast)
sampled on a ``box``³ grid whose centre is voxel ``box // 2`` (arrays z, y, x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInput
from ..refine.symmetry import symmetry_matrices

__all__ = ["AtomicModel", "build_atoms", "render_atoms", "pseudo_atomic_map"]

#: Pseudo-atom spacing along a chain (Å): a Cα trace.
STEP_ANGSTROM = 3.8
#: Volume per pseudo-atom in the filled domains (Å³), ~ one residue.
VOLUME_PER_ATOM = 120.0


@dataclass
class AtomicModel:
    """Pseudo-atoms of a species.

    Attributes
    ----------
    positions_angstrom: (M, 3) x, y, z in Å relative to the map centre.
    weights: (M,) amplitudes.
    sigma_angstrom: Gaussian standard deviation of every atom (Å).
    asymmetric_unit: number of atoms in one asymmetric unit (the first rows).
    symmetry: the point group applied.
    """

    positions_angstrom: np.ndarray
    weights: np.ndarray
    sigma_angstrom: float
    asymmetric_unit: int
    symmetry: str


def _in_unit(p: np.ndarray, order: int, dihedral: bool, radius: float) -> np.ndarray:
    """Whether points (…, 3) lie in the asymmetric unit wedge inside the sphere."""
    r2 = (p * p).sum(-1)
    ok = r2 < radius * radius
    if order > 1:
        az = np.mod(np.arctan2(p[..., 1], p[..., 0]), 2 * math.pi)
        ok &= az < 2 * math.pi / order
    if dihedral:
        ok &= p[..., 2] >= 0
    return ok


def build_atoms(diameter_angstrom: float, symmetry: str, seed: int, *, sigma_angstrom: float = 1.5,
                n_domains: int = 3) -> AtomicModel:
    """Chains of pseudo-atoms filling a few domains of one asymmetric unit, then symmetrised.

    Parameters
    ----------
    diameter_angstrom: the atoms (and their Gaussians' 2σ) lie within this diameter.
    symmetry: ``C1``, ``Cn`` or ``Dn``.
    seed: random seed of the model.
    sigma_angstrom: Gaussian width of each atom (Å).
    n_domains: compact domains per asymmetric unit.
    """
    g = symmetry.strip().upper()
    if not g[:1] in ("C", "D"):
        raise InvalidInput("pseudo-atomic maps support Cn and Dn symmetry", symmetry)
    order = int(g[1:])
    dihedral = g.startswith("D")
    ops = symmetry_matrices(g)
    rng = np.random.default_rng(seed)
    radius = 0.5 * diameter_angstrom - 2.0 * sigma_angstrom
    if radius <= 2 * STEP_ANGSTROM:
        raise InvalidInput("species too small for a pseudo-atomic model", f"{diameter_angstrom} Å")
    # domain centres inside the unit, 35-70 % of the radius out, and their extents
    centres = []
    while len(centres) < n_domains:
        c = rng.normal(size=3)
        c *= rng.uniform(0.35, 0.7) * radius / np.linalg.norm(c)
        if _in_unit(c, order, dihedral, radius):
            centres.append(c)
    centres = np.array(centres)
    widths = rng.uniform(0.22, 0.32, size=(n_domains, 3)) * radius

    def density(p: np.ndarray) -> np.ndarray:
        d = (p[..., None, :] - centres) / widths
        return np.exp(-0.5 * (d * d).sum(-1)).sum(-1)

    unit_volume = 4 / 3 * math.pi * radius**3 / len(ops)
    n_atoms = max(50, int(0.55 * unit_volume / VOLUME_PER_ATOM))
    n_chains = max(1, n_atoms // 120)
    steps = math.ceil(n_atoms / n_chains)
    pos = centres[rng.integers(0, n_domains, n_chains)] + rng.normal(scale=2.0, size=(n_chains, 3))
    pos = np.where(_in_unit(pos, order, dihedral, radius)[:, None], pos, centres[0])
    heading = rng.normal(size=(n_chains, 3))
    heading /= np.linalg.norm(heading, axis=1, keepdims=True)
    out = np.empty((steps, n_chains, 3))
    for i in range(steps):
        accepted = np.zeros(n_chains, bool)
        new_pos = pos.copy()
        new_head = heading.copy()
        for _ in range(30):
            todo = ~accepted
            if not todo.any():
                break
            # a persistent walk: mostly forward, bond angles ~ 90-120 degrees
            d = heading[todo] * 0.35 + rng.normal(size=(int(todo.sum()), 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            cand = pos[todo] + STEP_ANGSTROM * d
            ok = _in_unit(cand, order, dihedral, radius)
            ok &= rng.uniform(size=len(cand)) < np.minimum(1.0, density(cand) / np.maximum(density(pos[todo]), 1e-12))
            idx = np.flatnonzero(todo)[ok]
            new_pos[idx] = cand[ok]
            new_head[idx] = d[ok]
            accepted[idx] = True
        pos, heading = new_pos, new_head
        out[i] = pos
    unit = out.reshape(-1, 3)[:n_atoms]
    weights_unit = rng.uniform(0.8, 1.2, len(unit))
    full = np.concatenate([unit @ s.T for s in ops])
    return AtomicModel(full, np.tile(weights_unit, len(ops)), float(sigma_angstrom), len(unit), g)


def render_atoms(model: AtomicModel, box: int, pixel_size_angstrom: float) -> np.ndarray:
    """Sum of the atoms' Gaussians (peak value = the atom's weight) on a ``box``³ grid (z, y, x), float32."""
    s = float(pixel_size_angstrom)
    c = box // 2
    xyz = model.positions_angstrom / s + c  # voxel coordinates (x, y, z)
    sig = model.sigma_angstrom / s
    half = int(math.ceil(3.0 * sig))
    base = np.round(xyz).astype(np.int64)
    frac = xyz - base
    out = np.zeros(box**3, np.float64)
    offs = np.arange(-half, half + 1)
    inv = 1.0 / (2.0 * sig * sig)
    for dz in offs:
        for dy in offs:
            for dx in offs:
                d2 = (dx - frac[:, 0]) ** 2 + (dy - frac[:, 1]) ** 2 + (dz - frac[:, 2]) ** 2
                ix, iy, iz = base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz
                ok = (ix >= 0) & (ix < box) & (iy >= 0) & (iy < box) & (iz >= 0) & (iz < box)
                flat = (iz[ok] * box + iy[ok]) * box + ix[ok]
                out += np.bincount(flat, weights=model.weights[ok] * np.exp(-d2[ok] * inv), minlength=box**3)
    return out.reshape(box, box, box).astype(np.float32)


def pseudo_atomic_map(diameter_angstrom: float, symmetry: str, box: int, pixel_size_angstrom: float, seed: int
                      ) -> tuple[np.ndarray, AtomicModel]:
    """The map (box³, z y x, float32) and atoms of a species; atom width 0.6 px (at least 1 Å)."""
    if box * pixel_size_angstrom < diameter_angstrom:
        raise InvalidInput("map box is smaller than the species diameter", f"{box} px × {pixel_size_angstrom} Å")
    sigma = max(1.0, 0.6 * pixel_size_angstrom)
    atoms = build_atoms(diameter_angstrom, symmetry, seed, sigma_angstrom=sigma)
    return render_atoms(atoms, box, pixel_size_angstrom), atoms
