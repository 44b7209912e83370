"""Parameters of a simulated population: species, frame series, tilt series, errors.

A :class:`SimConfig` fixes everything but the random draws; :func:`preset`
returns the named presets (``tiny``, ``small``, ``paper``) with optional
overrides. All lengths are Å, angles degrees, exposures e⁻/Å², unless the
name says otherwise.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..model.species import check_symmetry

__all__ = ["SpeciesSpec", "SimConfig", "PRESETS", "preset", "parse_species_option", "species_box"]


@dataclass(frozen=True)
class SpeciesSpec:
    """One simulated species.

    Attributes
    ----------
    name: species name (a path component).
    diameter_angstrom: diameter of the pseudo-atomic model (Å); the atoms lie inside it.
    symmetry: point group (``C1``, ``Cn``, ``Dn``): the atoms of one asymmetric unit are
        built and the group's rotations applied.
    proportion: share of the particles (normalised over the species of a config).
    map_seed: seed of the atomic model (fixed per species, independent of the population seed,
        so that two populations of different seeds hold the same molecules).
    """

    name: str
    diameter_angstrom: float
    symmetry: str = "C1"
    proportion: float = 0.5
    map_seed: int | None = None

    def seed(self) -> int:
        if self.map_seed is not None:
            return int(self.map_seed)
        return zlib.crc32(f"{self.name}/{self.diameter_angstrom}/{self.symmetry}".encode())


#: The species of the presets; ``rare`` is added on request (multi-species experiment).
LARGE = SpeciesSpec("large", 150.0, "D2", 0.6)
SMALL = SpeciesSpec("small", 90.0, "C1", 0.4)
RARE = SpeciesSpec("rare", 110.0, "C4", 0.05)
KNOWN_SPECIES = {s.name: s for s in (LARGE, SMALL, RARE)}


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated population except the seed.

    Optics (shared by all items): ``pixel_size_angstrom``, ``voltage_kv``, ``cs_mm``,
    ``amplitude_contrast``.

    Frame series (source ``movies``): ``n_movies`` items of ``n_frames`` frames of
    ``frame_shape_px`` (y, x), ``dose_per_frame`` e⁻/Å² each; ``particles_per_movie``
    non-overlapping particles; item defocus uniform in ``defocus_range_angstrom``,
    per-particle defocus offsets (the particle's z) uniform in ±``z_spread_angstrom``;
    astigmatism uniform in ``astigmatism_range_angstrom`` at a random angle; beam tilt
    per item, each component normal with ``beam_tilt_sigma_mrad``.

    Imaging effects of frame series only (each switched off by 0; tilt series have none;
    their random directions come from a stream of their own, so switching one off leaves
    the rest of the population unchanged, and all three off give the population of a
    simulator without them):

    * ``mag_anisotropy`` (fraction): anisotropic magnification per item, the true
      ``imaging.mag_matrix`` ``M = R(θ) diag(1 + a, 1 − a) R(θ)ᵀ`` with θ uniform in
      [0°, 180°) (RELION's ``rlnMagMat``: image frequency k is specimen frequency M k;
      the projection is the central slice at ``Aᵀ (M k, 0)`` and the CTF is evaluated at
      ``M k``; particle positions are not distorted).
    * ``doming_angstrom``: a true ``GridCTFDoming`` grid per item (3×3×3, µm): 0 at the
      first time node, a random bowl-plus-tilt pattern (zero mean over the view) × t at the
      others, scaled so that its RMS over the view in the last frame is this many Å;
      a particle's defocus in frame f gains ``GridCTFDoming(x̂, ŷ, t_f) · 10⁴`` Å
      (positive = more underfocus).
    * ``blur_frames``, ``blur_angstrom``: anisotropic intra-frame motion blur in the first
      ``blur_frames`` frames: frame f's particle images are multiplied in Fourier space by
      ``exp(−2π² σ_f² (k·u)²)``, ``σ_f = blur_angstrom · (1 − f / blur_frames)`` Å,
      u = (cos φ, sin φ) with φ uniform in [0°, 180°) per item.

    Motion: M-style pyramid :func:`mrepo.refine.deformation.pyramid_shapes`
    (``motion_levels``, ``motion_final``); level 0 is the global drift (an
    exponential of amplitude 0.5–1 × ``drift_angstrom`` plus a linear part of 0.2–0.5 ×
    ``drift_angstrom``, mean zero over the frames), the other levels the local
    beam-induced motion (random walks over time at each node; the RMS over the view of
    the local displacement from the first to the last frame is ``local_motion_angstrom``).

    Particle trajectories: ``trajectory_samples`` (coordinates, angles) temporal control
    points, drifting by ``trajectory_shift_angstrom`` (RMS per axis and control point) and
    ``trajectory_rotation_deg`` (RMS per Euler component and control point).

    Tilt series (source ``tiltseries``): ``n_tilt_series`` items, tilts from
    −``tilt_max_deg`` to +``tilt_max_deg`` in ``tilt_step_deg`` acquired dose-symmetrically
    (Hagen), ``dose_per_tilt`` e⁻/Å² each, tilt axis at ``tilt_axis_deg`` from x;
    ``particles_per_tilt_series`` particles in a slab of ``slab_thickness_angstrom``;
    per-tilt stage-angle errors (RMS ``tilt_angle_error_deg`` per axis), image warp (RMS
    ``tilt_warp_angstrom`` on a ``tilt_warp_grid`` (X, Y) grid), per-tilt shifts (RMS
    ``tilt_shift_angstrom``), per-tilt defocus varying with the tilt (RMS
    ``tilt_defocus_sigma_angstrom``).

    Noise: Poisson shot noise on the expected counts ``D (1 + c r)`` (``D`` electrons per
    pixel, ``r`` the CTF'ed, dose-damaged projection, ``c`` the contrast); ``c`` is set so
    that the mean per-particle SNR of the first species over all frames of a movie is
    ``snr`` (signal power over noise power inside the particle's diameter, summed frames).
    ``snr=None``: no noise (float frames of expected counts). The default, 0.5, is what the
    physics gives for a complex of the ``large`` species' size: a phase contrast of about
    0.25 rad through its centre (σ·ΔV·t with ΔV ≈ 2.7 V between protein and ice), about
    0.1 RMS image contrast inside its disc after the CTF, against 160 e⁻ per 2 Å pixel
    over a 40 e⁻/Å² exposure (relative shot noise 0.08), and a detector DQE near 0.5;
    smaller complexes have proportionally less (``small``: about 0.25).

    Flexible domain (off by default; :mod:`mrepo.sim.flexible`): with ``flexible_angstrom`` > 0,
    the species ``flexible_species`` (None: the first one) has a domain, the
    ``flexible_fraction`` of each asymmetric unit's atoms on one side of a plane, that takes
    one of ``flexible_conformations`` rigid poses per particle (rotations about a hinge,
    drawn from the seed, RMS displacement of the domain's atoms ``flexible_angstrom`` Å);
    the species' true map is then the mean over its particles' conformations.

    Starting values ("as imported", Warp/RELION-like): particle positions off by
    ``pose_shift_error_px`` RMS (2D), orientations by ``pose_angle_error_deg`` RMS
    (a random rotation), defocus by ``defocus_error_angstrom`` RMS; the global drift
    estimate off by ``drift_error_angstrom`` RMS per frame and axis; astigmatism by
    ``astigmatism_error_angstrom`` and ``astigmatism_angle_error_deg``; beam tilt unknown (0);
    no magnification anisotropy (identity matrix), no doming grid, no blur.
    """

    name: str
    species: tuple[SpeciesSpec, ...]
    pixel_size_angstrom: float
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    box_factor: float = 1.25
    # frame series
    n_movies: int = 2
    n_frames: int = 10
    frame_shape_px: tuple[int, int] = (384, 384)
    dose_per_frame: float = 1.0
    particles_per_movie: int = 16
    particle_gap_angstrom: float = 10.0
    defocus_range_angstrom: tuple[float, float] = (8000.0, 20000.0)
    z_spread_angstrom: float = 150.0
    astigmatism_range_angstrom: tuple[float, float] = (100.0, 400.0)
    beam_tilt_sigma_mrad: float = 0.25
    mag_anisotropy: float = 0.01
    doming_angstrom: float = 150.0
    blur_frames: int = 3
    blur_angstrom: float = 4.0
    motion_levels: int = 3
    motion_final: tuple[int, int, int] = (4, 4, 10)
    drift_angstrom: float = 30.0
    local_motion_angstrom: float = 3.0
    trajectory_samples: tuple[int, int] = (3, 2)
    trajectory_shift_angstrom: float = 0.7
    trajectory_rotation_deg: float = 0.3
    # tilt series
    n_tilt_series: int = 1
    tilt_max_deg: float = 60.0
    tilt_step_deg: float = 20.0
    dose_per_tilt: float = 3.0
    tilt_axis_deg: float = 85.0
    tilt_shape_px: tuple[int, int] = (384, 384)
    particles_per_tilt_series: int = 8
    slab_thickness_angstrom: float = 400.0
    tilt_angle_error_deg: float = 0.3
    tilt_warp_grid: tuple[int, int] = (3, 3)
    tilt_warp_angstrom: float = 3.0
    tilt_shift_angstrom: float = 20.0
    tilt_defocus_sigma_angstrom: float = 200.0
    # noise
    snr: float | None = 0.5
    # starting-value errors
    pose_shift_error_px: float = 1.5
    pose_angle_error_deg: float = 2.5
    defocus_error_angstrom: float = 200.0
    drift_error_angstrom: float = 0.3
    astigmatism_error_angstrom: float = 20.0
    astigmatism_angle_error_deg: float = 3.0
    tilt_shift_error_angstrom: float = 2.0
    tilt_defocus_error_angstrom: float = 100.0
    # flexible domain (off: flexible_angstrom = 0)
    flexible_angstrom: float = 0.0
    flexible_fraction: float = 0.25
    flexible_conformations: int = 8
    flexible_species: str | None = None
    # what is built
    reconstruct_half_maps: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.species:
            raise InvalidInput("a simulation needs at least one species", self.name)
        names = [s.name for s in self.species]
        if len(set(names)) != len(names):
            raise InvalidInput("species names must be unique", ", ".join(names))
        for s in self.species:
            check_symmetry(s.symmetry)
            if not s.symmetry.startswith(("C", "D")):
                raise InvalidInput("the simulator builds Cn and Dn species only", s.symmetry)
            if not s.diameter_angstrom > 4 * self.pixel_size_angstrom:
                raise InvalidInput("species diameter must span several pixels", s.name)
            if s.proportion < 0:
                raise InvalidInput("species proportions must be >= 0", s.name)
        if sum(s.proportion for s in self.species) <= 0:
            raise InvalidInput("species proportions sum to zero", self.name)
        if not self.pixel_size_angstrom > 0:
            raise InvalidInput("pixel size must be positive (Å)", str(self.pixel_size_angstrom))
        if self.n_movies < 0 or self.n_tilt_series < 0 or self.n_movies + self.n_tilt_series == 0:
            raise InvalidInput("a simulation needs at least one movie or tilt series", self.name)
        if self.n_frames < 1:
            raise InvalidInput("a movie needs at least one frame", str(self.n_frames))
        if self.snr is not None and not self.snr > 0:
            raise InvalidInput("SNR must be positive (or None for no noise)", str(self.snr))
        if not 0 <= self.mag_anisotropy < 0.5:
            raise InvalidInput("magnification anisotropy must be a fraction in [0, 0.5)", str(self.mag_anisotropy))
        if not self.doming_angstrom >= 0 or not self.blur_angstrom >= 0:
            raise InvalidInput("doming and blur amplitudes must be >= 0 (Å)", f"{self.doming_angstrom}, {self.blur_angstrom}")
        if int(self.blur_frames) != self.blur_frames or self.blur_frames < 0:
            raise InvalidInput("blur frames must be an integer >= 0", str(self.blur_frames))
        if not self.flexible_angstrom >= 0:
            raise InvalidInput("the flexible domain's displacement must be >= 0 (Å)", str(self.flexible_angstrom))
        if self.flexible_angstrom > 0:
            if not 0 < self.flexible_fraction < 1:
                raise InvalidInput("the flexible fraction must be in (0, 1)", str(self.flexible_fraction))
            if int(self.flexible_conformations) != self.flexible_conformations or not 2 <= self.flexible_conformations <= 64:
                raise InvalidInput("flexible conformations must be an integer from 2 to 64", str(self.flexible_conformations))
            if self.flexible_species is not None and self.flexible_species not in names:
                raise InvalidInput("the flexible species is not simulated", str(self.flexible_species))
        if not all(1 <= t <= 16 for t in self.trajectory_samples):
            raise InvalidInput("trajectory samples must be between 1 and 16", str(self.trajectory_samples))

    # -- derived ----------------------------------------------------------------
    def proportions(self) -> dict[str, float]:
        total = sum(s.proportion for s in self.species)
        return {s.name: s.proportion / total for s in self.species}

    def flexible_name(self) -> str | None:
        """The species with a flexible domain, or None (off)."""
        if not self.flexible_angstrom > 0:
            return None
        return self.flexible_species if self.flexible_species is not None else self.species[0].name

    def tilt_angles(self) -> np.ndarray:
        """(n,) nominal tilt angles (deg), sorted ascending (the stack order)."""
        n = int(round(self.tilt_max_deg / self.tilt_step_deg))
        return np.arange(-n, n + 1, dtype=np.float64) * self.tilt_step_deg

    def blur_sigma_angstrom(self, n_frames: int | None = None) -> np.ndarray:
        """(F,) intra-frame blur σ_f (Å) of each frame: ``blur_angstrom · (1 − f / blur_frames)``
        for f < ``blur_frames``, else 0."""
        f = np.arange(self.n_frames if n_frames is None else int(n_frames), dtype=np.float64)
        if self.blur_frames <= 0 or self.blur_angstrom <= 0:
            return np.zeros_like(f)
        return np.where(f < self.blur_frames, self.blur_angstrom * (1.0 - f / self.blur_frames), 0.0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["species"] = [asdict(s) for s in self.species]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SimConfig":
        d = dict(d)
        d["species"] = tuple(SpeciesSpec(**s) for s in d["species"])
        for k in ("frame_shape_px", "defocus_range_angstrom", "astigmatism_range_angstrom", "motion_final",
                  "trajectory_samples", "tilt_shape_px", "tilt_warp_grid"):
            if k in d:
                d[k] = tuple(d[k])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def species_box(spec: SpeciesSpec, pixel_size_angstrom: float, box_factor: float = 1.25) -> int:
    """Map box (px): ``box_factor`` × diameter, rounded up to an even size with factors 2, 3, 5."""
    from ..refine.fourier import next_fft_size

    return next_fft_size(math.ceil(box_factor * spec.diameter_angstrom / pixel_size_angstrom), even=True)


PRESETS: dict[str, SimConfig] = {
    # seconds on 2 cores: for tests and the demo
    "tiny": SimConfig(
        name="tiny",
        species=(LARGE, SMALL),
        pixel_size_angstrom=3.0,
        n_movies=2,
        n_frames=10,
        frame_shape_px=(384, 384),
        particles_per_movie=16,
        n_tilt_series=1,
        tilt_step_deg=20.0,
        tilt_shape_px=(384, 384),
        particles_per_tilt_series=8,
    ),
    # the default for benchmarks: a few minutes on 2 cores
    "small": SimConfig(
        name="small",
        species=(LARGE, SMALL),
        pixel_size_angstrom=2.0,
        n_movies=6,
        n_frames=40,
        frame_shape_px=(768, 768),
        particles_per_movie=40,
        n_tilt_series=2,
        tilt_step_deg=3.0,
        tilt_shape_px=(768, 768),
        particles_per_tilt_series=20,
        slab_thickness_angstrom=600.0,
    ),
    # closer to a real data set (not run in tests)
    "paper": SimConfig(
        name="paper",
        species=(LARGE, SMALL),
        pixel_size_angstrom=1.5,
        n_movies=24,
        n_frames=40,
        frame_shape_px=(1024, 1024),
        particles_per_movie=40,
        n_tilt_series=4,
        tilt_step_deg=3.0,
        tilt_shape_px=(1024, 1024),
        particles_per_tilt_series=30,
        slab_thickness_angstrom=800.0,
    ),
}


def parse_species_option(text: str) -> dict[str, float]:
    """``"large=0.6,small=0.35,rare=0.05"`` -> proportions by species name."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in KNOWN_SPECIES:
            raise InvalidInput(f"species proportions are NAME=SHARE with NAME in {sorted(KNOWN_SPECIES)}", part)
        try:
            share = float(value)
        except ValueError:
            raise InvalidInput("species share must be a number", part) from None
        if not share >= 0:
            raise InvalidInput("species share must be >= 0", part)
        out[name] = share
    if not out or sum(out.values()) <= 0:
        raise InvalidInput("no species with a positive share", text)
    return out


def preset(name: str = "small", *, species: dict[str, float] | None = None, **overrides: Any) -> SimConfig:
    """A named preset, optionally with other species proportions and field overrides.

    ``species`` maps names of known species (``large``, ``small``, ``rare``) to shares;
    the first one listed is the reference for the SNR.
    """
    if name not in PRESETS:
        raise InvalidInput(f"unknown simulation preset (use one of {sorted(PRESETS)})", name)
    cfg = PRESETS[name]
    if species is not None:
        specs = tuple(replace(KNOWN_SPECIES[n], proportion=float(p)) for n, p in species.items() if p > 0)
        if not specs:
            raise InvalidInput("no species with a positive share", str(species))
        cfg = replace(cfg, species=specs)
    if overrides:
        unknown = sorted(set(overrides) - set(SimConfig.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown simulation parameter {unknown[0]!r}", name)
        cfg = replace(cfg, **overrides)
    return cfg
