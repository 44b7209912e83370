"""How far a population (stored, or refined) is from the simulation's ground truth.

Particles are matched to the truth by row (row i of a stored species is row i of
``truth.particles[species]``); items by data digest. Each function returns one
number; ``per_item``/``per_species`` variants are in the docstrings.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import InvalidInput
from ..model import Population, defocus_at
from .geometry import frame_positions, interp_trajectory, item_motion_grids, matrices, rotation_angle_deg
from .render import doming_offsets
from .truth import Truth

__all__ = ["motion_rmse_px", "pose_error_deg", "defocus_rmse", "frame_position_errors", "astigmatism_error",
           "beam_tilt_error_mrad", "magnification_error", "doming_rmse", "domain_correlation"]


def _species(pop: Population, truth: Truth, species: str | Iterable[str] | None) -> list[str]:
    names = list(truth.particles) if species is None else ([species] if isinstance(species, str) else list(species))
    for n in names:
        if n not in pop.species or n not in truth.particles:
            raise InvalidInput("species not in both the population and the truth", n)
        if len(pop.species[n].particles) != len(truth.particles[n]):
            raise InvalidInput("the population's particles do not match the truth row for row", n)
    return names


def frame_position_errors(pop: Population, truth: Truth, species: str | Iterable[str] | None = None,
                          *, subtract_mean: bool = False) -> np.ndarray:
    """(M, 2) position errors (Å) of every particle in every frame of every frame series.

    Positions follow :mod:`mrepo.sim.geometry`: trajectory plus the item's motion grids
    (``GridMovementX/Y``, ``GridLocalMovementX/Y``, ``PyramidShiftX/Y_i``) for the population, the true
    trajectory plus the true pyramid for the truth. With ``subtract_mean``, each particle's
    mean error over its frames is removed (what is left is motion, not a static offset).
    """
    out = []
    for name in _species(pop, truth, species):
        est = pop.species[name].particles.load()
        tru = truth.particles[name]
        for _src, item in pop.items():
            if item.kind != "frames":
                continue
            idx = est.in_item(item.data_digest)
            if not len(idx):
                continue
            it_true = truth.item_by_digest(item.data_digest)
            px = item.imaging.pixel_size_angstrom
            p_est = frame_positions(np.asarray(est.coordinates)[idx], item.n, item.shape, px, item_motion_grids(item))
            p_true = frame_positions(np.asarray(tru.coordinates)[idx], item.n, item.shape, px, it_true.motion)
            d = p_est - p_true
            if subtract_mean:
                d = d - d.mean(axis=1, keepdims=True)
            out.append(d.reshape(-1, 2))
    return np.concatenate(out) if out else np.zeros((0, 2))


def motion_rmse_px(pop: Population, truth: Truth, species: str | Iterable[str] | None = None,
                   *, subtract_mean: bool = False) -> float:
    """RMS (px) of the particles' per-frame position errors over all frame series.

    See :func:`frame_position_errors`; it measures motion and particle positions together,
    since a refiner may put motion into either. ``subtract_mean=True`` measures only the
    motion (each particle's static offset removed).
    """
    d = frame_position_errors(pop, truth, species, subtract_mean=subtract_mean)
    if not len(d):
        raise InvalidInput("no particle in any frame series", "motion_rmse_px")
    px = truth.pixel_size_angstrom
    return float(np.sqrt((d**2).sum(axis=1).mean()) / px)


def pose_error_deg(pop: Population, truth: Truth, species: str | Iterable[str] | None = None) -> float:
    """RMS angle (deg) between estimated and true orientations, over particles and frames (tilt
    series particles: their single orientation), the smallest over the species' symmetry."""
    errs = []
    for name in _species(pop, truth, species):
        est = pop.species[name].particles.load()
        tru = truth.particles[name]
        sym = pop.species[name].symmetry
        for _src, item in pop.items():
            idx = est.in_item(item.data_digest)
            if not len(idx):
                continue
            n_t = item.n if item.kind == "frames" else 1
            a_est = interp_trajectory(np.asarray(est.angles)[idx], n_t) if item.kind == "frames" else np.asarray(est.angles)[idx][:, :1]
            a_true = interp_trajectory(np.asarray(tru.angles)[idx], n_t) if item.kind == "frames" else np.asarray(tru.angles)[idx][:, :1]
            errs.append(rotation_angle_deg(matrices(a_est), matrices(a_true), sym).reshape(-1))
    e = np.concatenate(errs) if errs else np.zeros(0)
    if not len(e):
        raise InvalidInput("no particle to compare", "pose_error_deg")
    return float(np.sqrt((e**2).mean()))


def _frame_particles(pop: Population, truth: Truth, species: str | Iterable[str] | None):
    """Yield ``(item, true item, estimated particles, true particles, rows)`` for every frame
    series holding particles of the chosen species (rows: that species' rows in the item)."""
    for name in _species(pop, truth, species):
        est = pop.species[name].particles.load()
        tru = truth.particles[name]
        for _src, item in pop.items():
            if item.kind != "frames":
                continue
            idx = est.in_item(item.data_digest)
            if len(idx):
                yield item, truth.item_by_digest(item.data_digest).item, est, tru, idx


def defocus_rmse(pop: Population, truth: Truth, species: str | Iterable[str] | None = None) -> float:
    """RMS (Å) of the per-particle defocus error of frame-series particles: (item defocus + z)
    estimated minus true (astigmatism excluded: it is an item property)."""
    errs = [(item.imaging.defocus_angstrom + np.asarray(est.coordinates)[idx][:, 0, 2])
            - (it_true.imaging.defocus_angstrom + np.asarray(tru.coordinates)[idx][:, 0, 2])
            for item, it_true, est, tru, idx in _frame_particles(pop, truth, species)]
    e = np.concatenate(errs) if errs else np.zeros(0)
    if not len(e):
        raise InvalidInput("no frame-series particle to compare", "defocus_rmse")
    return float(np.sqrt((e**2).mean()))


# ---------------------------------------------------------------------------- imaging model
def _item_pairs(pop: Population, truth: Truth, kind: str | None):
    """(population item, true item) of every item of ``pop`` (of ``kind``) that the truth knows."""
    out = []
    for _src, item in pop.items():
        if kind is not None and item.kind != kind:
            continue
        try:
            t = truth.item_by_digest(item.data_digest)
        except KeyError:
            continue
        out.append((item, t.item))
    return out


def _astigmatism(item) -> tuple[float, float]:
    """(a, θ) of an item: half the difference U − V (Å) and the angle of U (deg) at the centre of
    the view, mid-exposure (``GridCTFDefocusDelta/Angle`` where they hold values, else the
    imaging model: :func:`mrepo.model.defocus_at`)."""
    du, dv, ang = defocus_at(item, 0.5, 0.5, 0.5)
    return 0.5 * float(du - dv), float(ang)


def astigmatism_error(pop: Population, truth: Truth, *, kind: str | None = "frames") -> dict[str, float]:
    """Astigmatism errors over the items (default: frame series; None for all), RMS over items.

    Astigmatism a (Å, half of ``DefocusU − DefocusV``) at angle θ is the vector
    ``(a cos 2θ, a sin 2θ)`` (a and θ + 90° with −a are the same astigmatism). Returns

    * ``magnitude_angstrom``: RMS of ``|a_est| − |a_true|`` (Å);
    * ``vector_angstrom``: RMS of the length of the vector difference (Å): what the
      defocus along the worst direction is off by;
    * ``angle_deg``: RMS of the angle error (deg, wrapped to ±90°) weighted by ``a_true²``
      (an angle error matters as ``2 a Δθ``; the angle of a vanishing astigmatism does not);
    * ``n_items``.
    """
    mag, vec, ang, wts = [], [], [], []
    for item, t in _item_pairs(pop, truth, kind):
        ae, te = _astigmatism(item)
        at, tt = _astigmatism(t)
        ve = ae * np.array([np.cos(np.deg2rad(2 * te)), np.sin(np.deg2rad(2 * te))])
        vt = at * np.array([np.cos(np.deg2rad(2 * tt)), np.sin(np.deg2rad(2 * tt))])
        mag.append(abs(ae) - abs(at))
        vec.append(float(np.linalg.norm(ve - vt)))
        # angles of the vectors (handles negative magnitudes), difference wrapped to [-90, 90)
        d = 0.5 * (np.degrees(np.arctan2(ve[1], ve[0]) - np.arctan2(vt[1], vt[0])))
        ang.append((d + 90.0) % 180.0 - 90.0)
        wts.append(at * at)
    if not mag:
        raise InvalidInput("no item to compare", "astigmatism_error")
    w = np.asarray(wts)
    angle = float(np.sqrt((w * np.square(ang)).sum() / w.sum())) if w.sum() > 0 else 0.0
    return {"magnitude_angstrom": float(np.sqrt(np.mean(np.square(mag)))),
            "vector_angstrom": float(np.sqrt(np.mean(np.square(vec)))),
            "angle_deg": angle, "n_items": len(mag)}


def beam_tilt_error_mrad(pop: Population, truth: Truth, *, kind: str | None = "frames") -> float:
    """RMS over items (default: frame series; ``kind="tilts"``, or None for all) of
    ``|τ_est − τ_true|`` (mrad), τ = ``imaging.beam_tilt_mrad``."""
    e = [float(np.linalg.norm(np.subtract(item.imaging.beam_tilt_mrad, t.imaging.beam_tilt_mrad)))
         for item, t in _item_pairs(pop, truth, kind)]
    if not e:
        raise InvalidInput("no item to compare", "beam_tilt_error_mrad")
    return float(np.sqrt(np.mean(np.square(e))))


def magnification_error(pop: Population, truth: Truth, *, kind: str | None = "frames") -> float:
    """RMS over items (default: frame series; None for all) of the Frobenius norm of
    ``M_est − M_true`` (a fraction; M = ``imaging.mag_matrix``, RELION's ``rlnMagMat``; an
    anisotropy a at any angle against the identity gives a √2)."""
    e = [float(np.linalg.norm(np.subtract(item.imaging.mag_matrix, t.imaging.mag_matrix)))
         for item, t in _item_pairs(pop, truth, kind)]
    if not e:
        raise InvalidInput("no item to compare", "magnification_error")
    return float(np.sqrt(np.mean(np.square(e))))


def doming_rmse(pop: Population, truth: Truth, species: str | Iterable[str] | None = None) -> float:
    """RMS (Å) over frame-series particles and frames of the doming defocus error: the item's
    ``GridCTFDoming`` (µm × 10⁴; a missing grid is 0) at the particle's first control point and
    ``t_f = f / (F − 1)``, estimated (the population's grid at its coordinates) minus true (the
    true grid at the true coordinates)."""
    errs = [(doming_offsets(item, np.asarray(est.coordinates, np.float64)[idx], item.n)
             - doming_offsets(it_true, np.asarray(tru.coordinates, np.float64)[idx], item.n)).reshape(-1)
            for item, it_true, est, tru, idx in _frame_particles(pop, truth, species)]
    e = np.concatenate(errs) if errs else np.zeros(0)
    if not len(e):
        raise InvalidInput("no frame-series particle to compare", "doming_rmse")
    return float(np.sqrt((e**2).mean()))


# ---------------------------------------------------------------------------- flexible domain
def domain_correlation(volume: np.ndarray, truth: Truth, species: str, *, against: str = "average") -> dict[str, float]:
    """Correlation (Pearson, over the voxels of each mask) of a map with the true map of a species
    with a flexible domain, inside its core mask and inside its flexible-domain mask
    (:class:`mrepo.sim.flexible.FlexibleTruth`). ``against``: ``"average"`` (the mean of the
    particles' conformations, ``truth.maps[species]``) or ``"rest"`` (the domain at rest).
    Returns ``{"core": r, "domain": r}``."""
    if species not in truth.flexible:
        raise InvalidInput("this species has no flexible domain in the simulation", species)
    fl = truth.flexible[species]
    ref = {"average": truth.maps[species], "rest": fl.rest_map}.get(against)
    if ref is None:
        raise InvalidInput("compare against 'average' or 'rest'", against)
    v = np.asarray(volume, np.float64)
    if v.shape != ref.shape:
        raise InvalidInput("map and true map differ in shape", f"{v.shape} vs {ref.shape}")
    out = {}
    for key, m in (("core", fl.core_mask), ("domain", fl.domain_mask)):
        out[key] = float(np.corrcoef(v[m], np.asarray(ref, np.float64)[m])[0, 1])
    return out
