"""``mrepo refine``: check out a population, refine every frame series, reconstruct, commit.

The loop (M, frame series):

1. references: each species' half-maps, FSC-weighted, used up to a
   resolution limit that follows the current FSC (so it ramps up as the
   maps improve) and never beyond ``--resolution``;
2. for every series with particles of the chosen species: extract the
   particles once (:func:`~mrepo.refine.series.extract_series`) and refine
   its motion pyramid and particle trajectories with L-BFGS
   (:func:`~mrepo.refine.series.refine_series`);
3. back-project all series into gold-standard half-maps, FSC, resolution;
   the new half-maps are the next iteration's references;
4. write particles, item models and maps, and commit with the parameters,
   per-species resolution before/after and the provenance digests.

A degenerate run (non-finite target, no particle in any series, a
resolution that collapses) raises :class:`~mrepo.errors.DegenerateResult`
and commits nothing. Interrupting leaves HEAD as it was.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DegenerateResult, InvalidInput, NotFound
from ..model import CubicGrid, Particles, Population, pyramid_grid_names, write_item, write_population
from ..store.arrays import open_view_array, write_array
from .backprojection import Reconstructor
from .deformation import grid_for_particles, pyramid_shapes
from .device import pick_device
from .fourier import rfftn3_centered, irfftn3_centered, soft_sphere_mask
from .fsc import FscCurve, fsc, resolution_at
from .projection import prepare_volume
from .series import (
    RefineSettings,
    SeriesData,
    SeriesModel,
    SpeciesReference,
    _resample_time,
    backproject_series,
    extract_series,
    frame_ncc_stats,
    initial_model,
    refine_series,
    refined_angles,
    set_frame_weights,
)

__all__ = ["RefineOptions", "SpeciesOutcome", "RefineOutcome", "refine_repository", "reconstruct_species", "masked_fsc"]

PARAM_GROUPS = ("motion", "poses", "defocus", "astigmatism", "beamtilt", "magnification", "doming", "weights")


@dataclass
class RefineOptions:
    """What ``mrepo refine`` does (CLI options map one to one)."""

    iterations: int = 3
    species: tuple[str, ...] | None = None
    params: tuple[str, ...] = ("motion", "poses")
    grid: tuple[int, int, int] = (4, 4, 10)
    levels: int = 3
    temporal_samples: int = 1
    resolution_angstrom: float | None = None
    device: str = "auto"
    lbfgs_iterations: int = 20
    ramp: tuple[float, ...] = (0.4, 1.0)
    seed: int = 0
    message: str | None = None
    collapse_factor: float = 1.5  # a resolution this many times worse than before is degenerate
    particles_per_node: float = 2.5  # the finest motion grid is coarsened until its nodes hold this many particles
    denoise: bool = True  # references are the species' noise2noise-denoised half-maps (M); else FSC-weighted
    denoise_iterations: int = 25  # denoiser training steps after each reconstruction (resuming from the stored weights)
    denoise_crop: int = 32  # edge of the training crops (voxels): small crops keep the steps inside refinement cheap
    min_particles_per_half: int = 25
    weights_in_target: bool = False  # fitted exposure weights also weight the motion/pose target (default: reconstruction only)
    min_ctf_resolution_angstrom: float = 8.0  # imaging-model groups and exposure weights use species finer than this (M)
    anisotropic_weights: bool = True  # fitted exposure weights with a direction (else isotropic B)
    weights_per_series: bool = False  # one set of exposure weights per series (else per group of equal frame counts)
    weights_png: str | None = None  # write the fitted exposure weights per frame as a PNG here  # fewer: the species' poses are kept (its reference would mostly be each particle itself)

    def check(self) -> None:
        if self.iterations < 0:
            raise InvalidInput("--iterations must be >= 0", str(self.iterations))
        unknown = sorted(set(self.params) - set(PARAM_GROUPS))
        if unknown:
            raise InvalidInput(f"unknown parameter group(s) {', '.join(unknown)}; this version refines {', '.join(PARAM_GROUPS)}")
        if not 1 <= self.temporal_samples <= 3:
            raise InvalidInput("--temporal-samples must be 1, 2 or 3", str(self.temporal_samples))
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise InvalidInput("--grid wants three positive integers like 4x4x10", str(self.grid))
        if self.denoise_iterations < 0:
            raise InvalidInput("--denoise-iterations must be >= 0", str(self.denoise_iterations))
        if self.resolution_angstrom is not None and not self.resolution_angstrom > 0:
            raise InvalidInput("--resolution must be positive (Å)", str(self.resolution_angstrom))


@dataclass
class SpeciesOutcome:
    name: str
    particles: int
    resolution_before: float
    resolution_after: float
    fsc_before: FscCurve | None = None
    fsc_after: FscCurve | None = None


@dataclass
class RefineOutcome:
    commit: str | None
    parent: str
    species: dict[str, SpeciesOutcome]
    iterations: int
    seconds: float
    series: int
    particle_frames: int
    scores: list[tuple[str, float, float]] = field(default_factory=list)
    population: Population | None = None
    models: dict[str, SeriesModel] = field(default_factory=dict)
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # species -> refined half-maps
    parts: dict[str, Particles] = field(default_factory=dict)  # species -> particles with refined defocus (z)
    imaging: dict[str, Any] = field(default_factory=dict)  # series -> imaging-model refinement figures
    weights: dict[str, Any] = field(default_factory=dict)  # fitted exposure weights per group of series


def masked_fsc(h1: np.ndarray, h2: np.ndarray, pixel_size: float, diameter_angstrom: float) -> FscCurve:
    """FSC of two half-maps inside a soft sphere a little wider than the particle."""
    n = h1.shape[0]
    radius = min(n / 2 - 4, 0.5 * diameter_angstrom / pixel_size + 1)
    mask = soft_sphere_mask(n, max(2.0, radius), 3.0, dtype=torch.float64)
    return fsc(h1, h2, pixel_size, mask=mask)


def _resolution(curve: FscCurve, box: int, pixel_size: float) -> float:
    try:
        return float(resolution_at(curve, 0.143))
    except Exception:
        return float(2 * pixel_size)


def fsc_weighted(volume: np.ndarray, curve: FscCurve) -> np.ndarray:
    """Filter a map by sqrt(2 FSC / (1 + FSC)) per shell (the reference weighting)."""
    v = torch.as_tensor(np.ascontiguousarray(volume), dtype=torch.float32)
    n = v.shape[0]
    f = rfftn3_centered(v)
    q = torch.fft.fftfreq(n, d=1.0 / n)
    qx = torch.arange(n // 2 + 1, dtype=torch.float32)
    r = torch.sqrt(q[:, None, None] ** 2 + q[None, :, None] ** 2 + qx[None, None, :] ** 2).round().long()
    c = torch.as_tensor(np.clip(curve.fsc, 0.0, 1.0), dtype=torch.float32)
    w = torch.sqrt(2 * c / (1 + c))
    wv = torch.where(r < w.numel(), w[r.clamp(max=w.numel() - 1)], torch.zeros(()))
    return irfftn3_centered(f * wv, n).numpy()


def _references(halves: dict[str, tuple[np.ndarray, np.ndarray]], pop: Population, curves: dict[str, FscCurve],
                options: RefineOptions, device: torch.device,
                denoised: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, SpeciesReference]:
    """Each species' references: its denoised half-maps when given (already
    filtered to their local resolution), else its half-maps weighted by the FSC;
    used up to the FSC 0.143 resolution of the raw halves (and ``--resolution``)."""
    refs = {}
    for name, (h1, h2) in halves.items():
        sp = pop.species[name]
        pix = sp.pixel_size_angstrom
        res = _resolution(curves[name], sp.box, pix)
        r_max = min(sp.box / 2 - 1, sp.box * pix / res)
        if options.resolution_angstrom:
            r_max = min(r_max, sp.box * pix / options.resolution_angstrom)
        if denoised and name in denoised:
            m1, m2 = denoised[name]
        else:
            m1, m2 = fsc_weighted(h1, curves[name]), fsc_weighted(h2, curves[name])
        refs[name] = SpeciesReference(
            name,
            (prepare_volume(m1, pix, device=device), prepare_volume(m2, pix, device=device)),
            sp.box,
            pix,
            sp.symmetry,
            float(max(2.0, r_max)),
        )
    return refs


def _denoise(txn: Any, pop: Population, halves: dict[str, tuple[np.ndarray, np.ndarray]], options: RefineOptions,
             device: torch.device, *, final: bool, say: Callable[[str], None]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train each species' denoiser on its new half-maps (resuming from the weights
    staged in ``txn``, i.e. the parent commit's or the last iteration's) and denoise
    them; the weights and denoised maps are staged (the local resolution only when
    ``final``). Returns the denoised halves: the next references."""
    from .denoise import update_species_denoiser

    out = {}
    for n, (h1, h2) in halves.items():
        say(f"denoising {n} ({options.denoise_iterations} training steps)")
        res = update_species_denoiser(txn, pop.species[n], half1=h1, half2=h2, iterations=options.denoise_iterations,
                                      crop=options.denoise_crop, device=device, local_resolution=final)
        out[n] = (res.half1, res.half2)
    return out


