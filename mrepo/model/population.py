"""The population and how it is laid out in a repository.

Documents (readable with ``git show``)::

    docs/population.json                          name, sources, species, digests
    docs/sources/<src>/source.json                kind, item names
    docs/sources/<src>/items/<item>.json          item models and digests
    docs/species/<sp>/species.json                species parameters, map names, digests

Arrays (zarr v3, chunks in the chunk store)::

    data/sources/<src>/items/<item>/raw           raw frames or tilts (n, y, x)
    data/sources/<src>/items/<item>/grids/<name>  deformation grids (Z, Y, X)
    data/species/<sp>/maps/<role>                 half1, half2, mask, denoised...
    data/species/<sp>/particles/<column>          particle table columns
    data/species/<sp>/denoiser/<param>            denoiser weights
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptObject, InvalidInput, NotFound
from ..store.arrays import delete_node, node_kind, open_view_array, read_document, write_array, write_document
from ..store.layout import validate_name
from .digests import array_content_digest
from .grids import CubicGrid
from .imaging import ImagingModel
from .item import Item
from .particles import CORE_COLUMNS, Particles
from .provenance import item_digest, species_digest
from .source import DataSource
from .species import Species

__all__ = [
    "Population",
    "POPULATION_DOC",
    "read_population",
    "write_population",
    "write_item",
    "write_species",
    "item_doc_name",
    "item_array_name",
    "species_doc_name",
    "species_array_name",
    "VerifyProblem",
    "verify_population",
]

POPULATION_DOC = "population.json"
FORMAT = {"format": "mrepo-population", "version": 1}
PARTICLE_CHUNK_ROWS = 1 << 16


def item_doc_name(source: str, item: str) -> str:
    return f"sources/{source}/items/{item}.json"


def item_array_name(source: str, item: str, what: str) -> str:
    return f"sources/{source}/items/{item}/{what}"


def species_doc_name(species: str) -> str:
    return f"species/{species}/species.json"


def species_array_name(species: str, what: str) -> str:
    return f"species/{species}/{what}"


@dataclass(eq=False)
class Population:
    """Everything known about one project: data sources and species."""

    name: str
    sources: dict[str, DataSource] = field(default_factory=dict)
    species: dict[str, Species] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def items(self) -> Iterator[tuple[DataSource, Item]]:
        for src in self.sources.values():
            for it in src.items.values():
                yield src, it

    def item_by_digest(self, digest: str) -> tuple[DataSource, Item]:
        for src, it in self.items():
            if it.data_digest == digest:
                return src, it
        raise NotFound("no item with this data digest", digest)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sources": {n: {"kind": s.kind, "items": len(s.items)} for n, s in self.sources.items()},
            "species": {
                n: {"particles": len(s.particles), "resolution_angstrom": s.resolution_angstrom, "pixel_size_angstrom": s.pixel_size_angstrom}
                for n, s in self.species.items()
            },
        }


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _jsonable(a: np.ndarray | None) -> list | None:
    return None if a is None else np.asarray(a).tolist()


def _item_json(source: str, item: Item) -> dict[str, Any]:
    return {
        "name": item.name,
        "source": source,
        "kind": item.kind,
        "data_digest": item.data_digest,
        "digest": item_digest(item),
        "shape": list(item.shape),
        "imaging": item.imaging.to_json(),
        "pre_exposure": _jsonable(item.pre_exposure),
        "dose": _jsonable(item.dose),
        "tilt_angles_deg": _jsonable(item.tilt_angles_deg),
        "tilt_axis_deg": _jsonable(item.tilt_axis_deg),
        "tilt_axis_offset_angstrom": _jsonable(item.tilt_axis_offset_angstrom),
        "use": _jsonable(item.use),
        "grids": {n: {**g.to_meta(), "array": item_array_name(source, item.name, f"grids/{n}")} for n, g in sorted(item.grids.items())},
        "refined_with": dict(sorted(item.refined_with.items())),
        "m_hash": item.m_hash,
        "raw_array": item.raw_array,
        "source_file": item.source_file,
        "extra": item.extra,
    }


def write_item(txn: Any, source: str, item: Item, *, raw: Any | None = None) -> str:
    """Stage an item (and its raw data when given); returns its provenance digest."""
    validate_name(f"{source}/{item.name}", "item name")
    if raw is not None:
        if tuple(raw.shape) != tuple(item.shape):
            raise InvalidInput(f"raw data shape {tuple(raw.shape)} does not match the item's {item.shape}", item.name)
        item.raw_array = item_array_name(source, item.name, "raw")
        write_array(txn, item.raw_array, raw, chunks=(1, *raw.shape[1:]) if raw.shape[1] * raw.shape[2] * raw.dtype.itemsize <= (16 << 20) else None)
    prefix = "data/" + item_array_name(source, item.name, "grids/")
    existing = {k[len("data/") : -len("/zarr.json")] for k, _ in txn.iter_entries(prefix) if k.endswith("/zarr.json")}
    wanted = {item_array_name(source, item.name, f"grids/{n}") for n in item.grids}
    for name in sorted(existing - wanted):
        if node_kind(txn, name) == "array":
            delete_node(txn, name)
    for name, g in item.grids.items():
        write_array(txn, item_array_name(source, item.name, f"grids/{name}"), g.values, chunks=g.values.shape, attributes=g.to_meta())
    doc = _item_json(source, item)
    write_document(txn, item_doc_name(source, item.name), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc["digest"]


def _view_array_digest(view: Any) -> Any:
    def digest(name: str) -> str:
        return array_content_digest(open_view_array(view, name))

    return digest


def write_species(txn: Any, sp: Species) -> str:
    """Stage a species: its particle table and its document. Its maps and
    denoiser weights must already be arrays in ``txn`` (``sp.maps`` names them).
    Returns the species digest."""
    validate_name(sp.name, "species name")
    if "/" in sp.name:
        raise InvalidInput("species names are a single path component", sp.name)
    for role, name in sp.maps.items():
        if node_kind(txn, name) != "array":
            raise InvalidInput(f"map '{role}' names no array in the repository", name)
    p = sp.particles
    cols = p.columns()
    for cname, col in cols.items():
        validate_name(cname, "particle column")
        a = np.asarray(col[...]) if not isinstance(col, np.ndarray) else col
        chunks = (min(PARTICLE_CHUNK_ROWS, max(1, a.shape[0])), *a.shape[1:]) if a.ndim else ()
        write_array(txn, species_array_name(sp.name, f"particles/{cname}"), a, chunks=chunks)
    digest = species_digest(sp, _view_array_digest(txn))
    doc = {
        "name": sp.name,
        "digest": digest,
        "diameter_angstrom": sp.diameter_angstrom,
        "pixel_size_angstrom": sp.pixel_size_angstrom,
        "box": sp.box,
        "symmetry": sp.symmetry,
        "maps": dict(sorted(sp.maps.items())),
        "resolution_angstrom": sp.resolution_angstrom,
        "particles": {
            "count": len(p),
            "temporal_samples": p.temporal_samples,
            "items": list(p.items),
            "columns": {c: species_array_name(sp.name, f"particles/{c}") for c in sorted(cols)},
        },
        "contributors": dict(sorted(sp.contributors.items())),
        "denoiser": sp.denoiser,
        "metrics": sp.metrics,
        "extra": sp.extra,
    }
    write_document(txn, species_doc_name(sp.name), json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return digest


def write_population(txn: Any, pop: Population, *, items: bool = True, species: bool | Any = True) -> None:
    """Stage the population document, sources, items (unless ``items=False``) and species.

    ``species`` is True (write every species), False (write none) or a
    collection of names to write; a species not written keeps the digest
    recorded in its stored document (it must already be in ``txn``).
    """
    for s in pop.sources:
        validate_name(s, "source name")
    if items:
        for src, it in pop.items():
            write_item(txn, src.name, it)
    for src in pop.sources.values():
        write_document(
            txn,
            f"sources/{src.name}/source.json",
            json.dumps({"name": src.name, "kind": src.kind, "items": sorted(src.items), "extra": src.extra}, indent=1, sort_keys=True) + "\n",
        )
    wanted = set(pop.species) if species is True else set() if species is False else set(species)
    digests = {n: write_species(txn, sp) if n in wanted else _doc(txn, species_doc_name(n))["digest"] for n, sp in pop.species.items()}
    doc = {
        **FORMAT,
        "name": pop.name,
        "sources": {n: s.kind for n, s in sorted(pop.sources.items())},
        "species": digests,
        "extra": pop.extra,
    }
    write_document(txn, POPULATION_DOC, json.dumps(doc, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _doc(view: Any, name: str) -> dict[str, Any]:
    raw = read_document(view, name)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptObject(f"not valid JSON: {e}", name) from None


def _opt_arr(v: Any) -> np.ndarray | None:
    return None if v is None else np.asarray(v)


def read_item(view: Any, source: str, name: str, *, grids: bool = True) -> Item:
    d = _doc(view, item_doc_name(source, name))
    gr: dict[str, CubicGrid] = {}
    if grids:
        for gname, meta in d.get("grids", {}).items():
            values = np.asarray(open_view_array(view, meta["array"])[...])
            gr[gname] = CubicGrid(tuple(meta["dims"]), values, tuple(meta.get("margins", (0, 0, 0))), meta.get("unit", "angstrom"), meta.get("extra", {}))
    return Item(
        name=d["name"],
        kind=d["kind"],
        data_digest=d["data_digest"],
        shape=tuple(d["shape"]),
        imaging=ImagingModel.from_json(d["imaging"]),
        pre_exposure=np.asarray(d["pre_exposure"]),
        dose=np.asarray(d["dose"]),
        tilt_angles_deg=_opt_arr(d.get("tilt_angles_deg")),
        tilt_axis_deg=_opt_arr(d.get("tilt_axis_deg")),
        tilt_axis_offset_angstrom=_opt_arr(d.get("tilt_axis_offset_angstrom")),
        use=_opt_arr(d.get("use")),
        grids=gr,
        refined_with=dict(d.get("refined_with", {})),
        m_hash=d.get("m_hash"),
        raw_array=d.get("raw_array"),
        source_file=d.get("source_file"),
        extra=d.get("extra", {}),
    )


def read_species(view: Any, name: str, *, lazy: bool = True) -> Species:
    d = _doc(view, species_doc_name(name))
    cols = {c: open_view_array(view, a) for c, a in d["particles"]["columns"].items()}
    if not lazy:
        cols = {c: np.asarray(a[...]) for c, a in cols.items()}
    extra = {c: a for c, a in cols.items() if c not in CORE_COLUMNS}
    parts = Particles(list(d["particles"]["items"]), cols["item"], cols["coordinates"], cols["angles"], cols["half_set"], extra)
    return Species(
        name=d["name"],
        diameter_angstrom=d["diameter_angstrom"],
        pixel_size_angstrom=d["pixel_size_angstrom"],
        box=d["box"],
        particles=parts,
        symmetry=d.get("symmetry", "C1"),
        maps=dict(d.get("maps", {})),
        resolution_angstrom=d.get("resolution_angstrom"),
        contributors=dict(d.get("contributors", {})),
        denoiser=d.get("denoiser", {}),
        metrics=d.get("metrics", {}),
        extra=d.get("extra", {}),
    )


def read_population(view: Any, *, grids: bool = True, lazy: bool = True) -> Population:
    """The population stored in a Snapshot or Transaction."""
    try:
        doc = _doc(view, POPULATION_DOC)
    except NotFound:
        raise NotFound("no population in this revision (import data first)", POPULATION_DOC) from None
    if doc.get("format") != FORMAT["format"] or doc.get("version", 0) > FORMAT["version"]:
        raise CorruptObject("not a population document of a supported version", POPULATION_DOC)
    pop = Population(doc["name"], extra=doc.get("extra", {}))
    for sname, kind in doc.get("sources", {}).items():
        sdoc = _doc(view, f"sources/{sname}/source.json")
        src = DataSource(sname, kind, extra=sdoc.get("extra", {}))
        for iname in sdoc.get("items", []):
            src.add(read_item(view, sname, iname, grids=grids))
        pop.sources[sname] = src
    for spname in doc.get("species", {}):
        pop.species[spname] = read_species(view, spname, lazy=lazy)
    return pop


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyProblem:
    object: str
    message: str

    def __str__(self) -> str:
        return f"{self.object}: {self.message}"


def verify_population(view: Any, *, raw: bool = True) -> list[VerifyProblem]:
    """Recompute every provenance digest and compare it with the stored one."""
    problems: list[VerifyProblem] = []
    pop = read_population(view)
    known_items = {it.data_digest for _, it in pop.items()}
    for src, it in pop.items():
        obj = f"item {src.name}/{it.name}"
        stored = _doc(view, item_doc_name(src.name, it.name))["digest"]
        if item_digest(it) != stored:
            problems.append(VerifyProblem(obj, "item digest does not match its models"))
        if raw and it.raw_array:
            if array_content_digest(open_view_array(view, it.raw_array)) != it.data_digest:
                problems.append(VerifyProblem(obj, "raw data do not match the item's data digest"))
    pop_doc = _doc(view, POPULATION_DOC)
    for name, sp in pop.species.items():
        obj = f"species {name}"
        stored = _doc(view, species_doc_name(name))["digest"]
        if species_digest(sp, _view_array_digest(view)) != stored:
            problems.append(VerifyProblem(obj, "species digest does not match its maps, particles and models"))
        if pop_doc.get("species", {}).get(name) != stored:
            problems.append(VerifyProblem(obj, "population document lists another digest for this species"))
        missing = [d for d in sp.particles.items if d not in known_items]
        if missing:
            problems.append(VerifyProblem(obj, f"{len(missing)} particle item digests match no item (first {missing[0][:12]})"))
        for d in sp.contributors:
            if d not in known_items:
                problems.append(VerifyProblem(obj, f"contributor {d[:12]} matches no item"))
    return problems
