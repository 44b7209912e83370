"""RELION refinements as species: ``mrepo import relion``.

A particles STAR (RELION 1.4/3.0/3.1/4/5, single-particle or tomography,
WarpTools and M tables too), two half-maps and an optional mask become one
:class:`~mrepo.model.Species` in one commit. Particles are matched to the
repository's items by micrograph/tomogram name (``rlnMicrographName`` /
``rlnTomoName`` without folders and extension = item name) and refer to them
by data digest from then on.

What is stored per particle (columns of :class:`~mrepo.model.Particles`):

* ``coordinates`` (N, T, 3) Å in the item: RELION pixels × the coordinate
  pixel size (``rlnMicrographPixelSize``; else the matched item's pixel size;
  ``rlnTomoTiltSeriesPixelSize`` in tomography), **minus the origin shifts**
  (``rlnOriginX/Y/ZAngst``): the shifts are folded into the coordinates, as M
  does, so a coordinate is the particle's centre. RELION 5 centred
  coordinates get half the tomogram size added (from ``--tomograms`` or the
  item's ``volume_dimensions_angstrom``). The original shifts are kept in
  ``origin_angstrom`` when the file names particle images, so that an export
  can still point RELION at the original stacks.
* ``angles`` (N, T, 3) rot, tilt, psi; RELION 5's ``rlnTomoSubtomogram*``
  pre-rotation is composed in (A = A_subtomo · A_particle, RELION's
  ``ParticleSet::getMatrix3x3``) so angles are in the tomogram frame, and the
  shifts are rotated by A_subtomo before folding.
* ``half_set`` (``rlnRandomSubset``; 0 when the file has none).
* extra columns: ``optics_group``, ``defocus_u_angstrom``,
  ``defocus_v_angstrom``, ``defocus_angle_deg`` (and ``phase_shift_deg``,
  ``ctf_bfactor``, ``ctf_scale`` when they are not RELION's defaults),
  ``image_index``/``image_stack`` (``rlnImageName``, SPA), every other
  numeric column under its RELION label (``rlnClassNumber``...), and string
  columns with at most 4096 distinct values as integer codes (their values in
  the species' ``extra["relion"]["categories"]``).

Optics groups, image stack names, original micrograph names and categories
are kept in ``Species.extra["relion"]``; :mod:`mrepo.io.relion_export` writes
them back.

Particles whose micrograph matches no item are an error naming their count
and first names, unless ``allow_unmatched`` (then they are left out and
counted in the report), as in M's ``CreateSpecies`` (``--ignore_unmatched``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InvalidInput, NotFound
from ..model import Item, Particles, Population, Species
from ..model.population import species_array_name, write_population
from ..store.arrays import write_array
from .mrc import read_mrc
from .popio import commit_or_discard, require_population, safe_component
from .star import ParticleTable, StarFile, _particle_block, _read_tomogram_table, detect_flavour, read_particles, read_star

__all__ = [
    "RelionImportReport",
    "SpeciesMaps",
    "read_species_maps",
    "euler_matrix",
    "matrix_euler",
    "particles_from_table",
    "import_relion",
    "store_species",
    "item_stem",
]

TOMO_FLAVOURS = ("relion4-tomo-particles", "relion5-tomo-particles", "warptools-particles")
KNOWN_EXTENSIONS = (".mrc", ".mrcs", ".tif", ".tiff", ".eer", ".tomostar", ".st", ".xml", ".star", ".mdoc", ".ali")
MAX_CATEGORIES = 4096
_SUBTOMO = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi")


# --------------------------------------------------------------------------------------
# Euler angles (RELION's Euler_angles2matrix / Euler_matrix2angles), numpy
# --------------------------------------------------------------------------------------


def euler_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices of (N, 3) rot, tilt, psi in degrees (RELION ZYZ)."""
    a = np.deg2rad(np.asarray(angles_deg, np.float64).reshape(-1, 3))
    ca, sa = np.cos(a[:, 0]), np.sin(a[:, 0])
    cb, sb = np.cos(a[:, 1]), np.sin(a[:, 1])
    cg, sg = np.cos(a[:, 2]), np.sin(a[:, 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack(
        [
            np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
            np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
            np.stack([sc, ss, cb], -1),
        ],
        axis=1,
    )


def matrix_euler(m: np.ndarray) -> np.ndarray:
    """(N, 3) rot, tilt, psi in degrees of (N, 3, 3) matrices (RELION's convention and branches)."""
    m = np.asarray(m, np.float64).reshape(-1, 3, 3)
    eps = np.finfo(np.float32).eps
    abs_sb = np.sqrt(m[:, 0, 2] ** 2 + m[:, 1, 2] ** 2)
    regular = abs_sb > 16 * eps
    gamma = np.arctan2(m[:, 1, 2], -m[:, 0, 2])
    alpha = np.arctan2(m[:, 2, 1], m[:, 2, 0])
    sg = np.sin(gamma)
    sgn = lambda x: np.where(x >= 0, 1.0, -1.0)  # noqa: E731 - RELION's SGN
    with np.errstate(divide="ignore", invalid="ignore"):
        sign_sb = np.where(np.abs(sg) < eps, sgn(-m[:, 0, 2] / np.cos(gamma)), np.where(sg > 0, sgn(m[:, 1, 2]), -sgn(m[:, 1, 2])))
    beta = np.arctan2(sign_sb * abs_sb, m[:, 2, 2])
    up = m[:, 2, 2] >= 0
    alpha = np.where(regular, alpha, 0.0)
    beta = np.where(regular, beta, np.where(up, 0.0, np.pi))
    gamma = np.where(regular, gamma, np.where(up, np.arctan2(-m[:, 1, 0], m[:, 0, 0]), np.arctan2(m[:, 1, 0], -m[:, 0, 0])))
    return np.rad2deg(np.stack([alpha, beta, gamma], axis=1))


# --------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------


@dataclass
class SpeciesMaps:
    """Half-maps (and mask) of a species, checked to match: (n, n, n) float32, voxel size Å."""

    half1: np.ndarray
    half2: np.ndarray
    mask: np.ndarray | None
    voxel_size: float
    origin_angstrom: tuple[float, float, float]
    files: dict[str, str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _read_map(path: str | os.PathLike[str], role: str) -> tuple[np.ndarray, float | None, tuple[float, float, float]]:
    p = Path(path)
    m = read_mrc(p)
    d = np.asarray(m.data, dtype=np.float32)
    if d.ndim != 3 or not (d.shape[0] == d.shape[1] == d.shape[2]) or d.shape[0] < 2:
        raise FormatError(f"{role} must be a cubic 3D map, got {'x'.join(map(str, d.shape))}", str(p))
    vs = m.header.voxel_size
    v = vs[0] if vs[0] is not None and vs[0] == vs[1] == vs[2] else None
    if v is None and all(x is not None for x in vs) and max(vs) - min(vs) <= 1e-4 * max(vs):  # type: ignore[type-var,operator]
        v = float(vs[2])  # type: ignore[arg-type]
    return d, v, tuple(float(o) for o in m.header.origin)  # type: ignore[return-value]


def read_species_maps(
    half1: str | os.PathLike[str],
    half2: str | os.PathLike[str],
    mask: str | os.PathLike[str] | None = None,
    *,
    others: dict[str, str | os.PathLike[str]] | None = None,
) -> SpeciesMaps:
    """Read and check half-maps (and mask): same cubic shape, same known voxel size.

    Raises :class:`FormatError` naming the file and the problem.
    """
    h1, v1, o1 = _read_map(half1, "half-map 1")
    h2, v2, _ = _read_map(half2, "half-map 2")
    if h1.shape != h2.shape:
        raise FormatError(f"half-maps have different shapes: {'x'.join(map(str, h1.shape))} and {'x'.join(map(str, h2.shape))}", str(half2))
    if v1 is None:
        raise FormatError("half-map 1 has no voxel size in its header", str(half1))
    if v2 is None or abs(v1 - v2) > 1e-4 * v1:
        raise FormatError(f"half-maps have different voxel sizes: {v1:g} Å and {v2 if v2 is None else f'{v2:g}'} Å", str(half2))
    files = {"half1": str(half1), "half2": str(half2)}
    mk = None
    maps_extra: dict[str, np.ndarray] = {}
    for role, path in ([("mask", mask)] if mask is not None else []) + list((others or {}).items()):
        d, v, _ = _read_map(path, role)
        if d.shape != h1.shape:
            raise FormatError(f"{role} is {'x'.join(map(str, d.shape))}, the half-maps {'x'.join(map(str, h1.shape))}", str(path))
        if v is not None and abs(v - v1) > 1e-4 * v1:
            raise FormatError(f"{role} has voxel size {v:g} Å, the half-maps {v1:g} Å", str(path))
        files[role] = str(path)
        if role == "mask":
            mk = d
        else:
            maps_extra[role] = d
    return SpeciesMaps(h1, h2, mk, float(v1), o1, files, maps_extra)


# --------------------------------------------------------------------------------------
# Particles
# --------------------------------------------------------------------------------------


def item_stem(name: str) -> list[str]:
    """Names an item may have for a micrograph/tomogram name: the file name, then without a known extension."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    out = [base]
    low = base.lower()
    for ext in KNOWN_EXTENSIONS:
        if low.endswith(ext) and len(base) > len(ext):
            out.append(base[: -len(ext)])
            break
    return out


def _item_index(pop: Population, source: str | None) -> dict[str, list[tuple[str, Item]]]:
    if source is not None and source not in pop.sources:
        raise NotFound("no such data source", source)
    idx: dict[str, list[tuple[str, Item]]] = {}
    for src in pop.sources.values():
        if source is not None and src.name != source:
            continue
        for it in src.items.values():
            idx.setdefault(it.name, []).append((src.name, it))
    return idx


@dataclass
class MatchResult:
    items: list[Item]
    item: np.ndarray  # (N,) index into items, -1 = unmatched
    unmatched: int
    unmatched_names: list[str]
    names: dict[str, str]  # item digest -> original micrograph name


def match_items(
    names: np.ndarray,
    pop: Population,
    *,
    source: str | None = None,
    hashes: np.ndarray | None = None,
    obj: str | None = None,
) -> MatchResult:
    """Match particles to items by micrograph/tomogram name (or by M's data hash when given)."""
    if hashes is not None:
        by_hash: dict[str, Item] = {}
        for src, it in pop.items():
            if source is not None and src.name != source:
                continue
            if it.m_hash:
                by_hash[it.m_hash] = it
        keys, inv = np.unique(np.asarray(hashes, dtype=str), return_inverse=True)
        resolved: list[Item | None] = [by_hash.get(str(k)) for k in keys]
        label = np.asarray(names, dtype=str)
    else:
        index = _item_index(pop, source)
        keys, inv = np.unique(np.asarray(names, dtype=str), return_inverse=True)
        resolved = []
        for k in keys:
            hit = None
            for cand in item_stem(str(k)):
                found = index.get(cand)
                if found:
                    if len(found) > 1:
                        raise InvalidInput(
                            f"micrograph {k} matches items in several sources ({', '.join(s for s, _ in found)}): pass --source",
                            obj,
                        )
                    hit = found[0][1]
                    break
            resolved.append(hit)
        label = None
    items: list[Item] = []
    slot: dict[str, int] = {}
    lut = np.full(len(keys), -1, np.int64)
    names_of: dict[str, str] = {}
    for j, it in enumerate(resolved):
        if it is None:
            continue
        if it.data_digest not in slot:
            slot[it.data_digest] = len(items)
            items.append(it)
        lut[j] = slot[it.data_digest]
        names_of.setdefault(it.data_digest, str(keys[j]) if label is None else "")
    item = lut[inv.reshape(-1)]
    bad = item < 0
    unmatched_names: list[str] = []
    if bad.any():
        bad_keys = np.unique(inv.reshape(-1)[bad])
        if label is None:
            unmatched_names = [str(keys[j]) for j in bad_keys[:5]]
        else:
            first = {int(j): i for i, j in reversed(list(enumerate(inv.reshape(-1))))}
            unmatched_names = [f"{label[first[int(j)]]} ({keys[j]})" for j in bad_keys[:5]]
    return MatchResult(items, item, int(bad.sum()), unmatched_names, names_of)


def _categorical(values: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    uniq, inv = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    if len(uniq) > MAX_CATEGORIES:
        return None
    return inv.astype(np.int32).reshape(-1), [str(u) for u in uniq]


def _compact(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iub":
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        for t in (np.int8, np.int16, np.int32, np.int64):
            if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
                return a.astype(t)
    return a


def _tomogram_sizes(tomograms: Any, obj: str | None) -> dict[str, np.ndarray]:
    tab = _read_tomogram_table(tomograms)
    return {name: size * pix for name, (size, pix) in tab.items()}


@dataclass
class ParticleImport:
    particles: Particles
    extra: dict[str, Any]
    matched: int
    unmatched: int
    unmatched_names: list[str]
    notes: list[str]


def particles_from_table(
    table: ParticleTable,
    pop: Population,
    *,
    source: str | None = None,
    allow_unmatched: bool = False,
    coordinate_pixel_size: float | None = None,
    tomograms: str | os.PathLike[str] | StarFile | None = None,
    obj: str | None = None,
    by_hash: bool = False,
    own_trajectories: bool = False,
) -> ParticleImport:
    """Convert a :class:`ParticleTable` into :class:`Particles` of the
    population's items (see the module docstring for the conversions).

    ``own_trajectories``: the file has mrepo's ``_mrepoTrajCoordinate*``
    columns (Å in the item, written by ``export relion --trajectories``);
    they are then the coordinates, whatever the RELION columns say.
    """
    n = len(table)
    notes: list[str] = []
    tomo = table.flavour in TOMO_FLAVOURS or table.coordinates_centered
    if by_hash:
        if table.source_hash is None:
            raise FormatError("missing column _wrpSourceHash: M particles name their item by hash", obj)
        match = match_items(table.micrograph_name, pop, source=source, hashes=table.source_hash, obj=obj)
    else:
        if n and all(str(m) == "" for m in table.micrograph_name):
            raise FormatError("missing column _rlnMicrographName (or _rlnTomoName): particles cannot be matched to items", obj)
        match = match_items(table.micrograph_name, pop, source=source, obj=obj)
    if match.unmatched and not allow_unmatched:
        raise InvalidInput(
            f"{match.unmatched} of {n} particles match no item (first: {', '.join(match.unmatched_names)}); "
            "import those items or pass --allow-unmatched to leave the particles out",
            obj,
        )
    keep = match.item >= 0
    if match.unmatched:
        notes.append(f"left out {match.unmatched} particles of unknown micrographs (first: {', '.join(match.unmatched_names)})")
    k = np.flatnonzero(keep) if not keep.all() else slice(None)
    item_idx = match.item[k].astype(np.int32)
    items = match.items
    item_px = np.array([it.imaging.pixel_size_angstrom for it in items], np.float64)[item_idx] if items else np.zeros(0)

    group = np.asarray(table.optics_group)[k]
    optics = {g.number: g for g in table.optics}
    extra_cols = dict(table.extra)
    # -- poses ---------------------------------------------------------------
    angles_traj = np.asarray(table.trajectory_angles_deg, np.float64)[k]
    if np.isnan(angles_traj).any():
        raise FormatError("missing column _rlnAngleRot/_rlnAngleTilt/_rlnAnglePsi: particles need orientations", obj)
    shifts = np.asarray(table.shifts_angstrom, np.float64)[k]
    if all(lab in extra_cols for lab in _SUBTOMO):
        sub = np.stack([np.asarray(extra_cols.pop(lab), np.float64)[k] for lab in _SUBTOMO], axis=1)
        a_sub = euler_matrix(sub)
        t = angles_traj.shape[1]
        total = np.einsum("nij,ntjk->ntik", a_sub, euler_matrix(angles_traj.reshape(-1, 3)).reshape(-1, t, 3, 3))
        angles_traj = matrix_euler(total.reshape(-1, 3, 3)).reshape(-1, t, 3)
        shifts = np.einsum("nij,nj->ni", a_sub, shifts)
        notes.append("composed rlnTomoSubtomogramRot/Tilt/Psi into the angles (A_subtomo · A_particle)")
    own_traj = own_trajectories or table.flavour == "m-particles"
    cpx_used: np.ndarray | None = None
    if own_traj:
        coords = np.asarray(table.trajectory_coordinates_angstrom, np.float64)[k]
        for lab in [c for c in list(extra_cols) if c.startswith("mrepoTraj")]:
            extra_cols.pop(lab)
    elif table.coordinates_centered:
        names = np.asarray(table.micrograph_name)[k]
        if tomograms is not None:
            sizes = _tomogram_sizes(tomograms, obj)
            absent = sorted({str(t) for t in np.unique(names)} - set(sizes))
            if absent:
                raise FormatError(f"tomogram {absent[0]} of the particles is not in the tomograms file", str(tomograms))
            size = np.stack([sizes[str(t)] for t in names]) if len(names) else np.zeros((0, 3))
        else:
            dims = [it.extra.get("volume_dimensions_angstrom") for it in items]
            unknown = [it.name for it, d in zip(items, dims) if not d]
            if unknown:
                raise InvalidInput(
                    f"RELION 5 centred coordinates need the tomogram size of {unknown[0]}: pass --tomograms tomograms.star", obj
                )
            size = np.asarray(dims, np.float64)[item_idx] if len(item_idx) else np.zeros((0, 3))
        coords = (np.asarray(table.coordinates_angstrom, np.float64)[k] + size / 2 - shifts)[:, None, :]
    else:
        px = np.asarray(table.coordinates_px, np.float64)[k]
        if tomo:
            cp = np.array([optics[g].tilt_series_pixel_size_angstrom or np.nan for g in group], np.float64) if n else np.zeros(0)
        else:
            cp = np.array([optics[g].micrograph_pixel_size_angstrom or np.nan for g in group], np.float64) if n else np.zeros(0)
        if coordinate_pixel_size is not None:
            cp = np.full(len(px), float(coordinate_pixel_size))
        cp = np.where(np.isnan(cp), item_px, cp)
        cpx_used = cp
        coords = (px * cp[:, None] - shifts)[:, None, :]
    coords32 = coords.astype(np.float32)
    angles32 = angles_traj.astype(np.float32)
    # -- extra columns ---------------------------------------------------------
    cols: dict[str, np.ndarray] = {"optics_group": group.astype(np.int32)}
    rel: dict[str, Any] = {
        "flavour": table.flavour,
        "optics": [dataclasses.asdict(g) for g in table.optics],
        "general": {str(a): (b.item() if isinstance(b, np.generic) else b) for a, b in table.general.items()},
        "micrograph_names": match.names,
        "categories": {},
    }
    for lab, default in (
        ("defocus_u_angstrom", np.nan),
        ("defocus_v_angstrom", np.nan),
        ("defocus_angle_deg", np.nan),
        ("phase_shift_deg", 0.0),
        ("ctf_bfactor", 0.0),
        ("ctf_scale", 1.0),
    ):
        v = np.asarray(getattr(table, lab), np.float64)[k]
        if np.isnan(default):
            if not np.all(np.isnan(v)):
                cols[lab] = v.astype(np.float32)
        elif np.any(v != default):
            cols[lab] = v.astype(np.float32)
    if cpx_used is not None and len(cpx_used):
        # record the coordinate pixel size used, per optics group, so that exports write it back
        for g in rel["optics"]:
            sel = group == g["number"]
            if sel.any():
                vals = np.unique(cpx_used[sel])
                if len(vals) == 1 and g.get("micrograph_pixel_size_angstrom") is None:
                    g["micrograph_pixel_size_angstrom"] = float(vals[0])
    if table.image_name is not None and not tomo:
        parts = np.char.partition(np.asarray(table.image_name, dtype=str)[k], "@")
        idx_txt, at, stack = parts[:, 0], parts[:, 1], parts[:, 2]
        if len(idx_txt) and not np.all(at == "@"):
            notes.append("rlnImageName without '@' (single images) is not kept")
        else:
            try:
                index = idx_txt.astype(np.int64)
            except ValueError:
                raise FormatError("rlnImageName values are not NNN@stack", obj) from None
            stacks, sidx = np.unique(stack, return_inverse=True)
            cols["image_index"] = _compact(index)
            cols["image_stack"] = sidx.astype(np.int32).reshape(-1)
            cols["origin_angstrom"] = shifts.astype(np.float32)
            rel["image_stacks"] = [str(s) for s in stacks]
    elif table.image_name is not None:
        notes.append("tomography particle images (rlnImageName) are not kept; export with --extract makes new ones")
    for lab, values in extra_cols.items():
        v = np.asarray(values)[k]
        if v.dtype == object:
            cat = _categorical(v)
            if cat is None:
                notes.append(f"left out string column {lab} (more than {MAX_CATEGORIES} distinct values)")
                continue
            cols[lab], rel["categories"][lab] = cat
        elif v.dtype.kind in "iub":
            cols[lab] = _compact(v)
        elif v.dtype.kind == "f":
            cols[lab] = v
        else:
            notes.append(f"left out column {lab} ({v.dtype})")
    half = np.asarray(table.half_set)[k].astype(np.int8)
    if len(half) and not half.any():
        notes.append("the file has no half sets (rlnRandomSubset): half_set is 0 (unknown)")
    parts_obj = Particles([it.data_digest for it in items], item_idx, coords32, angles32, half, cols)
    return ParticleImport(parts_obj, rel, int(keep.sum()), match.unmatched, match.unmatched_names, notes)


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


@dataclass
class RelionImportReport:
    """What ``import_relion`` did."""

    commit: str
    species: str
    particles: int
    unmatched: int
    items: int
    pixel_size_angstrom: float
    box: int
    notes: list[str] = field(default_factory=list)


def store_species(txn: Any, pop: Population, sp: Species, maps: SpeciesMaps) -> None:
    """Stage a species' maps, particles and the population document."""
    attrs = {
        "voxel_size": [maps.voxel_size] * 3,
        "voxel_size_unit": "angstrom",
    }
    arrays = {"half1": maps.half1, "half2": maps.half2}
    if maps.mask is not None:
        arrays["mask"] = maps.mask
    arrays.update(maps.extra)
    for role, data in arrays.items():
        name = species_array_name(sp.name, f"maps/{role}")
        src = {"format": "mrc", "file": os.path.basename(maps.files.get(role, "")), "origin_angstrom": list(maps.origin_angstrom)}
        write_array(txn, name, data, attributes={**attrs, "source": src})
        sp.maps[role] = name
    pop.species[sp.name] = sp
    write_population(txn, pop, items=False, species=[sp.name])


def import_relion(
    repo: Any,
    particles: str | os.PathLike[str],
    half1: str | os.PathLike[str],
    half2: str | os.PathLike[str],
    *,
    species: str,
    diameter_angstrom: float,
    mask: str | os.PathLike[str] | None = None,
    symmetry: str = "C1",
    allow_unmatched: bool = False,
    source: str | None = None,
    coordinate_pixel_size: float | None = None,
    tomograms: str | os.PathLike[str] | None = None,
    message: str | None = None,
    progress: Callable[[str], None] | None = None,
    prepare_species: Callable[[Any, Species], None] | None = None,
) -> RelionImportReport:
    """Import a RELION refinement as species ``species`` in one commit (see the module docstring).

    Raises
    ------
    FormatError
        Malformed STAR, required columns missing, optics groups with different
        pixel sizes, half-maps of different shapes or voxel sizes.
    InvalidInput
        Unmatched particles (without ``allow_unmatched``), a species of that
        name already exists, bad parameters.
    NotFound
        No population/items in the repository, missing files.
    """
    name = safe_component(species, "species name")
    if name != species:
        raise InvalidInput("species names are one path component without / \\ : * ? \" < > |", species)
    if not diameter_angstrom or diameter_angstrom <= 0:
        raise InvalidInput("--diameter must be positive (Å)", str(diameter_angstrom))
    obj = str(particles)
    if progress:
        progress("reading maps")
    maps = read_species_maps(half1, half2, mask)
    if progress:
        progress("reading particles")
    star = read_star(particles)
    flavour = detect_flavour(star)
    block = _particle_block(star)
    labels = set(star.blocks[block].columns) if block is not None else set()  # type: ignore[union-attr]
    if block is not None and flavour != "m-particles":
        for need in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
            if need not in labels:
                raise FormatError(f"missing column _{need} in data_{block}: particles need orientations", obj)
        if not labels & {"rlnMicrographName", "rlnTomoName"}:
            raise FormatError(f"missing column _rlnMicrographName in data_{block}: particles cannot be matched to items", obj)
    table = read_particles(star, require_single_pixel_size=True)
    txn = repo.transaction()
    try:
        pop = require_population(txn, "import the items first (mrepo import warp)")
        if name in pop.species:
            raise InvalidInput(f"species {name} already exists: choose another --species", name)
        if progress:
            progress("matching particles to items")
        pi = particles_from_table(
            table,
            pop,
            source=source,
            allow_unmatched=allow_unmatched,
            coordinate_pixel_size=coordinate_pixel_size,
            tomograms=tomograms,
            obj=obj,
            own_trajectories="mrepoTrajCoordinateX1" in labels,
        )
        pi.extra["file"] = os.path.basename(obj)
        sp = Species(
            name=name,
            diameter_angstrom=float(diameter_angstrom),
            pixel_size_angstrom=maps.voxel_size,
            box=int(maps.half1.shape[0]),
            particles=pi.particles,
            symmetry=symmetry,
            extra={"relion": pi.extra},
        )
        if progress:
            progress("storing")
        if prepare_species is not None:  # e.g. give it an initial denoiser (mrepo.refine.denoise)
            prepare_species(txn, sp)
        store_species(txn, pop, sp, maps)
        msg = message or f"Import RELION species {name}: {pi.matched} particles from {os.path.basename(obj)}"
        meta = {
            "operation": "import-relion",
            "summary": f"{pi.matched} particles",
            "species": name,
            "particles_file": os.path.abspath(obj),
            "unmatched": pi.unmatched,
        }
    except BaseException:
        txn.discard()
        raise
    commit = commit_or_discard(txn, msg, meta)
    return RelionImportReport(commit, name, pi.matched, pi.unmatched, len(pi.particles.items), maps.voxel_size, int(maps.half1.shape[0]), pi.notes)