def reconstruct_species(
    pop: Population,
    series: dict[str, SeriesData],
    models: dict[str, SeriesModel],
    names: list[str],
    *,
    device: torch.device,
) -> dict[str, tuple[np.ndarray, np.ndarray, FscCurve, int]]:
    """Half-maps, masked FSC and particle-frame count of each species from all series."""
    recs = {n: Reconstructor(pop.species[n].box, pop.species[n].pixel_size_angstrom, device=device) for n in names}
    sym = {n: pop.species[n].symmetry for n in names}
    for key, data in series.items():
        backproject_series(data, models[key], recs, sym)
    out = {}
    for n in names:
        sp = pop.species[n]
        h1, h2 = wiener_halves(recs[n], sp.diameter_angstrom)
        count = sum(a.count for a in recs[n].halves)
        if count == 0:
            raise DegenerateResult("no particle of this species lies in any series", f"species {n}")
        if not (np.isfinite(h1).all() and np.isfinite(h2).all()):
            raise DegenerateResult("reconstruction is not finite", f"species {n}")
        out[n] = (h1, h2, masked_fsc(h1, h2, sp.pixel_size_angstrom, sp.diameter_angstrom), count)
    return out


def wiener_halves(rec: Reconstructor, diameter_angstrom: float, *, wiener_relative: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """The two half-maps, each ``D / (W + τ)`` with τ a fraction of its shell's mean weight.

    Data and weights are in SNR units (divided by the noise power). A floor of
    0.1 of the mean weight keeps poorly covered frequencies from being
    amplified; FSC and references are computed from these maps.
    """
    from .backprojection import reconstruct

    return tuple(reconstruct(h, wiener_relative=wiener_relative).cpu().numpy().astype(np.float32) for h in rec.halves)  # type: ignore[return-value]


def _item_selection(item: Any, names: list[str], parts: dict[str, Particles]) -> dict[str, tuple[np.ndarray, Particles]]:
    sel = {}
    for n in names:
        rows = parts[n].in_item(item.data_digest)
        if rows.size:
            sel[n] = (rows, parts[n].select(np.isin(np.arange(len(parts[n])), rows)))
    return sel


def extract_item(snap: Any, pop: Population, item: Any, names: list[str], parts: dict[str, Particles], *,
                 device: torch.device, resolution_angstrom: float | None = None) -> SeriesData:
    """Extract one frame series' particles of ``names`` (:func:`mrepo.refine.series.extract_series`)."""
    sel = _item_selection(item, names, parts)
    frames = open_view_array(snap, item.raw_array)
    return extract_series(item, frames, sel, {n: pop.species[n].box for n in sel}, device=device,
                          resolution_angstrom=resolution_angstrom)


def collect_series(
    snap: Any,
    pop: Population,
    names: list[str],
    parts: dict[str, Particles],
    *,
    device: torch.device,
    resolution_angstrom: float | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, SeriesData], dict[str, tuple[str, Any]]]:
    """Extract every frame series holding particles of ``names``.

    Returns series key (``source/item``) -> extracted data, and key -> (source, item).
    """
    series: dict[str, SeriesData] = {}
    items_of: dict[str, tuple[str, Any]] = {}
    for src, item in pop.items():
        if item.kind != "frames" or not _item_selection(item, names, parts):
            continue
        if item.raw_array is None:
            raise InvalidInput("item has particles but no raw frames in the repository", f"{src.name}/{item.name}")
        key = f"{src.name}/{item.name}"
        say(f"extracting {key}")
        series[key] = extract_item(snap, pop, item, names, parts, device=device, resolution_angstrom=resolution_angstrom)
        items_of[key] = (src.name, item)
    return series, items_of


