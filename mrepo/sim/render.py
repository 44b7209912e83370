"""The simulator's forward model: noiseless frames and tilts of one series.

For every particle and frame (or tilt) the species map is projected at the
particle's orientation in that frame (:func:`mrepo.refine.projection.project_rotations`,
RELION's Euler convention; with an anisotropic magnification ``M`` the
central slice at ``Aᵀ (M k, 0)``, i.e. the matrix ``Eᵀ A`` with
``E = [[M, 0], [0, 1]]``: RELION's ``rlnMagMat``, image frequency k is
specimen frequency M k; positions are not distorted), the projection is zero-padded in real space to
the render box ``L`` (at least the aliasing-free box of
:func:`mrepo.refine.aliasing.aliasing_free_box` at Nyquist for the series'
largest defocus, plus the map box), and in Fourier space multiplied by

* the CTF of the particle (:func:`mrepo.refine.ctf.ctf_2d`, RELION's
  conventions; defocus ``item defocus ± astigmatism + z`` plus, in frame f,
  the item's ``GridCTFDoming`` (µm × 10⁴ Å) at the particle's first control
  point and ``t_f = f / (F − 1)``; the item's astigmatism angle, and the item's
  beam tilt as the complex phase ``exp(i γ_odd)``), evaluated at ``M k`` for
  the item's magnification matrix ``M`` (``imaging.mag_matrix``),
* the exposure weight ``exp(−4 d k²/4)`` of the frame (``d`` the exposure at
  the middle of the frame, :func:`mrepo.refine.dose.dose_weights`),
* frame series with an intra-frame blur (``item.extra["blur"]`` or the
  ``blur`` argument of :func:`render_frames`): ``exp(−2π² σ_f² (k·u)²)``,
  u = (cos φ, sin φ), σ_f the frame's blur (Å),
* the sub-pixel shift that puts the particle's centre at its position,

then transformed back and added into the frame around the nearest pixel
(the box centre ``L // 2`` on it). The Nyquist row and column of ``L`` are
zeroed (as :func:`mrepo.refine.aliasing.premultiply_ctf` does).
The result ``r`` is in the map's units (line integrals over voxels); the
simulator's expected counts are ``D (1 + c r)`` (see :mod:`mrepo.sim.simulate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput
from ..model import Item, Particles
from ..refine.aliasing import aliasing_free_box
from ..refine.ctf import Aberrations, CtfParams, ctf_2d
from ..refine.deformation import MotionPyramid, normalised_time
from ..refine.dose import B_PER_EXPOSURE_A2, dose_weights
from ..refine.fourier import freq_grid_2d, irfft2_centered, pad_center, rfft2_centered
from ..refine.projection import FourierVolume, prepare_volume, project_rotations
from .geometry import frame_positions, interp_trajectory, matrices, normalised_xy, stage_matrices, tilt_projection

__all__ = ["TiltGeometry", "Records", "render_frames", "render_tilts", "frame_records", "tilt_records",
           "ctf_params", "render_box", "prepare_maps", "doming_offsets", "mag_distortion", "blur_damping",
           "DOMING_GRID"]

#: Warp's name of the doming grid (defocus change over position and exposure, µm).
DOMING_GRID = "GridCTFDoming"


@dataclass
class TiltGeometry:
    """What a tilt series' item model does not hold: the true per-tilt corrections.

    Attributes
    ----------
    angle_errors_deg: (n, 3) stage-angle errors (ωx, ωy, ωz), degrees.
    warp: (values_x, values_y), each (n, Y, X) Å: the image-warp grid, or None.
    defocus_angstrom: (n,) defocus of each tilt at the tilt centre (Å).
    """

    angle_errors_deg: np.ndarray
    warp: tuple[np.ndarray, np.ndarray] | None
    defocus_angstrom: np.ndarray


@dataclass
class Records:
    """Particle-frame (or particle-tilt) records of one species in one series.

    Attributes
    ----------
    particle: (B,) row of the particle in the table given.
    frame: (B,) frame or tilt index.
    position_angstrom: (B, 2) particle centre (x, y) in the image, Å.
    rotation: (B, 3, 3) RELION matrix in that frame.
    defocus_offset_angstrom: (B,) added to the item's defocus U and V (the particle's z plus,
        for frame series, the item's ``GridCTFDoming`` in that frame).
    """

    particle: np.ndarray
    frame: np.ndarray
    position_angstrom: np.ndarray
    rotation: np.ndarray
    defocus_offset_angstrom: np.ndarray

    def __len__(self) -> int:
        return int(self.particle.shape[0])

    def take(self, idx: np.ndarray) -> "Records":
        return Records(self.particle[idx], self.frame[idx], self.position_angstrom[idx], self.rotation[idx],
                       self.defocus_offset_angstrom[idx])


def ctf_params(item: Item, defocus_offset_angstrom, *, imaging=None) -> CtfParams:
    """Per-record CTF of an item: defocus U/V of its imaging model plus the offsets (Å)."""
    im = imaging or item.imaging
    off = torch.as_tensor(np.asarray(defocus_offset_angstrom, np.float64), dtype=torch.float32)
    return CtfParams(
        voltage_kv=float(im.voltage_kv),
        cs_mm=float(im.cs_mm),
        amplitude_contrast=float(im.amplitude_contrast),
        defocus_u_angstrom=float(im.defocus_u_angstrom) + off,
        defocus_v_angstrom=float(im.defocus_v_angstrom) + off,
        defocus_angle_deg=float(im.astigmatism_angle_deg),
        phase_shift_deg=float(im.phase_shift_deg),
        bfactor_a2=float(im.bfactor_a2),
        scale=float(im.scale),
    )


def _beam_tilt(item: Item):
    bt = tuple(float(v) for v in item.imaging.beam_tilt_mrad)
    return None if bt == (0.0, 0.0) else bt


def _mag(item: Item):
    m = tuple(tuple(float(v) for v in r) for r in item.imaging.mag_matrix)
    return None if m == ((1.0, 0.0), (0.0, 1.0)) else m


def _aberrations(item: Item) -> Aberrations | None:
    bt, m = _beam_tilt(item), _mag(item)
    if bt is None and m is None:
        return None
    return Aberrations(beam_tilt_mrad=bt, mag_matrix=m)


def mag_distortion(item: Item) -> np.ndarray | None:
    """(3, 3) ``Eᵀ`` with ``E = [[M, 0], [0, 1]]`` for the item's magnification matrix ``M``
    (``Eᵀ A`` is the matrix whose central slice samples ``Aᵀ (M k, 0)``); None for the identity."""
    m = _mag(item)
    if m is None:
        return None
    e = np.eye(3)
    e[:2, :2] = np.asarray(m, np.float64)
    return e.T


def doming_offsets(item: Item, coords: np.ndarray, n_frames: int | None = None) -> np.ndarray:
    """(N, F) defocus (Å) the item's ``GridCTFDoming`` adds to each particle in each frame: the
    grid (µm, × 10⁴) at the particle's first control point (``x̂ = x / (s W)``, ``ŷ = y / (s H)``)
    and ``t_f = f / (F − 1)``; zeros without the grid."""
    f = item.n if n_frames is None else int(n_frames)
    c = np.asarray(coords, np.float64)
    n = c.shape[0]
    g = item.grids.get(DOMING_GRID) if item.grids else None
    if g is None or n == 0:
        return np.zeros((n, f))
    x, y = normalised_xy(c[:, 0, :2], item.shape, item.imaging.pixel_size_angstrom)
    t = normalised_time(f, dtype=torch.float64).numpy()
    scale = 1e4 if g.unit == "um" else 1.0
    return g.evaluate(np.repeat(x, f), np.repeat(y, f), np.tile(t, n)).reshape(n, f) * scale


def blur_damping(blur: Mapping[str, Any] | None, frames: Sequence[int] | np.ndarray, box: int, pixel_size_angstrom: float,
                 *, device=None) -> torch.Tensor | None:
    """(B, box, box // 2 + 1) intra-frame blur ``exp(−2π² σ_f² (k·u)²)`` of the frames given
    (k in 1/Å, u = (cos φ, sin φ)); ``blur`` = ``{"angle_deg": φ, "sigma_angstrom": (F,)}``.
    None when no frame is blurred."""
    if not blur:
        return None
    sig = np.asarray(blur["sigma_angstrom"], np.float64)[np.asarray(frames, np.int64)]
    if not np.any(sig > 0):
        return None
    phi = math.radians(float(blur["angle_deg"]))
    ky, kx = freq_grid_2d(box, pixel_size_angstrom, device=device)
    ku = kx * math.cos(phi) + ky * math.sin(phi)
    s2 = torch.as_tensor(sig**2, dtype=torch.float32, device=ku.device)
    return torch.exp((-2.0 * math.pi**2) * s2[:, None, None] * (ku * ku)[None])


def render_box(item: Item, defocus_offsets: np.ndarray, map_box: int, *, pixel_size_angstrom: float | None = None) -> int:
    """Box (px) that holds a particle's delocalised signal without CTF aliasing up to Nyquist."""
    px = float(pixel_size_angstrom or item.imaging.pixel_size_angstrom)
    if len(defocus_offsets) == 0:
        return map_box
    off = np.asarray(defocus_offsets, np.float64)
    worst = off[np.argmax(np.abs(off + item.imaging.defocus_angstrom))]
    p = ctf_params(item, np.array([worst]))
    m = _mag(item)
    return aliasing_free_box(p, px, None, particle_diameter_angstrom=map_box * px, min_box=map_box,
                             aberrations=None if m is None else Aberrations(mag_matrix=m))


def prepare_maps(maps: Mapping[str, Any], pixel_size_angstrom: float, *, device=None) -> dict[str, FourierVolume]:
    """FourierVolumes of maps (arrays are prepared with padding 2; FourierVolumes pass through)."""
    out = {}
    for name, m in maps.items():
        if isinstance(m, FourierVolume):
            out[name] = m
        else:
            out[name] = prepare_volume(np.asarray(m, np.float32), pixel_size_angstrom, device=device)
    return out


def frame_records(item: Item, particles: Particles, grids: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Records:
    """Records of every particle in every frame of a frame series (positions with the motion grids
    ``grids``; defocus offsets: z plus the item's ``GridCTFDoming``, :func:`doming_offsets`)."""
    f = item.n
    coords = np.asarray(particles.coordinates[...], np.float64)
    angles = np.asarray(particles.angles[...], np.float64)
    n = coords.shape[0]
    pos = frame_positions(coords, f, item.shape, item.imaging.pixel_size_angstrom, grids)  # (N, F, 2)
    ang = interp_trajectory(angles, f)  # (N, F, 3)
    return Records(
        particle=np.repeat(np.arange(n), f),
        frame=np.tile(np.arange(f), n),
        position_angstrom=pos.reshape(-1, 2),
        rotation=matrices(ang.reshape(-1, 3)),
        defocus_offset_angstrom=(np.repeat(coords[:, 0, 2] if n else np.zeros(0), f)
                                 + doming_offsets(item, coords, f).reshape(-1)),
    )


def tilt_records(item: Item, particles: Particles, *, angle_errors_deg: np.ndarray | None = None,
                 warp: tuple[np.ndarray, np.ndarray] | None = None, defocus_angstrom: np.ndarray | None = None) -> Records:
    """Records of every particle in every tilt of a tilt series.

    ``defocus_angstrom`` (n,) is each tilt's defocus (default: the item's); the
    records' defocus offsets are relative to the item's defocus.
    """
    if item.kind != "tilts":
        raise InvalidInput("tilt records need a tilt series", item.name)
    nt = item.n
    coords = np.asarray(particles.coordinates[...], np.float64)[:, 0, :]
    angles = np.asarray(particles.angles[...], np.float64)[:, 0, :]
    n = coords.shape[0]
    axis = item.tilt_axis_deg if item.tilt_axis_deg is not None else np.zeros(nt)
    stage = stage_matrices(item.tilt_angles_deg, axis, angle_errors_deg)
    offsets = item.tilt_axis_offset_angstrom
    pos, height = tilt_projection(coords, stage, item.shape, item.imaging.pixel_size_angstrom, offsets, warp)
    a = matrices(angles)  # (N, 3, 3)
    rot = np.einsum("tij,njk->ntik", stage, a)
    tilt_df = np.zeros(nt) if defocus_angstrom is None else np.asarray(defocus_angstrom, np.float64) - item.imaging.defocus_angstrom
    return Records(
        particle=np.repeat(np.arange(n), nt),
        frame=np.tile(np.arange(nt), n),
        position_angstrom=pos.reshape(-1, 2),
        rotation=rot.reshape(-1, 3, 3),
        defocus_offset_angstrom=(height + tilt_df[None, :]).reshape(-1),
    )


def _render_records(stack: np.ndarray, fvol: FourierVolume, map_box: int, box: int, item: Item, rec: Records,
                    *, b_per_exposure: float, batch: int, progress=None, blur: Mapping[str, Any] | None = None) -> None:
    """Add the rendered records into ``stack`` (F, H, W) float32 in place."""
    if len(rec) == 0:
        return
    dev = fvol.device
    px = float(item.imaging.pixel_size_angstrom)
    h, w = stack.shape[1:]
    ab = _aberrations(item)
    dist = mag_distortion(item)
    dist_t = None if dist is None else torch.as_tensor(dist, dtype=torch.float32, device=dev)
    # the slice must stay inside the padded volume: |M k| < Nyquist of the map box
    r_max = None if dist is None else 0.5 * map_box / float(np.linalg.norm(dist[:2, :2], 2)) * (1.0 - 1e-6)
    expo = torch.as_tensor(np.asarray(item.exposure_mid, np.float64), dtype=torch.float32, device=dev)
    ky, kx = freq_grid_2d(box, None, device=dev)
    nyq = torch.ones_like(kx)
    nyq[box // 2, :] = 0
    nyq[:, box // 2] = 0
    centres = np.round(rec.position_angstrom / px).astype(np.int64)  # (B, 2) x, y pixel
    frac = torch.as_tensor(rec.position_angstrom / px - centres, dtype=torch.float32, device=dev)
    half = box // 2
    for s in range(0, len(rec), batch):
        e = min(len(rec), s + batch)
        rot = torch.as_tensor(rec.rotation[s:e], dtype=torch.float32, device=dev)
        if dist_t is not None:
            rot = dist_t @ rot  # Eᵀ A: the slice at Aᵀ (M k, 0)
        with torch.no_grad():
            proj = irfft2_centered(project_rotations(fvol, rot, None, out_box=map_box, r_max_px=r_max), map_box)
            big = rfft2_centered(pad_center(proj, box))
            ctf = ctf_2d(ctf_params(item, rec.defocus_offset_angstrom[s:e]), box, px, aberrations=ab, device=dev)
            dose = dose_weights(expo[torch.as_tensor(rec.frame[s:e], device=dev)], box, px,
                                b_per_exposure=b_per_exposure, device=dev)
            phase = (-2.0 * math.pi / box) * (kx[None] * frac[s:e, 0, None, None] + ky[None] * frac[s:e, 1, None, None])
            spec = big * ctf * (dose * nyq) * torch.polar(torch.ones_like(phase), phase)
            damp = blur_damping(blur, rec.frame[s:e], box, px, device=dev)
            if damp is not None:
                spec = spec * damp
            imgs = irfft2_centered(spec, box).cpu().numpy()
        for j in range(e - s):
            f = int(rec.frame[s + j])
            cx, cy = int(centres[s + j, 0]), int(centres[s + j, 1])
            x0, y0 = cx - half, cy - half
            xs0, ys0, xs1, ys1 = max(0, x0), max(0, y0), min(w, x0 + box), min(h, y0 + box)
            if xs1 > xs0 and ys1 > ys0:
                stack[f, ys0:ys1, xs0:xs1] += imgs[j, ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
        if progress is not None:
            progress(e - s)


def _motion_grids(motion) -> list[tuple[np.ndarray, np.ndarray]]:
    if motion is None:
        return []
    if isinstance(motion, MotionPyramid):
        return [(gx.detach().cpu().numpy(), gy.detach().cpu().numpy()) for gx, gy in motion.grids]
    return [(np.asarray(gx), np.asarray(gy)) for gx, gy in motion]


def render_frames(
    maps: Mapping[str, Any],
    item: Item,
    particles_true: Mapping[str, Particles],
    motion: MotionPyramid | Sequence[tuple[np.ndarray, np.ndarray]] | None,
    *,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    device=None,
    batch: int = 64,
    progress=None,
    blur: Mapping[str, Any] | None | bool = None,
) -> np.ndarray:
    """Noiseless frames of one frame series: the forward model the simulator uses.

    Parameters
    ----------
    maps: species -> (N, N, N) map (z, y, x) at the item's pixel size, or a prepared
        :class:`~mrepo.refine.projection.FourierVolume`.
    item: the frame series with its **true** imaging model (defocus, astigmatism, beam tilt,
        magnification matrix), shape (F, H, W) and exposures (``pre_exposure``, ``dose``). Of its
        grids only ``GridCTFDoming`` is used (the motion is ``motion``).
    particles_true: species -> the particles of this item (every row is rendered):
        coordinate trajectories (N, T, 3) Å and Euler trajectories (N, T, 3) degrees.
    motion: the series' motion: a :class:`~mrepo.refine.deformation.MotionPyramid` or
        (values_x, values_y) grid pairs (Z, Y, X) in Å; None for none.
    b_per_exposure: exposure B-factor per e⁻/Å² (Å²).
    device: torch device of the computation (default: that of the maps, else CPU).
    batch: particle-frames rendered at once.
    progress: optional callable(n_done) for progress bars.
    blur: intra-frame motion blur ``{"angle_deg": φ, "sigma_angstrom": (F,) σ_f}`` (see the
        module docstring); None: ``item.extra["blur"]`` where present (the simulator's true items
        carry it); False: none.

    Returns
    -------
    (F, H, W) float32 images ``r`` (see the module docstring for the conventions).
    """
    if item.kind != "frames":
        raise InvalidInput("render_frames needs a frame series (use render_tilts)", item.name)
    px = float(item.imaging.pixel_size_angstrom)
    fvols = prepare_maps(maps, px, device=device)
    grids = _motion_grids(motion)
    if blur is None:
        blur = (item.extra or {}).get("blur")
    blur = blur or None
    stack = np.zeros(item.shape, np.float32)
    for name, parts in particles_true.items():
        if name not in fvols:
            raise InvalidInput("no map for this species", name)
        fv = fvols[name]
        if abs(fv.pixel_size_angstrom - px) > 1e-6 * px:
            raise InvalidInput("map and item pixel sizes differ", f"{name}: {fv.pixel_size_angstrom} vs {px} Å")
        rec = frame_records(item, parts, grids)
        box = render_box(item, rec.defocus_offset_angstrom, fv.box)
        _render_records(stack, fv, fv.box, box, item, rec, b_per_exposure=b_per_exposure, batch=batch, progress=progress,
                        blur=blur)
    return stack


def render_tilts(
    maps: Mapping[str, Any],
    item: Item,
    particles_true: Mapping[str, Particles],
    geometry: TiltGeometry | None,
    *,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    device=None,
    batch: int = 64,
    progress=None,
) -> np.ndarray:
    """Noiseless tilts of one tilt series (conventions in :mod:`mrepo.sim.geometry`).

    ``item`` carries the true tilt angles, axis and per-tilt offsets; ``geometry`` the true
    stage-angle errors, image warp and per-tilt defocus (None: none, the item's defocus).
    Particles hold specimen coordinates (first control point used) and orientations.
    Returns (n, H, W) float32.
    """
    if item.kind != "tilts":
        raise InvalidInput("render_tilts needs a tilt series (use render_frames)", item.name)
    px = float(item.imaging.pixel_size_angstrom)
    fvols = prepare_maps(maps, px, device=device)
    stack = np.zeros(item.shape, np.float32)
    g = geometry
    for name, parts in particles_true.items():
        fv = fvols[name]
        rec = tilt_records(item, parts, angle_errors_deg=None if g is None else g.angle_errors_deg,
                           warp=None if g is None else g.warp, defocus_angstrom=None if g is None else g.defocus_angstrom)
        box = render_box(item, rec.defocus_offset_angstrom, fv.box)
        _render_records(stack, fv, fv.box, box, item, rec, b_per_exposure=b_per_exposure, batch=batch, progress=progress)
    return stack
