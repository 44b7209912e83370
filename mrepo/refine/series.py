"""Refinement of one frame series as one multi-particle system (M, frame series).

Everything here is a pure function of (series data, references, model) →
(new model, back-projection partial sums), so a population's series can be
refined independently and in parallel (a cluster can map this over series).

Geometry (units: Å unless said; px only inside kernels)
-------------------------------------------------------
A particle's position in frame ``i`` is

    r_p(i) = λ_p(t_i) − G_fixed(x_p, y_p, t_i) − G_refined(x_p, y_p, t_i)

with ``λ_p`` its coordinate trajectory (T temporal control points, natural
cubic spline in time), ``G_fixed`` the motion grids from preprocessing
(Warp's ``GridMovementX/Y``, ``GridLocalMovementX/Y`` and the
``PyramidShiftX/Y_i`` of earlier refinements) and ``G_refined`` the
refined pyramid of grids (:class:`~mrepo.refine.deformation.MotionPyramid`),
all evaluated at the particle's normalised position ``(x_p, y_p)`` in the
field of view and the frame's normalised time ``t_i``; grids are subtracted,
as Warp does (``Movie.GetPositionInAllFrames``), so imported and exported
grids keep Warp's meaning. Coordinates are Å
from the centre of pixel (0, 0); pixel index = coordinate / pixel size.
Its orientation in frame ``i`` is ``θ_p(t_i)`` (RELION ZYZ Euler angles,
same temporal spline).

Data
----
Particle images are extracted once per series at the starting positions
(rounded to whole pixels), multiplied by their CTF at the aliasing-free box
and cropped to the species' box (M, "Avoiding CTF aliasing"); refinement
moves the reference instead (sub-pixel phase shifts). Frequencies where a
frame's dose weight is below 0.25 are left out for that frame.

Target
------
For each particle, the normalised cross-correlation over all its frames of
its spectrum-whitened, CTF-premultiplied data ``D`` with the reference
projection ``M = W · CTF²ₗ · w_dose · P(θ) · e^{2πi k·o}`` (``W`` the
whitening filter, ``CTF²ₗ`` the matching band-limited CTF², ``o`` the
origin), summed over particles of all species; maximised with L-BFGS with
exact gradients through autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import DegenerateResult
from ..model import defocus_at, motion_grid_pairs, motion_shifts
from .aliasing import aliasing_free_box, ctf_squared_bandlimited, premultiply_ctf
from .backprojection import Reconstructor
from .ctf import Aberrations, CtfParams
from .deformation import MotionPyramid, eval_grid, normalised_time, spline_basis
from .weights import FrameWeights
from .euler import euler_to_matrix
from .fourier import freq_grid_2d, rfft2_centered
from .projection import FourierVolume, project_rotations
from .symmetry import symmetry_matrices

__all__ = [
    "SeriesGeometry",
    "SpeciesBlock",
    "SeriesData",
    "SeriesModel",
    "SpeciesReference",
    "RefineSettings",
    "SeriesResult",
    "extract_series",
    "refine_series",
    "series_positions",
    "backproject_series",
    "rotvec_matrix",
    "refined_angles",
]



# ---------------------------------------------------------------------------
# data structures
# ---------------------------------------------------------------------------
@dataclass
class SeriesGeometry:
    """Field of view and time of one series."""

    n_frames: int
    height_px: int
    width_px: int
    pixel_size_angstrom: float
    exposure_mid: np.ndarray  # (F,) e⁻/Å² at the middle of each frame
    fixed_grids: list[tuple[Any, Any]] = field(default_factory=list)  # (x, y) CubicGrid pairs (Å), Warp's order

    def normalised_xy(self, coords_angstrom: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) in [0, 1] over the field of view for (N, 2+) Å coordinates (divided by
        the frame's size in Å, as Warp does)."""
        s = self.pixel_size_angstrom
        x = np.asarray(coords_angstrom)[..., 0] / (s * max(1, self.width_px))
        y = np.asarray(coords_angstrom)[..., 1] / (s * max(1, self.height_px))
        return np.clip(x, 0, 1), np.clip(y, 0, 1)


@dataclass
class SpeciesBlock:
    """The particles of one species in one series, extracted.

    Attributes
    ----------
    species: species name.
    index: (Np,) rows of these particles in the species' particle table.
    half: (Np,) 0 or 1 (half set − 1).
    coords0: (Np, T, 3) starting coordinate trajectory (Å).
    angles0: (Np, T, 3) starting orientation trajectory (deg).
    centres_px: (Np, F, 2) integer extraction centres (x, y px).
    data: (Np, F, b, b//2+1) complex: CTF-premultiplied, centred rfft of the particle images.
    ctf2: (Np, Fc, b, b//2+1) band-limited CTF² (the weight matching ``data``); Fc = F when
        the defocus changes over the exposure (doming), else 1.
    box: species box b (px).
    distortion: (3, 3) ``Eᵀ`` with ``E = [[M, 0], [0, 1]]`` for the item's anisotropic
        magnification ``M`` (RELION's ``rlnMagMat``: image frequency k is specimen
        frequency M k), applied to the particles' rotations; None for none.
    """

    species: str
    index: np.ndarray
    half: np.ndarray
    coords0: np.ndarray
    angles0: np.ndarray
    centres_px: np.ndarray
    data: torch.Tensor
    ctf2: torch.Tensor
    box: int
    distortion: torch.Tensor | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived, see _block_cache

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def angles_constant(self) -> bool:
        """True when the starting orientation does not change over the exposure."""
        return self.angles0.shape[1] == 1


