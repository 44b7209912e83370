"""Warp project folders as data sources: ``mrepo import warp``.

A Warp processing folder holds one XML per frame series (``<Movie>``,
``<root>.xml``) or tilt series (``<TiltSeries>``). The raw data they describe
are found the way Warp finds them (``WarpLib/Movie/Movie.cs``,
``TiltSeries/TiltSeries.cs``, warpem/warp e321344):

* **frame series**: ``Movie.DataPath`` = ``DataDirectory/<root><ext>`` when
  the XML's ``DataDirectory`` attribute is set, else the movie next to the
  XML. The extension is WarpTools' ``Import/Extension`` (``.settings``) or
  the first of ``.tif .tiff .mrc .mrcs .eer`` that exists. The whole movie
  (frames, y, x) is stored as it is (dtype kept).
* **tilt series**: tilt t's movie is ``DataOrProcessingDirectory /
  MoviePath[t]`` (``DataDirectory`` if set, else the XML's folder). Like M
  (``TiltSeries.LoadMovieData``) mrepo stores each tilt's aligned average
  ``<movie folder>/average/<movie root>.mrc``; without averages the tilt stack
  ``tiltstack/<root>/<root>.st`` (used tilts only, in XML order); without
  either, each tilt movie summed over its frames (no motion correction).

Per item mrepo keeps: the raw data as an array, the CTF (voltage, Cs,
amplitude contrast, defocus, astigmatism, phase shift, pixel size, B, scale,
beam tilt, Zernike coefficients, magnification correction), every cubic grid
(``GridMovementX/Y``, ``GridLocalMovementX/Y``, ``PyramidShiftX/Y[i]`` as
``PyramidShiftX_i``, ``GridCTF``..., Warp units), dose per frame/tilt, tilt
angles, axis angles and offsets, and M's data hash (:func:`m_data_hash`).
The original XML is kept as the document ``sources/<src>/items/<item>/warp.xml``
so that :mod:`mrepo.io.warp_export` can write it back with the current models.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InvalidInput, NotFound
from ..model import CubicGrid, DataSource, ImagingModel, Item, array_content_digest, write_item
from ..model.population import item_array_name, write_population
from ..store.arrays import write_document
from .images import read_image
from .mrc import read_mrc, read_mrc_header
from .popio import LazyStack, commit_or_discard, load_population, safe_component
from .warp_xml import CubicGridData, MContainer, WarpCTF, WarpSeries, read_warp_settings, read_warp_xml, warp_ctf

__all__ = [
    "SeriesFiles",
    "WarpImportReport",
    "scan_warp_folder",
    "locate_series",
    "m_data_hash",
    "imaging_from_ctf",
    "grid_from_warp",
    "grid_to_warp",
    "item_from_series",
    "open_raw",
    "import_warp",
    "WARP_XML_DOC",
]

MOVIE_SUFFIXES = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")
#: Document holding an item's original Warp XML.
WARP_XML_DOC = "warp.xml"
#: M's data hash reads at most this many bytes of the raw file (Movie.GetDataHash).
M_HASH_BYTES = 1 << 19

# Units of Warp's grids (Movie.cs / TiltSeries.cs): what mrepo records in CubicGrid.unit.
_GRID_UNITS = {
    "GridCTF": "um",
    "GridCTFDefocusDelta": "um",
    "GridCTFDefocusAngle": "degree",
    "GridCTFPhase": "pi",
    "GridCTFCs": "mm",
    "GridCTFDoming": "um",
    "GridMovementX": "angstrom",
    "GridMovementY": "angstrom",
    "GridLocalMovementX": "angstrom",
    "GridLocalMovementY": "angstrom",
    "GridAngleX": "degree",
    "GridAngleY": "degree",
    "GridAngleZ": "degree",
    "GridDoseBfacs": "angstrom2",
    "GridDoseBfacsDelta": "angstrom2",
    "GridDoseBfacsAngle": "degree",
    "GridDoseWeights": "1",
    "GridLocationBfacs": "angstrom2",
    "GridLocationWeights": "1",
    "GridVolumeWarpX": "angstrom",
    "GridVolumeWarpY": "angstrom",
    "GridVolumeWarpZ": "angstrom",
}
_INDEXED = re.compile(r"^(.+)\[(\d+)\]$")
_MODEL_INDEXED = re.compile(r"^(PyramidShiftX|PyramidShiftY)_(\d+)$")


# --------------------------------------------------------------------------------------
# M's data hash
# --------------------------------------------------------------------------------------


def m_data_hash(root_name: str, data_path: str | os.PathLike[str]) -> str:
    """M's item data hash (``Movie.GetDataHash``, ``TiltSeries.GetDataHash``).

    SHA-1 over the item's root name as UTF-16LE (.NET ``char``) bytes followed
    by the first min(512 KiB, size) bytes of the raw data file (the movie; for
    a tilt series the first tilt's movie), written as base64 without ``=``,
    with ``/`` → ``-`` and ``+`` → ``_`` (``MathHelper.GetSHA1``): 27 characters.
    """
    try:
        with open(data_path, "rb") as f:
            head = f.read(M_HASH_BYTES)
    except FileNotFoundError:
        raise NotFound("no such file (M's data hash reads it)", str(data_path)) from None
    digest = hashlib.sha1(root_name.encode("utf-16-le") + head).digest()
    return base64.b64encode(digest).decode("ascii").replace("=", "").replace("/", "-").replace("+", "_")


# --------------------------------------------------------------------------------------
# Locating the files of a series
# --------------------------------------------------------------------------------------


@dataclass
class SeriesFiles:
    """A Warp series XML and the raw data it points to.

    Attributes
    ----------
    name:
        Root name (XML file name without ``.xml``).
    kind:
        ``'frames'`` or ``'tilts'``.
    raw_mode:
        ``'movie'``, ``'tilt-averages'``, ``'tilt-stack'`` or ``'tilt-movies'``.
    raw_files:
        The movie, the per-tilt averages or movies, or the tilt stack.
    hash_file:
        The file M's data hash reads (the movie, or the first tilt's movie), if present.
    missing:
        Files that should exist and do not (the item cannot be imported).
    """

    name: str
    kind: str
    xml: Path
    series: WarpSeries
    raw_mode: str = ""
    raw_files: list[Path] = field(default_factory=list)
    hash_file: Path | None = None
    missing: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)


def _resolve(base: Path, p: str) -> Path:
    q = Path(p.replace("\\", "/"))
    return Path(os.path.normpath(q if q.is_absolute() else base / q))


def _movie_data_path(movie_path: Path) -> Path:
    """``Movie.DataPath`` of a movie: its own XML's DataDirectory/Name if set, else the path."""
    xml = movie_path.parent / (movie_path.stem + ".xml")
    if xml.is_file():
        try:
            attrs = read_warp_xml(xml).attributes
        except FormatError:
            attrs = {}
        dd = attrs.get("DataDirectory", "")
        if dd:
            return _resolve(movie_path.parent, dd) / movie_path.name
    return movie_path


