"""RELION 3.1 CTF refinement (``relion_ctf_refine``) as the peer of mrepo's imaging-model refinement.

The particles of one species in a simulated population (:func:`mrepo.sim.simulate`) are
exported as the particles RELION's CTF refinement reads after 3D refinement and Bayesian
polishing: motion-corrected, dose-weighted particle stacks, a RELION 3.1 particles STAR file
with the **imported** CTF, the species' two half-maps, a mask and a postprocess STAR with
their FSC. ``relion_ctf_refine`` is run on them (per-particle defocus, per-micrograph
astigmatism, per-optics-group beam tilt and, on request, anisotropic magnification), its
output STAR is read back in mrepo's conventions, and the CTF before and after is compared
with the ground truth.

Files written by :func:`export_ctf_project` (paths relative to the project root, which is
RELION's working directory)::

    Particles/<item>.mrcs        polished particles of the species in that frame series (box², float32)
    particles.star               data_optics (one optics group per frame series) + data_particles
    Reference/half1.mrc, half2.mrc, mask.mrc, postprocess.star

What RELION sees (choices, and why):

* **Particles.** Each particle is cut from every frame around its position in that frame,
  moved by a sub-pixel Fourier shift so that it sits at the same place in all frames,
  multiplied by the frame's exposure filter ``w_f(k) = exp(−B e_f |k|² / 4)``
  (``B`` = 4 Å² per e⁻/Å², ``e_f`` the exposure at mid-frame), and the sum divided by
  ``Σ_f w_f``: the dose-weighted, motion-corrected particle as Bayesian polishing writes it
  (:func:`polished_particles`; ``normalise="squares"`` divides by ``Σ_f w_f²`` instead, as
  :mod:`mrepo.sim.relion` does, which restores ``CTF · projection`` but makes the noise grow
  with frequency; RELION's CTF fit on ``small`` came out the same either way). It is *not* the
  export of :mod:`mrepo.sim.relion_polish` (boxes cut from a micrograph aligned with the
  global drift only), which would leave the local motion in the particles.
* **Motion and poses** (``motion=``, ``poses=``): ``"true"`` (default) uses the true
  per-frame motion and the true particle positions and orientations, i.e. RELION gets the
  particles as after a perfect ``relion_refine`` and polishing and only the CTF is as
  imported; ``"imported"`` uses the repository's model (imported global drift, positions and
  orientations off by the simulator's starting errors), what ``mrepo refine`` starts from.
  RELION's CTF refinement refines none of them, so with imported poses its CTF fit is limited
  by the pose errors (on ``small`` the reference then reaches 10 Å and RELION's fit goes
  astray: defocus 195 → 345 Å RMS, beam tilts of 20 mrad); mrepo refines them jointly.
* **Scale and contrast.** Images keep the frames' units (counts above the frame's mean) with
  RELION's sign (white protein, ``CTF = +Q0`` at k = 0), not normalised; the reference is
  reconstructed from them (see below), so it has their scale and exposure envelope.
  ``relion_ctf_refine`` compares the image with ``CTF · projection`` by least squares; its
  default fit mode (``fpmfm``) fits a B-factor and a scale per micrograph, which absorbs what
  remains of the scale (reported as ``relion_ctf_scale``; about 1).
* **CTF** (imported model): ``rlnDefocusU/V = defocus ± astigmatism + z`` of the item at the
  particle (:func:`mrepo.model.defocus_at` at its position and mid-exposure where available,
  i.e. the item's imaging model unless it has CTF grids), ``rlnDefocusAngle`` = the item's
  astigmatism angle (mrepo's angle of U from x: RELION's ``rlnDefocusAngle``,
  :mod:`mrepo.refine.ctf`). ``rlnBeamTiltX/Y`` = the item's imported beam tilt (0 as
  imported), ``rlnMagMat..`` = its magnification matrix when not the identity.
* **Optics groups.** RELION estimates beam tilt and magnification per optics group, and the
  simulator draws them per frame series, so every frame series is its own optics group
  (``rlnOpticsGroupName`` = the item's name). RELION groups particles by
  ``rlnMicrographName`` (= ``Micrographs/<item>.mrc``; no micrograph file is needed) for
  the per-micrograph astigmatism.
* **Reference** (``reference=``): by default (``"reconstruct"``) the two half-maps are
  reconstructed from the exported particles with their imported CTF by ``relion_reconstruct
  --ctf --sym <symmetry>`` per half set: the reference ``relion_refine`` would hand to CTF
  refinement at these poses. ``"repository"`` takes the species' half-maps in the repository
  instead, reconstructed by the simulator with the imported model (its pose and drift errors
  included): on ``tiny`` and ``small`` they reach only 10–15 Å, and at that resolution RELION's
  fit goes astray (defocus errors of 400–550 Å, beam tilts of 10–40 mrad on noiseless data),
  so they are no fair reference. The mask is a soft sphere of the species' diameter; the
  postprocess STAR's ``Corrected`` FSC is the masked FSC of the half-maps (as
  :mod:`mrepo.sim.relion_polish` writes it). RELION weights frequencies by that FSC, so the
  reference resolution bounds what it can fit.

RELION is driven as in its 3.1 tutorial, one ``relion_ctf_refine`` call per pass, each pass
reading the previous one's ``particles_ctf_refine.star`` (:data:`DEFAULT_PASSES`:
anisotropic magnification first, then per-particle defocus with per-micrograph astigmatism
(``--fit_mode fpmfm``, RELION's default: B-factor and scale per micrograph too), then beam tilt).
Without the magnification pass, RELION puts a magnification anisotropy a into the astigmatism
(about 2·a·defocus: 300 Å for 1 % at 1.5 µm). One call fitting defocus and beam tilt together
predicts both from the input STAR (the beam tilt then sees the imported defocus); on the
simulations tried it gave the same figures as two calls. Fitting without the per-micrograph
scale (``fpmff``) biased the defocus by −20 Å (the images are not normalised); RELION 3.0's
brute-force search (``--bf0``) changed little; ``--ctf_pad`` nothing.

Conventions checked by running RELION 3.1.3 on noiseless ``tiny``-derived simulations
(tests/sim/test_relion_ctf.py), reading RELION's values as mrepo's (``rlnBeamTiltX/Y`` =
``beam_tilt_mrad``, ``rlnDefocusAngle`` = ``astigmatism_angle_deg``, ``rlnMagMat`` =
``mag_matrix``):

* beam tilt (true 0.28, −0.78 and 0.96, −2.32 mrad; exported as 0): RELION finds 0.16, −0.71
  and 0.94, −2.32 (error 0.10 mrad RMS; read with the opposite sign it would be 3.7 mrad);
* astigmatism angle (true 10.2° and 137.6°, exported 4.7° and 136.5°): RELION moves it to
  9.3° and 138.4° (a mirrored angle convention would put them at 19° and 84° from the truth);
* per-particle defocus: 161 → 28 Å RMS (bias 3 Å) on 23 particles at 3 Å/px;
* magnification (true ``diag(0.990, 1.010)``-like per movie, 1 % anisotropy): RELION's matrix
  has the same axes and sign at 70 % of the amplitude (Frobenius error 0.014 → 0.004).

Errors against the truth (:func:`ctf_errors`) follow :mod:`mrepo.sim.metrics`: defocus per
particle as :func:`~mrepo.sim.metrics.defocus_rmse` (the mean of U and V against the true item
defocus plus the true z; astigmatism and doming excluded), astigmatism, beam tilt and
magnification per frame series, RMS over the frame series.

Everything returns plain numbers and arrays; a failure raises one line
(:class:`~mrepo.errors.MrepoError`) with the end of RELION's output.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DegenerateResult, InvalidInput, MrepoError
from ..io.mrc import write_mrc
from ..io.star import read_star
from ..refine.ctf import electron_wavelength_angstrom
from ..refine.dose import B_PER_EXPOSURE_A2
from ..refine.fsc import fsc, resolution_at
from ..repository import open_repo
from ..store.arrays import array_info, open_view_array
from .geometry import frame_positions, interp_trajectory, item_motion_grids, normalised_xy
from .reconstruct import sphere_mask
from .relion_polish import _need, _run, _tail, _write_star, half_map_fsc, reconstruct_halves, species_rows
from .truth import Truth, load_truth

__all__ = [
    "CtfValues",
    "CtfProject",
    "CtfRefineResult",
    "DEFAULT_PASSES",
    "PASS_FLAGS",
    "polished_particles",
    "export_ctf_project",
    "run_ctf_refine",
    "read_ctf_star",
    "true_ctf",
    "ctf_errors",
    "compare_ctf_with_relion",
]

#: One relion_ctf_refine call per pass, in this order: anisotropic magnification (first, as in the
#: RELION 3.1 tutorial), per-particle defocus with per-micrograph astigmatism, then beam tilt.
DEFAULT_PASSES: tuple[tuple[str, ...], ...] = (("aniso",), ("defocus",), ("beamtilt",))
#: What each pass name switches on.
PASS_FLAGS = {"defocus": "--fit_defocus", "beamtilt": "--fit_beamtilt", "aniso": "--fit_aniso"}
MODELS = ("true", "imported")
REFERENCES = ("reconstruct", "repository")
_IDENTITY = np.eye(2)


# ---------------------------------------------------------------------------- values
@dataclass
class CtfValues:
    """Per-particle CTF and per-optics-group optics, in mrepo's conventions (RELION's units).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom: (N,) ``rlnDefocusU/V`` (Å, positive = underfocus).
    defocus_angle_deg: (N,) ``rlnDefocusAngle``: angle of U from x towards y (degrees).
    beam_tilt_mrad: (G, 2) beam tilt (τx, τy) of each optics group (mrad): ``rlnBeamTiltX/Y``
        plus the coma held in ``rlnOddZernike`` (Z₃^±1), mrepo's ``beam_tilt_mrad``.
    mag_matrix: (G, 2, 2) ``rlnMagMat00..11`` of each group (identity when absent).
    bfactor_a2, scale: (N,) ``rlnCtfBfactor`` (Å²), ``rlnCtfScalefactor``.
    """

    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    beam_tilt_mrad: np.ndarray
    mag_matrix: np.ndarray
    bfactor_a2: np.ndarray
    scale: np.ndarray

    def __len__(self) -> int:
        return int(len(self.defocus_u_angstrom))

    @property
    def defocus_angstrom(self) -> np.ndarray:
        """(N,) mean defocus ``(U + V) / 2`` (Å): mrepo's item defocus plus the particle's z."""
        return 0.5 * (np.asarray(self.defocus_u_angstrom) + np.asarray(self.defocus_v_angstrom))

    @property
    def astigmatism_angstrom(self) -> np.ndarray:
        """(N,) ``(U − V) / 2`` (Å), mrepo's ``astigmatism_angstrom`` (its sign goes with the angle)."""
        return 0.5 * (np.asarray(self.defocus_u_angstrom) - np.asarray(self.defocus_v_angstrom))

    def astigmatism_vector(self) -> np.ndarray:
        """(N, 2) astigmatism as the vector ``(a cos 2θ, a sin 2θ)`` (Å): the same for (a, θ) and
        (−a, θ + 90°), so it compares whichever of U and V RELION calls U."""
        a = self.astigmatism_angstrom
        t = np.deg2rad(2.0 * np.asarray(self.defocus_angle_deg, np.float64))
        return np.stack([a * np.cos(t), a * np.sin(t)], 1)