@dataclass
class SeriesData:
    item_name: str
    item_digest: str
    geometry: SeriesGeometry
    blocks: dict[str, SpeciesBlock]
    whitening: dict[int, torch.Tensor]  # box -> (b, b//2+1) 1/sqrt(noise power)
    dose_w: dict[int, torch.Tensor]  # box -> (F, b, b//2+1) exposure weights (:func:`set_frame_weights`)
    dose_kmax: np.ndarray  # (F,) 1/Å beyond which a frame's exposure weight < 0.25
    frame_weights: Any = None  # the :class:`~mrepo.refine.weights.FrameWeights` behind dose_w
    target_w: dict[int, torch.Tensor] | None = None  # weights of the target when they differ from dose_w
    target_kmax: np.ndarray | None = None  # and its dose crop


@dataclass
class SpeciesReference:
    """A species' references: prepared half-maps and what the target may use."""

    name: str
    halves: tuple[FourierVolume, FourierVolume]
    box: int
    pixel_size_angstrom: float
    symmetry: str
    r_max_px: float  # frequencies used, Fourier px of the species box


@dataclass
class SeriesModel:
    """Parameters refined for one series."""

    pyramid: MotionPyramid
    coord_delta: dict[str, torch.Tensor]  # species -> (Np, T, 2) Å
    angle_delta: dict[str, torch.Tensor]  # species -> (Np, T, 3) rotation vectors (deg) applied after A₀

    def detach(self) -> "SeriesModel":
        return SeriesModel(
            MotionPyramid([(a.detach().clone(), b.detach().clone()) for a, b in self.pyramid.grids]),
            {k: v.detach().clone() for k, v in self.coord_delta.items()},
            {k: v.detach().clone() for k, v in self.angle_delta.items()},
        )


@dataclass
class RefineSettings:
    """How one series is refined.

    ``ramp``: fractions of each reference's resolution limit used in
    successive L-BFGS stages (coarse to fine: the target's basin is wide at
    low resolution, so particles several pixels off still find it);
    ``min_ramp_angstrom``: the coarsest stage is never finer than this.
    """

    params: frozenset[str] = frozenset({"motion", "poses"})
    lbfgs_iterations: int = 20
    device: str | torch.device = "cpu"
    batch: int = 4096  # particle-frames projected at once
    ramp: tuple[float, ...] = (0.4, 1.0)
    min_ramp_angstrom: float = 30.0
    prior_shift_px: float = 2.0  # Gaussian prior (σ) on each particle's position correction
    prior_angle_deg: float = 5.0  # and on its orientation correction
    prior_weight: float = 0.05  # per particle, in units of NCC
    prior_motion_step_angstrom: float = 2.0  # σ of the change of a motion grid node between consecutive time nodes
    prior_trajectory_step_angstrom: float = 1.0  # σ of a particle's position change between control points
    prior_trajectory_step_deg: float = 0.5  # and of its orientation change
    pose_species: frozenset[str] | None = None  # species whose particle poses are refined (None: all)


@dataclass
class SeriesResult:
    model: SeriesModel
    score_before: float
    score_after: float
    evaluations: int
    reconstructors: dict[str, Reconstructor] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------
def _time_basis(n_frames: int, t_samples: int, device) -> torch.Tensor:
    """(F, T) spline weights mapping T temporal control points to F frames."""
    return spline_basis(normalised_time(n_frames), t_samples, device=device)


def _fixed_shift(geom: SeriesGeometry, x: np.ndarray, y: np.ndarray, device) -> torch.Tensor:
    """(Np, F, 2) values (Å) of the fixed motion grids at particle positions (subtracted
    from the positions), margins included (:meth:`mrepo.model.CubicGrid.evaluate`)."""
    n, f = len(x), geom.n_frames
    if not geom.fixed_grids or n == 0:
        return torch.zeros((n, f, 2), device=device)
    t = normalised_time(f, dtype=torch.float64).numpy()
    v = motion_shifts(geom.fixed_grids, np.repeat(x, f), np.repeat(y, f), np.tile(t, n))
    return torch.as_tensor(v.reshape(n, f, 2), dtype=torch.float32, device=device)


def series_positions(
    geom: SeriesGeometry, coords: torch.Tensor, pyramid: MotionPyramid | None, *, device=None
) -> torch.Tensor:
    """(Np, F, 2) particle positions (Å) in every frame.

    ``coords`` is the (Np, T, 2+) coordinate trajectory; the fixed grids and the
    pyramid (if given) are added at each particle's starting position.
    """
    device = device or coords.device
    n, t_samples = coords.shape[0], coords.shape[1]
    f = geom.n_frames
    basis = _time_basis(f, t_samples, device)
    pos = torch.einsum("ft,ntc->nfc", basis, coords[..., :2])
    x, y = geom.normalised_xy(coords[:, 0, :2].detach().cpu().numpy())
    pos = pos - _fixed_shift(geom, x, y, device)
    if pyramid is not None and n:
        t = normalised_time(f, device=device)
        xs = torch.as_tensor(np.repeat(x, f), device=device, dtype=torch.float32)
        ys = torch.as_tensor(np.repeat(y, f), device=device, dtype=torch.float32)
        pos = pos - pyramid.shifts(xs, ys, t.repeat(n)).reshape(n, f, 2)
    return pos


