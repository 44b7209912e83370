"""Build a simulated population with known ground truth: ``mrepo sim`` / :func:`simulate`.

What is simulated (conventions in :mod:`mrepo.sim.geometry` and :mod:`mrepo.sim.render`,
parameters in :class:`mrepo.sim.config.SimConfig`):

1. species maps: pseudo-atomic models (:mod:`mrepo.sim.maps`);
2. frame series (source ``movies``): non-overlapping particles of all species in
   each field of view, true pose trajectories, per-particle defocus (z), item
   astigmatism, beam tilt and anisotropic magnification, a doming grid
   (``GridCTFDoming``), anisotropic intra-frame blur in the first frames,
   global drift plus a local motion pyramid; the
   noiseless frames ``r`` (:func:`mrepo.sim.render.render_frames`), then the
   counts: Poisson with mean ``D_f (1 + c r)``, ``D_f`` = dose × pixel area,
   ``c`` set so that the first species' mean per-particle SNR over all frames
   is ``config.snr``;
3. tilt series (source ``tiltseries``): particles in a slab, dose-symmetric
   acquisition, per-tilt stage-angle errors, shifts, image warp and defocus
   (:func:`mrepo.sim.render.render_tilts`), the same noise model;
4. the "as imported" starting values (what Warp/RELION would hand over):
   perturbed poses and defocus, a noisy global-drift estimate in
   ``GridMovementX/Y`` (1×1×F), per-tilt defocus estimates in ``GridCTF``
   (µm), no beam tilt, identity magnification, no doming, nominal tilt geometry; half-maps reconstructed with
   them (random half sets);
5. one commit "Simulated population (preset, seed)" holding all of it, and the
   ground truth under ``OUT_DIR/truth`` (:mod:`mrepo.sim.truth`), outside the repository.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DegenerateResult, InvalidInput
from ..model import (
    CubicGrid,
    DataSource,
    ImagingModel,
    Item,
    Particles,
    Population,
    Species,
    array_content_digest,
    write_item,
    write_population,
)
from ..model.population import species_array_name
from ..model.provenance import item_digest
from ..refine.deformation import eval_grid, normalised_time, pyramid_shapes
from ..refine.fsc import resolution_at
from ..store.arrays import write_array
from .config import SimConfig, preset as get_preset, species_box
from .geometry import (
    eval_grid_pairs,
    euler,
    item_motion_grids,
    matrices,
    random_rotations,
    small_rotations,
    time_basis,
)
from .flexible import FlexibleTruth, build_flexible
from .maps import pseudo_atomic_map
from .reconstruct import SeriesInput, reconstruct_records
from .render import TiltGeometry, frame_records, prepare_maps, render_frames, render_tilts, tilt_records
from .truth import ItemTruth, Truth, save_truth

__all__ = ["SimResult", "simulate", "FRAMES_SOURCE", "TILTS_SOURCE", "calibrate_contrast", "probe_snr", "mag_matrix",
           "doming_grid"]

FRAMES_SOURCE = "movies"
TILTS_SOURCE = "tiltseries"


@dataclass
class SimResult:
    """What :func:`simulate` built.

    Attributes
    ----------
    path: the output folder (repository at ``path``, ground truth in ``path/truth``).
    repo: the repository (:class:`mrepo.repository.Repository`).
    commit: id of the commit "Simulated population (preset, seed)".
    preset, seed, config: what built it.
    truth: the ground truth (also on disk: :func:`mrepo.sim.load_truth`).
    summary: counts, SNR, starting resolutions (also in the commit metadata).
    timings: seconds per stage (not in the repository, which is deterministic).
    pngs: pictures written (``png=True``).
    """

    path: Path
    repo: Any
    commit: str
    preset: str
    seed: int
    config: SimConfig
    truth: Truth
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    pngs: list[Path] = field(default_factory=list)


def _rng(seed: int, *keys: Any) -> np.random.Generator:
    """Independent, reproducible stream for one purpose (so that changing one part leaves the others)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(zlib.crc32(str(k).encode()) for k in keys)])


def _progress(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if enabled else True, file=sys.stderr)


# ---------------------------------------------------------------------------- SNR
def probe_snr(fvol, map_box: int, diameter_angstrom: float, cfg: SimConfig, exposure: np.ndarray, dose: np.ndarray,
              contrast: float, *, n_probe: int = 4, seed: int = 0) -> float:
    """Mean per-particle SNR over all frames of isolated particles of a species.

    SNR = mean over the particle's disc (its diameter) of ``(Σ_f D_f c r_f)²``, over
    the Poisson noise variance of the summed frames ``Σ_f D_f``; ``D_f`` electrons per
    pixel, ``r_f`` the rendered particle (mid-range defocus, no astigmatism).
    """
    px = cfg.pixel_size_angstrom
    rng = _rng(seed, "probe")
    im = ImagingModel(pixel_size_angstrom=px, voltage_kv=cfg.voltage_kv, cs_mm=cfg.cs_mm,
                      amplitude_contrast=cfg.amplitude_contrast, defocus_angstrom=float(np.mean(cfg.defocus_range_angstrom)))
    pre = np.asarray(exposure, np.float64)
    d = np.asarray(dose, np.float64)
    probe_box = 2 * map_box
    item = Item("probe", "frames", "probe", (len(d), probe_box, probe_box), im, pre, d)
    elec = d * px * px
    c = probe_box // 2
    yy, xx = np.mgrid[:probe_box, :probe_box]
    disc = (xx - c) ** 2 + (yy - c) ** 2 <= (0.5 * diameter_angstrom / px) ** 2
    vals = []
    for ang in euler(random_rotations(n_probe, rng)):
        parts = Particles.from_arrays(["probe"], np.array([[[c * px, c * px, 0.0]]]), ang[None, None, :])
        r = render_frames({"p": fvol}, item, {"p": parts}, None)
        s = np.tensordot(elec, r, axes=1) * contrast
        vals.append(float((s[disc] ** 2).mean() / elec.sum()))
    return float(np.mean(vals))