def reconstruct_population(repo: Any, pop: Population, *, rev: str = "HEAD", species: list[str] | None = None,
                           device: str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray, FscCurve, int]]:
    """Half-maps of ``pop``'s species from the raw frames stored at ``rev``, with the
    population's own parameters (e.g. the true ones of a simulation: the "oracle")."""
    dev = pick_device(device)
    names = species or sorted(pop.species)
    parts = {n: pop.species[n].particles.load() for n in names}
    series, items_of = collect_series(repo.snapshot(rev), pop, names, parts, device=dev)
    if not series:
        raise DegenerateResult("no particle of the chosen species matched any frame series")
    models = {key: initial_model(data, [], 1, device=dev) for key, data in series.items()}
    return reconstruct_species(pop, series, models, names, device=dev)


def apply_models(
    pop: Population,
    parts: dict[str, Particles],
    series: dict[str, SeriesData],
    models: dict[str, SeriesModel],
    items_of: dict[str, tuple[str, Any]],
    names: list[str],
    temporal_samples: int,
) -> None:
    """Fold refined series models into the population (in place): particle
    trajectories (T = ``temporal_samples``) and the items' pyramid grids."""
    for n in names:
        sp = pop.species[n]
        p = parts[n]
        # the refined trajectory is exact with max(T₀, T) control points (a
        # natural cubic spline reproduces constants and straight lines)
        t_out = max(int(np.asarray(p.coordinates).shape[1]), int(np.asarray(p.angles).shape[1]), temporal_samples)
        coords = _resample_time(np.asarray(p.coordinates, np.float32), t_out).copy()
        angles = _resample_time(np.asarray(p.angles, np.float32), t_out).copy()
        for key, data in series.items():
            blk = data.blocks.get(n)
            if blk is None or not len(blk):
                continue
            m = models[key]
            coords[blk.index, :, :2] += _resample_time(m.coord_delta[n].detach().cpu().numpy(), t_out)
            angles[blk.index] = refined_angles(np.asarray(p.angles)[blk.index], m.angle_delta[n].cpu(), t_out)
        sp.particles = Particles(p.items, p.item, coords.astype(np.float32), angles.astype(np.float32), p.half_set, p.extra)
    for key, (_src_name, item) in items_of.items():
        add_pyramid(item, models[key].pyramid)


