"""M populations as repository content: ``mrepo import m POPULATION_FILE``.

M (warpem/warp ``WarpLib/Sociology``, e321344) keeps a population as XML
containers of ``<Param Name Value/>`` nodes:

* ``<name>.population`` (``Population.Save``): ``Name``, ``<Species>`` and
  ``<Sources>`` records (``GUID``, ``Path`` relative to the population file),
  ``<LastRefinementOptions>``;
* ``<name>.source`` (``DataSource.Save``) in the folder of its items' XML:
  ``GUID``, ``Name``, ``PixelSize``, ``DimensionsX/Y/Z`` (tomogram size, px),
  ``DosePerAngstromFrame``..., ``<Files>`` records (``Hash`` = M's data hash
  of the item, ``Name`` = movie or ``.tomostar`` file name);
* ``species/<Name>_<guid8>/<Name>.species`` (``Species.Save``): ``Name``,
  ``PixelSize``, ``DiameterAngstrom``, ``Symmetry``, ``GlobalResolution``,
  ``TemporalResolutionMovement/Rotation``..., next to
  ``<Name>_half1.mrc``, ``_half2.mrc``, ``_mask.mrc`` (and ``_filt.mrc``,
  ``_denoised.mrc``... when present) and ``<Name>_particles.star``
  (``wrpCoordinateX1..T`` Å, ``wrpAngleRot1..T``, ``wrpRandomSubset``,
  ``wrpSourceName``, ``wrpSourceHash``).

Items are read as in :mod:`mrepo.io.warp_import`; their ``m_hash`` is the
source's ``Hash`` (checked against M's definition,
:func:`~mrepo.io.warp_import.m_data_hash`, whenever the raw file is there), and
particles are joined to items by ``wrpSourceHash``. The trajectories keep all
temporal samples. No real M population is public: this follows M's source
and is tested on populations built the way ``Save`` writes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..errors import FormatError, InvalidInput, NotFound
from ..model import DataSource, Species, array_content_digest, write_item
from ..model.population import item_array_name, write_population
from ..store.arrays import write_document
from .popio import commit_or_discard, load_population, safe_component
from .relion_import import particles_from_table, read_species_maps, store_species
from .star import read_particles
from .warp_import import WARP_XML_DOC, SeriesFiles, _raw_pixel_size, item_from_series, locate_series, m_data_hash, open_raw
from .warp_xml import MContainer, MRecords, read_m_container

__all__ = ["MImportReport", "import_m", "m_name_safe", "SPECIES_MAP_SUFFIXES"]

#: Map files of an M species folder (``Species.cs``) and the role mrepo gives them.
SPECIES_MAP_SUFFIXES = {
    "_half1.mrc": "half1",
    "_half2.mrc": "half2",
    "_mask.mrc": "mask",
    "_filt.mrc": "filtered",
    "_filtsharp.mrc": "filtered_sharpened",
    "_filtlocal.mrc": "locally_filtered",
    "_denoised.mrc": "denoised",
    "_localres.mrc": "local_resolution",
    "_localbfac.mrc": "local_bfactor",
}


def m_name_safe(name: str) -> str:
    """M's ``Species.NameSafe``: the name without characters .NET forbids in file names, nor spaces."""
    return "".join(c for c in name if c not in '\x00/ ' and ord(c) >= 32)


def _records(c: MContainer, section: str, path: str) -> list[dict[str, str]]:
    rec = c.sections.get(section)
    if rec is None:
        return []
    if not isinstance(rec, MRecords):
        raise FormatError(f"<{section}> is not a list of records", path)
    return rec.items


def _num(params: dict[str, str], name: str, path: str, default: float | None = None) -> float | None:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise FormatError(f"<Param Name=\"{name}\"> value {raw!r} is not a number", path) from None


