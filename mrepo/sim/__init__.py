"""Simulated populations with known ground truth: the embedded default of mrepo.

>>> from mrepo.sim import simulate, load_truth              # doctest: +SKIP
>>> res = simulate("simpop", preset="tiny", seed=1)          # doctest: +SKIP
>>> truth = load_truth("simpop")                            # doctest: +SKIP

Modules: :mod:`.config` (presets), :mod:`.maps` (pseudo-atomic species),
:mod:`.flexible` (an optional flexible domain),
:mod:`.geometry` (conventions), :mod:`.render` (the forward model:
``render_frames``, ``render_tilts``), :mod:`.reconstruct` (extraction and
half-maps with any model), :mod:`.simulate` (the population and its
repository), :mod:`.truth` (ground truth on disk), :mod:`.metrics`
(distance of a population to the truth), :mod:`.plots`, :mod:`.relion`
(particle images for RELION). See
``docs/simulation.md``.
"""

from .config import PRESETS, SimConfig, SpeciesSpec, preset
from .metrics import (
    astigmatism_error,
    beam_tilt_error_mrad,
    defocus_rmse,
    domain_correlation,
    doming_rmse,
    frame_position_errors,
    magnification_error,
    motion_rmse_px,
    pose_error_deg,
)
from .plots import plot_frame, plot_motion
from .reconstruct import SeriesInput, fsc_to_truth, reconstruct_records
from .relion import ParticleImages, extract_particle_images, write_relion_particles
from .render import Records, TiltGeometry, frame_records, render_frames, render_tilts, tilt_records
from .flexible import FlexibleTruth
from .simulate import FRAMES_SOURCE, TILTS_SOURCE, SimResult, simulate
from .truth import ItemTruth, Truth, load_truth

__all__ = [
    "FRAMES_SOURCE",
    "FlexibleTruth",
    "ItemTruth",
    "PRESETS",
    "ParticleImages",
    "Records",
    "SeriesInput",
    "SimConfig",
    "SimResult",
    "SpeciesSpec",
    "TILTS_SOURCE",
    "TiltGeometry",
    "Truth",
    "astigmatism_error",
    "beam_tilt_error_mrad",
    "defocus_rmse",
    "domain_correlation",
    "doming_rmse",
    "extract_particle_images",
    "frame_position_errors",
    "frame_records",
    "fsc_to_truth",
    "load_truth",
    "magnification_error",
    "motion_rmse_px",
    "plot_frame",
    "plot_motion",
    "pose_error_deg",
    "preset",
    "reconstruct_records",
    "render_frames",
    "render_tilts",
    "simulate",
    "tilt_records",
    "write_relion_particles",
]
