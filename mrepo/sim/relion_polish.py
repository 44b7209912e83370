"""RELION 3.1 Bayesian polishing (``relion_motion_refine``) as the peer of ``mrepo refine``.

A simulated population (:func:`mrepo.sim.simulate`) is exported as the RELION
project polishing expects, polishing is run on it, and its per-particle tracks
are compared with the ground truth exactly as :func:`mrepo.sim.metrics.frame_position_errors`
compares mrepo's model.

Files written by :func:`export_polishing_project` (paths relative to the project root,
which is also RELION's working directory)::

    Movies/<item>.mrcs            raw frames, float32, contrast inverted (see below)
    MotionCorr/<item>.star        motion-correction record (data_general, data_global_shift)
    Micrographs/<item>.mrc        motion-corrected, dose-weighted sum (same contrast as the movie)
    Particles/<item>.mrcs         particles cut from the micrograph (box = species box), white protein
    corrected_micrographs.star    data_optics + data_micrographs (rlnMicrographName, rlnMicrographMetadata)
    particles.star                data_optics + data_particles (RELION 3.1, ``# version 30001``)
    Reference/half1.mrc, half2.mrc, mask.mrc, postprocess.star

Conventions (checked against RELION 3.1 and, where it matters, by running it):

* **Drift.** mrepo's ``GridMovementX/Y`` (Å) is, as in Warp, *minus* the particle's
  displacement in a frame (:mod:`mrepo.sim.geometry`: position = coordinate − grids). RELION's
  ``rlnMicrographShiftX/Y`` (px) is the shift that *aligns* the frame: polishing
  starts each particle's track at ``−shift`` (``MicrographHandler``: ``tracks[p][f] =
  −outputScale · getShiftAt(f)``). So ``rlnMicrographShiftX = GridMovementX / px``.
  Only the global (spatially constant) drift is exported: the mean of all the item's
  motion grids over the field of view per frame (exact for imported Warp-like
  ``GridMovement`` grids of 1×1×F); RELION's motion model version 0 has no local motion.
* **Particle position.** RELION cuts a particle's box at the *integer* part of
  ``rlnCoordinateX/Y`` (``StackHelper::extractMovieStackFS``) and only the origin carries a
  sub-pixel offset; the particle sits at ``coordinate − origin``. Coordinates are therefore
  written as whole pixels (the nearest pixel to the particle, Å / px from the centre of
  pixel (0, 0), as in mrepo) and ``rlnOriginXAngst = (coordinate · px − x)``, so that
  ``coordinate · px − origin`` is mrepo's x exactly.
* **Tracks.** ``<out>/<micrograph stem>_tracks.star`` holds ``data_general``
  (``rlnParticleNumber``) and one table per particle, ``data_0``, ``data_1``, …, in the
  order of the particle table of that micrograph, with one row per frame:
  ``rlnOriginXAngst/YAngst`` = the particle's displacement in that frame (Å; the label
  is RELION's, the sign is not that of an origin: frames are shifted by ``−track`` to
  align them). Position in frame f (Å, mrepo convention) = ``x + track_f``.
* **Contrast.** The simulator's raw frames carry ``D (1 + c · CTF · projection)`` with
  RELION's CTF sign (``+Q0`` at k = 0), i.e. protein *bright*. RELION negates raw
  movie frames on reading (``-gain · value``), expecting dark protein as on a real
  detector. The movies (and the micrograph made from them) are therefore written as
  ``−counts``; the particle stacks are negated back (white protein, RELION's
  ``--invert_contrast`` convention) and normalised as ``relion_preprocess`` does.
* **Defocus.** ``rlnDefocusU/V`` = the item's defocus ± astigmatism plus the particle's z;
  ``rlnDefocusAngle`` = the item's astigmatism angle.

Checked by running RELION 3.1.3 on ``tiny``-derived simulations: with ``--max_iters 0`` the
tracks read back equal the exported drift (to 10⁻⁵ Å); exporting the drift with the other sign
raises RELION's starting error from 1.4 to 4.7 px and its polished map goes from 12.4 to 19.2 Å;
movies written as ``+counts`` make polishing diverge (11.6 px, 75 Å); on noiseless data with
``--no_whiten`` the polished static error is 0.29 px with no dependence on the origin's sub-pixel
rest (a sign error there would show a slope of ±1–2). Two RELION behaviours to know on such
small simulated sets: its default noise whitening uses the movie's power spectrum, which on
noiseless data is the signal, and then barely moves the particles (``extra_args=("--no_whiten",)``
lifts it); and its per-frame B-factors fitted to the FCCs of ~100 particles at SNR 0.1 are
erratic, which can make the polished particles worse than a plain dose-weighted average
(``bfactors="dose"`` uses the exposure model instead).

Everything returns plain numbers and arrays; RELION's own messages are kept in the
result (``log``) and a failure raises one line (:class:`~mrepo.errors.MrepoError`).
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

from ..errors import DegenerateResult, InvalidInput, MrepoError, NotFound
from ..io.mrc import read_mrc, write_mrc
from ..io.star import OpticsGroup, ParticleTable, _atomic_write, _loop_text, _pairs_text, read_star, write_particles
from ..refine.dose import B_PER_EXPOSURE_A2
from ..refine.fsc import FscCurve, fsc, resolution_at
from ..repository import open_repo
from ..store.arrays import array_info, open_view_array
from .geometry import eval_grid_pairs, frame_positions, interp_trajectory, item_motion_grids
from .reconstruct import fsc_to_truth, sphere_mask
from .truth import Truth, load_truth

__all__ = [
    "ExportedMovie",
    "PolishingProject",
    "PolishingResult",
    "export_polishing_project",
    "relion_row_counts",
    "run_polishing",
    "read_tracks",
    "reconstruct_halves",
    "half_map_fsc",
    "dose_weighted_sum",
    "cut_boxes",
    "initial_positions",
    "position_errors",
    "polishing_errors",
    "compare_with_relion",
    "DEFAULT_S_VEL",
    "DEFAULT_S_DIV",
    "DEFAULT_S_ACC",
]

#: relion_motion_refine's own defaults (RELION 3.1): velocity sigma (Å/dose), divergence sigma (Å),
#: acceleration sigma (Å/dose).
DEFAULT_S_VEL, DEFAULT_S_DIV, DEFAULT_S_ACC = 0.5, 5000.0, 2.0

STAR_VERSION = "30001"  # RELION 3.1


@dataclass
class ExportedMovie:
    """One exported frame series.

    Attributes
    ----------
    name: item name (also the file stem).
    digest: the item's data digest.
    movie, motion_star, micrograph, stack: paths relative to the project root.
    rows: (n,) rows of the species' particle table in this movie, in STAR order.
    shape: (F, H, W) frames, px.
    drift_angstrom: (F, 2) exported global displacement of the particles per frame (Å, +x/+y).
    local_rms_angstrom: RMS over the view and frames of the motion left out (spatially
        varying part of the item's grids; 0 for imported global drift).
    """

    name: str
    digest: str
    movie: Path
    motion_star: Path
    micrograph: Path
    stack: Path
    rows: np.ndarray
    shape: tuple[int, int, int]
    drift_angstrom: np.ndarray
    local_rms_angstrom: float = 0.0


@dataclass
class PolishingProject:
    """A RELION 3.1 project ready for ``relion_motion_refine`` (see the module docstring).

    Attributes
    ----------
    root: project folder (RELION's working directory); other paths are relative to it.
    sim_dir, rev, species: what was exported.
    particles_star, corrected_micrographs_star, postprocess_star, half_maps, mask: files.
    movies: the exported frame series, in STAR order (sorted by micrograph name).
    rows: (N,) species rows of the particles, in STAR order.
    positions_angstrom: (N, 2) exported particle positions (x, y), Å from the centre of pixel (0, 0):
        ``rlnCoordinate · px − rlnOriginAngst``.
    coordinates_px: (N, 2) the integer ``rlnCoordinateX/Y``.
    pixel_size_angstrom, box, symmetry, diameter_angstrom: species.
    voltage_kv, cs_mm, amplitude_contrast: optics.
    dose_per_frame: e⁻/Å² (``--fdose``).
    exposure_mid: (F,) accumulated exposure at mid-frame (e⁻/Å²), the same in every movie.
    reference_resolution_angstrom: FSC 0.143 of the exported half-maps (masked), Å.
    notes: what was approximated.
    """

    root: Path
    sim_dir: Path
    rev: str
    species: str
    particles_star: Path
    corrected_micrographs_star: Path
    postprocess_star: Path
    half_maps: tuple[Path, Path]
    mask: Path
    movies: list[ExportedMovie]
    rows: np.ndarray
    positions_angstrom: np.ndarray
    coordinates_px: np.ndarray
    pixel_size_angstrom: float
    box: int
    symmetry: str
    diameter_angstrom: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    dose_per_frame: float
    exposure_mid: np.ndarray
    reference_resolution_angstrom: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.movies[0].shape[0])

    def __len__(self) -> int:
        return int(len(self.rows))


@dataclass
class PolishingResult:
    """What ``relion_motion_refine`` produced, in mrepo's units and row order.

    Attributes
    ----------
    project: the exported project.
    out_dir: RELION's output folder (absolute).
    command: the command line run.
    wall_s: wall time of ``relion_motion_refine`` (s).
    tracks_angstrom: (N, F, 2) RELION's per-frame displacement of each particle (Å, STAR order).
    positions_angstrom: (N, F, 2) polished per-frame positions (Å) = exported position + track.
    shiny_star: polished particles (``--combine_frames``), or None if RELION wrote none.
    half_maps: RELION's reconstructions (``relion_reconstruct --ctf``) of the polished particles,
        half set 1 and 2 (box³ float32), or None.
    reconstruct_wall_s: wall time of both reconstructions (s).
    fsc: masked FSC between the two half-maps (soft sphere of the species' diameter).
    resolution_angstrom: its 0.143 crossing (Å), None if degenerate.
    log: RELION's output (last lines).
    """

    project: PolishingProject
    out_dir: Path
    command: list[str]
    wall_s: float
    tracks_angstrom: np.ndarray
    positions_angstrom: np.ndarray
    shiny_star: Path | None = None
    half_maps: tuple[np.ndarray, np.ndarray] | None = None
    reconstruct_wall_s: float = 0.0
    fsc: FscCurve | None = None
    resolution_angstrom: float | None = None
    log: str = ""


# ---------------------------------------------------------------------------- helpers
def _write_star(path: Path, blocks: list[tuple[str, dict[str, Any], bool]], title: str) -> None:
    """Write STAR blocks ``(name, columns_or_pairs, is_loop)`` (RELION 3.1 header), atomically."""
    parts = [f"# {title}\n"]
    for name, content, loop in blocks:
        parts.append(_loop_text(name, content, STAR_VERSION) if loop else _pairs_text(name, content, STAR_VERSION))
    _atomic_write(path, "".join(parts).encode("utf-8"))


def _need(program: str) -> str:
    exe = shutil.which(program)
    if exe is None:
        raise NotFound("RELION program not on PATH", program)
    return exe


def _tail(text: str, n: int = 400) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-n:] if lines else ""


def _global_drift(item, f: int) -> tuple[np.ndarray, float]:
    """(F, 2) mean displacement (Å) of the particles by the item's motion grids over the view
    (minus the grids' mean: Warp's sign), and the RMS (Å) of what varies over the view (lost
    when only the global drift is exported)."""
    grids = item_motion_grids(item)
    if not grids:
        return np.zeros((f, 2)), 0.0
    g = np.linspace(0.0, 1.0, 9)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    xs, ys = gx.reshape(-1), gy.reshape(-1)
    t = np.linspace(0.0, 1.0, f) if f > 1 else np.zeros(1)
    d = -eval_grid_pairs(grids, np.tile(xs, f), np.tile(ys, f), np.repeat(t, xs.size)).reshape(f, xs.size, 2)
    mean = d.mean(axis=1)
    local = float(np.sqrt(((d - mean[:, None, :]) ** 2).sum(-1).mean()))
    return mean, local


def _frame_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """rfft2 frequency grids (cycles/px) ky (H, 1), kx (1, W//2+1)."""
    return np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]


def dose_weighted_sum(frames, drift_px: np.ndarray, exposure_mid: np.ndarray, pixel_size_angstrom: float,
                      *, b_per_exposure: float = B_PER_EXPOSURE_A2) -> np.ndarray:
    """Motion-corrected, dose-weighted sum of frames (H, W) float32.

    Parameters
    ----------
    frames: (F, H, W) frames (any array-like indexable by frame).
    drift_px: (F, 2) displacement of the specimen in each frame (px, +x/+y); frame f is
        shifted by ``−drift_px[f]`` before summing.
    exposure_mid: (F,) accumulated exposure at mid-frame (e⁻/Å²); frame f is weighted by
        ``w_f(k) = exp(−b e_f |k|² / 4)`` (k in 1/Å), and the sum by ``F / Σ_f w_f(k)`` (so a
        flat image keeps its mean times F).
    """
    f, h, w = (int(s) for s in frames.shape)
    ky, kx = _frame_grid(h, w)
    k2 = (kx**2 + ky**2) / pixel_size_angstrom**2
    acc = np.zeros((h, w // 2 + 1), np.complex128)
    wsum = np.zeros((h, w // 2 + 1))
    for i in range(f):
        wt = np.exp(-b_per_exposure * float(exposure_mid[i]) * k2 / 4.0)
        dx, dy = float(drift_px[i, 0]), float(drift_px[i, 1])
        phase = np.exp(2j * math.pi * (kx * dx + ky * dy))  # moves the content by −drift
        acc += np.fft.rfft2(np.asarray(frames[i], np.float64)) * phase * wt
        wsum += wt
    return np.fft.irfft2(acc * (f / wsum), s=(h, w)).astype(np.float32)


def cut_boxes(image: np.ndarray, centres_px: np.ndarray, box: int) -> np.ndarray:
    """(N, box, box) float32 boxes of a (H, W) image whose pixel ``box // 2`` is at the integer
    centres (N, 2) (x, y); pixels outside the image repeat the edge (as RELION's extraction)."""
    h, w = image.shape
    c = np.asarray(centres_px, np.int64)
    off = np.arange(box) - box // 2
    ys = np.clip(c[:, 1, None] + off[None], 0, h - 1)
    xs = np.clip(c[:, 0, None] + off[None], 0, w - 1)
    return np.asarray(image)[ys[:, :, None], xs[:, None, :]].astype(np.float32)


def _background_normalise(images: np.ndarray, radius_px: float) -> np.ndarray:
    box = images.shape[-1]
    yy, xx = np.mgrid[:box, :box] - box // 2
    outside = (xx**2 + yy**2) > radius_px**2
    if not outside.any():
        outside[:] = True
    bg = images[:, outside]
    std = bg.std(axis=1)
    std[std == 0] = 1.0
    return (images - bg.mean(axis=1)[:, None, None]) / std[:, None, None]


def _mid(values: np.ndarray) -> np.ndarray:
    """(N, 3) mid-exposure value of (N, T, 3) temporal samples."""
    v = np.asarray(values, np.float64)
    return v[:, 0] if v.shape[1] == 1 else interp_trajectory(v, 3)[:, 1]


# ---------------------------------------------------------------------------- export

@dataclass
class SpeciesRows:
    """One species of a simulated repository at a revision, as the RELION exports need it:
    the population and its snapshot, the particles, their (N, T, 3) coordinates (Å) and
    (N, T, 3) angles (degrees) as float64, half sets, pixel size (Å) and box (px)."""

    pop: Any
    view: Any
    parts: Any
    coords: np.ndarray
    angles: np.ndarray
    half: np.ndarray
    px: float
    box: int


def species_rows(sim_dir: str | os.PathLike[str], rev: str, species: str) -> SpeciesRows:
    """Load ``species`` of the repository at ``sim_dir`` at ``rev``; InvalidInput when it has no such species."""
    repo = open_repo(Path(sim_dir), search_parents=False)
    pop = repo.population(rev)
    if species not in pop.species:
        raise InvalidInput("no such species in the population", species)
    sp = pop.species[species]
    parts = sp.particles.load()
    return SpeciesRows(pop, repo.snapshot(rev), parts, np.asarray(parts.coordinates, np.float64),
                       np.asarray(parts.angles, np.float64), np.asarray(parts.half_set, np.int64),
                       float(sp.pixel_size_angstrom), int(sp.box))

def export_polishing_project(sim_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, species: str,
                             rev: str = "HEAD") -> PolishingProject:
    """Export the frame series holding particles of ``species`` as a RELION 3.1 polishing project.

    See the module docstring for the files and conventions. Particles with several temporal
    samples are exported at their mid-exposure position and orientation (RELION has one).

    Raises
    ------
    InvalidInput: unknown species, no frame-series particle, frame series of different lengths,
        beam tilt (not exported).
    """
    sim_dir = Path(sim_dir)
    root = Path(out_dir).resolve()
    rows = species_rows(sim_dir, rev, species)
    pop, view, parts, coords, angles, half, px, box = (rows.pop, rows.view, rows.parts, rows.coords, rows.angles,
                                                       rows.half, rows.px, rows.box)
    sp = pop.species[species]

    chosen = []
    for _src, it in pop.items():
        if it.kind != "frames":
            continue
        idx = np.sort(parts.in_item(it.data_digest))
        if len(idx):
            chosen.append((it, idx))
    if not chosen:
        raise InvalidInput("the species has no particle in any frame series", species)
    chosen.sort(key=lambda c: c[0].name)  # RELION groups particles by micrograph name, sorted
    names = [it.name for it, _ in chosen]
    if len(set(names)) != len(names):
        raise InvalidInput("frame series of different sources share a name; RELION needs unique names", species)
    n_frames = {it.n for it, _ in chosen}
    if len(n_frames) != 1:
        raise InvalidInput("frame series of different lengths (export them separately)", str(sorted(n_frames)))
    im0 = chosen[0][0].imaging
    for it, _ in chosen:
        im = it.imaging
        if abs(im.pixel_size_angstrom - px) > 1e-6:
            raise InvalidInput("the frames' pixel size differs from the species' (no rescaling here)", it.name)
        if tuple(im.beam_tilt_mrad) != (0.0, 0.0) or im.odd_zernike or im.even_zernike:
            raise InvalidInput("beam tilt and higher-order aberrations are not exported", it.name)
        if (im.voltage_kv, im.cs_mm, im.amplitude_contrast) != (im0.voltage_kv, im0.cs_mm, im0.amplitude_contrast):
            raise InvalidInput("frame series with different optics (one optics group is exported)", it.name)
    dose = float(np.asarray(chosen[0][0].dose, np.float64)[0])
    if any(not np.allclose(it.dose, dose) for it, _ in chosen):
        raise InvalidInput("RELION polishing needs one dose per frame for all movies", species)
    exposure = np.asarray(chosen[0][0].exposure_mid, np.float64)
    if any(not np.allclose(it.exposure_mid, exposure) for it, _ in chosen):
        raise InvalidInput("RELION polishing needs the same exposure series in all movies", species)

    for sub in ("Movies", "MotionCorr", "Micrographs", "Particles", "Reference"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    movies: list[ExportedMovie] = []
    cols: dict[str, list] = {k: [] for k in ("mic", "cx", "cy", "ox", "oy", "ang", "du", "dv", "da", "half", "img",
                                             "rows", "pos")}
    radius_px = 0.5 * float(sp.diameter_angstrom) / px
    for it, idx in chosen:
        f, h, w = it.shape
        raw = open_view_array(view, it.raw_array)
        drift, local = _global_drift(it, f)
        if local > 1e-3:
            notes.append(f"{it.name}: local motion (RMS {local:.2f} Å over the view) is not exported")
        movie = Path("Movies") / f"{it.name}.mrcs"
        frames = -np.asarray(raw[...], np.float32)  # contrast inverted (see the module docstring)
        write_mrc(root / movie, frames, px, stack=True, label=f"mrepo {it.name} (-counts)")
        motion = Path("MotionCorr") / f"{it.name}.star"
        general = {
            "rlnImageSizeX": int(w), "rlnImageSizeY": int(h), "rlnImageSizeZ": int(f),
            "rlnMicrographMovieName": str(movie), "rlnMicrographBinning": 1.0,
            "rlnMicrographOriginalPixelSize": px, "rlnMicrographDoseRate": dose,
            "rlnMicrographPreExposure": float(it.pre_exposure[0]), "rlnVoltage": float(it.imaging.voltage_kv),
            "rlnMicrographStartFrame": 1, "rlnMotionModelVersion": 0,
        }
        shifts = {"rlnMicrographFrameNumber": np.arange(1, f + 1, dtype=np.int64),
                  "rlnMicrographShiftX": -drift[:, 0] / px, "rlnMicrographShiftY": -drift[:, 1] / px}
        _write_star(root / motion, [("general", general, False), ("global_shift", shifts, True)],
                    f"mrepo motion-correction record of {it.name} (RELION 3.1)")
        mic = Path("Micrographs") / f"{it.name}.mrc"
        summed = dose_weighted_sum(frames, drift / px, it.exposure_mid, px)
        write_mrc(root / mic, summed, px, label=f"mrepo {it.name} dose-weighted sum")

        c = _mid(coords[idx])
        xy = c[:, :2] / px
        cxy = np.rint(xy)
        origin = (cxy - xy) * px  # particle at coordinate − origin
        imgs = _background_normalise(-cut_boxes(summed, cxy, box), radius_px)
        stack = Path("Particles") / f"{it.name}.mrcs"
        write_mrc(root / stack, imgs, px, stack=True)
        im = it.imaging
        n = len(idx)
        cols["mic"] += [str(mic)] * n
        cols["cx"].append(cxy[:, 0])
        cols["cy"].append(cxy[:, 1])
        cols["ox"].append(origin[:, 0])
        cols["oy"].append(origin[:, 1])
        cols["ang"].append(_mid(angles[idx]))
        cols["du"].append(im.defocus_u_angstrom + c[:, 2])
        cols["dv"].append(im.defocus_v_angstrom + c[:, 2])
        cols["da"].append(np.full(n, im.astigmatism_angle_deg))
        cols["half"].append(half[idx])
        cols["img"] += [f"{i + 1:06d}@{stack}" for i in range(n)]
        cols["rows"].append(idx)
        cols["pos"].append(cxy * px - origin)
        movies.append(ExportedMovie(it.name, it.data_digest, movie, motion, mic, stack, idx, (f, h, w), drift, local))

    cat = {k: (np.concatenate(v) if k not in ("mic", "img") else np.asarray(v, dtype=object)) for k, v in cols.items()}
    if not np.isin(cat["half"], (1, 2)).all():
        raise InvalidInput("every particle needs a half set (1 or 2) for polishing", species)
    n = len(cat["rows"])

    # corrected micrographs
    optics_mic = {
        "rlnOpticsGroup": np.array([1]), "rlnOpticsGroupName": np.array(["opticsGroup1"], dtype=object),
        "rlnMicrographOriginalPixelSize": np.array([px]), "rlnVoltage": np.array([im0.voltage_kv]),
        "rlnSphericalAberration": np.array([im0.cs_mm]), "rlnAmplitudeContrast": np.array([im0.amplitude_contrast]),
        "rlnMicrographPixelSize": np.array([px]),
    }
    mics = {
        "rlnMicrographName": np.array([str(m.micrograph) for m in movies], dtype=object),
        "rlnMicrographMetadata": np.array([str(m.motion_star) for m in movies], dtype=object),
        "rlnOpticsGroup": np.ones(len(movies), np.int64),
        "rlnAccumMotionTotal": np.array([float(np.abs(np.diff(m.drift_angstrom, axis=0)).sum()) / px
                                         if m.shape[0] > 1 else 0.0 for m in movies]),
    }
    corr = root / "corrected_micrographs.star"
    _write_star(corr, [("optics", optics_mic, True), ("micrographs", mics, True)],
                "mrepo corrected micrographs (RELION 3.1)")

    # particles
    group = OpticsGroup(number=1, name="opticsGroup1", pixel_size_angstrom=px, original_pixel_size_angstrom=px,
                        micrograph_pixel_size_angstrom=px, voltage_kv=im0.voltage_kv, cs_mm=im0.cs_mm,
                        amplitude_contrast=im0.amplitude_contrast, image_size=box, dimensionality=2)
    cpx = np.zeros((n, 3))
    cpx[:, 0], cpx[:, 1] = cat["cx"], cat["cy"]
    shifts = np.zeros((n, 3))
    shifts[:, 0], shifts[:, 1] = cat["ox"], cat["oy"]
    table = ParticleTable(
        coordinates_px=cpx, coordinates_angstrom=cpx * px, angles_deg=cat["ang"], shifts_angstrom=shifts,
        half_set=cat["half"].astype(np.int64), defocus_u_angstrom=cat["du"], defocus_v_angstrom=cat["dv"],
        defocus_angle_deg=cat["da"], phase_shift_deg=np.zeros(n), ctf_bfactor=np.zeros(n), ctf_scale=np.ones(n),
        optics_group=np.ones(n, np.int64), micrograph_name=cat["mic"],
        trajectory_coordinates_angstrom=(cpx * px)[:, None, :], trajectory_angles_deg=cat["ang"][:, None, :],
        optics=[group], image_name=cat["img"],
    )
    pstar = root / "particles.star"
    write_particles(pstar, table, flavour="relion3.1")

    # reference: half-maps, mask, FSC
    maps = []
    for role in ("half1", "half2"):
        if role not in sp.maps:
            raise InvalidInput(f"the species has no {role} map", species)
        name = sp.maps[role]
        vs = (array_info(view, name).attributes.get("voxel_size") or [px] * 3)[0] or px
        if abs(float(vs) - px) > 1e-4:
            raise InvalidInput(f"the {role} map's voxel size ({vs} Å) is not the species' pixel size", species)
        maps.append(np.asarray(open_view_array(view, name)[...], np.float32))
    if maps[0].shape != (box, box, box):
        raise InvalidInput(f"half-maps of shape {maps[0].shape}, expected the species box {box}³", species)
    h1p, h2p, maskp = Path("Reference/half1.mrc"), Path("Reference/half2.mrc"), Path("Reference/mask.mrc")
    write_mrc(root / h1p, maps[0], px, label=f"mrepo {species} half1")
    write_mrc(root / h2p, maps[1], px, label=f"mrepo {species} half2")
    mask = sphere_mask(box, px, float(sp.diameter_angstrom))
    write_mrc(root / maskp, mask, px, label=f"soft sphere {sp.diameter_angstrom:g} A")
    fm = fsc(maps[0], maps[1], px, mask=mask)
    fu = fsc(maps[0], maps[1], px)
    _, res = half_map_fsc(maps[0], maps[1], px, float(sp.diameter_angstrom))
    if res is None:
        notes.append("reference half-maps: FSC below 0.143 at the first shell")
    freqs = fm.freqs_per_angstrom
    ang = np.where(freqs > 0, 1.0 / np.where(freqs > 0, freqs, 1.0), 999.0)
    fsc_cols = {
        "rlnSpectralIndex": np.arange(len(freqs), dtype=np.int64), "rlnResolution": freqs, "rlnAngstromResolution": ang,
        "rlnFourierShellCorrelationCorrected": fm.fsc, "rlnFourierShellCorrelationUnmaskedMaps": fu.fsc,
        "rlnFourierShellCorrelationMaskedMaps": fm.fsc,
    }
    try:
        res_mask = float(resolution_at(fm, 0.143))
    except DegenerateResult:
        res_mask = 2 * px
    general = {"rlnFinalResolution": res_mask, "rlnUnfilteredMapHalf1": str(h1p),
               "rlnUnfilteredMapHalf2": str(h2p), "rlnMaskName": str(maskp)}
    post = root / "Reference" / "postprocess.star"
    _write_star(post, [("general", general, False), ("fsc", fsc_cols, True)],
                "mrepo FSC of the species half-maps (masked; no phase-randomisation correction)")
    notes.append("postprocess FSC 'Corrected' is the masked FSC (no phase-randomised correction)")
    return PolishingProject(
        root=root, sim_dir=sim_dir.resolve(), rev=rev, species=species, particles_star=Path(pstar.name),
        corrected_micrographs_star=Path(corr.name), postprocess_star=post.relative_to(root), half_maps=(h1p, h2p),
        mask=maskp, movies=movies, rows=cat["rows"].astype(np.int64), positions_angstrom=cat["pos"],
        coordinates_px=np.stack([cat["cx"], cat["cy"]], 1), pixel_size_angstrom=px, box=box, symmetry=sp.symmetry,
        diameter_angstrom=float(sp.diameter_angstrom), voltage_kv=float(im0.voltage_kv), cs_mm=float(im0.cs_mm),
        amplitude_contrast=float(im0.amplitude_contrast), dose_per_frame=dose, exposure_mid=exposure,
        reference_resolution_angstrom=res,
        notes=notes,
    )


def relion_row_counts(project: PolishingProject, *, timeout: float = 120.0) -> dict[str, int]:
    """Rows RELION itself reads from each exported table (``relion_star_printtable``).

    Returns ``{"particles": N, "micrographs": M, "fsc": shells, "<item>/global_shift": F, ...}``.
    Raises :class:`~mrepo.errors.MrepoError` if RELION cannot read a file.
    """
    exe = _need("relion_star_printtable")
    tables = [("particles", project.particles_star, "data_particles", "rlnMicrographName"),
              ("micrographs", project.corrected_micrographs_star, "data_micrographs", "rlnMicrographMetadata"),
              ("fsc", project.postprocess_star, "data_fsc", "rlnFourierShellCorrelationCorrected")]
    tables += [(f"{m.name}/global_shift", m.motion_star, "data_global_shift", "rlnMicrographShiftX")
               for m in project.movies]
    out = {}
    for key, path, block, label in tables:
        r = subprocess.run([exe, str(path), block, label], cwd=project.root, capture_output=True, text=True,
                           timeout=timeout)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        if r.returncode != 0:
            raise MrepoError(f"relion_star_printtable cannot read {block}: {_tail(r.stderr + r.stdout)}", str(path))
        out[key] = len(lines)
    return out


# ---------------------------------------------------------------------------- running RELION
def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MrepoError(f"{what} did not finish within {timeout:g} s", str(cwd)) from None
    wall = time.perf_counter() - t0
    log = (r.stdout or "") + (r.stderr or "")
    if r.returncode != 0:
        raise MrepoError(f"{what} failed (exit {r.returncode}): {_tail(log)}", str(cwd))
    return wall, log


def read_tracks(path: str | os.PathLike[str]) -> np.ndarray:
    """(P, F, 2) per-particle per-frame displacements (Å) from a RELION 3.1 ``*_tracks.star``."""
    star = read_star(path)
    blocks = {k: v for k, v in star.blocks.items() if k.isdigit()}
    if not blocks:
        raise MrepoError("no particle track in RELION's tracks file", str(path))
    out = []
    for p in range(len(blocks)):
        df = blocks.get(str(p))
        if df is None or not {"rlnOriginXAngst", "rlnOriginYAngst"} <= set(df.columns):
            raise MrepoError(f"track of particle {p} missing or without rlnOriginX/YAngst", str(path))
        out.append(np.stack([df["rlnOriginXAngst"].to_numpy(np.float64), df["rlnOriginYAngst"].to_numpy(np.float64)], 1))
    if len({t.shape for t in out}) != 1:
        raise MrepoError("tracks of different lengths", str(path))
    return np.stack(out)


def reconstruct_halves(star: str | os.PathLike[str], out_prefix: str | os.PathLike[str], *, symmetry: str = "C1",
                       cwd: str | os.PathLike[str] | None = None, timeout: float = 1800.0
                       ) -> tuple[np.ndarray, np.ndarray, float]:
    """``relion_reconstruct --ctf --subset k`` for k = 1, 2: the two half-maps (box³ float32) and the wall time (s)."""
    exe = _need("relion_reconstruct")
    wd = Path(cwd) if cwd is not None else Path(star).parent
    maps, wall = [], 0.0
    for k in (1, 2):
        out = Path(f"{out_prefix}_half{k}.mrc")
        w, _ = _run([exe, "--i", str(star), "--o", str(out), "--ctf", "--subset", str(k), "--sym", symmetry],
                    wd, timeout, f"relion_reconstruct (half {k})")
        wall += w
        target = out if out.is_absolute() else wd / out
        if not target.exists():
            raise MrepoError("relion_reconstruct wrote no map", str(target))
        maps.append(np.array(read_mrc(target, mmap=False).data, dtype=np.float32))
    return maps[0], maps[1], wall


def half_map_fsc(h1: np.ndarray, h2: np.ndarray, pixel_size_angstrom: float, diameter_angstrom: float
                 ) -> tuple[FscCurve, float | None]:
    """Masked FSC of two half-maps and its 0.143 crossing (Å; None if below at the first shell).

    The mask is the one ``mrepo refine`` reports its resolutions with
    (:func:`mrepo.refine.run.masked_fsc`), so that the figures compare; a soft sphere of the
    diameter if that function is not available.
    """
    try:
        from ..refine.run import masked_fsc
    except ImportError:  # pragma: no cover - refine.run is being reworked
        masked_fsc = None
    if masked_fsc is not None:
        c = masked_fsc(h1, h2, pixel_size_angstrom, diameter_angstrom)
    else:  # pragma: no cover
        c = fsc(h1, h2, pixel_size_angstrom, mask=sphere_mask(h1.shape[0], pixel_size_angstrom, diameter_angstrom))
    try:
        return c, float(resolution_at(c, 0.143))
    except DegenerateResult:
        return c, None


def _masked_fsc(h1: np.ndarray, h2: np.ndarray, project: PolishingProject) -> tuple[FscCurve, float | None]:
    return half_map_fsc(h1, h2, project.pixel_size_angstrom, project.diameter_angstrom)


def run_polishing(project: PolishingProject, out_dir: str | os.PathLike[str], *, threads: int = 2,
                  timeout: float = 3600.0, s_vel: float = DEFAULT_S_VEL, s_div: float = DEFAULT_S_DIV,
                  s_acc: float = DEFAULT_S_ACC, combine_frames: bool = True, reconstruct: bool = True,
                  max_iters: int | None = None, bfactors: str = "fit", extra_args: Sequence[str] = ()
                  ) -> PolishingResult:
    """Run ``relion_motion_refine`` on an exported project and read its tracks back.

    Parameters
    ----------
    out_dir: RELION's output folder (created; absolute or relative to the current directory).
    threads: ``--j``.
    s_vel, s_div, s_acc: RELION's motion priors (its defaults).
    combine_frames: also write polished particles (``--combine_frames``), which are then
        reconstructed per half set with ``relion_reconstruct --ctf --sym <species symmetry>``
        when ``reconstruct``.
    max_iters: ``--max_iters`` (None: RELION's default); 0 returns RELION's initial tracks.
    bfactors: frame weights of the polished particles: ``"fit"`` (RELION's default: per-frame
        B-factors and scales fitted to the FCCs of the tracked particles) or ``"dose"`` (the
        simulation's exposure model, ``B_f = −4 Å² × exposure_mid``, scale 1, given with
        ``--bfactors``); the tracks do not depend on it.
    extra_args: more ``relion_motion_refine`` options, e.g. ``("--no_whiten",)``.

    Returns
    -------
    :class:`PolishingResult` (tracks and positions (N, F, 2) Å in the project's STAR order).
    """
    exe = _need("relion_motion_refine")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    h1, h2 = project.half_maps
    cmd = [exe, "--i", str(project.particles_star), "--corr_mic", str(project.corrected_micrographs_star),
           "--f", str(project.postprocess_star), "--m1", str(h1), "--m2", str(h2), "--mask", str(project.mask),
           "--angpix_ref", f"{project.pixel_size_angstrom:g}", "--fdose", f"{project.dose_per_frame:g}",
           "--s_vel", f"{s_vel:g}", "--s_div", f"{s_div:g}", "--s_acc", f"{s_acc:g}",
           "--o", str(out) + os.sep, "--j", str(int(threads))]
    if max_iters is not None:
        cmd += ["--max_iters", str(int(max_iters))]
    if bfactors == "dose":
        bf = out / "dose_bfactors.star"
        _write_star(bf, [("perframe_bfactors", {
            "rlnMovieFrameNumber": np.arange(project.n_frames, dtype=np.int64),
            "rlnBfactorUsedForSharpening": -B_PER_EXPOSURE_A2 * project.exposure_mid,
            "rlnFittedInterceptGuinierPlot": np.zeros(project.n_frames)}, True)],
            "mrepo per-frame B-factors from the exposure (B = -4 A^2 per e/A^2)")
        cmd += ["--bfactors", str(bf)]
    elif bfactors != "fit":
        raise InvalidInput("bfactors must be 'fit' or 'dose'", bfactors)
    cmd += [str(a) for a in extra_args]
    if combine_frames:
        cmd.append("--combine_frames")
    wall, log = _run(cmd, project.root, timeout, "relion_motion_refine")

    f = project.n_frames
    tracks = np.full((len(project), f, 2), np.nan)
    start = 0
    for m in project.movies:
        n = len(m.rows)
        path = out / m.micrograph.with_suffix("").with_name(m.micrograph.stem + "_tracks.star")
        if not path.exists():
            raise MrepoError(f"relion_motion_refine wrote no tracks for {m.name}: {_tail(log)}", str(path))
        t = read_tracks(path)
        if t.shape != (n, f, 2):
            raise MrepoError(f"tracks for {t.shape[0]} particles × {t.shape[1]} frames, expected {n} × {f}", str(path))
        shiny = path.with_name(m.micrograph.stem + "_shiny.star")
        if shiny.exists():  # RELION's per-micrograph particle order must be the exported one
            df = read_star(shiny).blocks.get("particles")
            if df is not None and len(df) == n:
                got = np.stack([df["rlnCoordinateX"].to_numpy(np.float64), df["rlnCoordinateY"].to_numpy(np.float64)], 1)
                if not np.allclose(got, project.coordinates_px[start:start + n]):
                    raise MrepoError("RELION reordered the particles of a micrograph", str(shiny))
        tracks[start:start + n] = t
        start += n
    positions = project.positions_angstrom[:, None, :] + tracks
    shiny_star = out / "shiny.star"
    res = PolishingResult(project, out, cmd, wall, tracks, positions, shiny_star if shiny_star.exists() else None,
                          log=log[-4000:])
    if combine_frames and reconstruct:
        if res.shiny_star is None:
            raise MrepoError(f"relion_motion_refine wrote no shiny.star: {_tail(log)}", str(out))
        a, b, w = reconstruct_halves(res.shiny_star, out / "polished", symmetry=project.symmetry, cwd=project.root,
                                     timeout=timeout)
        res.half_maps, res.reconstruct_wall_s = (a, b), w
        res.fsc, res.resolution_angstrom = _masked_fsc(a, b, project)
    return res


# ---------------------------------------------------------------------------- errors against the truth
def initial_positions(project: PolishingProject) -> np.ndarray:
    """(N, F, 2) per-frame positions (Å) RELION starts from, read back from the exported files:
    exported position + track, the initial track being ``−rlnMicrographShift · px``."""
    out = []
    for m in project.movies:
        star = read_star(project.root / m.motion_star)
        df = star.blocks["global_shift"]
        order = np.argsort(df["rlnMicrographFrameNumber"].to_numpy())
        s = np.stack([df["rlnMicrographShiftX"].to_numpy(np.float64), df["rlnMicrographShiftY"].to_numpy(np.float64)],
                     1)[order]
        out.append(np.broadcast_to(-s * project.pixel_size_angstrom, (len(m.rows), *s.shape)))
    return project.positions_angstrom[:, None, :] + np.concatenate(out)


def position_errors(project: PolishingProject, positions_angstrom: np.ndarray, truth: Truth, *,
                    subtract_mean: bool = False) -> np.ndarray:
    """(M, 2) per-frame position errors (Å) of per-frame positions (N, F, 2) in the project's STAR order.

    The same definition as :func:`mrepo.sim.metrics.frame_position_errors`: for every frame
    series, the true positions are ``frame_positions(true coordinates, F, shape, px, true motion)``
    of the same particles (rows), in every frame; ``subtract_mean`` removes each particle's
    mean error over its frames.
    """
    pos = np.asarray(positions_angstrom, np.float64)
    if pos.shape != (len(project), project.n_frames, 2):
        raise InvalidInput(f"positions must be ({len(project)}, {project.n_frames}, 2), got {pos.shape}", "positions")
    tru = truth.particles.get(project.species)
    if tru is None:
        raise InvalidInput("species not in the truth", project.species)
    tc = np.asarray(tru.coordinates, np.float64)
    px = truth.pixel_size_angstrom
    out, start = [], 0
    for m in project.movies:
        n = len(m.rows)
        it_true = truth.item_by_digest(m.digest)
        p_true = frame_positions(tc[m.rows], m.shape[0], m.shape, px, it_true.motion)
        d = pos[start:start + n] - p_true
        if subtract_mean:
            d = d - d.mean(axis=1, keepdims=True)
        out.append(d.reshape(-1, 2))
        start += n
    return np.concatenate(out)


def _rms_px(d: np.ndarray, px: float) -> float:
    return float(np.sqrt((d**2).sum(axis=1).mean()) / px)


def polishing_errors(result: PolishingResult, truth: Truth, species: str | None = None) -> dict[str, float]:
    """RMS per-frame position errors (px) against the truth, before and after polishing.

    Keys: ``before_px`` (the imported model, :func:`mrepo.sim.metrics.motion_rmse_px` of the
    exported population), ``initial_px`` (RELION's starting point read back from the exported
    files: equals ``before_px`` when particles have one temporal sample and the items only a
    global drift), ``after_px`` (RELION's tracks), and the same with each particle's mean error
    removed (``*_motion_px``); ``particles``, ``frames``.
    """
    from .metrics import motion_rmse_px

    project = result.project
    species = species or project.species
    if species != project.species:
        raise InvalidInput("the result is for another species", species)
    px = truth.pixel_size_angstrom
    pop = open_repo(project.sim_dir, search_parents=False).population(project.rev)
    init = initial_positions(project)
    if not np.isfinite(result.positions_angstrom).all():
        raise DegenerateResult("RELION's tracks hold non-finite values", str(result.out_dir))
    return {
        "before_px": motion_rmse_px(pop, truth, species),
        "before_motion_px": motion_rmse_px(pop, truth, species, subtract_mean=True),
        "initial_px": _rms_px(position_errors(project, init, truth), px),
        "initial_motion_px": _rms_px(position_errors(project, init, truth, subtract_mean=True), px),
        "after_px": _rms_px(position_errors(project, result.positions_angstrom, truth), px),
        "after_motion_px": _rms_px(position_errors(project, result.positions_angstrom, truth, subtract_mean=True), px),
        "particles": len(project),
        "frames": project.n_frames,
    }


# ---------------------------------------------------------------------------- one call for benchmarks
def compare_with_relion(sim_dir: str | os.PathLike[str], species: str, *, work_dir: str | os.PathLike[str] | None = None,
                        rev: str = "HEAD", threads: int = 2, timeout: float = 3600.0,
                        reconstruct_before: bool = True, bfactors: str = "fit", extra_args: Sequence[str] = ()
                        ) -> dict[str, Any]:
    """Export a simulation, polish it with RELION 3.1 and measure the result against the truth.

    Parameters
    ----------
    sim_dir: a ``mrepo sim`` folder (repository and ``truth/``).
    work_dir: where the RELION project goes (kept); a temporary folder, removed afterwards, if None.
    reconstruct_before: also reconstruct the exported (unpolished) particles with
        ``relion_reconstruct`` for RELION's resolution before polishing.
    bfactors, extra_args: see :func:`run_polishing` (defaults: RELION's own).

    Returns
    -------
    dict with ``motion_before_px``, ``motion_after_px`` (RMS per-frame position error against the
    truth, px), ``motion_before_motion_px``/``motion_after_motion_px`` (mean offset per particle
    removed), ``resolution_before_angstrom``/``resolution_after_angstrom`` (masked half-map FSC 0.143
    of RELION's reconstructions, :func:`half_map_fsc`), ``resolution_reference_angstrom`` (the
    exported half-maps), ``truth_fsc0.5_{before,after}_angstrom`` / ``truth_fsc0.143_…`` (FSC of the
    average of RELION's two half-maps against the true map, 0.5 and 0.143) and
    ``truth_fsc0.5_…_half1/half2_angstrom`` (each half-map against the true map),
    ``wall_polish_s`` (relion_motion_refine), ``wall_reconstruct_s``, ``wall_export_s``,
    ``particles``, ``frames``, ``movies``, ``threads``, ``command``, ``relion_version``, ``notes``,
    ``work_dir`` (None when removed).
    """
    truth = load_truth(sim_dir)
    tmp = None
    if work_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="mrepo_polish_"))
        work = tmp
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        project = export_polishing_project(sim_dir, work / "project", species=species, rev=rev)
        wall_export = time.perf_counter() - t0
        out: dict[str, Any] = {}
        if reconstruct_before:
            a, b, w = reconstruct_halves(project.particles_star, work / "project" / "before", symmetry=project.symmetry,
                                         cwd=project.root, timeout=timeout)
            _, r = _masked_fsc(a, b, project)
            out["resolution_before_angstrom"] = r
            out["wall_reconstruct_before_s"] = w
            out.update(_truth_figures(a, b, truth, project, "before"))
        res = run_polishing(project, work / "polish", threads=threads, timeout=timeout, bfactors=bfactors,
                            extra_args=extra_args)
        err = polishing_errors(res, truth, species)
        version = subprocess.run([_need("relion_motion_refine"), "--version"], capture_output=True, text=True)
        out.update({
            "motion_before_px": err["before_px"],
            "motion_initial_px": err["initial_px"],
            "motion_after_px": err["after_px"],
            "motion_before_motion_px": err["before_motion_px"],
            "motion_after_motion_px": err["after_motion_px"],
            "resolution_reference_angstrom": project.reference_resolution_angstrom,
            "resolution_after_angstrom": res.resolution_angstrom,
            "wall_polish_s": res.wall_s,
            "wall_reconstruct_s": res.reconstruct_wall_s,
            "wall_export_s": wall_export,
            "particles": err["particles"],
            "frames": err["frames"],
            "movies": len(project.movies),
            "threads": threads,
            "bfactors": bfactors,
            "command": " ".join(res.command),
            "relion_version": (version.stdout.strip().splitlines() or ["?"])[0],
            "notes": list(project.notes),
            "work_dir": None if tmp is not None else str(work),
        })
        if res.half_maps is not None:
            out.update(_truth_figures(*res.half_maps, truth, project, "after"))
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _truth_res(volume: np.ndarray, truth: Truth, project: PolishingProject, threshold: float = 0.5) -> float | None:
    """Resolution (Å) where the FSC of a map against the true map (soft sphere) falls below ``threshold``."""
    true_map = truth.maps.get(project.species)
    if true_map is None or true_map.shape != volume.shape:
        return None
    c = fsc_to_truth(volume, true_map, project.pixel_size_angstrom, project.diameter_angstrom)
    try:
        return float(resolution_at(c, threshold))
    except DegenerateResult:
        return None


def _truth_figures(h1: np.ndarray, h2: np.ndarray, truth: Truth, project: PolishingProject, when: str) -> dict[str, Any]:
    """FSC of RELION's maps against the true map: each half at 0.5, their average at 0.5 and 0.143 (Å)."""
    avg = 0.5 * (h1 + h2)
    return {
        f"truth_fsc0.5_{when}_half1_angstrom": _truth_res(h1, truth, project),
        f"truth_fsc0.5_{when}_half2_angstrom": _truth_res(h2, truth, project),
        f"truth_fsc0.5_{when}_angstrom": _truth_res(avg, truth, project),
        f"truth_fsc0.143_{when}_angstrom": _truth_res(avg, truth, project, 0.143),
    }