# ---------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------
def _extract_boxes(frames: Any, centres_px: np.ndarray, box: int) -> np.ndarray:
    """(Np, F, box, box) float32 crops around integer centres; zero outside the frame."""
    n, f = centres_px.shape[:2]
    out = np.zeros((n, f, box, box), np.float32)
    if n == 0:
        return out
    h, w = frames.shape[1], frames.shape[2]
    half = box // 2
    for i in range(f):
        frame = np.asarray(frames[i], dtype=np.float32)
        for p in range(n):
            cx, cy = int(centres_px[p, i, 0]), int(centres_px[p, i, 1])
            x0, y0 = cx - half, cy - half
            xs0, ys0 = max(0, x0), max(0, y0)
            xs1, ys1 = min(w, x0 + box), min(h, y0 + box)
            if xs1 <= xs0 or ys1 <= ys0:
                continue
            out[p, i, ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0] = frame[ys0:ys1, xs0:xs1]
    return out


def _radial_average(power: torch.Tensor, box: int) -> torch.Tensor:
    """Rotationally averaged (b, b//2+1) power, as a (b, b//2+1) array."""
    ky, kx = freq_grid_2d(box, None, device=power.device)
    r = torch.sqrt(kx * kx + ky * ky).round().long().clamp(max=box // 2 + 1)
    nb = int(r.max()) + 1
    sums = torch.zeros(nb, device=power.device).index_add_(0, r.reshape(-1), power.reshape(-1))
    counts = torch.zeros(nb, device=power.device).index_add_(0, r.reshape(-1), torch.ones_like(power).reshape(-1))
    return (sums / counts.clamp(min=1))[r]


def imaging_aberrations(im: Any) -> Aberrations | None:
    """The optics beyond the basic CTF of an imaging model (beam tilt, Zernike terms,
    anisotropic magnification), or None when it has none."""
    bt = tuple(float(v) for v in im.beam_tilt_mrad)
    odd = tuple(im.odd_zernike) or None
    even = tuple(im.even_zernike) or None
    mag = None if _is_identity(im.mag_matrix) else [list(r) for r in im.mag_matrix]
    if bt == (0.0, 0.0) and odd is None and even is None and mag is None:
        return None
    return Aberrations(beam_tilt_mrad=None if bt == (0.0, 0.0) else bt, odd_zernike=odd, even_zernike=even, mag_matrix=mag)


def _is_identity(m: Any) -> bool:
    return np.allclose(np.asarray(m, np.float64), np.eye(2), atol=1e-9)


def mag_distortion(mag_matrix: Any, *, device=None) -> torch.Tensor | None:
    """``Eᵀ`` (3, 3) for ``E = [[M, 0], [0, 1]]``: rotations ``Eᵀ A`` make the projector sample
    the slice at ``Aᵀ (M k, 0)`` (None for the identity)."""
    if isinstance(mag_matrix, torch.Tensor):
        m = mag_matrix.to(dtype=torch.float32, device=device)
    else:
        if _is_identity(mag_matrix):
            return None
        m = torch.as_tensor(np.asarray(mag_matrix, np.float32), device=device)
    top = torch.cat([m.T, torch.zeros((2, 1), device=m.device)], dim=1)
    bottom = torch.tensor([[0.0, 0.0, 1.0]], device=m.device)
    return torch.cat([top, bottom], dim=0)


def particle_ctf(item: Any, geom: SeriesGeometry, coords: np.ndarray) -> CtfParams:
    """CTF parameters (batch (N, Fc)) of particles with (N, T, 3) coordinates: the item's defocus
    and astigmatism at each particle (:func:`mrepo.model.defocus_at`: GridCTF, GridCTFDoming...)
    plus the particle's z; Fc = F frames when that changes over the exposure, else 1."""
    im = item.imaging
    c = np.asarray(coords, np.float64)
    n = c.shape[0]
    x, y = geom.normalised_xy(c[:, 0, :2])
    t = normalised_time(geom.n_frames, dtype=torch.float64).numpy()
    du, dv, ang = defocus_at(item, x[:, None], y[:, None], t[None, :])
    if n and all(np.allclose(a, a[:, :1]) for a in (du, dv, ang)):
        du, dv, ang = du[:, :1], dv[:, :1], ang[:, :1]
    z = c[:, 0, 2:3] if c.shape[-1] > 2 else np.zeros((n, 1))
    return CtfParams(
        voltage_kv=float(im.voltage_kv),
        cs_mm=float(im.cs_mm),
        amplitude_contrast=float(im.amplitude_contrast),
        defocus_u_angstrom=torch.as_tensor(du + z, dtype=torch.float32),
        defocus_v_angstrom=torch.as_tensor(dv + z, dtype=torch.float32),
        defocus_angle_deg=torch.as_tensor(ang, dtype=torch.float32),
        phase_shift_deg=float(im.phase_shift_deg),
    )


def extract_series(
    item: Any,
    frames: Any,
    species_particles: dict[str, tuple[np.ndarray, Any]],
    boxes: dict[str, int],
    *,
    device: str | torch.device = "cpu",
    resolution_angstrom: float | None = None,
) -> SeriesData:
    """Extract, CTF-premultiply and Fourier-transform every particle of a series.

    Parameters
    ----------
    item: the :class:`mrepo.model.Item` (imaging model, exposure, fixed grids).
    frames: (F, H, W) raw frames (numpy, memmap or zarr).
    species_particles: species -> (row indices, Particles restricted to those rows).
    boxes: species -> box (px) of its maps; particles are compared at that box.
    """
    device = torch.device(device)
    im = item.imaging
    pix = float(im.pixel_size_angstrom)
    f, h, w = (int(s) for s in frames.shape)
    geom = SeriesGeometry(f, h, w, pix, np.asarray(item.exposure_mid, float), motion_grid_pairs(item.grids))
    ab = imaging_aberrations(im)
    distortion = mag_distortion(im.mag_matrix, device=device)
    blocks: dict[str, SpeciesBlock] = {}
    power_sum: dict[int, torch.Tensor] = {}
    power_n: dict[int, int] = {}
    for sp, (rows, parts) in species_particles.items():
        box = int(boxes[sp])
        coords0 = np.asarray(parts.coordinates[...], np.float32)
        angles0 = np.asarray(parts.angles[...], np.float32)
        half = np.clip(np.asarray(parts.half_set[...], np.int64) - 1, 0, 1)
        pos = series_positions(geom, torch.as_tensor(coords0), None).numpy()
        centres = np.round(pos / pix).astype(np.int64)
        n = len(rows)
        params = particle_ctf(item, geom, coords0)  # (n, Fc): the item's defocus at the particle plus its z
        work = box
        if n:
            work = max(box, aliasing_free_box(params, pix, resolution_angstrom, particle_diameter_angstrom=0.0, min_box=box,
                                              aberrations=ab))
        raw = _extract_boxes(frames, centres, work)  # (n, F, L, L)
        raw_t = torch.as_tensor(raw, device=device)
        # noise spectrum from the raw boxes (signal is weak per frame): for whitening
        if n:
            inner = raw_t[..., (work - box) // 2 : (work - box) // 2 + box, (work - box) // 2 : (work - box) // 2 + box]
            ps = (rfft2_centered(inner).abs() ** 2).mean(dim=(0, 1))
            power_sum[box] = power_sum.get(box, 0) + ps * n
            power_n[box] = power_n.get(box, 0) + n
        pre = premultiply_ctf(raw_t, params, pix, box, work_box=work, aberrations=ab) if n else torch.zeros((0, f, box, box))
        data = rfft2_centered(pre).to(torch.complex64)
        ctf2 = (ctf_squared_bandlimited(params, pix, box, work, aberrations=ab, device=device) if n
                else torch.zeros((0, 1, box, box // 2 + 1)))
        blocks[sp] = SpeciesBlock(sp, np.asarray(rows), half, coords0, angles0, centres, data, ctf2.to(torch.float32), box,
                                  distortion)
    whitening = {}
    dose_w = {}
    for box in {b.box for b in blocks.values()}:
        if box in power_sum:
            ps = _radial_average(power_sum[box] / power_n[box], box)
            whitening[box] = 1.0 / torch.sqrt(ps.clamp(min=ps[ps > 0].min() if (ps > 0).any() else 1.0))
        else:
            whitening[box] = torch.ones((box, box // 2 + 1), device=device)
    data = SeriesData(item.name, item.data_digest, geom, blocks, whitening, dose_w, np.zeros(f))
    set_frame_weights(data, FrameWeights.for_item(item))
    return data


def set_frame_weights(data: SeriesData, weights: FrameWeights, *, target: bool = True) -> None:
    """Use these exposure weights in the series' reconstruction and, unless ``target`` is
    False, in its target from now on (the exposure model, or weights fitted to the data:
    :mod:`mrepo.refine.weights`); with ``target=False`` the target uses the exposure model."""
    pix = data.geometry.pixel_size_angstrom
    if target:
        data.target_w, data.target_kmax = None, None
    elif data.target_w is None:
        model = FrameWeights.exposure(data.geometry.exposure_mid)
        boxes = {b.box for b in data.blocks.values()} | set(data.whitening)
        data.target_w = {box: model.weights(box, pix, device=data.whitening[box].device) for box in boxes}
        data.target_kmax = model.crop_frequency()
    for box in {b.box for b in data.blocks.values()} | set(data.whitening):
        data.dose_w[box] = weights.weights(box, pix, device=data.whitening[box].device)
    data.dose_kmax = weights.crop_frequency()
    data.frame_weights = weights
    for block in data.blocks.values():
        block.cache.clear()  # stage data depend on the weights


def frame_ncc_stats(data: SeriesData, refs: dict[str, SpeciesReference], model: SeriesModel, *, sectors: int = 12,
                    batch: int = 4096) -> dict[str, Any]:
    """Per species, the sums behind the per-frame NCC of particles and references in (shell,
    direction sector) bins (:class:`mrepo.refine.weights.NccStats`, ``fsc`` left at 1): the
    data :func:`mrepo.refine.weights.fit_frame_weights` fits. The model is ``CTF² · P`` at
    each frame's position, without exposure weights."""
    from .projection import disk_pixels
    from .weights import NccStats, bin_indices

    out = {}
    pix = data.geometry.pixel_size_angstrom
    f = data.geometry.n_frames
    for sp, block in data.blocks.items():
        n, box = len(block), block.box
        if n == 0 or sp not in refs:
            continue
        with torch.no_grad():
            origin, rots = _block_geometry(data, block, model)
            ref = replace(refs[sp], r_max_px=box / 2)
            flat, kx, ky = disk_pixels(box, box / 2, device=block.data.device)
            proj = _projections(block, ref, rots, batch)  # (Np, Fr, M)
            phi = _shift_phases(kx, ky, origin, box, pix)  # (Np, F, M)
            m = block.ctf2.reshape(n, block.ctf2.shape[1], -1)[..., flat] * proj * phi
            d = block.data.reshape(n, f, -1)[..., flat]
            num = (d.real * m.real + d.imag * m.imag).sum(0)  # (F, M)
            dd = (d.real**2 + d.imag**2).sum(0)
            mm = (m.real**2 + m.imag**2).sum(0)
            idx, k, psi = bin_indices(box, pix, sectors, device=block.data.device)
            bins = idx.reshape(-1)[flat]
            keep = bins >= 0
            nb = len(k) * sectors

            def binned(v: torch.Tensor) -> np.ndarray:
                acc = torch.zeros((f, nb), dtype=torch.float64, device=v.device)
                acc.index_add_(1, bins[keep], v[:, keep].to(torch.float64))
                return acc.reshape(f, len(k), sectors).cpu().numpy()

            out[sp] = NccStats(binned(num), binned(dd), binned(mm), k, psi, np.ones(len(k)))
    return out


# ---------------------------------------------------------------------------
# the target
# ---------------------------------------------------------------------------
def initial_model(data: SeriesData, pyramid_shapes: list[tuple[int, int, int]], temporal_samples: int, *, device) -> SeriesModel:
    return SeriesModel(
        MotionPyramid.zeros(pyramid_shapes, device=device),
        {k: torch.zeros((len(b), temporal_samples, 2), device=device) for k, b in data.blocks.items()},
        {k: torch.zeros((len(b), temporal_samples, 3), device=device) for k, b in data.blocks.items()},
    )


def _resample_time(x: np.ndarray, t_out: int) -> np.ndarray:
    """(N, T, C) trajectory control points resampled to t_out points (same curve where possible)."""
    n, t_in, c = x.shape
    if t_in == t_out:
        return x
    basis = spline_basis(normalised_time(t_out).numpy(), t_in).numpy()  # (t_out, t_in)
    return np.einsum("ot,ntc->noc", basis, x).astype(np.float32)


def rotvec_matrix(w_deg: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices exp([w]×) of rotation vectors ``w`` (degrees)."""
    w = torch.deg2rad(w_deg)
    z = torch.zeros_like(w[..., 0])
    k = torch.stack(
        [torch.stack([z, -w[..., 2], w[..., 1]], -1), torch.stack([w[..., 2], z, -w[..., 0]], -1), torch.stack([-w[..., 1], w[..., 0], z], -1)],
        dim=-2,
    )
    return torch.linalg.matrix_exp(k)


def _block_cache(data: SeriesData, block: SpeciesBlock, key: tuple, make):
    """Derived, constant tensors of a block (bases, fixed shifts, stage data), computed once."""
    c = block.cache
    if key not in c:
        c[key] = make()
    return c[key]


def _base_positions(data: SeriesData, block: SpeciesBlock) -> torch.Tensor:
    """(Np, F, 2) positions (Å) of the starting trajectories plus the fixed grids."""
    def make() -> torch.Tensor:
        geom = data.geometry
        dev = block.data.device
        coords0 = torch.as_tensor(block.coords0, device=dev)
        basis = _time_basis(geom.n_frames, coords0.shape[1], dev)
        pos = torch.einsum("ft,ntc->nfc", basis, coords0[..., :2])
        x, y = geom.normalised_xy(block.coords0[:, 0, :2])
        return pos - _fixed_shift(geom, x, y, dev)

    return _block_cache(data, block, ("base",), make)


def _pyramid_shift(data: SeriesData, block: SpeciesBlock, pyramid: MotionPyramid) -> torch.Tensor:
    """(Np, F, 2) shifts (Å) of the refined pyramid at the block's particles.

    Each grid is separable, ``G(x, y, t) = Σ wt(t) wy(y) wx(x) V``: the spatial
    weights of each particle and the temporal weights of each frame are
    computed once per block, so an evaluation costs O(Np·Z + Np·F) per grid.
    """
    dev = block.data.device
    n, f = len(block), data.geometry.n_frames
    out = torch.zeros((n, f, 2), device=dev)
    if not pyramid.grids or n == 0:
        return out
    x, y = data.geometry.normalised_xy(block.coords0[:, 0, :2])
    comps = []
    for gx, gy in pyramid.grids:
        z_, y_, x_ = gx.shape
        wx = _block_cache(data, block, ("wx", x_), lambda: spline_basis(x, x_, device=dev))
        wy = _block_cache(data, block, ("wy", y_), lambda: spline_basis(y, y_, device=dev))
        wt = _block_cache(data, block, ("wt", z_), lambda: spline_basis(normalised_time(f).numpy(), z_, device=dev))
        for k, g in enumerate((gx, gy)):
            at_p = torch.einsum("pj,pi,zji->pz", wy, wx, g)  # (Np, Z)
            comps.append((k, at_p @ wt.T))  # (Np, F)
    dx = sum(c for k, c in comps if k == 0)
    dy = sum(c for k, c in comps if k == 1)
    return torch.stack([dx, dy], dim=-1)


def _block_geometry(
    data: SeriesData, block: SpeciesBlock, model: SeriesModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins (Np, F, 2) (Å, RELION sign) and rotations (Np, Fr, 3, 3) of a block's particle-frames.

    ``Fr`` is 1 when the orientation is the same in every frame (a starting
    orientation and a correction with one temporal control point each), else F.
    Orientation corrections are small rotation vectors ω(t) (degrees) composed
    with the starting orientation, A(t) = A₀(t) · exp([ω(t)]×): well conditioned
    for every orientation, unlike offsets of Euler angles near tilt 0.
    """
    geom = data.geometry
    dev = block.data.device
    f = geom.n_frames
    delta = model.coord_delta[block.species]
    omega = model.angle_delta[block.species]
    pos = _base_positions(data, block) + torch.einsum("ft,ntc->nfc", _time_basis(f, delta.shape[1], dev), delta)
    pos = pos - _pyramid_shift(data, block, model.pyramid)
    centres = _block_cache(data, block, ("centres",), lambda: torch.as_tensor(block.centres_px, device=dev, dtype=torch.float32)
                           * geom.pixel_size_angstrom)
    origin = -(pos - centres)  # particle sits at +d from the box centre: origin -d
    if block.angles_constant and omega.shape[1] == 1:
        a0 = _block_cache(data, block, ("a0", 1), lambda: euler_to_matrix(torch.as_tensor(block.angles0, device=dev))[:, :1])
        rots = a0 @ rotvec_matrix(omega)
    else:
        a0 = _block_cache(data, block, ("a0", f), lambda: euler_to_matrix(
            torch.einsum("ft,ntc->nfc", _time_basis(f, block.angles0.shape[1], dev), torch.as_tensor(block.angles0, device=dev))))
        w = torch.einsum("ft,ntc->nfc", _time_basis(f, omega.shape[1], dev), omega)
        rots = a0 @ rotvec_matrix(w)
    if block.distortion is not None:
        rots = block.distortion @ rots
    return origin, rots


def _frequency_mask(data: SeriesData, box: int, r_max_px: float, device, *, target: bool = False) -> torch.Tensor:
    """(F, b, b//2+1) 0/1: frequencies used per frame (resolution limit and dose crop; the
    target's crop with ``target``)."""
    ky, kx = freq_grid_2d(box, None, device=device)
    r = torch.sqrt(kx * kx + ky * ky)
    pix = data.geometry.pixel_size_angstrom
    kmax = data.target_kmax if target and data.target_kmax is not None else data.dose_kmax
    kmax_px = torch.as_tensor(np.minimum(kmax * box * pix, box / 2), device=device, dtype=torch.float32)
    lim = torch.minimum(kmax_px, torch.tensor(float(r_max_px), device=device))
    m = (r[None] < lim[:, None, None]) & (r[None] >= 1.0)
    return m.to(torch.float32)


@dataclass
class _Stage:
    """A block's data restricted to the Fourier pixels of one resolution stage.

    With whitening ``W`` (weight ``w = W²`` × frame mask), model weight
    ``m = CTF²ₗ · w_dose`` and data ``d``: ``wmd = w·m·d`` (Np, F, M) and
    ``mmw = Σ_f w·m²`` (Np, M) or ``w·m²`` (Np, F, M), so that for a projection
    ``P`` and unit phase factors ``φ``, ``Σ w Re(d conj(m P φ)) = Re Σ wmd conj(P φ)``
    and ``Σ w |m P φ|² = Σ mmw |P|²``.
    """

    r_max_px: float
    flat: torch.Tensor  # (M,) indices into the (b, b//2+1) rfft array
    kx: torch.Tensor  # (M,) Fourier indices
    ky: torch.Tensor
    wmd: torch.Tensor  # (Np, F, M) complex
    mmw: torch.Tensor  # (Np, M) or (Np, F, M)
    dd: torch.Tensor  # (Np,) Σ w |d|²


def _stage(data: SeriesData, block: SpeciesBlock, r_max_px: float, per_frame: bool) -> _Stage:
    def make() -> _Stage:
        from .projection import disk_pixels

        box = block.box
        dev = block.data.device
        f = data.geometry.n_frames
        flat, kx, ky = disk_pixels(box, r_max_px, device=dev)
        mask = _frequency_mask(data, box, r_max_px, dev, target=True).reshape(f, -1)[:, flat]
        white = (data.whitening[box] ** 2).reshape(-1)[flat]
        d = block.data.reshape(len(block), f, -1)[..., flat]
        dw = (data.target_w if data.target_w is not None else data.dose_w)[box].reshape(f, -1)[:, flat]
        mw = block.ctf2.reshape(len(block), block.ctf2.shape[1], -1)[..., flat] * dw[None]  # (Np, F, M)
        w = (mask * white[None])[None]  # (1, F, M)
        dd = (w * (d.real**2 + d.imag**2)).sum(dim=(1, 2))
        mmw = w * mw * mw
        return _Stage(float(r_max_px), flat, kx, ky, w * mw * d, mmw if per_frame else mmw.sum(1), dd)

    return _block_cache(data, block, ("stage", round(float(r_max_px), 4), per_frame), make)


def _shift_phases(kx: torch.Tensor, ky: torch.Tensor, origin: torch.Tensor, box: int, pixel_size: float) -> torch.Tensor:
    """(..., M) unit phase factors exp(+2πi k·o / (n s)) of origins (..., 2) Å (the projector's sign)."""
    ph = (2 * math.pi / (box * pixel_size)) * (origin[..., 0:1] * kx + origin[..., 1:2] * ky)
    return torch.polar(torch.ones_like(ph), ph)


def _projections(block: SpeciesBlock, ref: SpeciesReference, rots: torch.Tensor, batch: int) -> torch.Tensor:
    """(Np, Fr, M) reference projections (each particle from its own half-map)."""
    n, fr = rots.shape[:2]
    dev = block.data.device
    out = None
    flat_rots = rots.reshape(n * fr, 3, 3)
    half = torch.as_tensor(block.half, device=dev).repeat_interleave(fr)
    for h in (0, 1):
        idx = torch.nonzero(half == h).squeeze(1)
        for s in range(0, idx.numel(), batch):
            sel = idx[s : s + batch]
            p = project_rotations(ref.halves[h], flat_rots[sel], None, out_box=block.box, r_max_px=ref.r_max_px, flat_output=True)
            if out is None:
                out = torch.zeros((n * fr, p.shape[-1]), dtype=p.dtype, device=dev)
            out = out.index_copy(0, sel, p)
    return out.reshape(n, fr, -1)


def _block_score(
    data: SeriesData, block: SpeciesBlock, ref: SpeciesReference, model: SeriesModel, batch: int
) -> torch.Tensor:
    """(Np,) NCC of each particle over its frames (only the Fourier pixels used).

    Orientations that do not change over the exposure are projected once per
    particle (not per frame); per-frame positions enter as phase factors. When
    the orientations are not being refined, the projections are reused between
    evaluations.
    """
    n = len(block)
    if n == 0:
        return torch.zeros(0, device=block.data.device)
    origin, rots = _block_geometry(data, block, model)
    per_frame = rots.shape[1] > 1
    st = _stage(data, block, ref.r_max_px, per_frame)
    omega = model.angle_delta[block.species]
    if omega.requires_grad:
        proj = _projections(block, ref, rots, batch)
    else:
        key = ("proj", round(ref.r_max_px, 4), id(ref.halves[0]), omega.data_ptr(), omega._version, per_frame)
        stale = [k for k in block.cache if k[0] == "proj" and k != key]
        for k in stale:
            del block.cache[k]
        proj = _block_cache(data, block, key, lambda: _projections(block, ref, rots.detach(), batch))
    phi = _shift_phases(st.kx, st.ky, origin, block.box, data.geometry.pixel_size_angstrom)  # (Np, F, M)
    if per_frame:
        model_ft = proj * phi
        num = (st.wmd.real * model_ft.real + st.wmd.imag * model_ft.imag).sum(dim=(1, 2))
        mm = (st.mmw * (proj.real**2 + proj.imag**2)).sum(dim=(1, 2))
    else:
        # Σ_f wmd conj(φ): the frames aligned onto the particle, then one product per pixel
        s = (st.wmd * phi.conj()).sum(dim=1)  # (Np, M)
        p = proj[:, 0]
        num = (s.real * p.real + s.imag * p.imag).sum(dim=1)
        mm = (st.mmw * (p.real**2 + p.imag**2)).sum(dim=1)
    return num / torch.sqrt(st.dd * mm + 1e-30)


def series_score(data: SeriesData, refs: dict[str, SpeciesReference], model: SeriesModel, batch: int = 4096) -> torch.Tensor:
    """Sum over species and particles of the per-particle NCC."""
    total = torch.zeros((), device=next(iter(data.whitening.values())).device)
    for sp, block in data.blocks.items():
        if len(block):
            total = total + _block_score(data, block, refs[sp], model, batch).sum()
    return total


# ---------------------------------------------------------------------------
# refinement of one series
# ---------------------------------------------------------------------------
def _prior(data: SeriesData, model: SeriesModel, settings: RefineSettings) -> torch.Tensor:
    """Negative log of Gaussian priors on the particles' corrections (MAP, as
    RELION's prior on offsets): a correction of one σ costs ``prior_weight / 2``
    of a particle's NCC, so well-determined particles move freely while ones
    the data do not determine stay near their starting pose."""
    s_shift = settings.prior_shift_px * data.geometry.pixel_size_angstrom
    total = torch.zeros(())
    for d in model.coord_delta.values():
        total = total + (d * d).sum() / (2 * s_shift**2)
        if d.shape[1] > 1:  # trajectories are smooth: a prior on the change between control points
            step = d[:, 1:] - d[:, :-1]
            total = total + (step * step).sum() / (2 * settings.prior_trajectory_step_angstrom**2)
    for w in model.angle_delta.values():
        total = total + (w * w).sum() / (2 * settings.prior_angle_deg**2)
        if w.shape[1] > 1:
            step = w[:, 1:] - w[:, :-1]
            total = total + (step * step).sum() / (2 * settings.prior_trajectory_step_deg**2)
    # beam-induced motion is smooth: a random-walk prior on each refined grid
    # node over time (as the velocity prior of RELION's Bayesian polishing),
    # weighted like one particle per node so that it scales with the data
    n = sum(len(b) for b in data.blocks.values())
    motion = torch.zeros(())
    n_nodes = 0
    for g in model.pyramid.parameters():
        if g.shape[0] > 1:
            d = g[1:] - g[:-1]
            motion = motion + (d * d).sum() / (2 * settings.prior_motion_step_angstrom**2)
            n_nodes += g[0].numel()
    if n_nodes:
        total = total + motion * (n / n_nodes)
    return settings.prior_weight * total


def _ramp(refs: dict[str, SpeciesReference], settings: RefineSettings) -> list[dict[str, SpeciesReference]]:
    """References limited to successively higher resolutions (coarse to fine)."""
    stages = []
    seen = set()
    for f in settings.ramp:
        stage = {}
        for k, r in refs.items():
            coarsest = r.box * r.pixel_size_angstrom / settings.min_ramp_angstrom
            lim = min(r.r_max_px, max(r.r_max_px * f, coarsest, 2.0))
            stage[k] = replace(r, r_max_px=float(lim))
        key = tuple(round(v.r_max_px, 3) for v in stage.values())
        if key not in seen:
            seen.add(key)
            stages.append(stage)
    return stages


def refine_series(
    data: SeriesData,
    refs: dict[str, SpeciesReference],
    model: SeriesModel,
    settings: RefineSettings,
) -> SeriesResult:
    """Maximise the series' score over its motion and particle poses with L-BFGS.

    Returns the refined model (detached) and the scores before and after.
    ``settings.params`` chooses the groups: ``motion`` (the pyramid),
    ``poses`` (coordinate and angle trajectories).
    """
    model = model.detach()
    shift_vars: list[torch.Tensor] = []
    if "motion" in settings.params:
        shift_vars += model.pyramid.parameters()
    posed = [k for k in model.coord_delta if settings.pose_species is None or k in settings.pose_species]
    if "poses" in settings.params:
        shift_vars += [model.coord_delta[k] for k in posed]
    angle_vars = [model.angle_delta[k] for k in posed] if "poses" in settings.params else []
    with torch.no_grad():
        before = float(series_score(data, refs, model, settings.batch))
    if not math.isfinite(before):
        raise DegenerateResult("the target is not finite at the starting model", data.item_name)
    n_particles = sum(len(b) for b in data.blocks.values())
    if not (shift_vars or angle_vars) or settings.lbfgs_iterations <= 0 or n_particles == 0:
        return SeriesResult(model, before, before, 1)
    evals = 0
    stages = _ramp(refs, settings)
    for k, stage_refs in enumerate(stages):
        # orientations only at the finest stage: at coarse resolutions they are
        # not determined and would wander; positions and motion are refined throughout
        variables = shift_vars + (angle_vars if k == len(stages) - 1 else [])
        if not variables:
            continue
        for v in shift_vars + angle_vars:
            v.requires_grad_(any(v is u for u in variables))
        opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=settings.lbfgs_iterations, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure(stage_refs: dict[str, SpeciesReference] = stage_refs) -> torch.Tensor:
            nonlocal evals
            opt.zero_grad()
            loss = (-series_score(data, stage_refs, model, settings.batch) + _prior(data, model, settings)) / max(1, n_particles)
            if not torch.isfinite(loss):
                raise DegenerateResult("the target became NaN during refinement", data.item_name)
            loss.backward()
            evals += 1
            return loss

        opt.step(closure)
    model = model.detach()
    with torch.no_grad():
        after = float(series_score(data, refs, model, settings.batch))
    return SeriesResult(model, before, after, evals)


# ---------------------------------------------------------------------------
# reconstruction
# ---------------------------------------------------------------------------
def backproject_series(
    data: SeriesData,
    model: SeriesModel,
    reconstructors: dict[str, Reconstructor],
    symmetry: dict[str, str],
    *,
    batch: int = 1024,
) -> None:
    """Insert every particle-frame of the series into its species' half-map accumulators.

    Data are the CTF-premultiplied images times the frame's dose weight; weights
    are the band-limited CTF² times the squared dose weight, both divided by the
    noise power (SNR units). When a particle's orientation is the same in every
    frame, its frames are first aligned (their origins undone as phase factors)
    and summed, and the sum is inserted once: the same result as inserting every
    frame, since insertion is linear and the weights do not depend on the shift.
    Symmetric species insert each image at all symmetry-equivalent orientations.
    """
    from .backprojection import backproject

    for sp, block in data.blocks.items():
        n, f = len(block), data.geometry.n_frames
        if n == 0:
            continue
        rec = reconstructors[sp]
        box = block.box
        with torch.no_grad():
            origin, rots = _block_geometry(data, block, model)
            dw = data.dose_w[box]
            mask = _frequency_mask(data, box, box / 2, block.data.device)  # dose crop only
            inv_noise = data.whitening[box] ** 2  # 1 / noise power: data and weights in SNR units
            x = block.data * (dw * mask * inv_noise)[None]  # (Np, F, b, b2)
            wts = block.ctf2 * (dw * dw * mask * inv_noise)[None]  # (Np, F, b, b2)
            if rots.shape[1] == 1:
                ky, kx = freq_grid_2d(box, None, device=block.data.device)
                phi = _shift_phases(kx.reshape(-1), ky.reshape(-1), origin, box, data.geometry.pixel_size_angstrom)
                x = (x.reshape(n, f, -1) * phi.conj()).sum(dim=1).reshape(n, 1, box, box // 2 + 1)
                wts = wts.sum(dim=1, keepdim=True)
                origin = None
            fr = rots.shape[1]
            x = x.reshape(n * fr, box, box // 2 + 1)
            wts = wts.reshape(n * fr, box, box // 2 + 1)
            rots = rots.reshape(n * fr, 3, 3)
            origin = origin.reshape(n * fr, 2) if origin is not None else None
            ops = torch.as_tensor(symmetry_matrices(symmetry.get(sp, "C1")), dtype=rots.dtype, device=rots.device)
            g = ops.shape[0]
            half = np.repeat(block.half, fr)
            for h in (0, 1):
                idx = torch.as_tensor(np.flatnonzero(half == h), device=rots.device)
                for s in range(0, idx.numel(), batch):
                    sel = idx[s : s + batch]
                    r = torch.einsum("bij,gjk->bgik", rots[sel], ops).reshape(-1, 3, 3)
                    xs = x[sel].repeat_interleave(g, dim=0)
                    ws = wts[sel].repeat_interleave(g, dim=0)
                    os_ = origin[sel].repeat_interleave(g, dim=0) if origin is not None else None
                    backproject(rec.halves[h], xs, ws, shifts_angstrom=os_, rotations=r)


def refined_angles(angles0: np.ndarray, delta: torch.Tensor, t_samples: int) -> np.ndarray:
    """(N, T, 3) Euler angles (deg): starting trajectories composed with rotation-vector
    corrections, both resampled to ``t_samples`` control points."""
    from .euler import matrix_to_euler

    a0 = euler_to_matrix(torch.as_tensor(_resample_time(np.asarray(angles0, np.float32), t_samples), dtype=torch.float64))
    w = _resample_time(delta.detach().cpu().numpy().astype(np.float32), t_samples)
    r = a0 @ rotvec_matrix(torch.as_tensor(w, dtype=torch.float64))
    return matrix_to_euler(r).numpy().astype(np.float32)
