"""Simulated half-maps with ground truth, for the denoiser's tests and benchmark.

A pseudo-atomic phantom: many Gaussian "atoms" in two domains,

* a **rigid core** (an ellipsoid of atoms near the box centre), the same in
  every particle;
* a **flexible domain** (a smaller ellipsoid of atoms attached to the core)
  that moves from particle to particle: each half-set is the average of
  ``subsets`` particle subsets, each with its own random rigid displacement
  of the domain (shift and small rotation about the domain centre), so the
  domain is blurred, and blurred *differently* in the two halves: its local
  resolution is worse than the core's.

The true map is the pseudo-atomic model with the domain at its mean pose.
Each half-map is that truth with the domain blurred as above (optionally
with a B-factor envelope on everything), plus independent white Gaussian
noise. ``expected`` is what infinitely many particles would give: the core
plus the domain averaged over its motion (many subsets), without noise.

Everything is numpy, float32, arrays ``(z, y, x)``; distances in Å unless the
name says px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InvalidInput

__all__ = ["PhantomMaps", "render_atoms", "pseudo_atomic_phantom", "bfactor_filter"]


@dataclass(frozen=True)
class PhantomMaps:
    """A simulated species' maps with ground truth.

    Attributes
    ----------
    truth: ``(N, N, N)`` the true map (pseudo-atomic model, domain at its mean pose).
    half1, half2: ``(N, N, N)`` the two half-maps (truth with the domain blurred, noise).
    expected: ``(N, N, N)`` the noise-free infinite-data map (domain blurred by its motion).
    core_mask, domain_mask: ``(N, N, N)`` bool, voxels within 2 Å of the core's / domain's
        atoms (where the correlations are measured).
    pixel_size_angstrom: voxel size (Å).
    noise_std: standard deviation of the noise added to each half-map.
    """

    truth: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    expected: np.ndarray
    core_mask: np.ndarray
    domain_mask: np.ndarray
    pixel_size_angstrom: float
    noise_std: float

    @property
    def box(self) -> int:
        return int(self.truth.shape[0])

    @property
    def particle_mask(self) -> np.ndarray:
        return self.core_mask | self.domain_mask


def render_atoms(xyz_angstrom: np.ndarray, box: int, pixel_size_angstrom: float, sigma_angstrom: float = 1.0,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Sum of isotropic Gaussians at ``xyz_angstrom`` ``(n, 3)`` (x, y, z in Å from the box centre).

    Each atom is evaluated exactly on the voxels within 4 σ of it. Returns
    ``(box, box, box)`` float32 with atoms of unit peak height (times ``weights``).
    """
    xyz = np.asarray(xyz_angstrom, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise InvalidInput("atom coordinates must be (n, 3)", str(xyz.shape))
    out = np.zeros((box, box, box), np.float64)
    if not len(xyz):
        return out.astype(np.float32)
    w = np.ones(len(xyz)) if weights is None else np.asarray(weights, np.float64)
    pos = xyz[:, ::-1] / pixel_size_angstrom + box // 2  # (z, y, x) in px
    s = sigma_angstrom / pixel_size_angstrom
    half = int(np.ceil(4 * s))
    offs = np.arange(-half, half + 1)
    base = np.floor(pos).astype(np.int64)
    frac = pos - base
    for start in range(0, len(pos), 2048):
        b = base[start : start + 2048]
        f = frac[start : start + 2048]
        # separable Gaussian factors per atom and axis: (n, axis, k)
        g = np.exp(-0.5 * ((offs[None, None, :] - f[:, :, None]) / s) ** 2)
        vals = g[:, 0, :, None, None] * g[:, 1, None, :, None] * g[:, 2, None, None, :] * w[start : start + 2048, None, None, None]
        iz, iy, ix = (b[:, a, None] + offs[None, :] for a in range(3))
        flat = (iz[:, :, None, None] * box + iy[:, None, :, None]) * box + ix[:, None, None, :]
        ok = ((iz >= 0) & (iz < box))[:, :, None, None] & ((iy >= 0) & (iy < box))[:, None, :, None] & ((ix >= 0) & (ix < box))[:, None, None, :]
        out += np.bincount(flat[ok], weights=vals[ok], minlength=box**3).reshape(out.shape)
    return out.astype(np.float32)


def bfactor_filter(volume: np.ndarray, pixel_size_angstrom: float, b_factor: float) -> np.ndarray:
    """Multiply the spectrum by ``exp(-B s² / 4)`` (s in 1/Å); ``B`` in Å²."""
    n = volume.shape[0]
    f = np.fft.rfftn(volume)
    k = np.fft.fftfreq(n, d=pixel_size_angstrom)
    kx = np.fft.rfftfreq(n, d=pixel_size_angstrom)
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    return np.fft.irfftn(f * np.exp(-b_factor * s2 / 4.0), s=volume.shape).astype(np.float32)


def _atoms_in_ellipsoid(rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray, density: float) -> np.ndarray:
    """Random atoms at ``density`` atoms/Å³ inside an ellipsoid (x, y, z radii in Å)."""
    volume = 4.0 / 3.0 * np.pi * float(np.prod(radii))
    n = int(round(volume * density))
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts *= rng.uniform(0, 1, size=(n, 1)) ** (1.0 / 3.0)
    return centre + pts * radii


def _mask_near(atoms: np.ndarray, box: int, px: float, within_angstrom: float) -> np.ndarray:
    occ = np.zeros((box,) * 3, bool)
    ijk = np.round(atoms[:, ::-1] / px + box // 2).astype(int)
    ok = np.all((ijk >= 0) & (ijk < box), axis=1)
    occ[tuple(ijk[ok].T)] = True
    dist = ndimage.distance_transform_edt(~occ) * px
    return dist <= within_angstrom


def pseudo_atomic_phantom(
    box: int = 64,
    pixel_size_angstrom: float = 1.2,
    *,
    core_radii_angstrom: tuple[float, float, float] = (16.0, 13.0, 12.0),
    domain_radii_angstrom: tuple[float, float, float] = (9.0, 8.0, 8.0),
    atom_density: float = 1.0 / 60.0,
    atom_sigma_angstrom: float = 0.9,
    b_factor: float = 0.0,
    flex_shift_angstrom: float = 1.5,
    flex_rotation_deg: float = 4.0,
    subsets: int = 8,
    noise_std: float = 1.0,
    seed: int = 0,
) -> PhantomMaps:
    """Simulate a two-domain species: truth and two half-maps.

    Parameters
    ----------
    box, pixel_size_angstrom: sampling (voxels, Å).
    core_radii_angstrom, domain_radii_angstrom: ellipsoid radii (x, y, z) of the rigid core and
        of the flexible domain; the domain touches the core along +x.
    atom_density: atoms per Å³ (a sparse protein-like texture at ~1/60).
    atom_sigma_angstrom: Gaussian width of one atom (Å).
    b_factor: envelope applied to both halves (Å²; 0: none, the atoms' width sets the fall-off).
    flex_shift_angstrom, flex_rotation_deg: standard deviation of the domain's per-subset shift
        (per axis, Å) and rotation (per axis, degrees) about its centre.
    subsets: particle subsets averaged in each half-map.
    noise_std: standard deviation of the white noise added to each half, relative to the
        standard deviation of the truth inside the particle.
    seed: random seed (atoms, motions and noise).
    """
    if box < 16 or box % 2:
        raise InvalidInput("phantom box must be even and at least 16 voxels", str(box))
    rng = np.random.default_rng(seed)
    px = float(pixel_size_angstrom)
    cr = np.asarray(core_radii_angstrom, float)
    dr = np.asarray(domain_radii_angstrom, float)
    span = cr[0] + 2 * dr[0]
    core_c = np.array([-span / 2 + cr[0], 0.0, 0.0])
    dom_c = np.array([core_c[0] + cr[0] + 0.7 * dr[0], 0.0, 0.0])
    if span / 2 + 3 * flex_shift_angstrom > box * px / 2 - 2:
        raise InvalidInput("phantom does not fit in the box; use a bigger box or smaller domains", f"{box} px")
    core = _atoms_in_ellipsoid(rng, core_c, cr, atom_density)
    dom = _atoms_in_ellipsoid(rng, dom_c, dr, atom_density)
    core_map = render_atoms(core, box, px, atom_sigma_angstrom)
    dom_map = render_atoms(dom, box, px, atom_sigma_angstrom)
    truth = core_map + dom_map

    def moved_domain() -> np.ndarray:
        rot = Rotation.from_rotvec(np.radians(rng.normal(0, flex_rotation_deg, 3)))
        shift = rng.normal(0, flex_shift_angstrom, 3)
        return render_atoms(rot.apply(dom - dom_c) + dom_c + shift, box, px, atom_sigma_angstrom)

    core_mask = _mask_near(core, box, px, 2.0)
    domain_mask = _mask_near(dom, box, px, 2.0) & ~core_mask
    sig = float(truth[core_mask | domain_mask].std())
    def envelope(v: np.ndarray) -> np.ndarray:
        return bfactor_filter(v, px, b_factor) if b_factor else v

    halves = []
    for _ in range(2):
        d = sum(moved_domain() for _ in range(subsets)) / subsets
        clean = envelope(core_map + d)
        halves.append((clean + rng.normal(0, noise_std * sig, clean.shape)).astype(np.float32))
    n_exp = 64
    expected = envelope(core_map + sum(moved_domain() for _ in range(n_exp)) / n_exp)
    return PhantomMaps(truth.astype(np.float32), halves[0], halves[1], expected.astype(np.float32), core_mask, domain_mask,
                       px, noise_std * sig)
