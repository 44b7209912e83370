"""Extraction and gold-standard reconstruction of simulated series, with any model (true or stored).

For every particle-frame record (:class:`mrepo.sim.render.Records`) a box is
cut from the frame (background = the frame's mean subtracted) around the
nearest pixel to the particle's position, multiplied by the particle's
conjugate CTF at the aliasing-free box ``L`` and cropped in real space to
the map box ``n`` (:func:`mrepo.refine.aliasing.premultiply_ctf`; the weight
is the matching band-limited CTF², :func:`~mrepo.refine.aliasing.ctf_squared_bandlimited`),
or — ``aliasing_free=False``, "plain extraction" — cut at ``n`` and
multiplied by the CTF of the ``n`` box, weight CTF². Each frame's data are
multiplied by its exposure weight ``w_f`` and its weight by ``w_f²``; the
origin (RELION sign) puts the particle back at the box centre. Symmetric
species insert every image at all symmetry-equivalent orientations.

``combine_frames=True`` (for models with one orientation per particle, as
imported from Warp/RELION) first sums each particle's aligned, exposure-
weighted frames at ``L`` (the dose-weighted, motion-corrected average) and
inserts one image per particle, weight ``CTF²ₗ Σ_f w_f²``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InvalidInput
from ..model import Item
from ..refine.aliasing import aliasing_free_box, ctf_squared_bandlimited, premultiply_ctf
from ..refine.backprojection import Reconstructor, ReconstructionResult, backproject
from ..refine.ctf import Aberrations, ctf_2d
from ..refine.dose import B_PER_EXPOSURE_A2, dose_weights
from ..refine.fourier import crop_center, freq_grid_2d, irfft2_centered, rfft2_centered, soft_sphere_mask
from ..refine.fsc import FscCurve, fsc
from ..refine.symmetry import symmetry_matrices
from .render import Records, ctf_params

SCHEMES = ("large", "premultiply", "plain")

__all__ = ["SCHEMES", "SeriesInput", "reconstruct_records", "extraction_box", "fsc_to_truth", "sphere_mask"]


@dataclass
class SeriesInput:
    """One series to reconstruct from.

    Attributes
    ----------
    item: the item whose imaging model (CTF) and exposures are used.
    stack: (F, H, W) frames or tilts (numpy, memmap or zarr).
    records: particle-frame records of one species.
    half: (N,) half set 1 or 2 of each particle (indexed by ``records.particle``).
    combine_frames: override :func:`reconstruct_records`' ``combine_frames`` for this series.
    """

    item: Item
    stack: object
    records: Records
    half: np.ndarray
    combine_frames: bool | None = None


def extraction_box(item: Item, records: Records, map_box: int, *, diameter_angstrom: float | None = None,
                   resolution_angstrom: float | None = None) -> int:
    """Aliasing-free box (px) for the records' CTFs up to ``resolution_angstrom`` (default Nyquist),
    plus the particle diameter (default the map box), as Warp's ``GetAliasingFreeSize``; at least ``map_box``."""
    if len(records) == 0:
        return map_box
    px = float(item.imaging.pixel_size_angstrom)
    off = np.asarray(records.defocus_offset_angstrom, np.float64)
    worst = off[np.argmax(np.abs(off + item.imaging.defocus_angstrom))]
    d = map_box * px if diameter_angstrom is None else float(diameter_angstrom)
    return aliasing_free_box(ctf_params(item, np.array([worst])), px, resolution_angstrom,
                             particle_diameter_angstrom=d, min_box=map_box)


def _extract(stack, means: np.ndarray, frames: np.ndarray, centres: np.ndarray, box: int, cache: dict) -> np.ndarray:
    """(B, box, box) float32 crops (frame mean subtracted; zero outside the frame)."""
    b = len(frames)
    out = np.zeros((b, box, box), np.float32)
    h, w = stack.shape[1], stack.shape[2]
    half = box // 2
    for j in range(b):
        f = int(frames[j])
        if f not in cache:
            cache.clear()
            cache[f] = np.asarray(stack[f], np.float32) - np.float32(means[f])
        frame = cache[f]
        x0, y0 = int(centres[j, 0]) - half, int(centres[j, 1]) - half
        xs0, ys0, xs1, ys1 = max(0, x0), max(0, y0), min(w, x0 + box), min(h, y0 + box)
        if xs1 > xs0 and ys1 > ys0:
            out[j, ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0] = frame[ys0:ys1, xs0:xs1]
    return out


def _frame_means(stack) -> np.ndarray:
    return np.array([float(np.asarray(stack[f], np.float64).mean()) for f in range(stack.shape[0])])