@dataclass
class CtfProject:
    """A RELION 3.1 project ready for ``relion_ctf_refine`` (see the module docstring).

    Attributes
    ----------
    root: project folder (RELION's working directory); other paths are relative to it.
    sim_dir, rev, species: what was exported.
    particles_star, postprocess_star, half_maps, mask: files.
    items, digests: (G,) frame series in optics-group order (group g + 1 is ``items[g]``).
    rows: (N,) species rows of the particles, in STAR order.
    group: (N,) 0-based optics group (index into ``items``) of each particle.
    image_names: (N,) ``rlnImageName`` (unique; how RELION's output is matched back).
    imported: the exported (imported) CTF, :class:`CtfValues`.
    angles_deg: (N, 3) exported orientations; origins_angstrom: (N, 2) ``rlnOriginX/YAngst``.
    pixel_size_angstrom, box, voltage_kv, cs_mm, amplitude_contrast, diameter_angstrom, symmetry.
    motion, poses: ``"true"`` or ``"imported"`` (what the particles were extracted with).
    reference: ``"reconstruct"`` or ``"repository"`` (where the half-maps come from).
    reference_resolution_angstrom: masked FSC 0.143 of the half-maps (Å), None if degenerate.
    reconstruct_wall_s: wall time of ``relion_reconstruct`` (both halves; 0 without it).
    notes: what was approximated.
    """

    root: Path
    sim_dir: Path
    rev: str
    species: str
    particles_star: Path
    postprocess_star: Path
    half_maps: tuple[Path, Path]
    mask: Path
    items: list[str]
    digests: list[str]
    rows: np.ndarray
    group: np.ndarray
    image_names: np.ndarray
    imported: CtfValues
    angles_deg: np.ndarray
    origins_angstrom: np.ndarray
    pixel_size_angstrom: float
    box: int
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    diameter_angstrom: float
    symmetry: str
    motion: str
    poses: str
    reference: str = "repository"
    reference_resolution_angstrom: float | None = None
    reconstruct_wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.rows))


