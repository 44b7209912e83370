"""Species as RELION input: ``mrepo export relion REV --species NAME OUT_DIR``.

Writes into ``OUT_DIR``:

* ``particles.star``: ``data_optics`` + ``data_particles`` (RELION 4/5
  layout, ``# version 50001``; ``relion3.1`` on request). Frame-series
  particles: ``rlnCoordinateX/Y`` in micrograph px (coordinates (Å) divided
  by the group's ``rlnMicrographPixelSize``, written to the optics table),
  ``rlnMicrographName``, angles, ``rlnOriginX/YAngst``, per-particle CTF,
  ``rlnRandomSubset``, the optics group and every kept RELION column.
  Tilt-series particles follow RELION 5 tomography: ``rlnTomoName``,
  ``rlnCenteredCoordinateX/Y/ZAngst`` (Å from the tomogram centre),
  ``rlnTomoTiltSeriesPixelSize``, plus ``tomograms.star`` (sizes, optics) and
  ``optimisation_set.star``. Positions and angles are the means of the
  temporal samples (M's ``CoordinatesMean``/``AnglesMean``); with
  ``trajectories`` every sample is written as ``_mrepoTrajCoordinateX1..T`` (Å)
  and ``_mrepoTrajAngleRot1..T`` (deg), which RELION ignores and mrepo reads back.
* ``<species>_half1.mrc``, ``_half2.mrc``, ``_mask.mrc`` (and any other map):
  MRC with the species' voxel size and the origin they were imported with.
* with ``extract_box``: ``Particles/<source>/<item>.mrcs``, particle images
  averaged over the frames with the item's motion (:mod:`mrepo.io.extract`),
  referenced by ``rlnImageName``; coordinates then sit exactly at the box
  centre and shifts are zero, so ``relion_reconstruct --ctf`` can run on the export.
* without ``extract_box``, particles imported from RELION keep pointing at
  their original images (``rlnImageName`` and the original shifts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from ..model import Item, Population, Species
from ..model.population import read_item
from ..store.arrays import array_info, open_view_array
from .extract import extract_particles, frame_positions, particle_defocus
from .mrc import write_mrc
from .popio import require_population
from .star import OpticsGroup, ParticleTable, _atomic_write, _loop_text, _pairs_text, write_particles

__all__ = ["RelionExportReport", "species_table", "export_relion", "write_species_maps"]

_CONSUMED = {
    "optics_group",
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "phase_shift_deg",
    "ctf_bfactor",
    "ctf_scale",
    "image_index",
    "image_stack",
    "origin_angstrom",
}


@dataclass
class RelionExportReport:
    """What ``export_relion`` wrote."""

    out_dir: Path
    particles_star: Path
    particles: int
    maps: dict[str, Path] = field(default_factory=dict)
    images: int = 0
    stacks: list[Path] = field(default_factory=list)
    tomograms_star: Path | None = None
    flavour: str = "relion5"
    notes: list[str] = field(default_factory=list)


def _optics_from_json(d: dict[str, Any]) -> OpticsGroup:
    d = dict(d)
    d["odd_zernike"] = tuple(d.get("odd_zernike") or ())
    d["even_zernike"] = tuple(d.get("even_zernike") or ())
    mm = d.get("mag_matrix") or ((1.0, 0.0), (0.0, 1.0))
    d["mag_matrix"] = tuple(tuple(float(v) for v in r) for r in mm)
    d["extra"] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in (d.get("extra") or {}).items()}
    known = set(OpticsGroup.__dataclass_fields__)
    return OpticsGroup(**{k: v for k, v in d.items() if k in known})


def _item_key(it: Item) -> tuple[float, float, float, float]:
    im = it.imaging
    return (float(im.pixel_size_angstrom), float(im.voltage_kv), float(im.cs_mm), float(im.amplitude_contrast))


def _item_optics(it: Item) -> tuple:
    """The item's optics that RELION keeps per optics group: beam tilt, magnification, Zernike terms."""
    im = it.imaging
    return (tuple(float(v) for v in im.beam_tilt_mrad), tuple(tuple(float(v) for v in r) for r in im.mag_matrix),
            tuple(im.odd_zernike), tuple(im.even_zernike))


_DEFAULT_OPTICS = ((0.0, 0.0), ((1.0, 0.0), (0.0, 1.0)), (), ())