def locate_series(
    xml: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    extension: str | None = None,
    extra_dirs: Iterable[Path] = (),
    settings: dict[str, dict[str, str]] | None = None,
) -> SeriesFiles:
    """Read one series XML and find its raw data (see the module docstring).

    ``data_dir`` overrides the XML's ``DataDirectory``; ``extension`` is the
    movie extension (``.tif``); ``extra_dirs`` are further folders to look
    for movies in (WarpTools' ``DataFolder``).
    """
    xml = Path(xml)
    series = read_warp_xml(xml)
    proc = xml.parent
    name = xml.stem
    attr_dir = series.attributes.get("DataDirectory", "")
    bases: list[Path] = []
    if data_dir is not None:
        bases.append(Path(data_dir))
    if attr_dir:
        bases.append(_resolve(proc, attr_dir))
    bases += [Path(d) for d in extra_dirs]
    bases.append(proc)
    sf = SeriesFiles(name=name, kind="tilts" if series.kind == "tiltseries" else "frames", xml=xml, series=series, settings=settings or {})
    if sf.kind == "frames":
        suffixes = ([extension] if extension else []) + [s for s in MOVIE_SUFFIXES if s != extension]
        for base in bases + [proc.parent]:
            for s in suffixes:
                cand = base / (name + s)
                if cand.is_file():
                    sf.raw_mode, sf.raw_files, sf.hash_file, sf.data_dir = "movie", [cand], cand, base
                    return sf
        where = bases[0]
        sf.missing.append(f"no movie {name}{{{','.join(suffixes)}}} in {where}")
        return sf
    movies = [str(m) for m in series.tilts.get("MoviePath", [])]
    n = series.n_tilts
    if n == 0:
        raise FormatError("tilt series XML has no <Angles>", str(xml))
    if len(movies) != n or any(not m for m in movies):
        sf.missing.append("the XML names no movie for each tilt (<MoviePath>)")
        return sf
    ts_bases = [b for b in bases if b != proc] + [proc]
    chosen = ts_bases[0]
    for base in ts_bases:
        first = _resolve(base, movies[0])
        if (first.parent / "average" / (first.stem + ".mrc")).is_file() or first.is_file():
            chosen = base
            break
    sf.data_dir = chosen
    paths = [_resolve(chosen, m) for m in movies]
    averages = [p.parent / "average" / (p.stem + ".mrc") for p in paths]
    data_paths = [_movie_data_path(p) for p in paths]
    sf.hash_file = data_paths[0] if data_paths[0].is_file() else None
    stack = proc / "tiltstack" / name / (name + ".st")
    if all(a.is_file() for a in averages):
        sf.raw_mode, sf.raw_files = "tilt-averages", averages
    elif stack.is_file():
        sf.raw_mode, sf.raw_files = "tilt-stack", [stack]
        sf.notes.append("tilt images from the tilt stack (unused tilts are zero)")
    elif all(p.is_file() for p in data_paths):
        sf.raw_mode, sf.raw_files = "tilt-movies", data_paths
        sf.notes.append("tilt images are plain sums of the tilt movies (no averages found)")
    else:
        gone = [a for a in averages if not a.is_file()]
        sf.missing.append(f"{len(gone)} of {n} tilt averages missing, e.g. {gone[0]} (and no tilt stack or movies)")
    return sf