def _insert(rec: Reconstructor, half: int, x: torch.Tensor, wts: torch.Tensor, rot: torch.Tensor,
            origin: torch.Tensor | None, ops: torch.Tensor, chunk: int = 256) -> None:
    g = ops.shape[0]
    for s in range(0, x.shape[0], max(1, chunk // g)):
        e = min(x.shape[0], s + max(1, chunk // g))
        r = torch.einsum("bij,gjk->bgik", rot[s:e], ops).reshape(-1, 3, 3)
        backproject(rec.halves[half], x[s:e].repeat_interleave(g, 0), wts[s:e].repeat_interleave(g, 0),
                    shifts_angstrom=None if origin is None else origin[s:e].repeat_interleave(g, 0), rotations=r)


def reconstruct_records(
    inputs: Sequence[SeriesInput],
    map_box: int,
    pixel_size_angstrom: float,
    *,
    symmetry: str = "C1",
    diameter_angstrom: float | None = None,
    scheme: str = "large",
    combine_frames: bool = False,
    b_per_exposure: float = B_PER_EXPOSURE_A2,
    wiener_relative: float = 0.1,
    device=None,
    batch: int = 128,
    progress=None,
) -> ReconstructionResult:
    """Gold-standard half-maps of one species from its records in several series.

    Parameters
    ----------
    inputs: the series (see :class:`SeriesInput`); all at ``pixel_size_angstrom``.
    map_box: box ``n`` of the maps (px).
    symmetry: point group imposed by inserting at equivalent orientations.
    diameter_angstrom: particle diameter added to the aliasing-free box (default the map box).
    scheme: how the CTF is handled (see the module docstring): ``"large"`` (extract and
        reconstruct at the aliasing-free box ``L``, crop the map to ``n``), ``"premultiply"``
        (M: premultiply at ``L``, crop the images to ``n``, band-limited CTF²) or ``"plain"``
        (extract at ``n``, CTF of the ``n`` box).
    combine_frames: sum each particle's aligned frames first (one orientation per particle).
    b_per_exposure: exposure weighting B-factor per e⁻/Å² (Å²).
    wiener_relative: regularisation of ``D / (W + τ)``: ``τ`` = this × the shell's mean weight
        (:func:`mrepo.refine.backprojection.reconstruct`). The default 0.1 keeps the division
        stable where the band-limited CTF² of premultiplied data is (clamped to) 0 while the data
        are not; with 10⁻³ those voxels blow up (measured: docs/simulation.md).
    batch: records processed at once.
    progress: optional callable(n_done).

    Returns
    -------
    :class:`mrepo.refine.backprojection.ReconstructionResult` (half-maps, their FSC, counts).
    """
    if scheme not in SCHEMES:
        raise InvalidInput(f"unknown reconstruction scheme (use one of {SCHEMES})", scheme)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    px = float(pixel_size_angstrom)
    n_map = int(map_box)
    work_boxes = {id(inp): extraction_box(inp.item, inp.records, n_map, diameter_angstrom=diameter_angstrom)
                  for inp in inputs}
    if scheme == "large":
        n = max(work_boxes.values(), default=n_map)
        work_boxes = {k: n for k in work_boxes}
    else:
        n = n_map
        if scheme == "plain":
            work_boxes = {k: n for k in work_boxes}
    rec = Reconstructor(n, px, device=dev)
    ops = torch.as_tensor(symmetry_matrices(symmetry), dtype=torch.float32, device=dev)
    for inp in inputs:
        item, r = inp.item, inp.records
        if len(r) == 0:
            continue
        if abs(item.imaging.pixel_size_angstrom - px) > 1e-6 * px:
            raise InvalidInput("series and map pixel sizes differ", item.name)
        work = work_boxes[id(inp)]
        bt = tuple(float(v) for v in item.imaging.beam_tilt_mrad)
        ab = Aberrations(beam_tilt_mrad=bt) if bt != (0.0, 0.0) else None
        expo = torch.as_tensor(np.asarray(item.exposure_mid, np.float64), dtype=torch.float32)
        dw_n = dose_weights(expo, n, px, b_per_exposure=b_per_exposure, device=dev)  # (F, n, n//2+1)
        means = _frame_means(inp.stack)
        centres = np.round(r.position_angstrom / px).astype(np.int64)
        half = np.asarray(inp.half)[r.particle].astype(np.int64) - 1
        if ((half < 0) | (half > 1)).any():
            raise InvalidInput("half sets must be 1 or 2", item.name)
        # records sorted by frame keep the frame cache warm
        cache: dict = {}
        if combine_frames if inp.combine_frames is None else inp.combine_frames:
            _combined(rec, inp, r, centres, half, means, work, n, px, ab, expo, dw_n, ops, b_per_exposure, batch,
                      cache, dev, progress)
            continue
        order = np.lexsort((r.particle, r.frame))
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            boxes = torch.as_tensor(_extract(inp.stack, means, r.frame[idx], centres[idx], work, cache), device=dev)
            p = ctf_params(item, r.defocus_offset_angstrom[idx])
            pre = premultiply_ctf(boxes, p, px, n, work_box=work, aberrations=ab)
            fr = torch.as_tensor(r.frame[idx], device=dev)
            x = rfft2_centered(pre) * dw_n[fr]
            if work > n:
                c2 = ctf_squared_bandlimited(p, px, n, work, aberrations=ab, device=dev)
            else:
                c = ctf_2d(p, n, px, aberrations=ab, device=dev)
                c2 = (c * c.conj()).real if c.is_complex() else c * c
            wts = c2 * dw_n[fr] ** 2
            origin = torch.as_tensor(-(r.position_angstrom[idx] - centres[idx] * px), dtype=torch.float32, device=dev)
            rot = torch.as_tensor(r.rotation[idx], dtype=torch.float32, device=dev)
            for h in (0, 1):
                sel = np.flatnonzero(half[idx] == h)
                if len(sel):
                    t = torch.as_tensor(sel, device=dev)
                    _insert(rec, h, x[t], wts[t], rot[t], origin[t], ops)
            if progress is not None:
                progress(len(idx))
    maps = [crop_center(m, n_map, ndim=3).cpu().numpy().astype(np.float32) for m in rec.reconstruct_halves(wiener_relative=wiener_relative)]
    return ReconstructionResult(half_maps=maps, pixel_size_angstrom=px, fsc=fsc(maps[0], maps[1], px),
                                counts=[h.count for h in rec.halves])


def _combined(rec, inp, r, centres, half, means, work, n, px, ab, expo, dw_n, ops, b_per_exposure, batch, cache,
              dev, progress) -> None:
    """Per particle: Σ_f w_f · (frame f shifted to the particle's centre) at ``work``, then premultiply once."""
    item = inp.item
    dw_l = dose_weights(expo, work, px, b_per_exposure=b_per_exposure, device=dev)  # (F, L, L//2+1)
    ky, kx = freq_grid_2d(work, None, device=dev)
    particles = np.unique(r.particle)
    by_particle = {int(p): np.flatnonzero(r.particle == p) for p in particles}
    per_chunk = max(1, batch // max(1, item.n))
    for s in range(0, len(particles), per_chunk):
        chunk = particles[s:s + per_chunk]
        idx = np.concatenate([by_particle[int(p)] for p in chunk])
        boxes = torch.as_tensor(_extract(inp.stack, means, r.frame[idx], centres[idx], work, cache), device=dev)
        delta = torch.as_tensor(r.position_angstrom[idx] / px - centres[idx], dtype=torch.float32, device=dev)
        phase = (2.0 * math.pi / work) * (kx[None] * delta[:, 0, None, None] + ky[None] * delta[:, 1, None, None])
        fr = torch.as_tensor(r.frame[idx], device=dev)
        spec = rfft2_centered(boxes) * dw_l[fr] * torch.polar(torch.ones_like(phase), phase)
        owner = torch.as_tensor(np.searchsorted(chunk, r.particle[idx]), device=dev)
        summed = torch.zeros((len(chunk),) + spec.shape[1:], dtype=spec.dtype, device=dev).index_add_(0, owner, spec)
        w2 = torch.zeros((len(chunk),) + dw_n.shape[1:], device=dev).index_add_(0, owner, dw_n[fr] ** 2)
        first = np.array([by_particle[int(p)][0] for p in chunk])
        rot_all = r.rotation[idx]
        rot_first = r.rotation[first]
        if np.abs(rot_all - rot_first[np.searchsorted(chunk, r.particle[idx])]).max() > 1e-6:
            raise InvalidInput("combine_frames needs one orientation per particle", item.name)
        aligned = irfft2_centered(summed, work)
        p = ctf_params(item, r.defocus_offset_angstrom[first])
        pre = premultiply_ctf(aligned, p, px, n, work_box=work, aberrations=ab)
        x = rfft2_centered(pre)
        if work > n:
            c2 = ctf_squared_bandlimited(p, px, n, work, aberrations=ab, device=dev)
        else:
            c = ctf_2d(p, n, px, aberrations=ab, device=dev)
            c2 = (c * c.conj()).real if c.is_complex() else c * c
        wts = c2 * w2
        rot = torch.as_tensor(rot_first, dtype=torch.float32, device=dev)
        hv = half[first]
        for h in (0, 1):
            sel = np.flatnonzero(hv == h)
            if len(sel):
                t = torch.as_tensor(sel, device=dev)
                _insert(rec, h, x[t], wts[t], rot[t], None, ops)
        if progress is not None:
            progress(len(idx))


def sphere_mask(box: int, pixel_size_angstrom: float, diameter_angstrom: float, edge_angstrom: float = 6.0) -> np.ndarray:
    """Soft spherical mask of the species' diameter (box³ float32)."""
    return soft_sphere_mask(box, 0.5 * diameter_angstrom / pixel_size_angstrom, edge_angstrom / pixel_size_angstrom).numpy()


def fsc_to_truth(volume: np.ndarray, true_map: np.ndarray, pixel_size_angstrom: float,
                 diameter_angstrom: float | None = None) -> FscCurve:
    """FSC of a map against the true map, both under a soft sphere of the diameter (unmasked if None)."""
    mask = None
    if diameter_angstrom is not None:
        mask = sphere_mask(volume.shape[0], pixel_size_angstrom, diameter_angstrom)
    return fsc(volume, true_map, pixel_size_angstrom, mask=mask)


# ---------------------------------------------------------------------------- populations and truth
def raw_stacks(repo, rev: str = "HEAD") -> dict[str, object]:
    """Item name -> its raw frames or tilts (lazy, verified zarr arrays) at ``rev``."""
    out = {}
    for _src, it in repo.population(rev).items():
        if it.raw_array:
            out[it.name] = repo.open_array(rev, it.raw_array)
    return out


def _rows(p, digest: str) -> np.ndarray:
    idx = p.in_item(digest)
    return np.isin(np.arange(len(p)), idx)


def stored_inputs(pop, species: str, raws, *, sources: Sequence[str] | None = None) -> list[SeriesInput]:
    """Series inputs of a species with the population's own model (its grids, poses, CTF).

    Frame series: positions with the item's motion grids; one orientation per particle is
    combined over frames when the particles have one temporal sample. Tilt series: nominal
    stage geometry, the item's per-tilt offsets, per-tilt defocus from ``GridCTF`` (µm) when present.
    """
    from .geometry import item_motion_grids
    from .render import frame_records, tilt_records

    p = pop.species[species].particles.load()
    out = []
    for src, it in pop.items():
        if sources is not None and src.name not in sources:
            continue
        mask = _rows(p, it.data_digest)
        if not mask.any():
            continue
        if it.name not in raws:
            raise InvalidInput("no raw data for this item", it.name)
        sub = p.select(mask)
        if it.kind == "frames":
            rec = frame_records(it, sub, item_motion_grids(it))
            one = sub.angles.shape[1] == 1
            out.append(SeriesInput(it, raws[it.name], rec, sub.half_set, combine_frames=one))
        else:
            df = None
            if "GridCTF" in it.grids:
                df = it.grids["GridCTF"].values.reshape(-1).astype(np.float64) * (1e4 if it.grids["GridCTF"].unit == "um" else 1.0)
            out.append(SeriesInput(it, raws[it.name], tilt_records(it, sub, defocus_angstrom=df), sub.half_set,
                                   combine_frames=False))
    return out


def true_inputs(truth, species: str, raws, *, sources: Sequence[str] | None = None, per_frame: bool = True
                ) -> list[SeriesInput]:
    """Series inputs of a species with the true model (true motion, trajectories, CTF, tilt geometry).

    ``per_frame=False``: each particle keeps its mid-exposure orientation in all frames and its
    frames are combined (faster; ignores the small rotation drift).
    """
    from .render import frame_records, tilt_records

    p = truth.particles[species]
    out = []
    for name, it in truth.items.items():
        if sources is not None and it.source not in sources:
            continue
        mask = _rows(p, it.digest)
        if not mask.any():
            continue
        if name not in raws:
            raise InvalidInput("no raw data for this item", name)
        sub = p.select(mask)
        if it.item.kind == "frames":
            if not per_frame:
                from .geometry import time_basis

                mid = np.einsum("t,ntc->nc", time_basis(3, sub.angles.shape[1])[1], np.asarray(sub.angles, np.float64))
                sub = type(sub)(sub.items, sub.item, sub.coordinates, mid[:, None, :].astype(np.float32), sub.half_set)
            rec = frame_records(it.item, sub, it.motion)
            out.append(SeriesInput(it.item, raws[name], rec, sub.half_set, combine_frames=not per_frame))
        else:
            g = it.tilt
            rec = tilt_records(it.item, sub, angle_errors_deg=None if g is None else g.angle_errors_deg,
                               warp=None if g is None else g.warp, defocus_angstrom=None if g is None else g.defocus_angstrom)
            out.append(SeriesInput(it.item, raws[name], rec, sub.half_set, combine_frames=False))
    return out
