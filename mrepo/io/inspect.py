"""Human-readable facts about any file mrepo reads (like ``relion_star_printtable`` or IMOD ``header``).

:func:`inspect_file` recognises STAR (any flavour, ``.tomostar``), MRC/MRCS/MAP
(any mode and byte order, header only), Warp/M XML (series, ``.population``,
``.source``, ``.species``), Warp ``.settings``, TIFF/EER and ``.npy`` files, by
content first and extension second. It reads headers and metadata, never the
voxel data. :func:`format_inspection` turns the result into text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FormatError, MrepoError, NotFound
from .mrc import MRC_SUFFIXES, MrcHeader, read_mrc_header
from .star import PARTICLE_FLAVOURS, StarFile, detect_flavour, parse_list, read_particles, read_star
from .warp_xml import CONTAINER_ROOTS, SERIES_ROOTS, MRecords, read_m_container, read_warp_xml

__all__ = ["Inspection", "inspect_file", "format_inspection"]

_MODE_NAMES = {
    0: "int8",
    1: "int16",
    2: "float32",
    3: "complex int16",
    4: "complex64",
    6: "uint16",
    12: "float16",
    101: "4-bit packed",
}


@dataclass
class Inspection:
    """What :func:`inspect_file` found.

    Attributes
    ----------
    path:
        The file.
    kind:
        ``'star'``, ``'mrc'``, ``'warp-xml'``, ``'m-container'``,
        ``'warp-settings'``, ``'tiff'`` or ``'npy'``.
    subtype:
        Finer kind: the STAR flavour, ``'tiltseries'``/``'movie'``, the M
        container kind, ``'volume'``/``'image'``/``'stack'``...
    version:
        Format version where the file states one (STAR ``# version``, MRC
        NVERSION, NPY format version), else ``None``.
    lines:
        Human-readable facts, one per line.
    """

    path: Path
    kind: str
    subtype: str | None = None
    version: str | None = None
    lines: list[str] = field(default_factory=list)


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise NotFound("no such file", str(path)) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not a file", str(path)) from None
    except OSError as e:
        raise FormatError(f"cannot read file: {e.strerror}", str(path)) from None
    if not head:
        raise FormatError("empty file", str(path))
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    suffix = path.suffix.lower()
    if suffix in MRC_SUFFIXES:  # before text checks: an MRC with NX = 60 starts with '<'
        return "mrc"
    if suffix in (".star", ".tomostar"):
        return "star"
    if b"\x00" not in head and head.lstrip(b"\xef\xbb\xbf").lstrip().startswith(b"<"):
        return "xml"
    if b"\x00" not in head:
        try:
            decoded = head.decode("utf-8")
        except UnicodeDecodeError:
            decoded = ""
        if any(line.strip().startswith("data_") for line in decoded.splitlines()):
            return "star"
    return "unknown"


def inspect_file(path: str | os.PathLike[str]) -> Inspection:
    """Describe a STAR, MRC, Warp/M XML, settings, TIFF or NPY file.

    Raises
    ------
    NotFound
        No such file.
    FormatError
        A file of unknown type or one that its reader rejects (one line).
    """
    p = Path(path)
    kind = _sniff(p)
    if kind == "npy":
        return _inspect_npy(p)
    if kind == "tiff":
        return _inspect_tiff(p)
    if kind == "xml":
        return _inspect_xml(p)
    if kind == "star":
        return _inspect_star(p)
    if kind == "mrc":
        return _inspect_mrc(p)
    try:  # no known extension: an MRC header is the last thing it could be
        return _inspect_mrc(p)
    except FormatError:
        raise FormatError("unknown file type: not STAR, MRC, Warp XML, TIFF or NPY", str(p)) from None


def format_inspection(ins: Inspection) -> str:
    """Text of an :class:`Inspection`: a title line, then the facts indented."""
    title = f"{ins.path}: {ins.kind}"
    if ins.subtype:
        title += f" ({ins.subtype})"
    if ins.version:
        title += f", version {ins.version}"
    return "\n".join([title] + [f"  {line}" for line in ins.lines])


# ---- STAR ----------------------------------------------------------------------------


def _inspect_star(p: Path) -> Inspection:
    star = read_star(p)
    flavour = detect_flavour(star)
    ins = Inspection(path=p, kind="star", subtype=flavour, version=star.version)
    if star.program:
        ins.lines.append(f"program: {star.program}")
    ins.lines.append(f"flavour: {flavour}")
    ins.lines.append(f"blocks: {len(star.blocks)}")
    for name, block in star.blocks.items():
        if isinstance(block, pd.DataFrame):
            ins.lines.append(f"data_{name}: table, {len(block)} rows x {len(block.columns)} columns")
        else:
            ins.lines.append(f"data_{name}: {len(block)} key-values")
    if flavour in PARTICLE_FLAVOURS:
        _particle_facts(star, ins)
    _tilt_facts(star, flavour, ins)
    return ins


def _particle_facts(star: StarFile, ins: Inspection) -> None:
    try:
        table = read_particles(star)
    except MrepoError as e:
        ins.lines.append(f"particles: cannot be normalised: {e.message}")
        return
    ins.lines.append(f"particles: {len(table)}")
    if table.trajectory_coordinates_angstrom.shape[1] > 1 or table.trajectory_angles_deg.shape[1] > 1:
        ins.lines.append(
            f"temporal samples: {table.trajectory_coordinates_angstrom.shape[1]} (positions), "
            f"{table.trajectory_angles_deg.shape[1]} (angles)"
        )
    halves = {h: int((table.half_set == h).sum()) for h in (1, 2)}
    if halves[1] or halves[2]:
        ins.lines.append(f"half sets: 1: {halves[1]}, 2: {halves[2]}")
    sources = len(set(table.micrograph_name.tolist()))
    ins.lines.append(f"micrographs/tomograms: {sources}")
    for g in table.optics:
        count = int((table.optics_group == g.number).sum())
        pix = "unknown" if g.pixel_size_angstrom is None else f"{g.pixel_size_angstrom:.4f} Å"
        parts = [f"optics group {g.number} ({g.name}): {count} particles, pixel {pix}"]
        if g.tilt_series_pixel_size_angstrom is not None:
            parts.append(f"tilt series {g.tilt_series_pixel_size_angstrom:.4f} Å")
        if g.voltage_kv is not None:
            parts.append(f"{g.voltage_kv:g} kV")
        if g.cs_mm is not None:
            parts.append(f"Cs {g.cs_mm:g} mm")
        if g.image_size is not None:
            parts.append(f"box {g.image_size}")
        ins.lines.append(", ".join(parts))


def _tilt_facts(star: StarFile, flavour: str, ins: Inspection) -> None:
    if flavour in ("relion-tilt-series", "warptools-tomostar"):
        df = next(v for v in star.blocks.values() if isinstance(v, pd.DataFrame))
        ins.lines.append(f"tilts: {len(df)}")
        for col in ("rlnTomoNominalStageTiltAngle", "wrpAngleTilt"):
            if col in df.columns and len(df):
                ins.lines.append(f"tilt range: {df[col].min():g} to {df[col].max():g} deg")
    elif flavour in ("warptools-tomograms", "relion4-tomograms"):
        for name, df in star.blocks.items():
            if name != "global" and isinstance(df, pd.DataFrame):
                ins.lines.append(f"tomogram {name}: {len(df)} tilts")
    elif flavour == "relion-tomograms":
        df = star.blocks["global"]
        assert isinstance(df, pd.DataFrame)
        ins.lines.append(f"tomograms: {len(df)}")
        if "rlnTomoTiltSeriesPixelSize" in df.columns:
            sizes = sorted(set(df["rlnTomoTiltSeriesPixelSize"].tolist()))
            ins.lines.append("tilt-series pixel size: " + ", ".join(f"{s:g} Å" for s in sizes))
    elif flavour in ("relion5-tomo-particles", "warptools-particles", "relion4-tomo-particles"):
        visible = [
            v["rlnTomoVisibleFrames"]
            for v in star.blocks.values()
            if isinstance(v, pd.DataFrame) and "rlnTomoVisibleFrames" in v.columns
        ]
        if not visible or not len(visible[0]):
            return
        try:
            counts = sorted({len(parse_list(v)) for v in visible[0].tolist()})
        except ValueError:
            return
        ins.lines.append("tilts per particle (rlnTomoVisibleFrames): " + ", ".join(str(c) for c in counts))


# ---- MRC -----------------------------------------------------------------------------


def _surplus(h: MrcHeader) -> str:
    """A note when the file is longer than header + extended header + data (shorter ones are refused)."""
    extra = h.file_size - 1024 - h.extended_header_bytes - h.data_bytes
    return f" ({extra} bytes more than the header announces: trailing bytes or wrong dimensions)" if extra > 0 else ""


def _inspect_mrc(p: Path) -> Inspection:
    h = read_mrc_header(p)
    nz, ny, nx = h.shape
    if h.is_volume:
        subtype = "volume"
    elif nz == 1:
        subtype = "image"
    elif h.ispg >= 401:
        subtype = "volume stack"
    elif p.suffix.lower() == ".mrcs":
        subtype = "image stack"
    else:
        subtype = "image stack or volume (ISPG 0)"
    ins = Inspection(path=p, kind="mrc", subtype=subtype, version=str(h.nversion) if h.nversion else None)
    dtype = _MODE_NAMES.get(h.mode, "?")
    if h.mode == 0 and h.dmin >= 0 and h.dmax > 127:
        dtype += "; header statistics say unsigned, read as uint8"
    elif h.mode == 1 and h.dmin >= 0 and h.dmax > 32767:
        dtype += "; header statistics say unsigned, read as uint16"
    vz, vy, vx = h.voxel_size

    def fmt(v: float | None) -> str:
        return "unknown" if v is None else f"{v:.4f}"

    ins.lines += [
        f"dimensions (x, y, z): {nx} x {ny} x {nz}",
        f"mode: {h.mode} ({dtype})",
        f"byte order: {'little' if h.byte_order == '<' else 'big'}-endian",
        f"voxel size (x, y, z): {fmt(vx)}, {fmt(vy)}, {fmt(vz)} Å",
        f"origin (x, y, z): {h.origin[0]:g}, {h.origin[1]:g}, {h.origin[2]:g} Å",
        f"start (columns, rows, sections): {h.nstart[0]}, {h.nstart[1]}, {h.nstart[2]}",
        f"axis order (MAPC, MAPR, MAPS): {h.axis_order[0]}, {h.axis_order[1]}, {h.axis_order[2]}"
        + ("" if h.axis_order == (1, 2, 3) else " (non-standard)"),
        f"space group (ISPG): {h.ispg}",
        f"statistics: min {h.dmin:g}, max {h.dmax:g}, mean {h.dmean:g}, rms {h.rms:g}",
        f"extended header: {h.extended_header_bytes} bytes" + (f" ({h.exttyp})" if h.exttyp else ""),
        f"MAP id: {'present' if h.has_map_id else 'missing (pre-2000 header)'}",
        f"file size: {h.file_size} bytes" + _surplus(h),
    ]
    ins.lines += [f"label: {label}" for label in h.labels] or ["labels: none"]
    return ins


# ---- XML -----------------------------------------------------------------------------


def _root_tag(p: Path) -> str:
    from lxml import etree

    try:
        for _, el in etree.iterparse(str(p), events=("start",), resolve_entities=False, no_network=True):
            return str(el.tag)
    except etree.XMLSyntaxError as e:
        raise FormatError(f"malformed XML at line {e.lineno}: {' '.join(str(e.msg).split())}", str(p)) from None
    raise FormatError("empty XML document", str(p))


def _inspect_xml(p: Path) -> Inspection:
    tag = _root_tag(p)
    if tag in SERIES_ROOTS:
        return _inspect_series(p)
    if tag in CONTAINER_ROOTS:
        return _inspect_container(p)
    raise FormatError(f"unknown XML file: root element <{tag}> is not a Warp/M document", str(p))


def _inspect_series(p: Path) -> Inspection:
    s = read_warp_xml(p)
    ins = Inspection(path=p, kind="warp-xml", subtype=s.kind)
    if s.kind == "tiltseries":
        ins.lines.append(f"tilts: {s.n_tilts}")
        if s.n_tilts:
            a = s.tilts["Angles"]
            ins.lines.append(f"tilt range: {float(a.min()):g} to {float(a.max()):g} deg")
        if "UseTilt" in s.tilts:
            ins.lines.append(f"tilts used: {int(np.sum(s.tilts['UseTilt']))}")
        if "Dose" in s.tilts and len(s.tilts["Dose"]):
            ins.lines.append(f"accumulated dose: up to {float(np.max(s.tilts['Dose'])):g} e/Å²")
    else:
        move = s.grids.get("GridMovementX")
        if move is not None:
            ins.lines.append(f"temporal samples (GridMovementX depth): {move.dims[2]}")
    for name in ("DataDirectory", "PlaneNormal", "MagnificationCorrection", "CTFResolutionEstimate"):
        if name in s.attributes:
            ins.lines.append(f"{name}: {s.attributes[name]}")
    ctf = s.ctf
    if ctf is not None:
        ins.lines.append(
            f"CTF: pixel {ctf.pixel_size_angstrom:g} Å, {ctf.voltage_kv:g} kV, Cs {ctf.cs_mm:g} mm, "
            f"amplitude {ctf.amplitude_contrast:g}, defocus {ctf.defocus_angstrom:.1f} Å "
            f"(delta {ctf.defocus_delta_angstrom:.1f} Å, angle {ctf.defocus_angle_deg:g} deg), "
            f"phase shift {ctf.phase_shift_deg:g} deg"
        )
        if ctf.zernike_odd or ctf.zernike_even:
            ins.lines.append(f"Zernike coefficients: {len(ctf.zernike_odd)} odd, {len(ctf.zernike_even)} even")
    for key, g in s.grids.items():
        dims = f"{g.dims[0]}x{g.dims[1]}x{g.dims[2]}" + (f"x{g.duration}" if g.duration is not None else "")
        values = g.values
        ins.lines.append(f"grid {key}: {dims}, values {float(values.min()):g} to {float(values.max()):g}")
    for key in s.params:
        if key != "CTF":
            ins.lines.append(f"{key}: {len(s.params[key])} params")
    others = sorted({k.split("[")[0] for k in s.raw})
    if others:
        ins.lines.append("other elements: " + ", ".join(others))
    return ins


def _inspect_container(p: Path) -> Inspection:
    c = read_m_container(p)
    kind = "warp-settings" if c.kind == "settings" else "m-container"
    ins = Inspection(path=p, kind=kind, subtype=c.kind)
    for name in ("Name", "GUID", "Version", "PixelSize"):
        if name in c.params:
            ins.lines.append(f"{name}: {c.params[name]}")
    ins.lines.append(f"params: {len(c.params)}")
    for tag, section in c.sections.items():
        if isinstance(section, MRecords):
            ins.lines.append(f"{tag}: {len(section.items)} {section.item} entries")
        else:
            shown = ", ".join(f"{k}={v}" for k, v in list(section.items())[:4])
            more = f", ... ({len(section)} in all)" if len(section) > 4 else ""
            ins.lines.append(f"{tag}: {shown}{more}" if section else f"{tag}: empty")
    return ins


# ---- TIFF / NPY ------------------------------------------------------------------------


def _inspect_tiff(p: Path) -> Inspection:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            pages = len(tif.pages)
            first = tif.pages[0]
            shape = tuple(first.shape)
            dtype = str(first.dtype) if first.dtype is not None else "unknown"
            compression = getattr(first.compression, "name", str(first.compression))
            series = tif.series[0].shape if tif.series else None
            byteorder = "little" if tif.byteorder == "<" else "big"
    except (tifffile.TiffFileError, ValueError, IndexError, OSError) as e:
        raise FormatError(f"malformed TIFF: {' '.join(str(e).split())[:120]}", str(p)) from None
    ins = Inspection(path=p, kind="tiff", subtype="eer" if p.suffix.lower() == ".eer" else None)
    ins.lines += [
        f"pages: {pages}",
        f"page shape: {' x '.join(str(s) for s in shape)}",
        f"dtype: {dtype}",
        f"compression: {compression}",
        f"byte order: {byteorder}-endian",
    ]
    if series is not None:
        ins.lines.append(f"series shape: {' x '.join(str(s) for s in series)}")
    return ins


def _inspect_npy(p: Path) -> Inspection:
    try:
        with open(p, "rb") as f:
            major, minor = np.lib.format.read_magic(f)
            if (major, minor) == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError) as e:
        raise FormatError(f"malformed NPY: {' '.join(str(e).split())[:120]}", str(p)) from None
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = p.stat().st_size
    if dtype.hasobject:
        note = "object array (pickled)"
    elif size < expected:
        raise FormatError(f"truncated NPY: header announces {expected} bytes, file has {size}", str(p))
    else:
        note = f"{expected - offset} data bytes"
    ins = Inspection(path=p, kind="npy", version=f"{major}.{minor}")
    ins.lines += [
        f"shape: {shape}",
        f"dtype: {dtype}",
        f"order: {'Fortran' if fortran else 'C'}",
        note,
    ]
    return ins