def _settings_dirs(folder: Path) -> list[tuple[Path, Path | None, str | None, dict[str, dict[str, str]]]]:
    """(processing folder, data folder, extension, sections) of each WarpTools ``.settings`` in ``folder``."""
    out = []
    for s in sorted(folder.glob("*.settings")):
        c: MContainer = read_warp_settings(s)
        imp = c.sections.get("Import", {})
        if not isinstance(imp, dict):
            continue
        data = imp.get("DataFolder", "")
        proc = imp.get("ProcessingFolder", "") or data
        ext = imp.get("Extension", "").replace("*", "").strip() or None
        sections = {k: v for k, v in c.sections.items() if isinstance(v, dict)}
        out.append((_resolve(folder, proc) if proc else folder, _resolve(folder, data) if data else None, ext, sections))
    return out


def scan_warp_folder(folder: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None) -> list[SeriesFiles]:
    """Every frame/tilt series under a Warp folder, with its raw data located.

    ``folder`` is a processing folder (``*.xml`` next to each other), a
    WarpTools project folder with ``*.settings`` files (their
    ``Import/ProcessingFolder``, ``DataFolder`` and ``Extension`` are used), or
    one series XML. XML files that are not Warp series are skipped; a
    malformed series XML is an error.
    """
    root = Path(folder)
    if not root.exists():
        raise NotFound("no such folder", str(root))
    if root.is_file():
        if root.suffix.lower() != ".xml":
            raise InvalidInput("give a Warp processing folder or a series .xml file", str(root))
        return [locate_series(root, data_dir=data_dir)]
    plans: list[tuple[Path, Path | None, str | None, dict[str, dict[str, str]]]] = _settings_dirs(root) or [(root, None, None, {})]
    found: list[SeriesFiles] = []
    seen: set[Path] = set()
    for proc, data, ext, sections in plans:
        if not proc.is_dir():
            raise NotFound("processing folder of the .settings does not exist", str(proc))
        for xml in sorted(proc.glob("*.xml")):
            if xml in seen:
                continue
            seen.add(xml)
            try:
                sf = locate_series(xml, data_dir=data_dir, extension=ext, extra_dirs=[data] if data else [], settings=sections)
            except FormatError as e:
                if "not a Warp series XML" in e.message:
                    continue
                raise
            found.append(sf)
    if not found:
        raise NotFound("no Warp frame-series or tilt-series XML found", str(root))
    return found


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def imaging_from_ctf(ctf: WarpCTF, pixel_size_angstrom: float, mag_matrix: Any) -> ImagingModel:
    """mrepo's imaging model from Warp's ``<CTF>``: defocus and astigmatism in Å
    (astigmatism = DefocusDelta / 2, so DefocusU = Defocus + DefocusDelta / 2),
    phase shift in degrees; Warp-only terms go to ``extra``."""
    return ImagingModel(
        pixel_size_angstrom=float(pixel_size_angstrom),
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast,
        defocus_angstrom=ctf.defocus_angstrom,
        astigmatism_angstrom=ctf.defocus_delta_angstrom / 2,
        astigmatism_angle_deg=ctf.defocus_angle_deg,
        phase_shift_deg=ctf.phase_shift_deg,
        bfactor_a2=ctf.bfactor_a2,
        scale=ctf.scale,
        beam_tilt_mrad=tuple(ctf.beam_tilt_mrad),
        mag_matrix=tuple(tuple(float(v) for v in r) for r in mag_matrix),
        odd_zernike=tuple(ctf.zernike_odd),
        even_zernike=tuple(ctf.zernike_even),
        extra={
            "warp_ctf_pixel_size_angstrom": ctf.pixel_size_angstrom,
            "cc_mm": ctf.cc_mm,
            "bfactor_delta_a2": ctf.bfactor_delta_a2,
            "bfactor_angle_deg": ctf.bfactor_angle_deg,
            "beam_tilt2": list(ctf.beam_tilt2),
            "distortion": [list(r) for r in ctf.distortion],
            "pixel_size_delta_percent": ctf.pixel_size_delta_percent,
            "pixel_size_angle_deg": ctf.pixel_size_angle_deg,
            "thickness_nm": ctf.thickness_nm,
        },
    )