@dataclass
class CtfRefineResult:
    """What ``relion_ctf_refine`` produced, in mrepo's conventions and the project's STAR order.

    Attributes
    ----------
    project: the exported project.
    values: RELION's CTF after the last pass (:class:`CtfValues`, N particles, G groups).
    passes: the passes run (tuples of pass names).
    out_dirs: RELION's output folder of each pass (absolute).
    star: the last pass's ``particles_ctf_refine.star``.
    commands: the command line of each pass.
    wall_s: wall time of all passes (s); pass_wall_s: of each pass.
    log: RELION's output (end of each pass).
    """

    project: CtfProject
    values: CtfValues
    passes: list[tuple[str, ...]]
    out_dirs: list[Path]
    star: Path
    commands: list[list[str]]
    wall_s: float
    pass_wall_s: list[float]
    log: str = ""


# ---------------------------------------------------------------------------- particles
def polished_particles(frames, positions_angstrom: np.ndarray, exposure_mid: np.ndarray, pixel_size_angstrom: float,
                       box: int, *, b_per_exposure: float = B_PER_EXPOSURE_A2, normalise: str = "sum",
                       reference_frame: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Motion-corrected, dose-weighted particle images from a frame series.

    Parameters
    ----------
    frames: (F, H, W) frames (any array-like indexable by frame; a zarr array is read frame by frame).
    positions_angstrom: (N, F, 2) position (x, y) of each particle in each frame (Å from the
        centre of pixel (0, 0)).
    exposure_mid: (F,) accumulated exposure at mid-frame (e⁻/Å²).
    box: particle box (px).
    b_per_exposure: exposure B-factor per e⁻/Å² (Å²) of the frame weights.
    normalise: ``"sum"`` divides the weighted sum by ``Σ_f w_f`` (RELION's polished particles: the
        signal is ``E(k) · CTF · projection`` with ``E = Σ w_f² / Σ w_f``, the noise nearly white);
        ``"squares"`` by ``Σ_f w_f²`` (:mod:`mrepo.sim.relion`: the signal is ``CTF · projection``,
        the noise grows with frequency as ``1 / Σ w_f²``).
    reference_frame: frame whose sub-pixel position the particles keep (default the middle one, F // 2).

    Returns
    -------
    images: (N, box, box) float32, ``Σ_f w_f · shift_f(box_f) / Σ_f w_f`` (or ``w_f²``; Fourier space),
        each frame's box cut around the nearest pixel (frame mean subtracted, zero outside the frame).
    centres: (N, 2) int64 pixel (x, y) of the box centre (pixel ``box // 2``) in the reference frame.
    offsets_px: (N, 2) where the particle sits from the box centre (px, in [−0.5, 0.5]).
    """
    if normalise not in ("sum", "squares"):
        raise InvalidInput("normalise must be 'sum' or 'squares'", normalise)
    pos = np.asarray(positions_angstrom, np.float64) / float(pixel_size_angstrom)
    n, f = pos.shape[:2]
    if pos.ndim != 3 or pos.shape[2] != 2:
        raise InvalidInput(f"positions must be (N, F, 2), got {pos.shape}", "positions")
    if int(frames.shape[0]) != f or len(exposure_mid) != f:
        raise InvalidInput(f"{int(frames.shape[0])} frames and {len(exposure_mid)} exposures for {f} positions",
                           "frames")
    h, w = int(frames.shape[1]), int(frames.shape[2])
    ref = f // 2 if reference_frame is None else int(reference_frame)
    centres = np.rint(pos[:, ref]).astype(np.int64)
    target = pos[:, ref] - centres
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    k2 = (fx**2 + fy**2) / float(pixel_size_angstrom) ** 2
    acc = np.zeros((n, box, box // 2 + 1), np.complex128)
    wsum = np.zeros((box, box // 2 + 1))
    off = np.arange(box) - box // 2
    for i in range(f):
        frame = np.asarray(frames[i], np.float32)
        padded = np.zeros((h + 2 * box, w + 2 * box), np.float32)
        padded[box:box + h, box:box + w] = frame - np.float32(frame.mean())
        c = np.rint(pos[:, i]).astype(np.int64)
        frac = pos[:, i] - c
        ys = np.clip(c[:, 1, None] + off[None] + box, 0, h + 2 * box - 1)
        xs = np.clip(c[:, 0, None] + off[None] + box, 0, w + 2 * box - 1)
        boxes = padded[ys[:, :, None], xs[:, None, :]]
        d = target - frac  # move each particle by d px
        phase = np.exp(-2j * math.pi * (fx[None] * d[:, 0, None, None] + fy[None] * d[:, 1, None, None]))
        wt = np.exp(-b_per_exposure * float(exposure_mid[i]) * k2 / 4.0)
        acc += np.fft.rfft2(boxes.astype(np.float64)) * phase * wt
        wsum += wt if normalise == "sum" else wt * wt
    images = np.fft.irfft2(acc / np.maximum(wsum, 1e-12), s=(box, box)).astype(np.float32)
    return images, centres, target


def _defocus_of(item, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imported defocus U, V (Å, with the particles' z) and angle (deg) of particles (N, T, 3) in an item."""
    z = np.asarray(coords, np.float64)[:, 0, 2]
    try:
        from ..model import defocus_at  # CTF grids (GridCTF, doming) where the model has them
    except ImportError:  # pragma: no cover - older model package
        defocus_at = None
    im = item.imaging
    if defocus_at is not None:
        x, y = normalised_xy(np.asarray(coords, np.float64)[:, 0, :2], item.shape, im.pixel_size_angstrom)
        du, dv, ang = (np.asarray(a, np.float64) for a in defocus_at(item, x, y, np.full(len(z), 0.5)))
    else:
        du = np.full(len(z), im.defocus_u_angstrom)
        dv = np.full(len(z), im.defocus_v_angstrom)
        ang = np.full(len(z), im.astigmatism_angle_deg)
    return du + z, dv + z, ang


def _mid_angles(angles: np.ndarray) -> np.ndarray:
    a = np.asarray(angles, np.float64)
    return a[:, 0] if a.shape[1] == 1 else interp_trajectory(a, 3)[:, 1]


def _reference(root: Path, maps: list[np.ndarray], px: float, diameter: float, species: str, notes: list[str]
               ) -> tuple[Path, Path, Path, Path, float | None]:
    """Write the half-maps, a soft-sphere mask and a postprocess STAR (masked FSC) under Reference/."""
    box = maps[0].shape[0]
    h1p, h2p, maskp = Path("Reference/half1.mrc"), Path("Reference/half2.mrc"), Path("Reference/mask.mrc")
    write_mrc(root / h1p, maps[0], px, label=f"mrepo {species} half1")
    write_mrc(root / h2p, maps[1], px, label=f"mrepo {species} half2")
    mask = sphere_mask(box, px, diameter)
    write_mrc(root / maskp, mask, px, label=f"soft sphere {diameter:g} A")
    fm = fsc(maps[0], maps[1], px, mask=mask)
    fu = fsc(maps[0], maps[1], px)
    _, res = half_map_fsc(maps[0], maps[1], px, diameter)
    if res is None:
        notes.append("reference half-maps: FSC below 0.143 at the first shell")
    freqs = fm.freqs_per_angstrom
    ang = np.where(freqs > 0, 1.0 / np.where(freqs > 0, freqs, 1.0), 999.0)
    try:
        res_mask = float(resolution_at(fm, 0.143))
    except DegenerateResult:
        res_mask = 2 * px
    post = Path("Reference/postprocess.star")
    _write_star(root / post, [
        ("general", {"rlnFinalResolution": res_mask, "rlnUnfilteredMapHalf1": str(h1p),
                     "rlnUnfilteredMapHalf2": str(h2p), "rlnMaskName": str(maskp)}, False),
        ("fsc", {"rlnSpectralIndex": np.arange(len(freqs), dtype=np.int64), "rlnResolution": freqs,
                 "rlnAngstromResolution": ang, "rlnFourierShellCorrelationCorrected": fm.fsc,
                 "rlnFourierShellCorrelationUnmaskedMaps": fu.fsc,
                 "rlnFourierShellCorrelationMaskedMaps": fm.fsc}, True)],
        "mrepo FSC of the species half-maps (masked; no phase-randomisation correction)")
    return h1p, h2p, maskp, post, res


# ---------------------------------------------------------------------------- export
def export_ctf_project(sim_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, species: str,
                       rev: str = "HEAD", motion: str = "true", poses: str = "true", reference: str = "reconstruct",
                       b_per_exposure: float = B_PER_EXPOSURE_A2, normalise: str = "sum", truth: Truth | None = None,
                       timeout: float = 3600.0) -> CtfProject:
    """Export the frame-series particles of ``species`` as a RELION 3.1 CTF-refinement project.

    Parameters
    ----------
    sim_dir: a ``mrepo sim`` folder (repository and ``truth/``).
    out_dir: the project folder (created).
    motion, poses: ``"true"`` (the simulation's truth) or ``"imported"`` (the repository's model at
        ``rev``): the per-frame motion, and the particle positions and orientations, the particles
        are extracted with (see the module docstring). The CTF is always the repository's.
    reference: the half-maps RELION compares the particles with: ``"reconstruct"`` (default)
        reconstructs them from the exported particles and their imported CTF with
        ``relion_reconstruct --ctf --sym <symmetry>`` per half set (what ``relion_refine`` would
        give at these poses); ``"repository"`` takes the species' half-maps in the repository
        (reconstructed by the simulator with the imported model, poses and motion included).
    b_per_exposure: exposure B-factor per e⁻/Å² of the frame weights (Å²).
    normalise: how the weighted frames are normalised (:func:`polished_particles`).
    truth: the loaded truth (read from ``sim_dir`` when needed and not given).

    Raises
    ------
    InvalidInput: unknown species or model, no frame-series particle, frame series with different
        voltage, Cs, amplitude contrast or pixel size, half-maps missing or of another box.
    NotFound: ``relion_reconstruct`` not on PATH (``reference="reconstruct"``).
    MrepoError: ``relion_reconstruct`` failed.
    """
    if motion not in MODELS or poses not in MODELS:
        raise InvalidInput(f"motion and poses must be one of {MODELS}", f"{motion}, {poses}")
    if reference not in REFERENCES:
        raise InvalidInput(f"reference must be one of {REFERENCES}", reference)
    sim_dir = Path(sim_dir)
    root = Path(out_dir).resolve()
    rows = species_rows(sim_dir, rev, species)
    pop, view, parts, coords, angles, half, px, box = (rows.pop, rows.view, rows.parts, rows.coords, rows.angles,
                                                       rows.half, rows.px, rows.box)
    sp = pop.species[species]
    if truth is None and "true" in (motion, poses):
        truth = load_truth(sim_dir)
    if poses == "true":
        tp = truth.particles.get(species)
        if tp is None or len(tp) != len(parts):
            raise InvalidInput("the truth's particles do not match the population's row for row", species)
        pose_coords = np.asarray(tp.coordinates, np.float64)
        pose_angles = np.asarray(tp.angles, np.float64)
    else:
        pose_coords, pose_angles = coords, angles

    chosen = []
    for _src, it in pop.items():
        if it.kind != "frames":
            continue
        idx = np.sort(parts.in_item(it.data_digest))
        if len(idx):
            chosen.append((it, idx))
    if not chosen:
        raise InvalidInput("the species has no particle in any frame series", species)
    chosen.sort(key=lambda c: c[0].name)
    names = [it.name for it, _ in chosen]
    if len(set(names)) != len(names):
        raise InvalidInput("frame series of different sources share a name; RELION needs unique names", species)
    im0 = chosen[0][0].imaging
    notes: list[str] = []
    for it, _ in chosen:
        im = it.imaging
        if abs(im.pixel_size_angstrom - px) > 1e-6:
            raise InvalidInput("the frames' pixel size differs from the species' (no rescaling here)", it.name)
        if (im.voltage_kv, im.cs_mm, im.amplitude_contrast) != (im0.voltage_kv, im0.cs_mm, im0.amplitude_contrast):
            raise InvalidInput("frame series with different voltage, Cs or amplitude contrast", it.name)
        if im.odd_zernike or im.even_zernike or im.phase_shift_deg:
            notes.append(f"{it.name}: Zernike terms and phase shift of the imported model are not exported")

    (root / "Particles").mkdir(parents=True, exist_ok=True)
    (root / "Reference").mkdir(parents=True, exist_ok=True)
    cols: dict[str, list] = {k: [] for k in ("cx", "cy", "ox", "oy", "ang", "du", "dv", "da", "half", "img", "mic",
                                             "group", "rows")}
    for g, (it, idx) in enumerate(chosen):
        f = it.n
        grids = truth.item_by_digest(it.data_digest).motion if motion == "true" else item_motion_grids(it)
        pos = frame_positions(pose_coords[idx], f, it.shape, px, grids)
        raw = open_view_array(view, it.raw_array)
        imgs, centres, target = polished_particles(raw, pos, it.exposure_mid, px, box, b_per_exposure=b_per_exposure,
                                                   normalise=normalise)
        if not np.isfinite(imgs).all():
            raise DegenerateResult("non-finite particle images", it.name)
        stack = Path("Particles") / f"{it.name}.mrcs"
        write_mrc(root / stack, imgs, px, stack=True, label=f"mrepo {species} in {it.name}, polished ({motion} motion)")
        du, dv, da = _defocus_of(it, coords[idx])
        n = len(idx)
        cols["cx"].append(centres[:, 0])
        cols["cy"].append(centres[:, 1])
        cols["ox"].append(-target[:, 0] * px)  # RELION: the particle sits at −origin from the box centre
        cols["oy"].append(-target[:, 1] * px)
        cols["ang"].append(_mid_angles(pose_angles[idx]))
        cols["du"].append(du)
        cols["dv"].append(dv)
        cols["da"].append(da)
        cols["half"].append(half[idx])
        cols["img"] += [f"{i + 1:06d}@{stack}" for i in range(n)]
        cols["mic"] += [f"Micrographs/{it.name}.mrc"] * n
        cols["group"].append(np.full(n, g, np.int64))
        cols["rows"].append(idx)
    cat = {k: (np.concatenate(v) if k not in ("img", "mic") else np.asarray(v, dtype=object)) for k, v in cols.items()}
    if not np.isin(cat["half"], (1, 2)).all():
        raise InvalidInput("every particle needs a half set (1 or 2)", species)
    n = len(cat["rows"])
    ng = len(chosen)
    beam_tilt = np.array([it.imaging.beam_tilt_mrad for it, _ in chosen], np.float64).reshape(ng, 2)
    mags = np.array([it.imaging.mag_matrix for it, _ in chosen], np.float64).reshape(ng, 2, 2)

    optics: dict[str, Any] = {
        "rlnOpticsGroup": np.arange(1, ng + 1, dtype=np.int64),
        "rlnOpticsGroupName": np.array(names, dtype=object),
        "rlnAmplitudeContrast": np.full(ng, im0.amplitude_contrast),
        "rlnSphericalAberration": np.full(ng, im0.cs_mm),
        "rlnVoltage": np.full(ng, im0.voltage_kv),
        "rlnImagePixelSize": np.full(ng, px),
        "rlnMicrographOriginalPixelSize": np.full(ng, px),
        "rlnImageSize": np.full(ng, box, np.int64),
        "rlnImageDimensionality": np.full(ng, 2, np.int64),
        "rlnCtfDataAreCtfPremultiplied": np.zeros(ng, np.int64),
        "rlnBeamTiltX": beam_tilt[:, 0],
        "rlnBeamTiltY": beam_tilt[:, 1],
    }
    if not np.allclose(mags, _IDENTITY):
        for i in range(2):
            for j in range(2):
                optics[f"rlnMagMat{i}{j}"] = mags[:, i, j]
    particles = {
        "rlnCoordinateX": cat["cx"].astype(np.float64), "rlnCoordinateY": cat["cy"].astype(np.float64),
        "rlnImageName": cat["img"], "rlnMicrographName": cat["mic"],
        "rlnOpticsGroup": cat["group"] + 1,
        "rlnAngleRot": cat["ang"][:, 0], "rlnAngleTilt": cat["ang"][:, 1], "rlnAnglePsi": cat["ang"][:, 2],
        "rlnOriginXAngst": cat["ox"], "rlnOriginYAngst": cat["oy"],
        "rlnDefocusU": cat["du"], "rlnDefocusV": cat["dv"], "rlnDefocusAngle": cat["da"],
        "rlnPhaseShift": np.zeros(n), "rlnCtfBfactor": np.zeros(n), "rlnCtfScalefactor": np.ones(n),
        "rlnRandomSubset": cat["half"].astype(np.int64),
    }
    pstar = root / "particles.star"
    _write_star(pstar, [("optics", optics, True), ("particles", particles, True)],
                f"mrepo {species}: polished particles with the imported CTF (RELION 3.1)")

    wall_rec = 0.0
    if reference == "reconstruct":
        a, b, wall_rec = reconstruct_halves(pstar, root / "Reference" / "relion", symmetry=sp.symmetry, cwd=root,
                                            timeout=timeout)
        maps = [a, b]
    else:
        maps = []
        for role in ("half1", "half2"):
            if role not in sp.maps:
                raise InvalidInput(f"the species has no {role} map", species)
            name = sp.maps[role]
            vs = (array_info(view, name).attributes.get("voxel_size") or [px] * 3)[0] or px
            if abs(float(vs) - px) > 1e-4:
                raise InvalidInput(f"the {role} map's voxel size ({vs} Å) is not the species' pixel size", species)
            maps.append(np.asarray(open_view_array(view, name)[...], np.float32))
    if maps[0].shape != (box, box, box) or maps[1].shape != (box, box, box):
        raise InvalidInput(f"half-maps of shape {maps[0].shape}, expected the species box {box}³", species)
    h1p, h2p, maskp, post, res = _reference(root, maps, px, float(sp.diameter_angstrom), species, notes)
    notes.append("postprocess FSC 'Corrected' is the masked FSC (no phase-randomised correction)")
    ref_text = "relion_reconstruct of these particles" if reference == "reconstruct" else "the repository half-maps"
    notes.append(f"particles with the {motion} motion and {poses} poses; CTF as imported; reference: {ref_text}")

    imported = CtfValues(cat["du"], cat["dv"], cat["da"], beam_tilt, mags, np.zeros(n), np.ones(n))
    return CtfProject(
        root=root, sim_dir=sim_dir.resolve(), rev=rev, species=species, particles_star=Path(pstar.name),
        postprocess_star=post, half_maps=(h1p, h2p), mask=maskp, items=names,
        digests=[it.data_digest for it, _ in chosen], rows=cat["rows"].astype(np.int64), group=cat["group"],
        image_names=cat["img"], imported=imported, angles_deg=cat["ang"],
        origins_angstrom=np.stack([cat["ox"], cat["oy"]], 1), pixel_size_angstrom=px, box=box,
        voltage_kv=float(im0.voltage_kv), cs_mm=float(im0.cs_mm), amplitude_contrast=float(im0.amplitude_contrast),
        diameter_angstrom=float(sp.diameter_angstrom), symmetry=sp.symmetry, motion=motion, poses=poses,
        reference=reference, reference_resolution_angstrom=res, reconstruct_wall_s=wall_rec, notes=notes,
    )


# ---------------------------------------------------------------------------- reading RELION's output
def _coma_from_zernike(odd: Sequence[float], voltage_kv: float, cs_mm: float) -> np.ndarray:
    """(τx, τy) mrad of the coma in RELION's odd Zernike coefficients (rad; index 3 = Z₃⁻¹, 4 = Z₃¹).

    RELION's beam tilt adds ``−2π·10⁻³ Cs λ² |k|² (k·τ)`` to the odd phase, i.e. ``c Z₃^±1``
    with ``c = −2π·10⁻³ Cs λ² τ / 3`` (plus a Z₁ term, a shift)."""
    c = np.zeros(5)
    odd = [float(v) for v in odd][:5]
    c[:len(odd)] = odd
    lam = electron_wavelength_angstrom(voltage_kv)
    k = -2e-3 * math.pi * cs_mm * 1e7 * lam * lam / 3.0
    return np.array([c[4] / k, c[3] / k])


def _parse_list(v: Any) -> list[float]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [float(x) for x in v]
    s = str(v).strip().strip("[]")
    return [float(x) for x in s.split(",") if x.strip()] if s else []


def read_ctf_star(path: str | os.PathLike[str], project: CtfProject) -> CtfValues:
    """RELION's CTF for the project's particles (:class:`CtfValues`, in the project's STAR order)
    from a RELION 3.1 particles STAR (``particles_ctf_refine.star``).

    Particles are matched by ``rlnImageName``; optics groups by ``rlnOpticsGroup`` (group g + 1 is
    ``project.items[g]``). Raises :class:`~mrepo.errors.MrepoError` when a particle or group is missing.
    """
    star = read_star(path)
    df = star.blocks.get("particles")
    opt = star.blocks.get("optics")
    if df is None or opt is None or not hasattr(df, "columns") or not hasattr(opt, "columns"):
        raise MrepoError("RELION's STAR has no data_particles or data_optics table", str(path))
    need = {"rlnImageName", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"}
    if not need <= set(df.columns):
        raise MrepoError(f"RELION's particles lack {sorted(need - set(df.columns))[0]}", str(path))
    where = {str(name): i for i, name in enumerate(df["rlnImageName"].astype(str))}
    order = np.array([where.get(str(name), -1) for name in project.image_names], np.int64)
    if (order < 0).any():
        missing = int((order < 0).sum())
        raise MrepoError(f"{missing} of {len(project)} particles missing from RELION's output", str(path))
    df = df.iloc[order].reset_index(drop=True)

    def col(frame, label, default):
        return frame[label].to_numpy(np.float64) if label in frame.columns else np.full(len(frame), float(default))

    ng = len(project.items)
    tilt = np.zeros((ng, 2))
    mag = np.tile(_IDENTITY, (ng, 1, 1))
    numbers = opt["rlnOpticsGroup"].to_numpy(np.int64)
    for g in range(ng):
        hit = np.nonzero(numbers == g + 1)[0]
        if not len(hit):
            raise MrepoError(f"optics group {g + 1} ({project.items[g]}) missing from RELION's output", str(path))
        row = opt.iloc[int(hit[0])]
        tilt[g] = [float(row.get("rlnBeamTiltX", 0.0)), float(row.get("rlnBeamTiltY", 0.0))]
        if "rlnOddZernike" in opt.columns:
            tilt[g] += _coma_from_zernike(_parse_list(row["rlnOddZernike"]), project.voltage_kv, project.cs_mm)
        if "rlnMagMat00" in opt.columns:
            mag[g] = [[float(row["rlnMagMat00"]), float(row["rlnMagMat01"])],
                      [float(row["rlnMagMat10"]), float(row["rlnMagMat11"])]]
    groups = df["rlnOpticsGroup"].to_numpy(np.int64) - 1
    if not np.array_equal(groups, project.group):
        raise MrepoError("RELION moved particles to other optics groups", str(path))
    return CtfValues(col(df, "rlnDefocusU", np.nan), col(df, "rlnDefocusV", np.nan), col(df, "rlnDefocusAngle", 0.0),
                     tilt, mag, col(df, "rlnCtfBfactor", 0.0), col(df, "rlnCtfScalefactor", 1.0))


# ---------------------------------------------------------------------------- running RELION
def run_ctf_refine(project: CtfProject, out_dir: str | os.PathLike[str], *,
                   passes: Sequence[Sequence[str]] = DEFAULT_PASSES, threads: int = 2, fit_mode: str = "fpmfm",
                   kmin_defocus_angstrom: float = 30.0, kmin_tilt_angstrom: float = 20.0,
                   kmin_mag_angstrom: float = 20.0, brute_force: bool = False, timeout: float = 3600.0,
                   extra_args: Sequence[str] = ()) -> CtfRefineResult:
    """Run ``relion_ctf_refine`` on an exported project, one call per pass, and read its CTF back.

    Parameters
    ----------
    out_dir: folder for RELION's outputs (one subfolder per pass, ``<k>_<names>/``).
    passes: each a tuple of pass names run in one call (``"defocus"``, ``"beamtilt"``, ``"aniso"``),
        pass k + 1 reading pass k's ``particles_ctf_refine.star``.
    threads: ``--j``.
    fit_mode: ``--fit_mode`` of the defocus pass: 5 letters for phase shift, defocus,
        astigmatism, Cs and B-factor/scale, each ``p`` (per particle), ``m`` (per micrograph) or
        ``f`` (fixed). RELION's default ``fpmfm``: per-particle defocus, per-micrograph
        astigmatism and B-factor/scale.
    kmin_defocus_angstrom, kmin_tilt_angstrom, kmin_mag_angstrom: lowest resolution used (Å;
        RELION's defaults).
    brute_force: ``--bf0``, RELION 3.0's per-particle brute-force defocus scan (±1000 Å) before
        the local fit.
    extra_args: more options, added to every call.

    Returns
    -------
    :class:`CtfRefineResult` with RELION's CTF after the last pass (mrepo's conventions).
    """
    exe = _need("relion_ctf_refine")
    passes = [tuple(p) for p in passes]
    if not passes or any(not p for p in passes):
        raise InvalidInput("give at least one pass, each naming what to fit", str(passes))
    for p in passes:
        for name in p:
            if name not in PASS_FLAGS:
                raise InvalidInput(f"unknown pass {name!r}: use {sorted(PASS_FLAGS)}", str(p))
    if len(fit_mode) != 5 or any(ch not in "pmf" for ch in fit_mode):
        raise InvalidInput("fit_mode is 5 letters of p, m and f", fit_mode)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    h1, h2 = project.half_maps
    star_in = project.root / project.particles_star
    commands, walls, dirs, logs = [], [], [], []
    for k, p in enumerate(passes):
        d = out / f"{k}_{'_'.join(p)}"
        d.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "--i", str(star_in), "--f", str(project.postprocess_star), "--o", str(d) + os.sep,
               "--m1", str(h1), "--m2", str(h2), "--mask", str(project.mask),
               "--angpix_ref", f"{project.pixel_size_angstrom:g}", "--j", str(int(threads))]
        if "defocus" in p:
            cmd += ["--fit_defocus", "--fit_mode", fit_mode, "--kmin_defocus", f"{kmin_defocus_angstrom:g}"]
            if brute_force:
                cmd.append("--bf0")
        if "beamtilt" in p:
            cmd += ["--fit_beamtilt", "--kmin_tilt", f"{kmin_tilt_angstrom:g}"]
        if "aniso" in p:
            cmd += ["--fit_aniso", "--kmin_mag", f"{kmin_mag_angstrom:g}"]
        cmd += [str(a) for a in extra_args]
        wall, log = _run(cmd, project.root, timeout, f"relion_ctf_refine ({'+'.join(p)})")
        star_out = d / "particles_ctf_refine.star"
        if not star_out.exists():
            raise MrepoError(f"relion_ctf_refine wrote no particles_ctf_refine.star: {_tail(log)}", str(d))
        commands.append(cmd)
        walls.append(wall)
        dirs.append(d)
        logs.append(f"== {'+'.join(p)}: " + " | ".join(ln.strip() for ln in log.splitlines()[-8:] if ln.strip()))
        star_in = star_out
    values = read_ctf_star(star_in, project)
    if not np.isfinite(values.defocus_u_angstrom).all() or not np.isfinite(values.defocus_v_angstrom).all():
        raise DegenerateResult("RELION's defocus holds non-finite values", str(star_in))
    return CtfRefineResult(project, values, passes, dirs, star_in, commands, float(sum(walls)), walls,
                           "\n".join(logs)[-8000:])


# ---------------------------------------------------------------------------- errors against the truth
def true_ctf(project: CtfProject, truth: Truth) -> CtfValues:
    """The true CTF of the project's particles (:class:`CtfValues`): the true item's defocus ± its
    astigmatism plus the particle's true z, its angle, beam tilt and magnification matrix."""
    tp = truth.particles.get(project.species)
    if tp is None:
        raise InvalidInput("species not in the truth", project.species)
    z = np.asarray(tp.coordinates, np.float64)[project.rows, 0, 2]
    items = [truth.item_by_digest(d).item.imaging for d in project.digests]
    g = project.group
    d = np.array([im.defocus_angstrom for im in items])[g]
    a = np.array([im.astigmatism_angstrom for im in items])[g]
    ang = np.array([im.astigmatism_angle_deg for im in items])[g]
    tilt = np.array([im.beam_tilt_mrad for im in items], np.float64).reshape(-1, 2)
    mag = np.array([im.mag_matrix for im in items], np.float64).reshape(-1, 2, 2)
    n = len(z)
    return CtfValues(d + a + z, d - a + z, ang, tilt, mag, np.zeros(n), np.ones(n))


def _rms(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.sqrt(np.mean(x * x))) if x.size else float("nan")


def ctf_errors(values: CtfValues, project: CtfProject, truth: Truth) -> dict[str, Any]:
    """Errors of a CTF (the exported one, or RELION's) against the truth.

    Definitions (as :mod:`mrepo.sim.metrics`):

    * ``defocus_rmse_angstrom``: RMS over particles of ``(U + V)/2`` minus the true item defocus
      plus the particle's true z (Å) — :func:`~mrepo.sim.metrics.defocus_rmse`;
      ``defocus_bias_angstrom``: the mean of that error (Å).
    * astigmatism per frame series (the mean over its particles of the vector
      ``(a cos 2θ, a sin 2θ)``, a = (U − V)/2; RELION fits one per micrograph):
      ``astigmatism_magnitude_angstrom`` RMS over series of ``|a_est| − |a_true|`` (Å),
      ``astigmatism_vector_angstrom`` RMS of the length of the vector difference (Å),
      ``astigmatism_angle_deg`` RMS of the angle error (deg, wrapped to ±90°) weighted by ``a_true²``.
    * ``beam_tilt_mrad``: RMS over series (optics groups) of ``|τ_est − τ_true|`` (mrad).
    * ``magnification``: RMS over series of the Frobenius norm of ``M_est − M_true``.
    * per series: ``beam_tilt_est_mrad``/``beam_tilt_true_mrad`` ({item: [τx, τy]}),
      ``astigmatism_est_angstrom``/``astigmatism_true_angstrom`` ({item: [a, θ]}).
    """
    tru = true_ctf(project, truth)
    if len(values) != len(tru):
        raise InvalidInput(f"{len(values)} particles for a project of {len(tru)}", "values")
    e = values.defocus_angstrom - tru.defocus_angstrom
    ve, vt = values.astigmatism_vector(), tru.astigmatism_vector()
    mag_err, vec_err, ang_err, wts = [], [], [], []
    ast_est, ast_true = {}, {}
    for g, name in enumerate(project.items):
        sel = project.group == g
        a_e, a_t = ve[sel].mean(0), vt[sel].mean(0)
        m_e, m_t = float(np.hypot(*a_e)), float(np.hypot(*a_t))
        th_e, th_t = 0.5 * math.degrees(math.atan2(a_e[1], a_e[0])), 0.5 * math.degrees(math.atan2(a_t[1], a_t[0]))
        mag_err.append(m_e - m_t)
        vec_err.append(float(np.hypot(*(a_e - a_t))))
        ang_err.append((th_e - th_t + 90.0) % 180.0 - 90.0)
        wts.append(m_t * m_t)
        ast_est[name] = [m_e, th_e % 180.0]
        ast_true[name] = [m_t, th_t % 180.0]
    w = np.asarray(wts)
    tilt_err = np.linalg.norm(values.beam_tilt_mrad - tru.beam_tilt_mrad, axis=1)
    mag_norm = np.linalg.norm((values.mag_matrix - tru.mag_matrix).reshape(len(project.items), -1), axis=1)
    return {
        "defocus_rmse_angstrom": _rms(e),
        "defocus_bias_angstrom": float(e.mean()),
        "astigmatism_magnitude_angstrom": _rms(mag_err),
        "astigmatism_vector_angstrom": _rms(vec_err),
        "astigmatism_angle_deg": float(np.sqrt((w * np.square(ang_err)).sum() / w.sum())) if w.sum() > 0 else 0.0,
        "beam_tilt_mrad": _rms(tilt_err),
        "magnification": _rms(mag_norm),
        "beam_tilt_est_mrad": {n: values.beam_tilt_mrad[g].tolist() for g, n in enumerate(project.items)},
        "beam_tilt_true_mrad": {n: tru.beam_tilt_mrad[g].tolist() for g, n in enumerate(project.items)},
        "astigmatism_est_angstrom": ast_est,
        "astigmatism_true_angstrom": ast_true,
        "particles": len(tru),
        "items": len(project.items),
    }


# ---------------------------------------------------------------------------- one call for benchmarks
def compare_ctf_with_relion(sim_dir: str | os.PathLike[str], species: str, *,
                            work_dir: str | os.PathLike[str] | None = None, threads: int = 2, rev: str = "HEAD",
                            motion: str = "true", poses: str = "true", reference: str = "reconstruct",
                            normalise: str = "sum", passes: Sequence[Sequence[str]] = DEFAULT_PASSES,
                            fit_mode: str = "fpmfm", brute_force: bool = False, timeout: float = 3600.0,
                            extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Export a simulation's species, refine its CTF with RELION 3.1 and measure it against the truth.

    Parameters
    ----------
    sim_dir: a ``mrepo sim`` folder (repository and ``truth/``).
    species: the species whose particles are refined.
    work_dir: where the RELION project goes (kept); a temporary folder, removed afterwards, if None.
    threads: ``relion_ctf_refine --j``.
    motion, poses, reference, normalise: what the particles are extracted with and compared to
        (:func:`export_ctf_project`).
    passes, fit_mode, brute_force, extra_args: see :func:`run_ctf_refine`.

    Returns
    -------
    dict with, for ``when`` in ``before`` (the imported CTF, as exported) and ``after`` (RELION):
    ``defocus_{when}_angstrom`` (RMS per-particle defocus error, Å), ``defocus_bias_{when}_angstrom``,
    ``astigmatism_{when}_angstrom`` (RMS over series of the magnitude error, Å),
    ``astigmatism_vector_{when}_angstrom``, ``astigmatism_angle_{when}_deg``,
    ``beam_tilt_{when}_mrad`` (RMS over series of ``|τ_est − τ_true|``), ``magnification_{when}``;
    ``beam_tilt_true_mrad``/``beam_tilt_relion_mrad`` and ``astigmatism_true_angstrom``/
    ``astigmatism_relion_angstrom`` per series; ``relion_ctf_scale`` (median ``rlnCtfScalefactor``),
    ``wall_ctf_refine_s`` (all passes), ``wall_passes_s``, ``wall_export_s`` (extraction and files),
    ``wall_reconstruct_s`` (``relion_reconstruct`` of the reference), ``particles``, ``items``,
    ``box``, ``pixel_size_angstrom``, ``reference_resolution_angstrom``, ``threads``, ``passes``,
    ``motion``, ``poses``, ``reference``, ``normalise``, ``commands``, ``relion_version``, ``notes``, ``work_dir``
    (None when removed).
    """
    truth = load_truth(sim_dir)
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="mrepo_ctf_"))
        work = tmp
    else:
        work = Path(work_dir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        project = export_ctf_project(sim_dir, work / "project", species=species, rev=rev, motion=motion, poses=poses,
                                     reference=reference, normalise=normalise, truth=truth, timeout=timeout)
        wall_export = time.perf_counter() - t0 - project.reconstruct_wall_s
        res = run_ctf_refine(project, work / "ctf_refine", passes=passes, threads=threads, fit_mode=fit_mode,
                             brute_force=brute_force, timeout=timeout, extra_args=extra_args)
        before = ctf_errors(project.imported, project, truth)
        after = ctf_errors(res.values, project, truth)
        version = subprocess.run([_need("relion_ctf_refine"), "--version"], capture_output=True, text=True)
        out: dict[str, Any] = {}
        for when, err in (("before", before), ("after", after)):
            out.update({
                f"defocus_{when}_angstrom": err["defocus_rmse_angstrom"],
                f"defocus_bias_{when}_angstrom": err["defocus_bias_angstrom"],
                f"astigmatism_{when}_angstrom": err["astigmatism_magnitude_angstrom"],
                f"astigmatism_vector_{when}_angstrom": err["astigmatism_vector_angstrom"],
                f"astigmatism_angle_{when}_deg": err["astigmatism_angle_deg"],
                f"beam_tilt_{when}_mrad": err["beam_tilt_mrad"],
                f"magnification_{when}": err["magnification"],
            })
        out.update({
            "beam_tilt_true_mrad": after["beam_tilt_true_mrad"],
            "beam_tilt_relion_mrad": after["beam_tilt_est_mrad"],
            "astigmatism_true_angstrom": after["astigmatism_true_angstrom"],
            "astigmatism_relion_angstrom": after["astigmatism_est_angstrom"],
            "relion_ctf_scale": float(np.median(res.values.scale)),
            "wall_ctf_refine_s": res.wall_s,
            "wall_passes_s": {"+".join(p): w for p, w in zip(res.passes, res.pass_wall_s)},
            "wall_export_s": wall_export,
            "wall_reconstruct_s": project.reconstruct_wall_s,
            "particles": len(project),
            "items": len(project.items),
            "box": project.box,
            "pixel_size_angstrom": project.pixel_size_angstrom,
            "reference_resolution_angstrom": project.reference_resolution_angstrom,
            "threads": threads,
            "passes": ["+".join(p) for p in res.passes],
            "fit_mode": fit_mode,
            "motion": motion,
            "poses": poses,
            "reference": reference,
            "normalise": normalise,
            "commands": [" ".join(c) for c in res.commands],
            "relion_version": (version.stdout.strip().splitlines() or ["?"])[0],
            "notes": list(project.notes),
            "work_dir": None if tmp is not None else str(work),
        })
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
