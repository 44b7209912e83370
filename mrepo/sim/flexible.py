"""An optional flexible domain of a simulated species (``SimConfig.flexible_angstrom > 0``).

A contiguous part of the species' pseudo-atomic model moves rigidly from
particle to particle while the rest (the **core**) stays put:

* **the domain**: in one asymmetric unit, the ``flexible_fraction`` of its atoms
  lying farthest along a direction ``u`` (the atoms on one side of a plane
  normal to ``u``); ``u`` points from the centre to the unit's centroid (a
  random direction when the centroid is near the centre, e.g. for C1). The
  point group copies the unit, and with it the domain and its motion, so every
  conformation keeps the species' symmetry (refinement imposes it);
* **its motion**: ``flexible_conformations`` (K) discrete conformations, each a
  rotation of the domain about an axis through a hinge point (the domain
  centroid projected onto the cutting plane); the K rotation vectors are drawn
  isotropically from the population seed, centred (their mean is zero, so the
  average pose is close to the rest pose), and scaled so that the RMS
  displacement of the domain's atoms over the K conformations is
  ``flexible_angstrom`` (Å);
* **the particles**: each particle (frame and tilt series alike) is one
  conformation, drawn uniformly from the seed in a stream of its own (the rest
  of the population is the same as without the domain, except the images).

The rendering stays cheap: the K conformation maps are prepared once, and each
particle is rendered from its conformation's map.

Ground truth (:class:`FlexibleTruth`, in ``truth/maps/<species>_flexible.npz``):
the conformation of every particle (row order of the species' particle table),
the K maps, the rest map (domain at rest), the **average** map (the mean of
the particles' conformation maps: the noise-free map infinitely many images of
these particles would give, which the simulator records as the species' true
map, ``truth.maps[species]``, for FSCs and oracles), and the core and domain
masks (voxels within ``max(2 Å, 1.5 px)`` of the core's atoms, or of the
domain's atoms in any conformation; voxels in both are in neither).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..refine.symmetry import symmetry_matrices
from .maps import AtomicModel, render_atoms

__all__ = ["FlexibleTruth", "build_flexible", "domain_atoms", "mask_radius_angstrom"]


@dataclass
class FlexibleTruth:
    """The flexible domain of one species.

    Attributes
    ----------
    species: species name.
    fraction: share of the asymmetric unit's atoms in the domain (configured).
    rms_angstrom: configured RMS displacement of the domain's atoms (Å).
    measured_rms_angstrom: RMS displacement of the domain's atoms over the K conformations (Å).
    domain_atoms: (M,) bool over the species' atoms (all symmetry copies).
    direction: (3,) unit normal of the cutting plane (x, y, z), pointing into the domain.
    pivot: (3,) hinge point (Å from the map centre, x, y, z) of the first asymmetric unit.
    rotvecs: (K, 3) rotation vectors (radians) of the conformations (first unit; copies by symmetry).
    maps: (K, N, N, N) conformation maps (z, y, x), float32.
    rest_map: (N, N, N) the map with the domain at rest (the atomic model as built).
    core_mask, domain_mask: (N, N, N) bool.
    conformation: (P,) int conformation of each particle, row order of the species' table
        (empty until the particles are drawn).
    """

    species: str
    fraction: float
    rms_angstrom: float
    measured_rms_angstrom: float
    domain_atoms: np.ndarray
    direction: np.ndarray
    pivot: np.ndarray
    rotvecs: np.ndarray
    maps: np.ndarray
    rest_map: np.ndarray
    core_mask: np.ndarray
    domain_mask: np.ndarray
    conformation: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_conformations(self) -> int:
        return int(self.maps.shape[0])

    def counts(self) -> np.ndarray:
        """(K,) particles per conformation."""
        return np.bincount(np.asarray(self.conformation, np.int64), minlength=self.n_conformations)

    def average_map(self) -> np.ndarray:
        """Mean of the particles' conformation maps (the rest map when no particle is drawn yet)."""
        c = self.counts().astype(np.float64)
        if c.sum() == 0:
            return self.rest_map.copy()
        return np.tensordot(c / c.sum(), self.maps.astype(np.float64), axes=1).astype(np.float32)


def mask_radius_angstrom(pixel_size_angstrom: float) -> float:
    """Radius (Å) around atoms of the core and domain masks."""
    return max(2.0, 1.5 * float(pixel_size_angstrom))