def model_grid_name(key: str) -> str:
    """Warp element key (``PyramidShiftX[2]``) → grid name in the model (``PyramidShiftX_2``)."""
    m = _INDEXED.match(key)
    return f"{m.group(1)}_{m.group(2)}" if m else key


def warp_grid_key(name: str) -> str | None:
    """Grid name in the model → Warp element key, or None for grids Warp does not know."""
    m = _MODEL_INDEXED.match(name)
    if m:
        return f"{m.group(1)}[{m.group(2)}]"
    if name.startswith("Grid") and "/" not in name:
        return name
    return None


def grid_from_warp(g: CubicGridData) -> CubicGrid:
    """A Warp grid as a model grid (4-D ``LinearGrid4D`` kept as dims (X, Y, Z·W))."""
    unit = _GRID_UNITS.get(g.name, "1")
    x, y, z = (int(v) for v in g.dims)
    if g.duration is not None:
        w = int(g.duration)
        return CubicGrid((x, y, z * w), np.asarray(g.values, np.float32).reshape(w * z, y, x), (0.0, 0.0, 0.0), unit, {"linear4d": {"dims": [x, y, z], "duration": w}})
    return CubicGrid((x, y, z), np.asarray(g.values, np.float32), tuple(g.margins or (0.0, 0.0, 0.0)), unit)


def grid_to_warp(key: str, g: CubicGrid) -> CubicGridData:
    """A model grid as Warp's grid element ``key``."""
    l4 = g.extra.get("linear4d") if g.extra else None
    if l4:
        x, y, z = (int(v) for v in l4["dims"])
        w = int(l4["duration"])
        return CubicGridData(key.split("[")[0], (x, y, z), np.asarray(g.values, np.float32).reshape(w, z, y, x), None, w)
    return CubicGridData(key.split("[")[0], tuple(g.dims), np.asarray(g.values, np.float32), tuple(g.margins), None)


def _param(series: WarpSeries, name: str) -> str | None:
    for section in ("OptionsMovement", "OptionsCTF", "OptionsMovieExport", "OptionsParticlesExport"):
        v = series.params.get(section, {}).get(name)
        if v not in (None, ""):
            return v
    return None


def _float(text: str | None, what: str, obj: str) -> float | None:
    if text in (None, ""):
        return None
    try:
        return float(text)  # type: ignore[arg-type]
    except ValueError:
        raise FormatError(f"{what} {text!r} is not a number", obj) from None