def _decode(lab: str, values: np.ndarray, categories: dict[str, list[str]]) -> np.ndarray:
    if lab in categories:
        return np.asarray(categories[lab], dtype=object)[np.asarray(values, np.int64)]
    return values


def species_table(
    pop: Population,
    sp: Species,
    items: dict[str, tuple[str, Item]],
    *,
    image_names: np.ndarray | None = None,
    image_pixel: dict[int, float] | None = None,
    box: int | None = None,
) -> tuple[ParticleTable, bool, list[str]]:
    """The species' particles as a RELION :class:`ParticleTable` (see the module docstring).

    ``items`` maps item data digests to (source, item); ``image_names`` (N,)
    replaces the images (extraction), then coordinates are written at the
    particles' centres with zero shifts. Returns the table, whether it is
    tomography, and notes.
    """
    notes: list[str] = []
    p = sp.particles.load()
    n = len(p)
    rel = sp.extra.get("relion", {}) if isinstance(sp.extra.get("relion"), dict) else {}
    cats = rel.get("categories", {}) or {}
    digests = list(p.items)
    missing = [d for d in digests if d not in items]
    if missing:
        raise NotFound(f"{len(missing)} item(s) of the particles are not in the population (first {missing[0][:12]})", sp.name)
    its = [items[d][1] for d in digests]
    kinds = {it.kind for it in its}
    if len(kinds) > 1:
        raise InvalidInput("the species has particles in both frame series and tilt series: export them separately", sp.name)
    tomo = kinds == {"tilts"}
    item_idx = np.asarray(p.item, np.int64)
    coords_t = np.asarray(p.coordinates, np.float64)
    c = coords_t.mean(axis=1)
    angles = np.asarray(p.angles, np.float64).mean(axis=1)
    px_item = np.array([it.imaging.pixel_size_angstrom for it in its], np.float64)
    ipx = px_item[item_idx] if n else np.zeros(0)

    # -- optics groups -----------------------------------------------------------
    groups: dict[int, OpticsGroup] = {}
    if "optics_group" in p.extra and rel.get("optics"):
        for d in rel["optics"]:
            g = _optics_from_json(d)
            groups[g.number] = g
        gnum = np.asarray(p.extra["optics_group"], np.int64)
        absent = sorted(set(np.unique(gnum).tolist()) - set(groups))
        if absent:
            raise InvalidInput(f"particles use optics group {absent[0]} that the species does not describe", sp.name)
    else:
        keys = sorted({_item_key(it) for it in its})
        lut = {k: i + 1 for i, k in enumerate(keys)}
        for k, num in lut.items():
            groups[num] = OpticsGroup(number=num, name=f"opticsGroup{num}", pixel_size_angstrom=k[0], voltage_kv=k[1], cs_mm=k[2], amplitude_contrast=k[3], dimensionality=2)
        gnum = np.array([lut[_item_key(it)] for it in its], np.int64)[item_idx] if n else np.zeros(0, np.int64)
    # a group must sit on items of one pixel size (coordinates are px of the group)
    used = sorted(set(gnum.tolist()))
    next_num = max(groups) + 1 if groups else 1
    for num in used:
        sel = gnum == num
        sizes = np.unique(ipx[sel])
        for extra_size in sizes[1:]:
            g = groups[num]
            ng = OpticsGroup(**{**g.__dict__, "number": next_num, "name": f"{g.name}_{next_num}"})
            groups[next_num] = ng
            gnum[sel & (ipx == extra_size)] = next_num
            notes.append(f"optics group {num} spans items of different pixel sizes: split off group {next_num}")
            next_num += 1
    # items refined (or imported) with their own beam tilt, magnification or Zernike terms:
    # RELION keeps those per optics group, so a group spanning items that differ is split
    item_optics = [_item_optics(it) for it in its]
    for num in sorted(set(gnum.tolist())):
        sel = gnum == num
        kinds_here = sorted({item_optics[k] for k in np.unique(item_idx[sel]).tolist()})
        if kinds_here == [_DEFAULT_OPTICS]:
            continue
        for j, opt in enumerate(kinds_here):
            if j == 0:
                target = num
            else:
                g = groups[num]
                groups[next_num] = OpticsGroup(**{**g.__dict__, "number": next_num, "name": f"{g.name}_{next_num}"})
                target = next_num
                next_num += 1
            on = sel & np.isin(item_idx, [k for k in range(len(its)) if item_optics[k] == opt])
            gnum[on] = target
            g = groups[target]
            g.beam_tilt_x_mrad, g.beam_tilt_y_mrad = opt[0]
            g.mag_matrix = opt[1]
            if opt[2]:
                g.odd_zernike = opt[2]
            if opt[3]:
                g.even_zernike = opt[3]
        if len(kinds_here) > 1:
            notes.append(f"optics group {num} spans items with different beam tilt or magnification: split into {len(kinds_here)} groups")
    for num, g in groups.items():
        sel = gnum == num
        some = its[int(item_idx[sel][0])] if sel.any() else None
        if some is None:
            continue
        im = some.imaging
        g.voltage_kv = g.voltage_kv if g.voltage_kv is not None else im.voltage_kv
        g.cs_mm = g.cs_mm if g.cs_mm is not None else im.cs_mm
        g.amplitude_contrast = g.amplitude_contrast if g.amplitude_contrast is not None else im.amplitude_contrast
        if tomo:
            g.tilt_series_pixel_size_angstrom = g.tilt_series_pixel_size_angstrom or im.pixel_size_angstrom
        elif g.micrograph_pixel_size_angstrom is None:
            g.micrograph_pixel_size_angstrom = im.pixel_size_angstrom
        if image_pixel is not None:
            g.pixel_size_angstrom = image_pixel[num]
            g.image_size = box
            g.dimensionality = 2
            g.ctf_premultiplied = False
        elif g.pixel_size_angstrom is None:
            g.pixel_size_angstrom = im.pixel_size_angstrom
    optics = [groups[k] for k in sorted(groups)]

    # -- positions ---------------------------------------------------------------------
    shifts = np.zeros((n, 3))
    image = None
    if image_names is not None:
        image = np.asarray(image_names, dtype=object)
    elif "image_index" in p.extra and rel.get("image_stacks") and not tomo:
        stacks = np.asarray(rel["image_stacks"], dtype=object)
        idx = np.asarray(p.extra["image_index"], np.int64)
        image = np.array([f"{i:06d}@{s}" for i, s in zip(idx.tolist(), stacks[np.asarray(p.extra["image_stack"], np.int64)])], dtype=object)
        if "origin_angstrom" in p.extra:
            shifts = np.asarray(p.extra["origin_angstrom"], np.float64)
    z = c[:, 2]
    if tomo:
        dims = [it.extra.get("volume_dimensions_angstrom") for it in its]
        unknown = [it.name for it, d in zip(its, dims) if not d]
        if unknown:
            raise InvalidInput(f"the tomogram size of {unknown[0]} is unknown (import with --tomo-dims)", sp.name)
        size = np.asarray(dims, np.float64)[item_idx]
        coords_a = c - size / 2
        coords_px = np.full((n, 3), np.nan)
        micrograph = np.array([its[i].name for i in item_idx.tolist()], dtype=object) if n else np.zeros(0, object)
    else:
        mp = np.array([groups[g].micrograph_pixel_size_angstrom for g in gnum.tolist()], np.float64) if n else np.zeros(0)
        coords_px = np.zeros((n, 3))
        coords_px[:, :2] = (c[:, :2] + shifts[:, :2]) / mp[:, None]
        coords_a = c
        names = rel.get("micrograph_names", {}) or {}
        per_item = np.array([names.get(d) or f"{its[k].name}.mrc" for k, d in enumerate(digests)], dtype=object)
        micrograph = per_item[item_idx] if n else np.zeros(0, object)
    # -- CTF ------------------------------------------------------------------------------
    ctf = {}
    if "defocus_u_angstrom" in p.extra:
        ctf["defocus_u_angstrom"] = np.asarray(p.extra["defocus_u_angstrom"], np.float64) + (0 if tomo else z)
        ctf["defocus_v_angstrom"] = np.asarray(p.extra["defocus_v_angstrom"], np.float64) + (0 if tomo else z)
        ctf["defocus_angle_deg"] = np.asarray(p.extra["defocus_angle_deg"], np.float64)
    elif tomo:
        ctf["defocus_u_angstrom"] = ctf["defocus_v_angstrom"] = ctf["defocus_angle_deg"] = np.full(n, np.nan)
        notes.append("tilt-series particles get no per-particle defocus (RELION 5 takes it per tilt)")
    else:
        du, dv, da = np.zeros(n), np.zeros(n), np.zeros(n)
        for k, it in enumerate(its):
            sel = item_idx == k
            if sel.any():
                du[sel], dv[sel], da[sel] = particle_defocus(it, c[sel])
        ctf.update(defocus_u_angstrom=du, defocus_v_angstrom=dv, defocus_angle_deg=da)
    phase = np.asarray(p.extra["phase_shift_deg"], np.float64) if "phase_shift_deg" in p.extra else (
        np.array([it.imaging.phase_shift_deg for it in its], np.float64)[item_idx] if n and not tomo else np.zeros(n))
    ctf["phase_shift_deg"] = phase
    ctf["ctf_bfactor"] = np.asarray(p.extra["ctf_bfactor"], np.float64) if "ctf_bfactor" in p.extra else np.zeros(n)
    ctf["ctf_scale"] = np.asarray(p.extra["ctf_scale"], np.float64) if "ctf_scale" in p.extra else np.ones(n)
    # -- other columns ------------------------------------------------------------------------
    extra: dict[str, np.ndarray] = {}
    for lab, v in p.extra.items():
        if lab in _CONSUMED or lab.startswith("mrepoTraj"):
            continue
        arr = np.asarray(v)
        if arr.ndim > 2 or not lab.replace("_", "a").isalnum():
            notes.append(f"column {lab} ({arr.shape}) is not written")
            continue
        extra[lab] = _decode(lab, arr, cats)
    table = ParticleTable(
        coordinates_px=coords_px,
        coordinates_angstrom=coords_a,
        angles_deg=angles,
        shifts_angstrom=shifts,
        half_set=np.asarray(p.half_set, np.int64),
        optics_group=gnum,
        micrograph_name=micrograph,
        trajectory_coordinates_angstrom=coords_t,
        trajectory_angles_deg=np.asarray(p.angles, np.float64),
        optics=optics,
        image_name=image,
        source_hash=None,
        coordinates_centered=tomo,
        extra=extra,
        general={} if tomo else dict(rel.get("general", {}) or {}),
        flavour="relion5-tomo-particles" if tomo else "relion5-particles",
        **ctf,
    )
    return table, tomo, notes


