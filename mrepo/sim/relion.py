"""Particle images of a simulated species as RELION would see them, and their export.

:func:`extract_particle_images` cuts each frame-series particle out of its
frames with the **true** model (per-frame positions with the true motion;
orientation and defocus at mid-exposure): every frame is shifted so that the
particle sits where it is in the middle frame, weighted by its exposure filter
``w_f`` and the sum divided by ``Σ_f w_f²`` (the dose-weighted, motion-corrected
particle, whose signal is ``CTF · projection``). The images are CTF'ed, not
premultiplied; their origins (``rlnOriginXAngst/YAngst``, RELION's sign: the
particle is at ``−origin`` from the box centre) carry the sub-pixel offsets.
:func:`write_relion_particles` writes them as an MRC stack and a RELION 3.1
STAR file for ``relion_reconstruct --ctf``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidInput
from ..io.mrc import write_mrc
from ..io.star import OpticsGroup, ParticleTable, write_particles
from ..refine.ctf import CtfParams
from ..refine.dose import B_PER_EXPOSURE_A2, dose_weights
from ..refine.fourier import freq_grid_2d, irfft2_centered, rfft2_centered
from .geometry import frame_positions, interp_trajectory
from .reconstruct import _extract, _frame_means
from .truth import Truth

__all__ = ["ParticleImages", "extract_particle_images", "write_relion_particles"]


@dataclass
class ParticleImages:
    """Extracted particle images of one species with their true parameters.

    Attributes
    ----------
    images: (N, n, n) float32.
    angles_deg: (N, 3) RELION (rot, tilt, psi) at mid-exposure.
    origins_angstrom: (N, 2) ``rlnOriginXAngst/YAngst``.
    defocus_u_angstrom, defocus_v_angstrom, defocus_angle_deg: (N,) CTF.
    half_set: (N,) 1 or 2.
    coordinates_px: (N, 2) integer extraction centres in the frames (x, y).
    micrographs: (N,) item names.
    rows: (N,) rows of the species' particle table.
    pixel_size_angstrom, voltage_kv, cs_mm, amplitude_contrast: optics.
    """

    images: np.ndarray
    angles_deg: np.ndarray
    origins_angstrom: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    half_set: np.ndarray
    coordinates_px: np.ndarray
    micrographs: np.ndarray
    rows: np.ndarray
    pixel_size_angstrom: float
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def ctf(self) -> CtfParams:
        return CtfParams(voltage_kv=self.voltage_kv, cs_mm=self.cs_mm, amplitude_contrast=self.amplitude_contrast,
                         defocus_u_angstrom=torch.as_tensor(self.defocus_u_angstrom),
                         defocus_v_angstrom=torch.as_tensor(self.defocus_v_angstrom),
                         defocus_angle_deg=torch.as_tensor(self.defocus_angle_deg))


def extract_particle_images(truth: Truth, raws, species: str, *, box: int | None = None,
                            b_per_exposure: float = B_PER_EXPOSURE_A2, jitter_px: float = 0.0,
                            seed: int = 0) -> ParticleImages:
    """Dose-weighted, motion-corrected images of a species' frame-series particles (true model).

    ``jitter_px``: put each particle off the box centre by up to this many pixels along x and y
    (uniform; the origins say where), which makes the origin convention matter.
    """
    if species not in truth.particles:
        raise InvalidInput("no such species in the simulation", species)
    n = int(box or truth.boxes[species])
    px = truth.pixel_size_angstrom
    parts = truth.particles[species]
    coords_all = np.asarray(parts.coordinates, np.float64)
    angles_all = np.asarray(parts.angles, np.float64)
    ky, kx = freq_grid_2d(n, None)
    out: dict[str, list] = {k: [] for k in ("img", "ang", "org", "du", "dv", "da", "half", "xy", "mic", "rows")}
    optics = None
    rng = np.random.default_rng(seed)
    for name, it in truth.items.items():
        if it.item.kind != "frames":
            continue
        rows = parts.in_item(it.digest)
        if not len(rows):
            continue
        item = it.item
        im = item.imaging
        if tuple(im.beam_tilt_mrad) != (0.0, 0.0):
            raise InvalidInput("beam tilt is not exported (simulate with beam_tilt_sigma_mrad=0)", name)
        optics = optics or (im.voltage_kv, im.cs_mm, im.amplitude_contrast)
        f = item.n
        mid = f // 2
        pos = frame_positions(coords_all[rows], f, item.shape, px, it.motion) / px  # (N, F, 2) px
        ang = interp_trajectory(angles_all[rows], 3)[:, 1]  # mid-exposure
        centres = np.round(pos).astype(np.int64)
        frac = pos - centres
        target = frac[:, mid] + rng.uniform(-jitter_px, jitter_px, size=(len(rows), 2))  # px from the box centre
        w = dose_weights(torch.as_tensor(item.exposure_mid, dtype=torch.float32), n, px,
                         b_per_exposure=b_per_exposure)  # (F, n, n//2+1)
        w2 = (w * w).sum(0)
        means = _frame_means(raws[name])
        cache: dict = {}
        acc = torch.zeros((len(rows), n, n // 2 + 1), dtype=torch.complex64)
        for fr in range(f):
            boxes = torch.as_tensor(_extract(raws[name], means, np.full(len(rows), fr), centres[:, fr], n, cache))
            d = torch.as_tensor(target - frac[:, fr], dtype=torch.float32)  # move the particle by d
            phase = (-2.0 * math.pi / n) * (kx[None] * d[:, 0, None, None] + ky[None] * d[:, 1, None, None])
            acc += rfft2_centered(boxes) * w[fr] * torch.polar(torch.ones_like(phase), phase)
        imgs = irfft2_centered(acc / w2.clamp(min=1e-6), n).numpy().astype(np.float32)
        z = coords_all[rows, 0, 2]
        out["img"].append(imgs)
        out["ang"].append(ang)
        out["org"].append(-target * px)
        out["du"].append(im.defocus_u_angstrom + z)
        out["dv"].append(im.defocus_v_angstrom + z)
        out["da"].append(np.full(len(rows), im.astigmatism_angle_deg))
        out["half"].append(np.asarray(parts.half_set)[rows])
        out["xy"].append(centres[:, mid])
        out["mic"].append(np.full(len(rows), name, dtype=object))
        out["rows"].append(rows)
    if optics is None:
        raise InvalidInput("the species has no frame-series particle", species)
    cat = {k: np.concatenate(v) for k, v in out.items()}
    return ParticleImages(cat["img"], cat["ang"], cat["org"], cat["du"], cat["dv"], cat["da"],
                          cat["half"].astype(np.int64), cat["xy"], cat["mic"], cat["rows"], px, *optics)


def write_relion_particles(p: ParticleImages, out_dir: str | os.PathLike[str], stem: str = "particles") -> Path:
    """Write ``<stem>.mrcs`` and ``<stem>.star`` (RELION 3.1) in ``out_dir``; returns the STAR path."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    stack = d / f"{stem}.mrcs"
    write_mrc(stack, p.images, p.pixel_size_angstrom, stack=True)
    n = len(p)
    group = OpticsGroup(number=1, name="opticsGroup1", pixel_size_angstrom=p.pixel_size_angstrom,
                        voltage_kv=p.voltage_kv, cs_mm=p.cs_mm, amplitude_contrast=p.amplitude_contrast,
                        image_size=int(p.images.shape[-1]), dimensionality=2)
    coords = np.zeros((n, 3))
    coords[:, :2] = p.coordinates_px
    shifts = np.zeros((n, 3))
    shifts[:, :2] = p.origins_angstrom
    table = ParticleTable(
        coordinates_px=coords,
        coordinates_angstrom=coords * p.pixel_size_angstrom,
        angles_deg=np.asarray(p.angles_deg, np.float64),
        shifts_angstrom=shifts,
        half_set=np.asarray(p.half_set, np.int64),
        defocus_u_angstrom=np.asarray(p.defocus_u_angstrom, np.float64),
        defocus_v_angstrom=np.asarray(p.defocus_v_angstrom, np.float64),
        defocus_angle_deg=np.asarray(p.defocus_angle_deg, np.float64),
        phase_shift_deg=np.zeros(n),
        ctf_bfactor=np.zeros(n),
        ctf_scale=np.ones(n),
        optics_group=np.ones(n, np.int64),
        micrograph_name=np.asarray(p.micrographs, dtype=object),
        trajectory_coordinates_angstrom=(coords * p.pixel_size_angstrom)[:, None, :],
        trajectory_angles_deg=np.asarray(p.angles_deg, np.float64)[:, None, :],
        optics=[group],
        image_name=np.array([f"{i + 1:06d}@{stack.name}" for i in range(n)], dtype=object),
    )
    star = d / f"{stem}.star"
    write_particles(star, table, flavour="relion3.1")
    return star