def _per_tilt_dose(pre: np.ndarray) -> np.ndarray:
    """Exposure of each tilt from the accumulated doses: the step to the next
    tilt in acquisition (dose) order; the last tilt gets the median step."""
    n = len(pre)
    if n < 2:
        return np.zeros(n)
    order = np.argsort(pre, kind="stable")
    steps = np.diff(pre[order])
    positive = steps[steps > 0]
    last = float(np.median(positive)) if len(positive) else 0.0
    dose = np.empty(n)
    dose[order[:-1]] = steps
    dose[order[-1]] = last
    return dose


def item_from_series(
    sf: SeriesFiles,
    raw_shape: tuple[int, int, int],
    data_digest: str,
    *,
    pixel_size_angstrom: float | None = None,
    dose_per_frame: float | None = None,
    tomo_dims_px: tuple[float, float, float] | None = None,
    m_hash: str | None = None,
) -> Item:
    """The model of one series (see the module docstring).

    ``pixel_size_angstrom`` is the pixel size of the stored raw data (default:
    the CTF's). ``dose_per_frame`` (e⁻/Å², negative = total of the movie, as in
    Warp) overrides what the XML/settings say; ``tomo_dims_px`` gives the
    tomogram size (px of the raw data) for RELION 5 centred coordinates.
    """
    s = sf.series
    obj = str(sf.xml)
    ctf = s.ctf or warp_ctf({}, obj=obj)
    px = float(pixel_size_angstrom if pixel_size_angstrom is not None else ctf.pixel_size_angstrom)
    imaging = imaging_from_ctf(ctf, px, s.magnification_correction)
    n = int(raw_shape[0])
    grids = {model_grid_name(k): grid_from_warp(g) for k, g in s.grids.items()}
    extra: dict[str, Any] = {
        "warp": {"raw_mode": sf.raw_mode, "xml": sf.xml.name, "notes": list(sf.notes)},
    }
    if sf.kind == "tilts":
        t = s.tilts
        pre = np.asarray(t.get("Dose", np.zeros(n)), np.float64)
        if len(pre) != n:
            raise FormatError(f"{len(pre)} tilts in the XML but {n} tilt images in the raw data", obj)
        offsets = np.stack([np.asarray(t.get("AxisOffsetX", np.zeros(n)), np.float64), np.asarray(t.get("AxisOffsetY", np.zeros(n)), np.float64)], axis=1)
        kwargs: dict[str, Any] = dict(
            tilt_angles_deg=np.asarray(t["Angles"], np.float64),
            tilt_axis_deg=np.asarray(t.get("AxisAngle", np.zeros(n)), np.float64),
            tilt_axis_offset_angstrom=offsets,
            use=np.asarray(t.get("UseTilt", np.ones(n, bool)), bool),
        )
        dose = _per_tilt_dose(pre)
        if tomo_dims_px is not None:
            extra["volume_dimensions_angstrom"] = [float(v) * px for v in tomo_dims_px]
        if "MoviePath" in t:
            extra["warp"]["movies"] = [str(m) for m in t["MoviePath"]]
    else:
        kwargs = {}
        d = dose_per_frame
        if d is None:
            d = _float(_param(s, "DosePerAngstromFrame"), "DosePerAngstromFrame", obj)
        if d is None:
            d = _float(sf.settings.get("Import", {}).get("DosePerAngstromFrame"), "DosePerAngstromFrame", obj)
        if d is None or d == 0:
            extra["warp"]["notes"].append("dose per frame unknown (0 used; pass --dose-per-frame)")
            d = 0.0
        per = -d / n if d < 0 else d
        dose = np.full(n, per)
        pre = np.arange(n) * per
    return Item(
        name=sf.name,
        kind=sf.kind,
        data_digest=data_digest,
        shape=raw_shape,
        imaging=imaging,
        pre_exposure=pre,
        dose=dose,
        grids=grids,
        m_hash=m_hash,
        source_file=str(sf.raw_files[0]) if sf.raw_files else None,
        extra=extra,
        **kwargs,
    )


# --------------------------------------------------------------------------------------
# Raw data
# --------------------------------------------------------------------------------------


def _mrc_2d(path: Path) -> Callable[[], np.ndarray]:
    def get() -> np.ndarray:
        d = read_mrc(path).data
        if d.shape[0] != 1:
            raise FormatError(f"expected one image, found {d.shape[0]}", str(path))
        return np.asarray(d[0])

    return get