def calibrate_contrast(fvol, map_box: int, diameter_angstrom: float, cfg: SimConfig, seed: int) -> float:
    """Contrast ``c`` giving the configured SNR to the first species' particles in a movie."""
    f = cfg.n_frames
    dose = np.full(f, cfg.dose_per_frame)
    pre = np.arange(f) * cfg.dose_per_frame
    target = cfg.snr if cfg.snr is not None else 0.1
    unit = probe_snr(fvol, map_box, diameter_angstrom, cfg, pre, dose, 1.0, seed=seed)
    if not unit > 0:
        raise DegenerateResult("the probe particle has no signal", "contrast calibration")
    return math.sqrt(target / unit)


# ---------------------------------------------------------------------------- placement
def _place(rng: np.random.Generator, radii: np.ndarray, lo: np.ndarray, hi: np.ndarray, gap: float,
           tries: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential placement of spheres (radii, Å) in a box [lo, hi] (2 or 3 axes), largest first.

    Returns (positions (M, d), indices (M,) of the radii placed); those that do not fit are dropped.
    """
    order = np.argsort(-radii, kind="stable")
    pos: list[np.ndarray] = []
    rad: list[float] = []
    kept: list[int] = []
    for i in order:
        r = radii[i]
        lo_i = lo + np.where(np.isfinite(hi), r, 0.0)
        hi_i = hi - np.where(np.isfinite(hi), r, 0.0)
        if np.any(hi_i < lo_i):
            continue
        cand = rng.uniform(lo_i, hi_i, size=(tries, len(lo)))
        if pos:
            p = np.array(pos)
            need = np.array(rad)[None, :] + r + gap
            d2 = ((cand[:, None, :] - p[None]) ** 2).sum(-1)
            ok = np.all(d2 >= need**2, axis=1)
        else:
            ok = np.ones(tries, bool)
        good = np.flatnonzero(ok)
        if len(good):
            pos.append(cand[good[0]])
            rad.append(float(r))
            kept.append(int(i))
    kept_arr = np.array(kept, np.int64)
    srt = np.argsort(kept_arr)
    return (np.array(pos)[srt] if pos else np.zeros((0, len(lo)))), kept_arr[srt]


def _species_draw(rng: np.random.Generator, cfg: SimConfig, n: int) -> np.ndarray:
    p = np.array([cfg.proportions()[s.name] for s in cfg.species])
    counts = rng.multinomial(n, p)
    return rng.permutation(np.repeat(np.arange(len(cfg.species)), counts))


def _trajectory(rng: np.random.Generator, base: np.ndarray, samples: int, sigma: float) -> np.ndarray:
    """(N, T, C) control points: base + zero-mean random offsets (RMS sigma) per control point."""
    n, c = base.shape
    if samples == 1 or sigma == 0:
        return np.repeat(base[:, None, :], samples, axis=1)
    d = rng.normal(scale=sigma, size=(n, samples, c))
    d -= d.mean(axis=1, keepdims=True)
    return base[:, None, :] + d


# ---------------------------------------------------------------------------- motion
def _true_motion(rng: np.random.Generator, cfg: SimConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """True pyramid: level 0 the global drift (one node per frame), then local beam-induced motion."""
    f = cfg.n_frames
    shapes = pyramid_shapes(max(1, cfg.motion_levels), cfg.motion_final, f)
    t = normalised_time(f, dtype=torch.float64).numpy()
    ang = rng.uniform(0, 2 * math.pi, 2)
    u = np.array([math.cos(ang[0]), math.sin(ang[0])])
    v = np.array([math.cos(ang[1]), math.sin(ang[1])])
    amp = cfg.drift_angstrom * rng.uniform(0.5, 1.0)
    lin = cfg.drift_angstrom * rng.uniform(0.2, 0.5)
    tau = rng.uniform(0.08, 0.25)
    path = amp * (1 - np.exp(-t / tau))[:, None] * u + lin * t[:, None] * v  # (F, 2)
    path -= path.mean(axis=0)
    out = [(path[:, 0].reshape(f, 1, 1).astype(np.float32), path[:, 1].reshape(f, 1, 1).astype(np.float32))]
    local = []
    for gx, gy, gz in shapes[1:]:
        pair = []
        for _ in range(2):
            walk = np.cumsum(rng.normal(size=(gz, gy, gx)), axis=0)
            walk -= walk.mean(axis=0, keepdims=True)
            pair.append(walk)
        local.append(pair)
    if local:
        # scale: RMS over the view of the local displacement from the first to the last frame
        g = np.linspace(0.0, 1.0, 9)
        gy_, gx_ = np.meshgrid(g, g, indexing="ij")
        xs, ys = gx_.reshape(-1), gy_.reshape(-1)
        d = (eval_grid_pairs(local, xs, ys, np.ones(81)) - eval_grid_pairs(local, xs, ys, np.zeros(81)))
        d -= d.mean(axis=0)
        rms = float(np.sqrt((d**2).sum(1).mean())) or 1.0
        k = cfg.local_motion_angstrom / rms
        out += [((a * k).astype(np.float32), (b * k).astype(np.float32)) for a, b in local]
    return out


def _global_estimate(rng: np.random.Generator, motion, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """A Warp-like 1×1×F drift estimate: the field's mean over the view at each frame, plus noise."""
    f = cfg.n_frames
    t = normalised_time(f, dtype=torch.float64)
    g = torch.linspace(0, 1, 9, dtype=torch.float64)
    gy_, gx_ = torch.meshgrid(g, g, indexing="ij")
    xs = gx_.reshape(-1).repeat(f)
    ys = gy_.reshape(-1).repeat(f)
    ts = t.repeat_interleave(81)
    est = np.zeros((f, 2))
    for vx, vy in motion:
        est[:, 0] += eval_grid(torch.as_tensor(vx, dtype=torch.float64), xs, ys, ts).reshape(f, 81).mean(1).numpy()
        est[:, 1] += eval_grid(torch.as_tensor(vy, dtype=torch.float64), xs, ys, ts).reshape(f, 81).mean(1).numpy()
    est += rng.normal(scale=cfg.drift_error_angstrom, size=est.shape)
    return est[:, 0].reshape(f, 1, 1).astype(np.float32), est[:, 1].reshape(f, 1, 1).astype(np.float32)


# ---------------------------------------------------------------------------- noise
def _counts(rng: np.random.Generator, r: np.ndarray, electrons: np.ndarray, contrast: float, noisy: bool) -> np.ndarray:
    """Counts (uint8/uint16, Poisson) or expected counts (float32) of rendered frames."""
    lam = electrons[:, None, None] * (1.0 + contrast * r.astype(np.float64))
    np.maximum(lam, 0.0, out=lam)
    if not noisy:
        return lam.astype(np.float32)
    k = rng.poisson(lam)
    return k.astype(np.uint8 if k.max() <= 255 else np.uint16)


def _imaging(rng: np.random.Generator, cfg: SimConfig) -> ImagingModel:
    bt = rng.normal(scale=cfg.beam_tilt_sigma_mrad, size=2) if cfg.beam_tilt_sigma_mrad > 0 else np.zeros(2)
    return ImagingModel(
        pixel_size_angstrom=cfg.pixel_size_angstrom,
        voltage_kv=cfg.voltage_kv,
        cs_mm=cfg.cs_mm,
        amplitude_contrast=cfg.amplitude_contrast,
        defocus_angstrom=float(round(rng.uniform(*cfg.defocus_range_angstrom), 1)),
        astigmatism_angstrom=float(round(rng.uniform(*cfg.astigmatism_range_angstrom), 1)),
        astigmatism_angle_deg=float(round(rng.uniform(0, 180), 2)),
        beam_tilt_mrad=(float(round(bt[0], 4)), float(round(bt[1], 4))),
    )


def _imported_imaging(rng: np.random.Generator, true: ImagingModel, cfg: SimConfig, defocus: float | None = None) -> ImagingModel:
    return replace(
        true,
        defocus_angstrom=true.defocus_angstrom if defocus is None else float(defocus),
        astigmatism_angstrom=float(round(true.astigmatism_angstrom + rng.normal(scale=cfg.astigmatism_error_angstrom), 1)),
        astigmatism_angle_deg=float(round(true.astigmatism_angle_deg + rng.normal(scale=cfg.astigmatism_angle_error_deg), 2)),
        beam_tilt_mrad=(0.0, 0.0),
        mag_matrix=((1.0, 0.0), (0.0, 1.0)),
    )


def mag_matrix(anisotropy: float, angle_deg: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """``M = R(θ) diag(1 + a, 1 − a) R(θ)ᵀ`` (RELION's ``rlnMagMat``: image frequency k is
    specimen frequency M k), θ = ``angle_deg``, a = ``anisotropy``."""
    th = math.radians(angle_deg)
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    m = r @ np.diag([1.0 + anisotropy, 1.0 - anisotropy]) @ r.T
    return ((float(m[0, 0]), float(m[0, 1])), (float(m[1, 0]), float(m[1, 1])))


def doming_grid(rng: np.random.Generator, rms_angstrom: float, dims: tuple[int, int, int] = (3, 3, 3)) -> CubicGrid:
    """A ``GridCTFDoming`` (X, Y, Z) grid in µm: 0 at the first time node, a random smooth pattern
    (a bowl and a tilt, random weights, zero mean over the view) × t at the others, scaled so
    that the RMS over the view at t = 1 is ``rms_angstrom`` (Å)."""
    gx, gy, gz = dims
    c = rng.normal(size=2)
    alpha = rng.uniform(0.0, 2.0 * math.pi)
    yn, xn = np.meshgrid(np.linspace(0.0, 1.0, gy), np.linspace(0.0, 1.0, gx), indexing="ij")
    bowl = (xn - 0.5) ** 2 + (yn - 0.5) ** 2
    tilt = (xn - 0.5) * math.cos(alpha) + (yn - 0.5) * math.sin(alpha)
    pattern = c[0] * 4.0 * bowl + c[1] * tilt  # (Y, X)
    t = np.linspace(0.0, 1.0, gz)
    g = np.linspace(0.0, 1.0, 17)
    ye, xe = (a.reshape(-1) for a in np.meshgrid(g, g, indexing="ij"))
    ones = np.ones_like(xe)
    unit = CubicGrid(dims, t[:, None, None] * pattern[None])
    v = unit.evaluate(xe, ye, ones)
    pattern = pattern - v.mean()
    unit = CubicGrid(dims, t[:, None, None] * pattern[None])
    rms = float(np.sqrt((unit.evaluate(xe, ye, ones) ** 2).mean()))
    k = rms_angstrom / rms if rms > 0 else 0.0
    return CubicGrid(dims, (t[:, None, None] * pattern[None] * k * 1e-4).astype(np.float32), unit="um")


def _perturb_angles(rng: np.random.Generator, angles_true: np.ndarray, rms_deg: float) -> np.ndarray:
    """(N, 1, 3) Euler angles of the true mid-exposure orientation turned by a random small rotation."""
    mid = np.einsum("t,ntc->nc", time_basis(3, angles_true.shape[1])[1], angles_true)
    a = small_rotations(len(mid), rms_deg, rng) @ matrices(mid)
    return euler(a)[:, None, :]


def _mid_coords(coords_true: np.ndarray) -> np.ndarray:
    return np.einsum("t,ntc->nc", time_basis(3, coords_true.shape[1])[1], coords_true)


def dose_symmetric_order(angles: np.ndarray) -> np.ndarray:
    """Acquisition position of each tilt (angles sorted ascending, one at 0°): Hagen's scheme
    0, +1, −1, −2, +2, +3, −3, … steps."""
    n = len(angles)
    zero = int(np.argmin(np.abs(angles)))
    seq = [zero]
    k, first = 1, +1
    while len(seq) < n:
        for s in (first, -first):
            i = zero + s * k
            if 0 <= i < n:
                seq.append(i)
        k += 1
        first = -first
    order = np.empty(n, np.int64)
    order[np.array(seq)] = np.arange(n)
    return order


# ---------------------------------------------------------------------------- flexible domain
def _conf_key(species: str, k: int) -> str:
    return f"{species}#{k}"


def _conformations(seed: int, cfg: SimConfig, kind: str, i: int, n: int) -> np.ndarray:
    """(n,) conformation of each particle of a series (a stream of its own; zeros when no species is flexible)."""
    if cfg.flexible_name() is None:
        return np.zeros(n, np.int64)
    return _rng(seed, "flexible", kind, i).integers(0, int(cfg.flexible_conformations), size=n)


def _render_parts(parts_true: dict[str, Particles], which: np.ndarray, conf: np.ndarray, cfg: SimConfig,
                  flex: dict[str, FlexibleTruth]) -> dict[str, Particles]:
    """The particles to render, by map: a flexible species' particles split by conformation."""
    if not flex:
        return parts_true
    out: dict[str, Particles] = {}
    for k, s in enumerate(cfg.species):
        if s.name not in parts_true:
            continue
        if s.name not in flex:
            out[s.name] = parts_true[s.name]
            continue
        p = parts_true[s.name]
        c = conf[which == k]
        coords, angles = np.asarray(p.coordinates), np.asarray(p.angles)
        for j in range(flex[s.name].n_conformations):
            sel = c == j
            if sel.any():
                out[_conf_key(s.name, j)] = Particles.from_arrays([""] * int(sel.sum()), coords[sel], angles[sel])
    return out


# ---------------------------------------------------------------------------- the simulation
def simulate(
    out_dir: str | os.PathLike[str],
    preset: str = "small",
    seed: int = 0,
    *,
    config: SimConfig | None = None,
    species: dict[str, float] | None = None,
    png: bool = False,
    device=None,
    progress: bool = True,
    echo=None,
) -> SimResult:
    """Build a simulated population in a new repository at ``out_dir``.

    Parameters
    ----------
    out_dir: folder for the repository (created; must not hold one already); the ground
        truth goes to ``out_dir/truth``.
    preset: ``tiny``, ``small`` or ``paper`` (see :data:`mrepo.sim.config.PRESETS`).
    seed: random seed; the same seed gives the same repository (same tree digests).
    config: a full configuration instead of the preset (its ``name`` is recorded).
    species: species proportions by name (e.g. ``{"large": .6, "small": .35, "rare": .05}``).
    png: also write ``truth/frame.png`` and ``truth/motion.png``.
    device: torch device for rendering and reconstruction (default CPU).
    progress: tqdm progress bars on stderr.
    echo: optional callable(str) for one-line stage reports.
    """
    import mrepo

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = config if config is not None else get_preset(preset, species=species)
    preset_name = cfg.name
    seed = int(seed)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput("output folder exists and is not empty; choose a new folder", str(out))
    say = echo or (lambda s: None)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    px = cfg.pixel_size_angstrom

    # -- species -------------------------------------------------------------------------
    t0 = time.perf_counter()
    specs = {s.name: s for s in cfg.species}
    boxes = {s.name: species_box(s, px, cfg.box_factor) for s in cfg.species}
    maps, atoms = {}, {}
    for s in cfg.species:
        maps[s.name], atoms[s.name] = pseudo_atomic_map(s.diameter_angstrom, s.symmetry, boxes[s.name], px, s.seed())
    fvols = prepare_maps(maps, px, device=dev)
    # an optional flexible domain: K conformation maps, one per particle (mrepo.sim.flexible)
    flex_name = cfg.flexible_name()
    flex: dict[str, FlexibleTruth] = {}
    rvols = fvols  # what the particles are rendered from (keys: species, or species#conformation)
    if flex_name is not None:
        flex[flex_name] = build_flexible(flex_name, atoms[flex_name], boxes[flex_name], px,
                                         fraction=cfg.flexible_fraction, rms_angstrom=cfg.flexible_angstrom,
                                         conformations=int(cfg.flexible_conformations), rng=_rng(seed, "flexible", flex_name))
        rvols = {**fvols, **prepare_maps({_conf_key(flex_name, k): m for k, m in enumerate(flex[flex_name].maps)}, px,
                                         device=dev)}
    first = cfg.species[0]
    contrast = calibrate_contrast(fvols[first.name], boxes[first.name], first.diameter_angstrom, cfg, seed)
    timings["maps"] = time.perf_counter() - t0
    say(f"species: {', '.join(f'{s.name} ({s.diameter_angstrom:.0f} Å, {s.symmetry}, box {boxes[s.name]})' for s in cfg.species)}; contrast {contrast:.4g}")

    radii = np.array([0.5 * s.diameter_angstrom for s in cfg.species])
    noisy = cfg.snr is not None
    # per species: lists of per-item arrays (truth and stored) to concatenate
    rows: dict[str, dict[str, list]] = {s.name: {k: [] for k in ("item", "ct", "at", "ci", "ai", "conf")} for s in cfg.species}
    items_truth: dict[str, ItemTruth] = {}
    stored_items: dict[str, list[Item]] = {FRAMES_SOURCE: [], TILTS_SOURCE: []}
    raws: dict[str, np.ndarray] = {}

    # -- frame series ------------------------------------------------------------------------
    t0 = time.perf_counter()
    f = cfg.n_frames
    h, w = cfg.frame_shape_px
    dose = np.full(f, cfg.dose_per_frame)
    pre = np.arange(f) * cfg.dose_per_frame
    electrons = dose * px * px
    n_render = cfg.n_movies * cfg.particles_per_movie * f
    bar = _progress(progress, n_render, "rendering movies")
    for i in range(cfg.n_movies):
        name = f"movie_{i:03d}"
        rng = _rng(seed, "movie", i)
        im_true = _imaging(rng, cfg)
        motion = _true_motion(rng, cfg)
        reach = cfg.drift_angstrom + 3 * cfg.local_motion_angstrom + 2 * px
        which = _species_draw(rng, cfg, cfg.particles_per_movie)
        lo = np.array([reach, reach])
        hi = np.array([(w - 1) * px - reach, (h - 1) * px - reach])
        xy, kept = _place(rng, radii[which], lo, hi, cfg.particle_gap_angstrom)
        which = which[kept]
        n = len(which)
        z = rng.uniform(-cfg.z_spread_angstrom, cfg.z_spread_angstrom, n)
        base = np.concatenate([xy, z[:, None]], axis=1)
        ct = _trajectory(rng, base, cfg.trajectory_samples[0], cfg.trajectory_shift_angstrom)
        ct[..., 2] = z[:, None]  # the defocus offset is constant in time
        at = _trajectory(rng, euler(random_rotations(n, rng)), cfg.trajectory_samples[1], cfg.trajectory_rotation_deg)
        # imaging effects of frame series: a stream of their own (directions always drawn)
        orng = _rng(seed, "movie", i, "optics")
        mag_angle = float(orng.uniform(0.0, 180.0))
        blur_angle = float(orng.uniform(0.0, 180.0))
        dome = doming_grid(orng, cfg.doming_angstrom)
        true_grids = {"GridCTFDoming": dome} if cfg.doming_angstrom > 0 else {}
        if cfg.mag_anisotropy > 0:
            im_true = replace(im_true, mag_matrix=mag_matrix(cfg.mag_anisotropy, mag_angle))
        sig = cfg.blur_sigma_angstrom(f)
        blur = {"angle_deg": blur_angle, "sigma_angstrom": [float(v) for v in sig]} if np.any(sig > 0) else None
        item_true = Item(name, "frames", "", (f, h, w), im_true, pre, dose, grids=true_grids,
                         extra={"blur": blur} if blur else {})
        parts_true = {s.name: Particles.from_arrays([""] * int((which == k).sum()), ct[which == k], at[which == k])
                      for k, s in enumerate(cfg.species) if (which == k).any()}
        conf = _conformations(seed, cfg, "movie", i, n)
        r = render_frames(rvols, item_true, _render_parts(parts_true, which, conf, cfg, flex), motion, device=dev,
                          progress=bar.update)
        raw = _counts(rng, r, electrons, contrast, noisy)
        del r
        digest = array_content_digest(raw)
        item_true.data_digest = digest
        raws[name] = raw
        items_truth[name] = ItemTruth(FRAMES_SOURCE, item_true, motion, None, electrons, blur=blur)
        # as imported
        est = _global_estimate(rng, motion, cfg)
        grids = {"GridMovementX": CubicGrid((1, 1, f), est[0]), "GridMovementY": CubicGrid((1, 1, f), est[1])}
        stored = Item(name, "frames", digest, (f, h, w), _imported_imaging(rng, im_true, cfg), pre, dose, grids=grids,
                      extra={"simulated": True})
        stored_items[FRAMES_SOURCE].append(stored)
        ci = _mid_coords(ct)
        ci[:, :2] += rng.normal(scale=cfg.pose_shift_error_px * px / math.sqrt(2), size=(n, 2))
        ci[:, 2] += rng.normal(scale=cfg.defocus_error_angstrom, size=n)
        ai = _perturb_angles(rng, at, cfg.pose_angle_error_deg)
        for k, s in enumerate(cfg.species):
            sel = which == k
            rows[s.name]["item"].append(np.full(int(sel.sum()), digest))
            rows[s.name]["ct"].append(ct[sel])
            rows[s.name]["at"].append(at[sel])
            rows[s.name]["ci"].append(ci[sel, None, :])
            rows[s.name]["ai"].append(ai[sel])
            rows[s.name]["conf"].append(conf[sel])
    bar.close()
    timings["movies"] = time.perf_counter() - t0
    if cfg.n_movies:
        say(f"movies: {cfg.n_movies} × {f} frames of {h}×{w} px rendered in {timings['movies']:.1f} s")

    # -- tilt series -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    angles_nom = cfg.tilt_angles()
    nt = len(angles_nom)
    th, tw = cfg.tilt_shape_px
    order = dose_symmetric_order(angles_nom)
    tdose = np.full(nt, cfg.dose_per_tilt)
    tpre = order * cfg.dose_per_tilt
    telec = tdose * px * px
    bar = _progress(progress, cfg.n_tilt_series * cfg.particles_per_tilt_series * nt, "rendering tilt series")
    for i in range(cfg.n_tilt_series):
        name = f"ts_{i:03d}"
        rng = _rng(seed, "tilt", i)
        im_true = _imaging(rng, cfg)
        which = _species_draw(rng, cfg, cfg.particles_per_tilt_series)
        half_slab = 0.5 * cfg.slab_thickness_angstrom
        reach = 2 * px + 3 * cfg.tilt_shift_angstrom
        lo = np.array([reach, reach, -half_slab])
        hi = np.array([(tw - 1) * px - reach, (th - 1) * px - reach, half_slab])
        xyz, kept = _place(rng, radii[which], lo, hi, cfg.particle_gap_angstrom)
        which = which[kept]
        n = len(which)
        ct = np.repeat(xyz[:, None, :], cfg.trajectory_samples[0], axis=1)
        at = np.repeat(euler(random_rotations(n, rng))[:, None, :], cfg.trajectory_samples[1], axis=1)
        errors = rng.normal(scale=cfg.tilt_angle_error_deg, size=(nt, 3))
        gx, gy = cfg.tilt_warp_grid
        warp = (rng.normal(scale=cfg.tilt_warp_angstrom, size=(nt, gy, gx)).astype(np.float32),
                rng.normal(scale=cfg.tilt_warp_angstrom, size=(nt, gy, gx)).astype(np.float32))
        offsets = rng.normal(scale=cfg.tilt_shift_angstrom, size=(nt, 2))
        offsets[np.argmin(np.abs(angles_nom))] = 0.0
        tilt_df = (im_true.defocus_angstrom + rng.normal(scale=cfg.tilt_defocus_sigma_angstrom, size=nt)
                   + rng.uniform(-1, 1) * cfg.tilt_defocus_sigma_angstrom * np.sin(np.deg2rad(angles_nom)))
        axis = np.full(nt, cfg.tilt_axis_deg)
        item_true = Item(name, "tilts", "", (nt, th, tw), im_true, tpre, tdose, tilt_angles_deg=angles_nom,
                         tilt_axis_deg=axis, tilt_axis_offset_angstrom=offsets)
        geom = TiltGeometry(errors, warp, tilt_df)
        parts_true = {s.name: Particles.from_arrays([""] * int((which == k).sum()), ct[which == k], at[which == k])
                      for k, s in enumerate(cfg.species) if (which == k).any()}
        conf = _conformations(seed, cfg, "tilt", i, n)
        r = render_tilts(rvols, item_true, _render_parts(parts_true, which, conf, cfg, flex), geom, device=dev,
                         progress=bar.update)
        raw = _counts(rng, r, telec, contrast, noisy)
        del r
        digest = array_content_digest(raw)
        item_true.data_digest = digest
        raws[name] = raw
        items_truth[name] = ItemTruth(TILTS_SOURCE, item_true, [], geom, telec)
        df_est = tilt_df + rng.normal(scale=cfg.tilt_defocus_error_angstrom, size=nt)
        grids = {"GridCTF": CubicGrid((1, 1, nt), (df_est * 1e-4).astype(np.float32), unit="um")}
        off_est = offsets + rng.normal(scale=cfg.tilt_shift_error_angstrom, size=offsets.shape)
        stored = Item(name, "tilts", digest, (nt, th, tw),
                      _imported_imaging(rng, im_true, cfg, defocus=round(float(df_est.mean()), 1)), tpre, tdose,
                      tilt_angles_deg=angles_nom, tilt_axis_deg=axis, tilt_axis_offset_angstrom=off_est, grids=grids,
                      extra={"simulated": True})
        stored_items[TILTS_SOURCE].append(stored)
        ci = ct[:, 0, :] + rng.normal(scale=cfg.pose_shift_error_px * px / math.sqrt(2), size=(n, 3))
        ai = _perturb_angles(rng, at, cfg.pose_angle_error_deg)
        for k, s in enumerate(cfg.species):
            sel = which == k
            rows[s.name]["item"].append(np.full(int(sel.sum()), digest))
            rows[s.name]["ct"].append(ct[sel])
            rows[s.name]["at"].append(at[sel])
            rows[s.name]["ci"].append(ci[sel, None, :])
            rows[s.name]["ai"].append(ai[sel])
            rows[s.name]["conf"].append(conf[sel])
    bar.close()
    timings["tilt_series"] = time.perf_counter() - t0
    if cfg.n_tilt_series:
        say(f"tilt series: {cfg.n_tilt_series} × {nt} tilts of {th}×{tw} px rendered in {timings['tilt_series']:.1f} s")

    # -- particle tables ----------------------------------------------------------------------------
    particles_true: dict[str, Particles] = {}
    particles_stored: dict[str, Particles] = {}
    rng = _rng(seed, "halves")
    for s in cfg.species:
        rw = rows[s.name]
        digs = np.concatenate(rw["item"]) if rw["item"] else np.zeros(0, str)
        n = len(digs)
        half = np.full(n, 2, np.int8)
        half[rng.permutation(n)[: (n + 1) // 2]] = 1
        tsa, tsb = cfg.trajectory_samples
        ct = np.concatenate(rw["ct"]) if n else np.zeros((0, tsa, 3))
        at = np.concatenate(rw["at"]) if n else np.zeros((0, tsb, 3))
        ci = np.concatenate(rw["ci"]) if n else np.zeros((0, 1, 3))
        ai = np.concatenate(rw["ai"]) if n else np.zeros((0, 1, 3))
        particles_true[s.name] = Particles.from_arrays(digs, ct, at, half)
        particles_stored[s.name] = Particles.from_arrays(digs, ci, ai, half)
        if s.name in flex:
            flex[s.name].conformation = np.concatenate(rw["conf"]).astype(np.int64) if n else np.zeros(0, np.int64)

    # -- starting half-maps ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    species_objs: dict[str, Species] = {}
    half_maps: dict[str, list[np.ndarray]] = {}
    start_res: dict[str, float | None] = {}
    all_items = {it.name: (src, it) for src, its in stored_items.items() for it in its}
    for s in cfg.species:
        p = particles_stored[s.name]
        inputs = []
        for name, (src, it) in all_items.items():
            idx = p.in_item(it.data_digest)
            if not len(idx):
                continue
            sub = p.select(np.isin(np.arange(len(p)), idx))
            if src == FRAMES_SOURCE:
                rec = frame_records(it, sub, item_motion_grids(it))
                inputs.append(SeriesInput(it, raws[name], rec, sub.half_set, combine_frames=True))
            else:
                df = it.grids["GridCTF"].values.reshape(-1).astype(np.float64) * 1e4
                rec = tilt_records(it, sub, defocus_angstrom=df)
                inputs.append(SeriesInput(it, raws[name], rec, sub.half_set, combine_frames=False))
        if cfg.reconstruct_half_maps and inputs:
            total = sum(len(x.records) for x in inputs)
            bar = _progress(progress, total, f"reconstructing {s.name}")
            res = reconstruct_records(inputs, boxes[s.name], px, symmetry=s.symmetry, scheme="plain",
                                      diameter_angstrom=s.diameter_angstrom, device=dev, progress=bar.update)
            bar.close()
            half_maps[s.name] = res.half_maps
            try:
                start_res[s.name] = round(float(resolution_at(res.fsc, 0.143)), 2)
            except DegenerateResult:
                start_res[s.name] = None
    timings["half_maps"] = time.perf_counter() - t0
    if half_maps:
        say("starting half-maps: " + ", ".join(f"{k} {v if v else '-'} Å" for k, v in start_res.items())
            + f" (FSC 0.143 between halves) in {timings['half_maps']:.1f} s")

    # -- SNR report ------------------------------------------------------------------------------------
    snr: dict[str, dict[str, float]] = {}
    for src, expo, dz in ((FRAMES_SOURCE, pre, dose), (TILTS_SOURCE, tpre, tdose)):
        if not stored_items[src] or not noisy:
            continue
        snr[src] = {s.name: round(probe_snr(fvols[s.name], boxes[s.name], s.diameter_angstrom, cfg, expo, dz, contrast,
                                            seed=seed), 4) for s in cfg.species}

    # -- repository -------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    repo = mrepo.init_repo(out)
    txn = repo.transaction()
    try:
        pop = Population(f"simulated-{preset_name}-{seed}", extra={"simulated": {"preset": preset_name, "seed": seed}})
        for src, its in stored_items.items():
            if not its:
                continue
            ds = DataSource(src, "frames" if src == FRAMES_SOURCE else "tilts", extra={"simulated": True})
            for it in its:
                write_item(txn, src, it, raw=raws[it.name])
                ds.add(it)
            pop.sources[src] = ds
        attrs = {"voxel_size": [px] * 3, "voxel_size_unit": "angstrom"}
        for s in cfg.species:
            p = particles_stored[s.name]
            sp_maps = {}
            if s.name in half_maps:
                for role, m in zip(("half1", "half2"), half_maps[s.name]):
                    aname = species_array_name(s.name, f"maps/{role}")
                    write_array(txn, aname, m.astype(np.float32), attributes=attrs)
                    sp_maps[role] = aname
            contributors = {}
            for _src, it in pop.items():
                if len(p.in_item(it.data_digest)):
                    contributors[it.data_digest] = item_digest(it)
            species_objs[s.name] = Species(
                name=s.name,
                diameter_angstrom=s.diameter_angstrom,
                pixel_size_angstrom=px,
                box=boxes[s.name],
                particles=p,
                symmetry=s.symmetry,
                maps=sp_maps,
                resolution_angstrom=start_res.get(s.name),
                contributors=contributors if sp_maps else {},
                extra={"simulated": True},
            )
        pop.species = species_objs
        write_population(txn, pop, items=False)
        summary = {
            "sources": {src: {"items": len(its), "particles": {s.name: int(sum(len(particles_stored[s.name].in_item(it.data_digest)) for it in its))
                                                              for s in cfg.species}}
                        for src, its in stored_items.items() if its},
            "species": {s.name: {"diameter_angstrom": s.diameter_angstrom, "symmetry": s.symmetry, "box": boxes[s.name],
                                 "particles": len(particles_stored[s.name]),
                                 "start_resolution_angstrom": start_res.get(s.name)} for s in cfg.species},
            "pixel_size_angstrom": px,
            "snr": snr,
            "contrast": round(contrast, 6),
            "noise": "poisson" if noisy else "none",
        }
        for name, fl in flex.items():
            summary["species"][name]["flexible"] = {
                "fraction": fl.fraction, "rms_angstrom": fl.rms_angstrom,
                "measured_rms_angstrom": round(fl.measured_rms_angstrom, 3),
                "conformations": fl.n_conformations, "particles_per_conformation": fl.counts().tolist(),
                "domain_atoms": int(fl.domain_atoms.sum()), "atoms": int(len(fl.domain_atoms))}
        meta = {"simulation": {"preset": preset_name, "seed": seed, "summary": summary,
                               "truth": "truth/ (not tracked by the repository)"}}
        commit = txn.commit(f"Simulated population ({preset_name}, {seed})", metadata=meta)
    finally:
        txn.discard()  # committed or not, the staging area goes
    timings["repository"] = time.perf_counter() - t0

    # -- truth ------------------------------------------------------------------------------------------
    # a flexible species' true map is the mean of its particles' conformations (the rest map is in its FlexibleTruth)
    true_maps = {name: (flex[name].average_map() if name in flex else m) for name, m in maps.items()}
    truth = Truth(None, preset_name, seed, cfg, contrast, true_maps, specs, boxes, particles_true, items_truth, snr, summary,
                  flexible=flex)
    save_truth(truth, out)
    tdir = out / "truth" / "maps"
    for name, a in atoms.items():
        np.savez(tdir / f"{name}_atoms.npz", positions_angstrom=a.positions_angstrom, weights=a.weights,
                 sigma_angstrom=a.sigma_angstrom, asymmetric_unit=a.asymmetric_unit)
    pngs: list[Path] = []
    if png:
        from .plots import plot_frame, plot_motion

        first_movie = next((it for it in items_truth.values() if it.source == FRAMES_SOURCE), None)
        if first_movie is not None:
            pngs.append(plot_frame(out, first_movie.name, out / "truth" / "frame.png", truth=truth, raw=raws[first_movie.name]))
            pngs.append(plot_motion(out, first_movie.name, out / "truth" / "motion.png", truth=truth))
    timings["total"] = time.perf_counter() - t_start
    return SimResult(out, repo, commit, preset_name, seed, cfg, truth, summary, timings, pngs)
