"""Human-readable summaries of a population, a species and an item
(``mrepo status``, ``mrepo show REV``, ``REV:species/NAME``,
``REV:sources/SRC/items/ITEM``). Pure functions returning lines of text."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import NotFound
from ..model import Item, Population, Species, item_digest
from ..model.population import POPULATION_DOC, item_doc_name, read_item, read_population, species_doc_name
from ..store.arrays import array_info, read_document

__all__ = ["has_population", "population_lines", "species_lines", "item_lines", "describe_path"]


def has_population(view: Any) -> bool:
    return view is not None and view.get(f"docs/{POPULATION_DOC}") is not None


def _px(values: list[float]) -> str:
    u = sorted({round(float(v), 4) for v in values})
    if not u:
        return "-"
    return f"{u[0]:g} Å" if len(u) == 1 else f"{u[0]:g}–{u[-1]:g} Å"


def _res(sp: Species) -> str:
    return f"{sp.resolution_angstrom:.2f} Å" if sp.resolution_angstrom else "unknown"


def population_lines(pop: Population) -> list[str]:
    """A few lines: sources with item counts and pixel sizes, species with particle counts."""
    n_items = sum(len(s.items) for s in pop.sources.values())
    lines = [f"Population {pop.name}: {len(pop.sources)} source(s), {n_items} item(s), {len(pop.species)} species"]
    for s in pop.sources.values():
        kind = "frame series" if s.kind == "frames" else "tilt series"
        px = _px([it.imaging.pixel_size_angstrom for it in s.items.values()])
        lines.append(f"  source  {s.name}: {len(s.items)} {kind}, pixel size {px}")
    for sp in pop.species.values():
        lines.append(
            f"  species {sp.name}: {len(sp.particles)} particles in {len(sp.particles.items)} item(s), "
            f"box {sp.box} at {sp.pixel_size_angstrom:g} Å/px, {sp.symmetry}, resolution {_res(sp)}"
        )
    return lines


def species_lines(view: Any, pop: Population, name: str) -> list[str]:
    """Summary of one species: maps, particles, half sets, columns, provenance."""
    if name not in pop.species:
        raise NotFound("no such species", f"species/{name}")
    sp = pop.species[name]
    doc = json.loads(read_document(view, species_doc_name(name)))
    p = sp.particles
    half = np.bincount(np.asarray(p.half_set[...], np.int64), minlength=3) if len(p) else np.zeros(3, int)
    rows = [
        ("species", sp.name),
        ("digest", f"blake3:{doc.get('digest')}"),
        ("particles", f"{len(p)} in {len(p.items)} item(s), {p.temporal_samples} temporal sample(s)"
                      + (f" ({int(p.angles.shape[1])} for angles)" if p.angles.shape[1] != p.temporal_samples else "")),
        ("half sets", f"{int(half[1])} / {int(half[2])}" + (f" ({int(half[0])} unknown)" if half[0] else "")),
        ("sampling", f"box {sp.box}, {sp.pixel_size_angstrom:g} Å/px"),
        ("diameter", f"{sp.diameter_angstrom:g} Å"),
        ("symmetry", sp.symmetry),
        ("resolution", _res(sp)),
    ]
    for role, arr in sorted(sp.maps.items()):
        i = array_info(view, arr)
        rows.append((f"map {role}", f"{'x'.join(map(str, i.shape))} {i.dtype} ({arr})"))
    extra = sorted(p.extra)
    if extra:
        rows.append(("columns", ", ".join(extra)))
    srcs = [k for k in ("relion", "m") if k in sp.extra]
    if "relion" in sp.extra and isinstance(sp.extra["relion"], dict):
        r = sp.extra["relion"]
        rows.append(("from", f"{r.get('file', '?')} ({r.get('flavour', '?')}), {len(r.get('optics', []))} optics group(s)"))
    elif srcs:
        rows.append(("from", ", ".join(srcs)))
    if sp.contributors:
        rows.append(("contributors", f"{len(sp.contributors)} item(s)"))
    return [f"{k + ':':<13}{v}" for k, v in rows]


def item_lines(view: Any, pop: Population, source: str, name: str) -> list[str]:
    """Summary of one item: raw data, CTF, dose, tilts, grids, hashes, particles per species."""
    if source not in pop.sources:
        raise NotFound("no such data source", f"sources/{source}")
    if name not in pop.sources[source].items:
        raise NotFound("no such item", f"sources/{source}/items/{name}")
    it: Item = read_item(view, source, name, grids=True)
    doc = json.loads(read_document(view, item_doc_name(source, name)))
    im = it.imaging
    rows = [
        ("item", f"{source}/{it.name} ({'frame series' if it.kind == 'frames' else 'tilt series'})"),
        ("raw data", f"{'x'.join(map(str, it.shape))}" + (f" ({it.raw_array})" if it.raw_array else " (not stored)")),
        ("pixel size", f"{im.pixel_size_angstrom:g} Å"),
        ("CTF", f"{im.voltage_kv:g} kV, Cs {im.cs_mm:g} mm, Q0 {im.amplitude_contrast:g}, defocus {im.defocus_angstrom:.1f} Å, "
                f"astigmatism {im.astigmatism_angstrom:.1f} Å at {im.astigmatism_angle_deg:g}°, phase shift {im.phase_shift_deg:g}°"),
        ("dose", f"{float(np.sum(it.dose)):.4g} e⁻/Å² in {it.n} {'frames' if it.kind == 'frames' else 'tilts'}"),
    ]
    mag = np.asarray(im.mag_matrix, np.float64)
    optics = [f"beam tilt ({im.beam_tilt_mrad[0]:.3f}, {im.beam_tilt_mrad[1]:.3f}) mrad"]
    if not np.allclose(mag, np.eye(2)):
        optics.append("magnification [[" + ", ".join(f"{v:.5f}" for v in mag[0]) + "], [" + ", ".join(f"{v:.5f}" for v in mag[1]) + "]]")
    if im.odd_zernike or im.even_zernike:
        optics.append(f"Zernike {len(im.odd_zernike)} odd, {len(im.even_zernike)} even")
    rows.append(("optics", ", ".join(optics)))
    if it.tilt_angles_deg is not None:
        a = it.tilt_angles_deg
        rows.append(("tilts", f"{float(a.min()):g}° to {float(a.max()):g}°, {int(np.sum(it.use))} of {it.n} used"))
    if "volume_dimensions_angstrom" in it.extra:
        rows.append(("tomogram", " x ".join(f"{v:g}" for v in it.extra["volume_dimensions_angstrom"]) + " Å"))
    for gname, g in sorted(it.grids.items()):
        v = g.values
        rows.append((f"grid", f"{gname} {g.dims[0]}x{g.dims[1]}x{g.dims[2]} {g.unit}, {float(v.min()):.4g} .. {float(v.max()):.4g}"))
    rows.append(("data digest", f"blake3:{it.data_digest}"))
    rows.append(("digest", f"blake3:{doc.get('digest', item_digest(it))}"))
    if it.m_hash:
        rows.append(("M hash", it.m_hash))
    for sp in pop.species.values():
        k = len(sp.particles.in_item(it.data_digest))
        if k:
            rows.append(("particles", f"{k} of species {sp.name}"))
    return [f"{k + ':':<13}{v}" for k, v in rows]


def describe_path(view: Any, path: str) -> list[str] | None:
    """Lines for ``species/NAME`` or ``sources/SRC/items/ITEM``; None for other paths
    (or when the revision holds no population)."""
    parts = path.strip("/").split("/")
    if not has_population(view):
        return None
    if len(parts) == 2 and parts[0] == "species":
        return species_lines(view, read_population(view, grids=False), parts[1])
    if len(parts) == 4 and parts[0] == "sources" and parts[2] == "items":
        return item_lines(view, read_population(view, grids=False), parts[1], parts[3])
    return None