def write_species_maps(view: Any, sp: Species, out_dir: Path) -> dict[str, Path]:
    """Each map of the species as ``<species>_<role>.mrc`` with its voxel size and origin."""
    out: dict[str, Path] = {}
    for role, name in sorted(sp.maps.items()):
        info = array_info(view, name)
        data = np.asarray(open_view_array(view, name)[...], np.float32)
        vs = info.attributes.get("voxel_size") or [sp.pixel_size_angstrom] * 3
        src = info.attributes.get("source") or {}
        origin = src.get("origin_angstrom") if isinstance(src, dict) else None
        path = out_dir / f"{sp.name}_{role.replace('/', '_')}.mrc"
        write_mrc(path, data, tuple(float(v) if v else sp.pixel_size_angstrom for v in vs), origin=tuple(origin) if origin else (0.0, 0.0, 0.0))
        out[role] = path
    return out


def _write_tomograms(path: Path, items: list[Item], table: ParticleTable) -> None:
    cols: dict[str, list[Any]] = {k: [] for k in (
        "rlnTomoName", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographOriginalPixelSize",
        "rlnTomoHand", "rlnTomoTiltSeriesPixelSize", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ")}
    for it in items:
        im = it.imaging
        size = np.asarray(it.extra["volume_dimensions_angstrom"], np.float64) / im.pixel_size_angstrom
        for k, v in zip(cols, (it.name, im.voltage_kv, im.cs_mm, im.amplitude_contrast, im.pixel_size_angstrom, -1,
                               im.pixel_size_angstrom, int(round(size[0])), int(round(size[1])), int(round(size[2])))):
            cols[k].append(v)
    _atomic_write(path, ("# mrepo tomograms (relion5-tomo)\n" + _loop_text("global", {k: np.asarray(v) if k != "rlnTomoName" else np.asarray(v, dtype=object) for k, v in cols.items()}, "50001")).encode())


def export_relion(
    repo: Any,
    rev: str,
    species: str,
    out_dir: str | os.PathLike[str],
    *,
    trajectories: bool = False,
    extract_box: int | None = None,
    invert: bool = True,
    flavour: str = "relion5",
    progress: Callable[[str], None] | None = None,
) -> RelionExportReport:
    """Export species ``species`` at ``rev`` for RELION (see the module docstring).

    ``flavour`` is ``'relion5'`` or ``'relion3.1'`` for frame-series particles
    (tilt-series particles are always RELION 5 tomography). ``invert`` flips
    the contrast of extracted images (raw data: dark protein).
    """
    if flavour not in ("relion5", "relion3.1"):
        raise InvalidInput("flavour is relion5 or relion3.1", flavour)
    snap = repo.snapshot(rev)
    pop = require_population(snap, "nothing to export")
    if species not in pop.species:
        raise NotFound("no such species", f"{rev}:species/{species}")
    sp = pop.species[species]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    need_grids = bool(extract_box) or "defocus_u_angstrom" not in sp.particles.extra
    items: dict[str, tuple[str, Item]] = {}
    wanted = set(sp.particles.items)
    for src, it in pop.items():
        if it.data_digest in wanted:
            items[it.data_digest] = (src.name, read_item(snap, src.name, it.name, grids=True) if need_grids else it)
    report = RelionExportReport(out, out / "particles.star", len(sp.particles))
    image_names = None
    image_pixel = None
    if extract_box:
        box = int(extract_box)
        kinds = {items[d][1].kind for d in sp.particles.items if d in items}
        if "tilts" in kinds:
            raise InvalidInput("particle extraction from tilt series is not supported yet", species)
        p = sp.particles.load()
        image_names = np.empty(len(p), dtype=object)
        pixel_of_item: dict[int, float] = {}
        for k, d in enumerate(p.items):
            src, it = items[d]
            sel = np.flatnonzero(np.asarray(p.item) == k)
            if not len(sel):
                continue
            if not it.raw_array:
                raise NotFound("the item has no stored raw data to extract from", f"{src}/{it.name}")
            if progress:
                progress(f"extracting {len(sel)} particles from {src}/{it.name}")
            raw = open_view_array(snap, it.raw_array)
            px = it.imaging.pixel_size_angstrom
            pos = frame_positions(it, np.asarray(p.coordinates, np.float64)[sel]) / px
            imgs = extract_particles(raw, pos, box, use=it.use, invert=invert, radius_px=min(sp.diameter_angstrom / 2 / px, 0.45 * box))
            rel_path = Path("Particles") / src / f"{it.name}.mrcs"
            (out / rel_path).parent.mkdir(parents=True, exist_ok=True)
            write_mrc(out / rel_path, imgs, px, stack=True)
            report.stacks.append(out / rel_path)
            report.images += len(sel)
            image_names[sel] = [f"{j + 1:06d}@{rel_path.as_posix()}" for j in range(len(sel))]
            pixel_of_item[k] = px
        # every optics group gets the pixel size of its items' images
        table0, _, _ = species_table(pop, sp, items)
        image_pixel = {}
        item_idx = np.asarray(p.item, np.int64)
        for num in np.unique(table0.optics_group).tolist():
            sel = table0.optics_group == num
            image_pixel[int(num)] = pixel_of_item[int(item_idx[sel][0])]
    if progress:
        progress("writing particles.star")
    table, tomo, notes = species_table(pop, sp, items, image_names=image_names, image_pixel=image_pixel, box=extract_box)
    report.notes += notes
    report.flavour = "relion5-tomo" if tomo else flavour
    write_particles(report.particles_star, table, flavour=report.flavour, trajectories=trajectories)
    if tomo:
        report.tomograms_star = out / "tomograms.star"
        _write_tomograms(report.tomograms_star, [items[d][1] for d in sp.particles.items], table)
        opt = "# mrepo optimisation set\n" + _pairs_text("", {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}, "50001")
        _atomic_write(out / "optimisation_set.star", opt.encode())
        report.notes.append("tomograms.star has no per-tilt alignment (rlnTomoTiltSeriesStarFile); RELION 5 programs that reconstruct need it")
    if progress:
        progress("writing maps")
    report.maps = write_species_maps(snap, sp, out)
    return report