def _movie_sum(path: Path) -> Callable[[], np.ndarray]:
    def get() -> np.ndarray:
        d = read_image(path).data
        a = np.asarray(d, dtype=np.float32)
        return a if a.ndim == 2 else a.sum(axis=0)

    return get


def open_raw(sf: SeriesFiles) -> tuple[Any, float | None]:
    """The raw data of a located series as a (n, y, x) array (lazy where possible)
    and the pixel size its file header gives (Å, or None)."""
    if sf.missing:
        raise NotFound(f"item {sf.name} points to missing files: {sf.missing[0]}", str(sf.xml))
    if sf.raw_mode == "movie":
        p = sf.raw_files[0]
        if p.suffix.lower() == ".eer":
            raise FormatError("EER movies cannot be read by mrepo yet: convert them to TIFF/MRC", str(p))
        img = read_image(p)
        data = img.data
        if data.ndim == 2:
            data = np.asarray(data)[None]
        vs = img.voxel_size[-1] if img.voxel_size else None
        return data, vs
    if sf.raw_mode == "tilt-averages":
        headers = [read_mrc_header(p) for p in sf.raw_files]
        shapes = {tuple(h.shape) for h in headers}
        if len(shapes) != 1:
            raise FormatError(f"tilt averages of {sf.name} have different sizes: {sorted(shapes)}", str(sf.raw_files[0]))
        nz, ny, nx = shapes.pop()
        if nz != 1:
            raise FormatError(f"a tilt average holds {nz} images", str(sf.raw_files[0]))
        dtype = read_mrc(sf.raw_files[0]).data.dtype
        return LazyStack([_mrc_2d(p) for p in sf.raw_files], (ny, nx), dtype), headers[0].pixel_size
    if sf.raw_mode == "tilt-stack":
        m = read_mrc(sf.raw_files[0])
        use = np.asarray(sf.series.tilts.get("UseTilt", np.ones(sf.series.n_tilts, bool)), bool)
        if m.data.shape[0] != int(use.sum()):
            raise FormatError(f"tilt stack has {m.data.shape[0]} images but the XML uses {int(use.sum())} tilts", str(sf.raw_files[0]))
        index = np.cumsum(use) - 1
        shape = m.data.shape[1:]
        zero = np.zeros(shape, m.data.dtype)

        def tilt(t: int) -> Callable[[], np.ndarray]:
            return (lambda: m.data[index[t]]) if use[t] else (lambda: zero)

        return LazyStack([tilt(t) for t in range(len(use))], shape, m.data.dtype), m.header.pixel_size
    if sf.raw_mode == "tilt-movies":
        first = read_image(sf.raw_files[0])
        shape = first.data.shape[-2:]
        return LazyStack([_movie_sum(p) for p in sf.raw_files], shape, np.float32), None
    raise InvalidInput(f"unknown raw data mode {sf.raw_mode!r}", sf.name)


def _raw_pixel_size(sf: SeriesFiles, header_px: float | None) -> float:
    """Pixel size of the stored raw data: the file header's when it records
    one; else Warp's unbinned ``PixelSize`` option (× 2^BinTimes for averages); else the CTF's."""
    if header_px:
        return float(header_px)
    obj = str(sf.xml)
    opt = _float(_param(sf.series, "PixelSize"), "PixelSize", obj)
    if opt is None:
        opt = _float(sf.settings.get("Import", {}).get("PixelSize"), "PixelSize", obj)
    if opt:
        if sf.raw_mode in ("tilt-averages", "tilt-stack"):
            b = _float(_param(sf.series, "BinTimes"), "BinTimes", obj) or 0.0
            return float(opt) * 2.0**b
        return float(opt)
    ctf = sf.series.ctf
    return float(ctf.pixel_size_angstrom) if ctf else 1.0


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


@dataclass
class WarpImportReport:
    """What ``import_warp`` did: the commit, the sources and their items."""

    commit: str
    sources: dict[str, list[str]]
    notes: dict[str, list[str]] = field(default_factory=dict)
    bytes: int = 0


def _tomo_dims(sf: SeriesFiles) -> tuple[float, float, float] | None:
    tomo = sf.settings.get("Tomo", {})
    try:
        dims = tuple(float(tomo[f"Dimensions{a}"]) for a in "XYZ")
    except (KeyError, ValueError):
        return None
    return dims  # type: ignore[return-value]