def add_pyramid(item: Any, pyramid: Any) -> None:
    """Fold a refined motion pyramid into an item's grids (in place), as Warp/M's
    ``PyramidShiftX/Y_i``: a level is added onto the first stored pyramid grid of
    the same dims (the motion is their sum), else stored at the next free index."""
    for gx, gy in pyramid.grids:
        vx, vy = gx.detach().cpu().numpy(), gy.detach().cpu().numpy()
        dims = (vx.shape[2], vx.shape[1], vx.shape[0])
        i = 0
        while True:
            nx, ny = pyramid_grid_names(i)
            old = item.grids.get(nx)
            if old is None:
                break
            if old.dims == dims and old.margins == (0.0, 0.0, 0.0) and ny in item.grids:
                vx = vx + old.values
                vy = vy + item.grids[ny].values
                break
            i += 1
        item.grids[nx] = CubicGrid(dims, vx, unit="angstrom")
        item.grids[ny] = CubicGrid(dims, vy, unit="angstrom")


def refine_repository(
    repo: Any,
    options: RefineOptions,
    *,
    progress: Callable[[str], None] | None = None,
    commit: bool = True,
) -> RefineOutcome:
    """Refine the population at HEAD and commit the result on the current branch."""
    options.check()
    t0 = time.perf_counter()
    torch.manual_seed(options.seed)
    device = pick_device(options.device)
    head = repo.head()
    if head.commit is None:
        raise NotFound("the repository has no commit to refine")
    parent = head.commit
    snap = repo.snapshot_of(parent)
    pop = repo.population(parent)
    names = list(options.species) if options.species else sorted(pop.species)
    if not names:
        raise NotFound("the population has no species to refine")
    for n in names:
        if n not in pop.species:
            raise NotFound("no such species", n)
        if "half1" not in pop.species[n].maps or "half2" not in pop.species[n].maps:
            raise InvalidInput("species has no half-maps to use as references", n)
    say = progress or (lambda _msg: None)

    # particles of each chosen species, grouped by item
    parts = {n: pop.species[n].particles.load() for n in names}
    halves = {n: tuple(np.asarray(open_view_array(snap, pop.species[n].maps[h])[...], np.float32) for h in ("half1", "half2")) for n in names}
    for n, (h1, h2) in halves.items():
        if h1.shape != (pop.species[n].box,) * 3 or h2.shape != h1.shape:
            raise InvalidInput(f"half-maps are not {pop.species[n].box}³ cubes", f"species {n}")
    sp_ = pop.species
    parent_res = {n: _resolution(masked_fsc(h1, h2, sp_[n].pixel_size_angstrom, sp_[n].diameter_angstrom), sp_[n].box,
                                 sp_[n].pixel_size_angstrom) for n, (h1, h2) in halves.items()}

    series, items_of = collect_series(snap, pop, names, parts, device=device, resolution_angstrom=options.resolution_angstrom, say=say)
    models: dict[str, SeriesModel] = {}
    for key, data in series.items():
        n_here = sum(len(b) for b in data.blocks.values())
        grid = grid_for_particles(options.grid, n_here, per_node=options.particles_per_node)
        if grid != tuple(options.grid):
            say(f"{key}: {n_here} particles; finest motion grid {grid[0]}x{grid[1]}x{grid[2]} instead of "
                f"{options.grid[0]}x{options.grid[1]}x{options.grid[2]} ({options.particles_per_node:g} particles per node)")
        models[key] = initial_model(data, pyramid_shapes(options.levels, grid, items_of[key][1].n), options.temporal_samples, device=device)
    if not series:
        raise DegenerateResult("no particle of the chosen species matched any frame series")
    particle_frames = sum(len(b) * d.geometry.n_frames for d in series.values() for b in d.blocks.values())

    # poses are refined only where each half-set holds enough particles for its
    # reference not to be dominated by the particle being aligned; such species
    # still share (and gain from) the series' motion
    posed = frozenset(n for n in names if min(int((np.asarray(parts[n].half_set) == h).sum()) for h in (1, 2))
                      >= options.min_particles_per_half)
    for n in names:
        if n not in posed and "poses" in options.params:
            say(f"{n}: fewer than {options.min_particles_per_half} particles per half-set; its poses are kept, it shares the motion")
    settings = RefineSettings(params=frozenset(options.params), lbfgs_iterations=options.lbfgs_iterations, device=device,
                              ramp=tuple(options.ramp), pose_species=posed)
    # the new state is staged in a transaction (the denoisers train into it); it
    # is committed at the end, or discarded: an interrupt leaves HEAD as it was
    txn = repo.transaction()
    try:
        run = _Run(repo, txn, snap, options, pop, parts, names, series, items_of, models, settings, device, say)
        outcome = run.loop(parent, parent_res, particle_frames, t0)
        if commit:
            outcome.commit = run.commit(outcome, parent, parent_res, t0)
    finally:
        txn.discard()
    outcome.seconds = time.perf_counter() - t0
    return outcome