def domain_atoms(unit: np.ndarray, fraction: float, rng: np.random.Generator, radius: float
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """(mask over the unit's atoms, plane normal u, threshold t): the atoms with ``x·u >= t``,
    ``t`` the (1 − fraction) quantile of ``x·u``."""
    c = unit.mean(axis=0)
    if np.linalg.norm(c) > 0.15 * radius:
        u = c / np.linalg.norm(c)
    else:
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
    proj = unit @ u
    t = float(np.quantile(proj, 1.0 - fraction))
    return proj >= t, u, t


def _moved(unit: np.ndarray, dom: np.ndarray, pivot: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    out = unit.copy()
    out[dom] = Rotation.from_rotvec(rotvec).apply(unit[dom] - pivot) + pivot
    return out


def _masks(core_xyz: np.ndarray, dom_xyz: np.ndarray, box: int, px: float) -> tuple[np.ndarray, np.ndarray]:
    r = mask_radius_angstrom(px)
    c = box // 2
    g = (np.arange(box) - c) * px
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    vox = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)

    def near(xyz: np.ndarray) -> np.ndarray:
        if not len(xyz):
            return np.zeros(box**3, bool)
        d, _ = cKDTree(xyz).query(vox, k=1, distance_upper_bound=r)
        return np.isfinite(d)

    core, dom = near(core_xyz), near(dom_xyz)
    both = core & dom
    return (core & ~both).reshape(box, box, box), (dom & ~both).reshape(box, box, box)


def build_flexible(name: str, atoms: AtomicModel, box: int, pixel_size_angstrom: float, *, fraction: float,
                   rms_angstrom: float, conformations: int, rng: np.random.Generator) -> FlexibleTruth:
    """The domain, its K conformation maps and the masks of one species (see the module docstring)."""
    ops = symmetry_matrices(atoms.symmetry)
    m = int(atoms.asymmetric_unit)
    unit = np.asarray(atoms.positions_angstrom[:m], np.float64)
    radius = float(np.sqrt((unit**2).sum(1)).max())
    dom, u, t = domain_atoms(unit, fraction, rng, radius)
    dc = unit[dom].mean(axis=0)
    pivot = dc - (dc @ u - t) * u
    k = int(conformations)
    rv = rng.normal(size=(k, 3))
    rv -= rv.mean(axis=0)

    def rms(scale: float) -> float:
        d = [(_moved(unit, dom, pivot, scale * v) - unit)[dom] for v in rv]
        return float(np.sqrt(np.mean([(x**2).sum(1).mean() for x in d])))

    scale = 0.0
    if rms_angstrom > 0:
        # the displacement grows almost linearly with the angle: a few fixed-point steps
        lever = float(np.sqrt(((unit[dom] - pivot) ** 2).sum(1).mean()))
        scale = rms_angstrom / max(lever, 1e-6) / max(float(np.sqrt((rv**2).sum(1).mean())), 1e-12) * np.sqrt(1.5)
        for _ in range(8):
            r = rms(scale)
            if r <= 0:
                break
            scale *= rms_angstrom / r
    rv = rv * scale
    measured = rms(1.0) if rms_angstrom > 0 else 0.0
    weights = np.asarray(atoms.weights)
    maps = []
    dom_all = []
    for v in rv:
        moved = _moved(unit, dom, pivot, v)
        full = np.concatenate([moved @ s.T for s in ops])
        dom_all.append(np.concatenate([moved[dom] @ s.T for s in ops]))
        maps.append(render_atoms(AtomicModel(full, weights, atoms.sigma_angstrom, m, atoms.symmetry), box,
                                 pixel_size_angstrom))
    rest = render_atoms(atoms, box, pixel_size_angstrom)
    dom_full = np.tile(dom, len(ops))
    core_xyz = np.asarray(atoms.positions_angstrom)[~dom_full]
    dom_xyz = np.concatenate([np.asarray(atoms.positions_angstrom)[dom_full], *dom_all])
    core_mask, domain_mask = _masks(core_xyz, dom_xyz, box, pixel_size_angstrom)
    return FlexibleTruth(name, float(fraction), float(rms_angstrom), float(measured), dom_full, u, pivot, rv,
                         np.stack(maps).astype(np.float32), rest, core_mask, domain_mask)