def import_warp(
    repo: Any,
    folder: str | os.PathLike[str],
    *,
    source: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    dose_per_frame: float | None = None,
    tomo_dims_px: tuple[float, float, float] | None = None,
    message: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> WarpImportReport:
    """Import a Warp project folder as one data source (two, ``<src>-frames``
    and ``<src>-tilts``, when it holds both kinds) in one commit.

    Every item is located first; if any points to missing files, nothing is
    stored and the error names them. The import runs in its own transaction,
    committed at the end and discarded on any error.

    Parameters
    ----------
    source:
        Source name (default: the folder's name).
    data_dir:
        Folder holding the raw data, overriding the XMLs' ``DataDirectory``.
    dose_per_frame:
        e⁻/Å² per frame for frame series (negative: total per movie).
    tomo_dims_px:
        Tomogram size (x, y, z) in px of the tilt images, for tilt series
        (default: WarpTools' ``Tomo/Dimensions*``).
    """
    folder = Path(folder)
    found = scan_warp_folder(folder, data_dir=data_dir)
    missing = [sf for sf in found if sf.missing]
    if missing:
        names = ", ".join(sf.name for sf in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise NotFound(f"{len(missing)} item(s) point to missing files: {names}; first: {missing[0].missing[0]}", str(folder))
    default = folder.resolve().name if folder.is_dir() else folder.stem
    base = safe_component(source or default, "source name")
    kinds = sorted({sf.kind for sf in found})
    names = {k: (base if len(kinds) == 1 else f"{base}-{k}") for k in kinds}
    for sf in found:
        if safe_component(sf.name, "item name") != sf.name:
            raise InvalidInput("item name is not usable as a name in the repository", sf.name)

    txn = repo.transaction()
    try:
        pop = load_population(txn, name=base)
        for k, n in names.items():
            if n in pop.sources:
                raise InvalidInput(f"source {n} already exists: choose another --source", n)
            pop.sources[n] = DataSource(n, k, extra={"warp": {"folder": str(folder.resolve())}})
        report = WarpImportReport(commit="", sources={n: [] for n in names.values()})
        for sf in found:
            src = names[sf.kind]
            if progress:
                progress(sf.name)
            raw, header_px = open_raw(sf)
            px = _raw_pixel_size(sf, header_px)
            digest = array_content_digest(raw)
            mh = m_data_hash(sf.name, sf.hash_file) if sf.hash_file is not None else None
            dims = tomo_dims_px if tomo_dims_px is not None else (_tomo_dims(sf) if sf.kind == "tilts" else None)
            if dims is not None and sf.kind == "tilts" and tomo_dims_px is None:
                # WarpTools' Tomo dims are unbinned px of Import/PixelSize; convert to px of the stored images
                unbinned = _float(sf.settings.get("Import", {}).get("PixelSize"), "PixelSize", str(sf.xml))
                if unbinned:
                    dims = tuple(d * unbinned / px for d in dims)  # type: ignore[assignment]
            item = item_from_series(
                sf,
                tuple(int(v) for v in raw.shape),  # type: ignore[arg-type]
                digest,
                pixel_size_angstrom=px,
                dose_per_frame=dose_per_frame,
                tomo_dims_px=dims,
                m_hash=mh,
            )
            pop.sources[src].add(item)
            write_item(txn, src, item, raw=raw)
            write_document(txn, item_array_name(src, item.name, WARP_XML_DOC), sf.xml.read_bytes())
            report.sources[src].append(item.name)
            report.bytes += int(np.prod(raw.shape)) * np.dtype(raw.dtype).itemsize
            notes = item.extra["warp"]["notes"]
            if notes:
                report.notes[f"{src}/{item.name}"] = list(notes)
        write_population(txn, pop, items=False, species=False)
        n_items = sum(len(v) for v in report.sources.values())
        msg = message or f"Import Warp project {folder.name}: {n_items} items into {', '.join(report.sources)}"
        meta = {
            "operation": "import-warp",
            "summary": f"{n_items} items",
            "folder": str(folder.resolve()),
            "sources": {k: len(v) for k, v in report.sources.items()},
        }
    except BaseException:
        txn.discard()
        raise
    report.commit = commit_or_discard(txn, msg, meta)
    return report