IMAGING = ("defocus", "astigmatism", "beamtilt", "magnification", "doming")


@dataclass
class _Run:
    """The state of one ``mrepo refine`` between its start and its commit."""

    repo: Any
    txn: Any
    snap: Any
    options: RefineOptions
    pop: Population
    parts: dict[str, Particles]
    names: list[str]
    series: dict[str, SeriesData]
    items_of: dict[str, tuple[str, Any]]
    models: dict[str, SeriesModel]
    settings: RefineSettings
    device: torch.device
    say: Callable[[str], None]
    halves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    curves: dict[str, FscCurve] = field(default_factory=dict)
    imaging: dict[str, dict[str, Any]] = field(default_factory=dict)  # series key -> what the imaging step found
    weights: dict[str, Any] = field(default_factory=dict)  # "F frames" -> fitted FrameWeights
    scores: list[tuple[str, float, float]] = field(default_factory=list)

    # -- steps -------------------------------------------------------------------------------
    def reconstruct(self) -> None:
        recon = reconstruct_species(self.pop, self.series, self.models, self.names, device=self.device)
        self.halves = {n: (recon[n][0], recon[n][1]) for n in self.names}
        self.curves = {n: recon[n][2] for n in self.names}

    def resolution(self, n: str) -> float:
        sp = self.pop.species[n]
        return _resolution(self.curves[n], sp.box, sp.pixel_size_angstrom)

    def motion_and_poses(self, it: int, refs: dict[str, SpeciesReference]) -> None:
        if not {"motion", "poses"} & set(self.options.params):
            return
        for key, data in self.series.items():
            self.say(f"iteration {it + 1}/{self.options.iterations}: refining {key}")
            res = refine_series(data, refs, self.models[key], self.settings)
            self.models[key] = res.model
            self.scores.append((key, res.score_before, res.score_after))

    def _fine_species(self, it: int, skipped: str) -> list[str]:
        """The species finer than ``--min-ctf-resolution`` (M's gate for the imaging model and
        the weights); when there is none, say ``skipped`` and why."""
        limit = self.options.min_ctf_resolution_angstrom
        fine = [n for n in self.names if self.resolution(n) <= limit]
        if not fine:
            self.say(f"iteration {it + 1}: {skipped}: no species is finer than {limit:g} Å yet")
        return fine

    def imaging_model(self, it: int, refs: dict[str, SpeciesReference]) -> None:
        """Per series: fit the chosen imaging groups on the species finer than the minimum
        resolution, fold them into the item and the particles, extract again."""
        from .imaging import ImagingSettings, apply_imaging, ctf_data, refine_imaging

        groups = frozenset(g for g in self.options.params if g in IMAGING)
        if not groups:
            return
        fine = self._fine_species(it, "imaging model not refined")
        if not fine:
            return
        settings = ImagingSettings(groups=groups)
        for key, data in list(self.series.items()):
            src, item = self.items_of[key]
            here = [n for n in fine if n in data.blocks]
            if not here:
                continue
            self.say(f"iteration {it + 1}/{self.options.iterations}: imaging model of {key} ({', '.join(sorted(groups))})")
            frames = open_view_array(self.snap, item.raw_array)
            blocks = ctf_data(item, frames, data, self.models[key], refs, here,
                              groups=settings.temporal_groups if "doming" in groups else 1, device=self.device)
            res = refine_imaging(blocks, item, settings, device=self.device)
            done = apply_imaging(item, {n: self.parts[n] for n in here}, res, blocks, groups)
            for n, c in done["coordinates"].items():
                p = self.parts[n]
                self.parts[n] = Particles(p.items, p.item, c, p.angles, p.half_set, p.extra)
            a, ang = res.params.astigmatism()
            self.imaging[key] = {
                "species": here, "score_before": round(res.score_before, 4), "score_after": round(res.score_after, 4),
                "defocus_change_rms_angstrom": {k: round(v, 1) for k, v in done["rms_defocus_change_angstrom"].items()},
                "defocus_search_kept": res.kept, "box": res.box,
                "defocus_prior_angstrom": {k: {"mean": round(v.mean_angstrom, 1), "sd": round(v.sd_angstrom, 1)}
                                           for k, v in res.priors.items()},
                "astigmatism_angstrom": round(item.imaging.astigmatism_angstrom, 2),
                "astigmatism_angle_deg": round(item.imaging.astigmatism_angle_deg, 2),
                "beam_tilt_mrad": list(item.imaging.beam_tilt_mrad),
                "mag_matrix": [list(r) for r in item.imaging.mag_matrix],
            }
            # the premultiplied data depend on the CTF: extract again (same particles, same order)
            old = self.series[key]
            self.series[key] = extract_item(self.snap, self.pop, item, self.names, self.parts, device=self.device,
                                            resolution_angstrom=self.options.resolution_angstrom)
            if old.frame_weights is not None:
                set_frame_weights(self.series[key], old.frame_weights, target=self.options.weights_in_target)

    def exposure_weights(self, it: int, refs: dict[str, SpeciesReference]) -> None:
        """Fit per-frame (an)isotropic B-factors and scales to the per-frequency NCC of all
        species (weighted by their FSC), for every group of series with the same number of
        frames; they weight the reconstruction and the imaging model's frame sums, and with
        ``weights_in_target`` the next iteration's motion/pose target too."""
        from .weights import fit_frame_weights

        if "weights" not in self.options.params:
            return
        # as the imaging model: only references finer than the minimum resolution show the
        # frames' damping where it matters; weights fitted to coarser ones are extrapolated
        fine = self._fine_species(it, "exposure weights not fitted")
        if not fine:
            return
        by_frames: dict[str, list[str]] = {}
        for key, data in self.series.items():
            group = key if self.options.weights_per_series else f"{data.geometry.n_frames} frames"
            by_frames.setdefault(group, []).append(key)
        for label, keys in by_frames.items():
            stats: dict[str, Any] = {}
            for key in keys:
                for n, st in frame_ncc_stats(self.series[key], refs, self.models[key]).items():
                    if n not in fine:
                        continue
                    if n in stats:
                        stats[n] += st
                    else:
                        stats[n] = st
            if not stats:
                continue
            for n, st in stats.items():
                c = self.curves[n]
                st.fsc = np.interp(st.k, c.freqs_per_angstrom, np.clip(c.fsc, 0.0, 1.0), right=0.0)
            try:
                w = fit_frame_weights(list(stats.values()), anisotropic=self.options.anisotropic_weights)
            except DegenerateResult as e:
                self.say(f"iteration {it + 1}: exposure weights not fitted ({e.message})")
                continue
            self.weights[label] = w
            for key in keys:
                set_frame_weights(self.series[key], w, target=self.options.weights_in_target)
                self.items_of[key][1].grids.update(w.to_grids())
            self.say(f"iteration {it + 1}: exposure weights fitted for {label} ({len(keys)} series) "
                     f"(B {w.bfactor.min():.0f}..{w.bfactor.max():.0f} Å², largest anisotropy {w.delta.max():.0f} Å²)")
        if self.options.weights_png and self.weights:
            from .weights import plot_frame_weights

            label, w = next(iter(self.weights.items()))
            plot_frame_weights(w, self.options.weights_png, title=f"fitted exposure weights ({label})")

    # -- the loop ----------------------------------------------------------------------------
    def loop(self, parent: str, parent_res: dict[str, float], particle_frames: int, t0: float) -> RefineOutcome:
        opts, names = self.options, self.names
        # the starting point, reconstructed from these data with the starting parameters:
        # the first references, and the "before" that the refined maps are compared with
        self.say("reconstructing at the starting parameters")
        self.reconstruct()
        fsc_before = dict(self.curves)
        before = {n: self.resolution(n) for n in names}
        denoised = None
        if opts.iterations == 0:
            self.say("iterations 0: reconstructing with the current parameters only (a set-up check)")
        elif opts.denoise:
            denoised = _denoise(self.txn, self.pop, self.halves, opts, self.device, final=False, say=self.say)
        for it in range(opts.iterations):
            refs = _references(self.halves, self.pop, self.curves, opts, self.device, denoised)
            self.motion_and_poses(it, refs)
            self.imaging_model(it, refs)
            self.exposure_weights(it, refs)
            self.say(f"iteration {it + 1}/{opts.iterations}: reconstructing")
            self.reconstruct()
            if opts.denoise:
                denoised = _denoise(self.txn, self.pop, self.halves, opts, self.device, final=it == opts.iterations - 1,
                                    say=self.say)
        after = {n: self.resolution(n) for n in names}
        for key, b, a in self.scores:
            if not (math.isfinite(b) and math.isfinite(a)):
                raise DegenerateResult("the target is not finite", key)
        if self.scores and all(abs(b) < 1e-12 and abs(a) < 1e-12 for _, b, a in self.scores):
            raise DegenerateResult("every score is zero: references and data do not correlate")
        for n in names:
            if after[n] > opts.collapse_factor * before[n] + 1e-6 and opts.iterations > 0:
                raise DegenerateResult(
                    f"resolution collapsed from {before[n]:.2f} Å to {after[n]:.2f} Å; nothing committed", f"species {n}"
                )
        return RefineOutcome(
            commit=None,
            parent=parent,
            species={n: SpeciesOutcome(n, len(self.parts[n]), before[n], after[n], fsc_before[n], self.curves[n]) for n in names},
            iterations=opts.iterations,
            seconds=time.perf_counter() - t0,
            series=len(self.series),
            particle_frames=particle_frames,
            scores=self.scores,
            population=self.pop,
            models=self.models,
            maps=self.halves,
            parts=self.parts,
            imaging=self.imaging,
            weights={k: w.to_json() for k, w in self.weights.items()},
        )

    # -- the commit ------------------------------------------------------------------------
    def commit(self, outcome: RefineOutcome, parent: str, parent_res: dict[str, float], t0: float) -> str:
        opts, names, pop, txn = self.options, self.names, self.pop, self.txn
        before = {n: s.resolution_before for n, s in outcome.species.items()}
        after = {n: s.resolution_after for n, s in outcome.species.items()}
        apply_models(pop, self.parts, self.series, self.models, self.items_of, names, opts.temporal_samples)
        for n in names:
            sp = pop.species[n]
            for role, vol in (("half1", self.halves[n][0]), ("half2", self.halves[n][1])):
                write_array(txn, sp.maps[role], vol, attributes={"voxel_size": [sp.pixel_size_angstrom] * 3, "voxel_size_unit": "angstrom"})
            sp.resolution_angstrom = after[n]
            c = self.curves[n]
            sp.metrics = {**sp.metrics, "fsc": {"freqs_per_angstrom": c.freqs_per_angstrom.tolist(), "fsc": c.fsc.tolist()}}
        # provenance: items record the species digests they were refined against,
        # species record the items that contributed
        write_population(txn, pop, items=False)  # writes particles first, giving the species digests
        sp_digests = _current_species_digests(txn, names)
        for key, (src_name, item) in self.items_of.items():
            item.refined_with = {n: sp_digests[n] for n in names if n in self.series[key].blocks}
        item_digests = {}
        for key, (src_name, item) in self.items_of.items():
            item_digests[item.data_digest] = write_item(txn, src_name, item)
        for n in names:
            pop.species[n].contributors = {d: item_digests[d] for d in self.parts[n].items if d in item_digests}
        write_population(txn, pop, items=False)
        # a map worse than its parent's (the stored half-maps, measured the same way)
        # is committed only with a warning in the message and the metadata
        worse = {n: {"parent": round(parent_res[n], 3), "now": round(after[n], 3)}
                 for n in names if after[n] > parent_res[n] * 1.0001}
        meta: dict[str, Any] = {
            "operation": "refine",
            "parent": parent,
            "parameters": {
                "iterations": opts.iterations,
                "species": names,
                "params": list(opts.params),
                "grid": list(opts.grid),
                "levels": opts.levels,
                "temporal_samples": opts.temporal_samples,
                "resolution_angstrom": opts.resolution_angstrom,
                "lbfgs_iterations": opts.lbfgs_iterations,
                "denoise": opts.denoise,
                "denoise_iterations": opts.denoise_iterations if opts.denoise else 0,
                "denoise_crop": opts.denoise_crop,
                "min_ctf_resolution_angstrom": opts.min_ctf_resolution_angstrom,
                "anisotropic_weights": opts.anisotropic_weights,
                "weights_in_target": opts.weights_in_target,
                "device": str(self.device),
                "seed": opts.seed,
            },
            "resolution_angstrom": {n: {"parent": round(parent_res[n], 3), "before": round(before[n], 3), "after": round(after[n], 3)}
                                    for n in names},
            "species_digests": _current_species_digests(txn, names),
            "item_digests": {f"{s}/{it.name}": item_digests[it.data_digest] for s, it in self.items_of.values()},
            "series": len(self.series),
            "particle_frames": outcome.particle_frames,
            "seconds": round(time.perf_counter() - t0, 1),
            "summary": ", ".join(f"{n} {before[n]:.2f}->{after[n]:.2f} Å" for n in names),
        }
        if self.imaging:
            meta["imaging"] = self.imaging
        if self.weights:
            meta["exposure_weights"] = {k: w.to_json() for k, w in self.weights.items()}
        if worse:
            meta["worse_than_parent"] = worse
            self.say("WARNING: " + ", ".join(f"{n} is worse than in the parent commit ({w['parent']:.2f} -> {w['now']:.2f} Å)"
                                           for n, w in worse.items()))
        msg = opts.message or (
            f"Reconstruct at current parameters ({meta['summary']})" if opts.iterations == 0
            else f"Refine {'+'.join(opts.params)}, {opts.iterations} iterations: {meta['summary']}"
        )
        if worse:
            msg += " [WORSE than parent: " + ", ".join(worse) + "]"
        return txn.commit(msg, metadata=meta)


def _current_species_digests(txn: Any, names: list[str]) -> dict[str, str]:
    import json

    from ..model.population import species_doc_name
    from ..store.arrays import read_document

    return {n: json.loads(read_document(txn, species_doc_name(n)))["digest"] for n in names}