@dataclass
class MImportReport:
    """What ``import_m`` did."""

    commit: str
    population: str
    sources: dict[str, int] = field(default_factory=dict)
    species: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def import_m(
    repo: Any,
    population_file: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    allow_unmatched: bool = False,
    message: str | None = None,
    progress: Callable[[str], None] | None = None,
    prepare_species: Callable[[Any, Any], None] | None = None,
) -> MImportReport:
    """Import an M population (sources, items, species, particle trajectories) in one commit.

    Raises
    ------
    FormatError
        Malformed containers or STAR, maps that do not match, an item whose
        raw data no longer give the hash the source recorded.
    NotFound
        Missing containers, items or maps (every missing item is named).
    InvalidInput
        Particles naming no item (unless ``allow_unmatched``), names already
        used in the repository.
    """
    pfile = Path(population_file)
    popc = read_m_container(pfile)
    if popc.kind != "population":
        raise FormatError(f"not an M .population file (root <{popc.root_tag}>)", str(pfile))
    folder = pfile.parent
    pop_name = popc.params.get("Name") or pfile.stem

    # -- locate every item first (all-or-nothing) -------------------------------------------
    planned: list[tuple[MContainer, Path, list[tuple[dict[str, str], SeriesFiles]]]] = []
    missing: list[str] = []
    for rec in _records(popc, "Sources", str(pfile)):
        spath = folder / rec.get("Path", "")
        if not spath.is_file():
            raise NotFound("data source of the population does not exist", str(spath))
        sc = read_m_container(spath)
        if sc.kind != "source":
            raise FormatError(f"not an M .source file (root <{sc.root_tag}>)", str(spath))
        if rec.get("GUID") and sc.guid and rec["GUID"] != sc.guid:
            raise FormatError("the source's GUID differs from the one the population records", str(spath))
        files = _records(sc, "Files", str(spath))
        found = []
        for f in files:
            fname = f.get("Name", "")
            xml = spath.parent / (Path(fname).stem + ".xml")
            if not xml.is_file():
                missing.append(f"{Path(fname).stem} (no {xml})")
                continue
            sf = locate_series(xml, data_dir=data_dir, extension=Path(fname).suffix or None)
            if sf.missing:
                missing.append(f"{sf.name} ({sf.missing[0]})")
            found.append((f, sf))
        planned.append((sc, spath, found))
    if missing:
        raise NotFound(f"{len(missing)} item(s) point to missing files: {'; '.join(missing[:5])}", str(pfile))

    txn = repo.transaction()
    try:
        pop = load_population(txn, name=pop_name)
        pop.extra.setdefault("m", {"params": dict(popc.params), "file": pfile.name})
        lro = popc.sections.get("LastRefinementOptions")
        if isinstance(lro, dict):
            pop.extra["m"]["last_refinement_options"] = dict(lro)
        report = MImportReport("", pop.name)
        # -- sources and items -------------------------------------------------------
        for sc, spath, found in planned:
            sname = safe_component(sc.name or spath.stem, "source name")
            if sname in pop.sources:
                raise InvalidInput(f"source {sname} already exists in the repository", sname)
            kinds = {sf.kind for _, sf in found}
            if len(kinds) > 1:
                raise FormatError("the source mixes frame series and tilt series", str(spath))
            kind = kinds.pop() if kinds else ("tilts" if any(".tomostar" in f.get("Name", "") for f in _records(sc, "Files", str(spath))) else "frames")
            src = DataSource(sname, kind, extra={"m": {"params": dict(sc.params), "file": spath.name,
                                                       "used_species": _records(sc, "UsedSpecies", str(spath))}})
            pop.sources[sname] = src
            spx = _num(sc.params, "PixelSize", str(spath))
            dose = _num(sc.params, "DosePerAngstromFrame", str(spath))
            dims = [_num(sc.params, f"Dimensions{a}", str(spath)) for a in "XYZ"]
            for rec, sf in found:
                if progress:
                    progress(f"{sname}/{sf.name}")
                raw, header_px = open_raw(sf)
                px = _raw_pixel_size(sf, header_px)
                digest = array_content_digest(raw)
                stored_hash = rec.get("Hash") or None
                if sf.hash_file is not None:
                    actual = m_data_hash(sf.name, sf.hash_file)
                    if stored_hash and actual != stored_hash:
                        raise FormatError(
                            f"item {sf.name}: the source records M hash {stored_hash} but its raw data give {actual}",
                            str(spath),
                        )
                    stored_hash = stored_hash or actual
                tomo = None
                if kind == "tilts" and all(d for d in dims) and spx:
                    tomo = tuple(float(d) * spx / px for d in dims)  # type: ignore[operator]
                item = item_from_series(sf, tuple(int(v) for v in raw.shape), digest, pixel_size_angstrom=px,  # type: ignore[arg-type]
                                        dose_per_frame=dose if dose else None, tomo_dims_px=tomo, m_hash=stored_hash)
                item.extra["m"] = {k: v for k, v in rec.items() if k not in ("Hash",)}
                src.add(item)
                write_item(txn, sname, item, raw=raw)
                write_document(txn, item_array_name(sname, item.name, WARP_XML_DOC), sf.xml.read_bytes())
            report.sources[sname] = len(src.items)
        write_population(txn, pop, items=False, species=False)
        # -- species -------------------------------------------------------------------------
        for rec in _records(popc, "Species", str(pfile)):
            spath = folder / rec.get("Path", "")
            if not spath.is_file():
                raise NotFound("species of the population does not exist", str(spath))
            spc = read_m_container(spath)
            if spc.kind != "species":
                raise FormatError(f"not an M .species file (root <{spc.root_tag}>)", str(spath))
            mname = spc.name or spath.stem
            safe = m_name_safe(mname)
            sfold = spath.parent
            files = {role: sfold / f"{safe}{suffix}" for suffix, role in SPECIES_MAP_SUFFIXES.items()}
            for role in ("half1", "half2"):
                if not files[role].is_file():
                    raise NotFound(f"species {mname} has no {role} map", str(files[role]))
            others = {role: p for role, p in files.items() if role not in ("half1", "half2", "mask") and p.is_file()}
            if progress:
                progress(f"species {mname}")
            maps = read_species_maps(files["half1"], files["half2"], files["mask"] if files["mask"].is_file() else None, others=others)
            mpx = _num(spc.params, "PixelSize", str(spath))
            if mpx and abs(mpx - maps.voxel_size) > 1e-3 * mpx:
                raise FormatError(f"species PixelSize {mpx:g} Å but its maps have {maps.voxel_size:g} Å", str(spath))
            star = sfold / f"{safe}_particles.star"
            name = safe_component(mname, "species name")
            if name in pop.species:
                raise InvalidInput(f"species {name} already exists in the repository", name)
            if star.is_file():
                table = read_particles(star)
                pi = particles_from_table(table, pop, allow_unmatched=allow_unmatched, obj=str(star), by_hash=True)
                parts, rel, notes = pi.particles, pi.extra, pi.notes
                report.unmatched[name] = pi.unmatched
            else:
                from ..model import Particles

                parts, rel, notes = Particles.empty(), {}, ["no particles file"]
            res = _num(spc.params, "GlobalResolution", str(spath))
            sp = Species(
                name=name,
                diameter_angstrom=_num(spc.params, "DiameterAngstrom", str(spath), 0.0) or 0.0,
                pixel_size_angstrom=maps.voxel_size,
                box=int(maps.half1.shape[0]),
                particles=parts,
                symmetry=spc.params.get("Symmetry", "C1") or "C1",
                resolution_angstrom=res if res and res > 0 else None,
                extra={"m": {"params": dict(spc.params), "file": str(spath.relative_to(folder)),
                             "used_data_sources": _records(spc, "UsedDataSources", str(spath))},
                       **({"relion": rel} if rel else {})},
            )
            if prepare_species is not None:
                prepare_species(txn, sp)
            store_species(txn, pop, sp, maps)
            report.species[name] = len(parts)
            report.notes += [f"species {name}: {n}" for n in notes]
        n_items = sum(report.sources.values())
        msg = message or f"Import M population {pop_name}: {n_items} items, {len(report.species)} species"
        meta = {
            "operation": "import-m",
            "summary": f"{n_items} items, {sum(report.species.values())} particles",
            "population_file": str(pfile.resolve()),
            "sources": report.sources,
            "species": report.species,
        }
    except BaseException:
        txn.discard()
        raise
    report.commit = commit_or_discard(txn, msg, meta)
    return report
