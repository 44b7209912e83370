"""Warp and M metadata XML: frame/tilt series, M containers and Warp settings.

Warp (``WarpLib``) keeps one XML file per frame series (root ``<Movie>``) or
tilt series (root ``<TiltSeries>``); M adds ``.population``, ``.source`` and
``.species`` files; WarpTools keeps its options in ``.settings``. All are
written by .NET's ``XmlTextWriter`` (tab indentation, UTF-8 with a byte-order
mark, ``<Param Name=".." Value=".." />`` lists, numbers in invariant culture).

:func:`read_warp_xml` returns a :class:`WarpSeries`: root attributes, per-tilt
lists, ``<Param>`` sections (``CTF``, ``OptionsCTF``...), every cubic-spline
grid as a :class:`CubicGridData`, and everything else as raw
:class:`XmlNode` trees, so that :func:`write_warp_xml` writes the file back as
Warp wrote it (same element and attribute names and order, same number
formatting). What was checked against real files and what only against
Warp's source is listed in ``docs/formats.md``.

Units: Warp stores defocus in µm (positive = underfocus), phase shift in
units of π, Cs in mm, voltage in kV, pixel size in Å. :class:`WarpCTF`
converts to mrepo's units (Å, degrees).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree

from ..errors import FormatError, InvalidInput, NotFound

__all__ = [
    "XmlNode",
    "CubicGridData",
    "WarpCTF",
    "WarpSeries",
    "MRecords",
    "MContainer",
    "read_warp_xml",
    "write_warp_xml",
    "warp_ctf",
    "read_m_container",
    "write_m_container",
    "read_warp_settings",
    "dotnet_float",
]

SERIES_ROOTS = {"Movie": "movie", "TiltSeries": "tiltseries"}
CONTAINER_ROOTS = {"Population": "population", "DataSource": "source", "Species": "species", "Settings": "settings"}

# Per-tilt lists of a <TiltSeries>, one value per line (TiltSeries.SaveMeta).
_TILT_LISTS = {
    "Angles": "f4",
    "Dose": "f4",
    "UseTilt": "bool",
    "AxisAngle": "f4",
    "AxisOffsetX": "f4",
    "AxisOffsetY": "f4",
    "MoviePath": "str",
    "FOVFraction": "f4",
}
# Elements Warp writes once per item of a list: their keys are always indexed.
_LIST_TAGS = ("TiltPS1D", "TiltSimulatedScale", "PyramidShiftX", "PyramidShiftY")


# --------------------------------------------------------------------------------------
# Numbers as .NET writes them
# --------------------------------------------------------------------------------------


def dotnet_float(value: float) -> str:
    """Format a float32 as .NET (Core 3.0+) ``float.ToString(InvariantCulture)`` does.

    Shortest digits that read back to the same float32; fixed notation unless
    the decimal exponent is below -4 or above 8 (then ``1E-05``, ``1.5E+10``).
    """
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    if v == 0.0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sci = np.format_float_scientific(np.float32(v), unique=True, trim="-")
    mantissa, exponent = sci.split("e")
    negative = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    scale = int(exponent) + 1  # position of the decimal point after the first digit
    max_digits = max(len(digits), 9)
    if scale > max_digits or scale < -3:
        exp = scale - 1
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + f"E{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    elif scale > 0:
        body = digits + "0" * (scale - len(digits)) if len(digits) <= scale else digits[:scale] + "." + digits[scale:]
    else:
        body = "0." + "0" * (-scale) + digits
    return ("-" if negative else "") + body


# --------------------------------------------------------------------------------------
# Generic XML node and .NET-style writer
# --------------------------------------------------------------------------------------


@dataclass
class XmlNode:
    """An XML element kept as it is: tag, attributes (in order), text, children."""

    tag: str
    attributes: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    children: list[XmlNode] = field(default_factory=list)


def _node_from_element(el: Any) -> XmlNode:
    return XmlNode(
        tag=el.tag,
        attributes=dict(el.attrib),
        text=el.text if (el.text and (len(el) == 0 or el.text.strip())) else None,
        children=[_node_from_element(c) for c in el if isinstance(c.tag, str)],
    )


def _escape(text: str, attribute: bool) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if attribute:
        text = text.replace('"', "&quot;").replace("\n", "&#xA;").replace("\r", "&#xD;").replace("\t", "&#x9;")
    else:
        text = text.replace("\r", "&#xD;")
    return text


def _serialise(node: XmlNode, out: list[str], depth: int, indent: bool) -> None:
    if indent:
        out.append("\n" + "\t" * depth)
    out.append("<" + node.tag)
    for k, v in node.attributes.items():
        out.append(f' {k}="{_escape(str(v), True)}"')
    if node.text is None and not node.children:
        out.append(" />")
        return
    out.append(">")
    mixed = node.text is not None
    if node.text is not None:
        out.append(_escape(node.text, False))
    for child in node.children:
        _serialise(child, out, depth + 1, indent and not mixed)
    if node.children and indent and not mixed:
        out.append("\n" + "\t" * depth)
    out.append(f"</{node.tag}>")


def _document_bytes(root: XmlNode) -> bytes:
    """The bytes .NET's ``XmlTextWriter`` (UTF-8, indented with tabs) writes for ``root``."""
    out = ['<?xml version="1.0" encoding="utf-8"?>']
    _serialise(root, out, 0, True)
    return b"\xef\xbb\xbf" + "".join(out).encode("utf-8")


def _parse_xml(path: str | os.PathLike[str]) -> tuple[Any, str]:
    p = Path(path)
    obj = str(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise NotFound("no such file", obj) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not an XML file", obj) from None
    except OSError as e:
        raise FormatError(f"cannot read file: {e.strerror}", obj) from None
    if not data.strip():
        raise FormatError("empty file: not XML", obj)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, remove_comments=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        msg = " ".join(str(e.msg or e).split())
        line = e.lineno if e.lineno else e.position[0] if getattr(e, "position", None) else "?"
        raise FormatError(f"malformed XML at line {line}: {msg}", obj) from None
    return root, obj


def _atomic_write(target: Path, data: bytes) -> None:
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise NotFound("no such folder", str(folder))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------------------
# Cubic grids
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class CubicGridData:
    """A Warp cubic-spline grid (``CubicGrid``) or 4-D linear grid (``LinearGrid4D``).

    Attributes
    ----------
    name:
        Element name, e.g. ``'GridMovementX'``.
    dims:
        (x, y, z) = ``Width``, ``Height``, ``Depth``: control points along x, y
        and z (z is time/tilt for per-tilt and per-frame grids).
    values:
        float32 control-point values shaped (z, y, x); (w, z, y, x) for 4-D
        grids with ``duration``, in Warp's unit for the quantity (µm for
        ``GridCTF``, degrees for ``GridCTFDefocusAngle``).
    margins:
        ``MarginX/Y/Z`` (fraction of the extent outside the outermost points);
        ``None`` for 4-D grids, which have none.
    duration:
        ``Duration`` (w) of a ``LinearGrid4D`` (``GridVolumeWarpX/Y/Z``), else ``None``.
    """

    name: str
    dims: tuple[int, int, int]
    values: np.ndarray
    margins: tuple[float, float, float] | None = (0.0, 0.0, 0.0)
    duration: int | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CubicGridData):
            return NotImplemented
        return (
            self.name == other.name
            and tuple(self.dims) == tuple(other.dims)
            and self.margins == other.margins
            and self.duration == other.duration
            and self.values.shape == other.values.shape
            and bool(np.array_equal(self.values, other.values, equal_nan=True))
        )


def _grid_from_element(el: Any, obj: str) -> CubicGridData:
    def attr_int(name: str) -> int:
        raw = el.get(name, "1")
        try:
            v = int(raw)
        except ValueError:
            raise FormatError(f"line {el.sourceline}: {el.tag} {name}={raw!r} is not an integer", obj) from None
        if v < 1:
            raise FormatError(f"line {el.sourceline}: {el.tag} {name}={v} must be at least 1", obj)
        return v

    def attr_float(name: str) -> float:
        raw = el.get(name, "0")
        try:
            return float(raw)
        except ValueError:
            raise FormatError(f"line {el.sourceline}: {el.tag} {name}={raw!r} is not a number", obj) from None

    x, y, z = attr_int("Width"), attr_int("Height"), attr_int("Depth")
    four_d = el.get("Duration") is not None
    w = attr_int("Duration") if four_d else 1
    values = np.zeros((w, z, y, x), dtype=np.float32)
    for node in el.iterchildren("Node"):
        try:
            ix, iy, iz = int(node.get("X")), int(node.get("Y")), int(node.get("Z"))
            iw = int(node.get("W")) if four_d else 0
            v = float(node.get("Value"))
        except (TypeError, ValueError):
            raise FormatError(f"line {node.sourceline}: {el.tag} node has a missing or non-numeric X/Y/Z/Value", obj) from None
        if not (0 <= ix < x and 0 <= iy < y and 0 <= iz < z and 0 <= iw < w):
            raise FormatError(f"line {node.sourceline}: {el.tag} node ({ix}, {iy}, {iz}) is outside the {x}x{y}x{z} grid", obj)
        values[iw, iz, iy, ix] = v
    if four_d:
        return CubicGridData(name=el.tag, dims=(x, y, z), values=values, margins=None, duration=w)
    margins = (attr_float("MarginX"), attr_float("MarginY"), attr_float("MarginZ"))
    return CubicGridData(name=el.tag, dims=(x, y, z), values=values[0], margins=margins)


def _grid_node(grid: CubicGridData) -> XmlNode:
    x, y, z = (int(v) for v in grid.dims)
    expected = (x * y * z) * (int(grid.duration) if grid.duration is not None else 1)
    if np.asarray(grid.values).size != expected:
        raise InvalidInput(
            f"grid {grid.name}: {np.asarray(grid.values).size} values do not fill dims {x}x{y}x{z}"
            + (f"x{grid.duration}" if grid.duration is not None else "")
        )
    if grid.duration is not None:
        w = int(grid.duration)
        values = np.asarray(grid.values, dtype=np.float32).reshape(w, z, y, x)
        attrs = {"Width": str(x), "Height": str(y), "Depth": str(z), "Duration": str(w)}
        children = [
            XmlNode(
                "Node",
                {"X": str(ix), "Y": str(iy), "Z": str(iz), "W": str(iw), "Value": dotnet_float(values[iw, iz, iy, ix])},
            )
            for iw in range(w)
            for iz in range(z)
            for iy in range(y)
            for ix in range(x)
        ]
    else:
        values = np.asarray(grid.values, dtype=np.float32).reshape(z, y, x)
        mx, my, mz = grid.margins if grid.margins is not None else (0.0, 0.0, 0.0)
        attrs = {
            "Width": str(x),
            "Height": str(y),
            "Depth": str(z),
            "MarginX": dotnet_float(mx),
            "MarginY": dotnet_float(my),
            "MarginZ": dotnet_float(mz),
        }
        children = [
            XmlNode("Node", {"X": str(ix), "Y": str(iy), "Z": str(iz), "Value": dotnet_float(values[iz, iy, ix])})
            for iz in range(z)
            for iy in range(y)
            for ix in range(x)
        ]
    return XmlNode(grid.name, attrs, None, children)


# --------------------------------------------------------------------------------------
# CTF
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarpCTF:
    """Warp's ``<CTF>`` parameters in mrepo units.

    Warp's ``Defocus`` and ``DefocusDelta`` are in µm; RELION's defocus U/V
    follow as Defocus ± DefocusDelta / 2 (Warp's own exports). Phase shift is
    stored in units of π and given here in degrees.
    """

    pixel_size_angstrom: float
    voltage_kv: float
    cs_mm: float
    cc_mm: float
    amplitude_contrast: float
    defocus_angstrom: float
    defocus_delta_angstrom: float
    defocus_angle_deg: float
    phase_shift_deg: float
    bfactor_a2: float
    bfactor_delta_a2: float
    bfactor_angle_deg: float
    scale: float
    beam_tilt_mrad: tuple[float, float]
    beam_tilt2: tuple[float, ...]
    zernike_odd: tuple[float, ...]
    zernike_even: tuple[float, ...]
    distortion: tuple[tuple[float, float], tuple[float, float]]
    pixel_size_delta_percent: float
    pixel_size_angle_deg: float
    thickness_nm: float

    @property
    def defocus_u_angstrom(self) -> float:
        """RELION ``rlnDefocusU`` (Å): Defocus + DefocusDelta / 2."""
        return self.defocus_angstrom + self.defocus_delta_angstrom / 2

    @property
    def defocus_v_angstrom(self) -> float:
        """RELION ``rlnDefocusV`` (Å): Defocus − DefocusDelta / 2."""
        return self.defocus_angstrom - self.defocus_delta_angstrom / 2


def _matrix2(values: list[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Warp's Matrix2 text is column-major (M11, M21, M12, M22): return rows."""
    m11, m21, m12, m22 = values
    return ((m11, m12), (m21, m22))


def warp_ctf(params: Mapping[str, str], *, obj: str | None = None) -> WarpCTF:
    """Interpret a ``<CTF>`` Param list; missing entries take Warp's defaults."""

    def num(name: str, default: float) -> float:
        raw = params.get(name, "")
        if raw == "":
            return default
        try:
            return float(raw)
        except ValueError:
            raise FormatError(f"CTF {name}={raw!r} is not a number", obj) from None

    def floats(name: str, default: list[float], sep: str) -> list[float]:
        raw = params.get(name, "")
        if raw.strip() == "":
            return default
        try:
            return [float(t) for t in raw.replace(" ", "").split(sep) if t != ""]
        except ValueError:
            raise FormatError(f"CTF {name}={raw!r} is not a list of numbers", obj) from None

    distortion = floats("Distortion", [1.0, 0.0, 0.0, 1.0], ",")
    if len(distortion) != 4:
        raise FormatError(f"CTF Distortion needs 4 numbers, got {len(distortion)}", obj)
    tilt = floats("BeamTilt", [0.0, 0.0], ",")
    if len(tilt) != 2:
        raise FormatError(f"CTF BeamTilt needs 2 numbers, got {len(tilt)}", obj)
    return WarpCTF(
        pixel_size_angstrom=num("PixelSize", 1.0),
        voltage_kv=num("Voltage", 300.0),
        cs_mm=num("Cs", 2.7),
        cc_mm=num("Cc", 2.7),
        amplitude_contrast=num("Amplitude", 0.07),
        defocus_angstrom=num("Defocus", 1.0) * 1e4,
        defocus_delta_angstrom=num("DefocusDelta", 0.0) * 1e4,
        defocus_angle_deg=num("DefocusAngle", 0.0),
        phase_shift_deg=num("PhaseShift", 0.0) * 180.0,
        bfactor_a2=num("Bfactor", 0.0),
        bfactor_delta_a2=num("BfactorDelta", 0.0),
        bfactor_angle_deg=num("BfactorAngle", 0.0),
        scale=num("Scale", 1.0),
        beam_tilt_mrad=(tilt[0], tilt[1]),
        beam_tilt2=tuple(floats("BeamTilt2", [1.0, 0.0, 1.0], ",")),
        zernike_odd=tuple(floats("ZernikeCoeffsOdd", [], ";")),
        zernike_even=tuple(floats("ZernikeCoeffsEven", [], ";")),
        distortion=_matrix2(distortion),
        pixel_size_delta_percent=num("PixelSizeDeltaPercent", 0.0),
        pixel_size_angle_deg=num("PixelSizeAngle", 0.0),
        thickness_nm=num("Thickness", 0.0),
    )


# --------------------------------------------------------------------------------------
# Series (Movie / TiltSeries)
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class WarpSeries:
    """A Warp frame series (``<Movie>``) or tilt series (``<TiltSeries>``).

    Every child element is in exactly one of ``tilts``, ``params``, ``grids``
    or ``raw``, under a key that is its element name, or ``Name[i]`` for
    elements Warp writes once per item (``TiltPS1D[3]``, ``PyramidShiftX[0]``)
    or that repeat. ``order`` lists the keys in document order; entries added
    to the dicts but not to ``order`` are written after them.

    Attributes
    ----------
    kind:
        ``'movie'`` or ``'tiltseries'``.
    attributes:
        Root attributes as written (``DataDirectory``, ``PlaneNormal``,
        ``MagnificationCorrection``, ``Bfactor``...).
    tilts:
        Per-tilt lists (tilt series): ``Angles`` (deg), ``Dose`` (e⁻/Å²),
        ``AxisAngle`` (deg), ``AxisOffsetX/Y`` (Å), ``FOVFraction`` as float32
        (T,); ``UseTilt`` as bool (T,); ``MoviePath`` as an object array of str.
    params:
        ``<Param Name Value>`` sections by element (``CTF``, ``OptionsCTF``,
        ``OptionsMovement``...), name to raw value text, in order.
    grids:
        Every ``Grid*`` / ``PyramidShift*`` element.
    raw:
        Everything else (``PS1D``, ``TiltPS1D[i]``, ``SimulatedScale``,
        ``PickingThresholds``...) as :class:`XmlNode`.
    order:
        Keys of all child elements in document order.
    """

    kind: str
    attributes: dict[str, str] = field(default_factory=dict)
    tilts: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    grids: dict[str, CubicGridData] = field(default_factory=dict)
    raw: dict[str, XmlNode] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    @property
    def root_tag(self) -> str:
        """``'Movie'`` or ``'TiltSeries'``."""
        return "TiltSeries" if self.kind == "tiltseries" else "Movie"

    @property
    def n_tilts(self) -> int:
        """Number of tilts (length of ``Angles``); 0 for a frame series."""
        angles = self.tilts.get("Angles")
        return 0 if angles is None else int(len(angles))

    @property
    def ctf(self) -> WarpCTF | None:
        """The global ``<CTF>`` in mrepo units, or ``None`` when absent."""
        params = self.params.get("CTF")
        return None if params is None else warp_ctf(params)

    @property
    def magnification_correction(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """``MagnificationCorrection`` as a row-major 2x2 matrix (identity when absent)."""
        raw = self.attributes.get("MagnificationCorrection", "")
        values = [float(t) for t in raw.replace(" ", "").split(",") if t] if raw else [1.0, 0.0, 0.0, 1.0]
        return _matrix2(values)

    @property
    def plane_normal(self) -> tuple[float, float, float] | None:
        """``PlaneNormal`` (x, y, z) of a tilt series, or ``None``."""
        raw = self.attributes.get("PlaneNormal")
        if not raw:
            return None
        x, y, z = (float(t) for t in raw.replace(" ", "").split(","))
        return (x, y, z)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WarpSeries):
            return NotImplemented
        if (self.kind, self.attributes, self.params, self.raw, self.order) != (
            other.kind,
            other.attributes,
            other.params,
            other.raw,
            other.order,
        ):
            return False
        if list(self.tilts) != list(other.tilts) or list(self.grids) != list(other.grids):
            return False
        for k, v in self.tilts.items():
            w = other.tilts[k]
            if v.dtype != w.dtype or v.shape != w.shape or not np.array_equal(v, w):
                return False
        return all(self.grids[k] == other.grids[k] for k in self.grids)


def _keyed(tags: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for t in tags:
        counts[t] = counts.get(t, 0) + 1
    seen: dict[str, int] = {}
    keys = []
    for t in tags:
        if t in _LIST_TAGS or counts[t] > 1:
            i = seen.get(t, 0)
            seen[t] = i + 1
            keys.append(f"{t}[{i}]")
        else:
            keys.append(t)
    return keys


def _params_from_element(el: Any, obj: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for p in el:
        if not isinstance(p.tag, str):
            continue
        name = p.get("Name")
        if p.tag != "Param" or name is None:
            raise FormatError(f"line {p.sourceline}: <{p.tag}> in <{el.tag}> is not a <Param Name=.. Value=..>", obj)
        params[name] = p.get("Value", "")
    return params


def _is_param_section(el: Any) -> bool:
    kids = [c for c in el if isinstance(c.tag, str)]
    if not kids:
        return el.tag == "CTF" or el.tag.startswith("Options") or el.tag == "LastRefinementOptions"
    return all(c.tag == "Param" for c in kids) and not (el.text or "").strip()


def _tilt_list(el: Any, kind: str, obj: str) -> np.ndarray:
    text = el.text or ""
    items = text.split("\n") if text != "" else []
    if kind == "str":
        return np.array([s.replace("\r", "") for s in items], dtype=object)
    if kind == "bool":
        out = []
        for i, s in enumerate(items):
            t = s.strip().lower()
            if t not in ("true", "false"):
                raise FormatError(f"line {el.sourceline + i}: {el.tag} value {s.strip()!r} is not True/False", obj)
            out.append(t == "true")
        return np.array(out, dtype=bool)
    values = np.empty(len(items), dtype=np.float32)
    for i, s in enumerate(items):
        try:
            values[i] = float(s.strip())
        except ValueError:
            raise FormatError(f"line {el.sourceline + i}: {el.tag} value {s.strip()!r} is not a number", obj) from None
    return values


def read_warp_xml(path: str | os.PathLike[str]) -> WarpSeries:
    """Read a Warp/M frame-series or tilt-series XML file.

    Raises
    ------
    NotFound
        The file does not exist.
    FormatError
        Malformed or truncated XML (message names the line), a root other than
        ``<Movie>``/``<TiltSeries>``, unreadable numbers, grid nodes outside
        their grid, per-tilt lists of different lengths.
    """
    root, obj = _parse_xml(path)
    if root.tag not in SERIES_ROOTS:
        raise FormatError(f"not a Warp series XML: root element is <{root.tag}>, not <Movie> or <TiltSeries>", obj)
    series = WarpSeries(kind=SERIES_ROOTS[root.tag], attributes=dict(root.attrib))
    children = [c for c in root if isinstance(c.tag, str)]
    keys = _keyed([c.tag for c in children])
    for key, el in zip(keys, children, strict=True):
        if series.kind == "tiltseries" and el.tag in _TILT_LISTS and key == el.tag and len(el) == 0:
            series.tilts[key] = _tilt_list(el, _TILT_LISTS[el.tag], obj)
        elif el.get("Width") is not None and (el.tag.startswith("Grid") or el.tag.startswith("PyramidShift")):
            series.grids[key] = _grid_from_element(el, obj)
        elif _is_param_section(el):
            series.params[key] = _params_from_element(el, obj)
        else:
            series.raw[key] = _node_from_element(el)
        series.order.append(key)
    lengths = {k: len(v) for k, v in series.tilts.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise FormatError(f"per-tilt lists have different lengths: {listing}", obj)
    if "CTF" in series.params:
        warp_ctf(series.params["CTF"], obj=obj)  # validate numbers now, not on first use
    return series


def _tilt_text(key: str, values: np.ndarray) -> str:
    kind = _TILT_LISTS.get(key, "str")
    if kind == "bool":
        return "\n".join("True" if bool(v) else "False" for v in values)
    if kind == "f4":
        return "\n".join(dotnet_float(v) for v in np.asarray(values, dtype=np.float32))
    return "\n".join(str(v) for v in values)


def _series_node(series: WarpSeries) -> XmlNode:
    root = XmlNode(series.root_tag, dict(series.attributes))
    keys = [k for k in series.order]
    for d in (series.tilts, series.params, series.grids, series.raw):
        keys += [k for k in d if k not in keys]
    for key in keys:
        if key in series.tilts:
            root.children.append(XmlNode(key.split("[")[0], {}, _tilt_text(key, series.tilts[key])))
        elif key in series.params:
            params = series.params[key]
            root.children.append(
                XmlNode(key.split("[")[0], {}, None, [XmlNode("Param", {"Name": n, "Value": v}) for n, v in params.items()])
            )
        elif key in series.grids:
            root.children.append(_grid_node(series.grids[key]))
        elif key in series.raw:
            root.children.append(series.raw[key])
    return root


def write_warp_xml(path: str | os.PathLike[str], series: WarpSeries) -> None:
    """Write a :class:`WarpSeries` as Warp writes it (UTF-8 with BOM, tabs), atomically."""
    if series.kind not in SERIES_ROOTS.values():
        raise InvalidInput(f"unknown Warp series kind {series.kind!r}: use 'movie' or 'tiltseries'", str(path))
    lengths = {k: len(v) for k, v in series.tilts.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise InvalidInput(f"per-tilt lists have different lengths: {listing}", str(path))
    _atomic_write(Path(path), _document_bytes(_series_node(series)))


# --------------------------------------------------------------------------------------
# M containers (.population / .source / .species) and Warp .settings
# --------------------------------------------------------------------------------------

# Child lists of M's containers and their item element (Population.cs, DataSource.cs, Species.cs).
_RECORD_ITEMS = {
    ("population", "Species"): "Species",
    ("population", "Sources"): "Source",
    ("source", "UsedSpecies"): "Species",
    ("source", "Files"): "File",
    ("species", "UsedDataSources"): "DataSource",
}


@dataclass
class MRecords:
    """A list of attribute records, e.g. ``<Files><File Hash=.. Name=.. /></Files>``."""

    item: str
    items: list[dict[str, str]] = field(default_factory=list)


@dataclass
class MContainer:
    """An M ``.population``, ``.source`` (``<DataSource>``), ``.species`` or a Warp ``.settings`` file.

    Attributes
    ----------
    kind:
        ``'population'``, ``'source'``, ``'species'`` or ``'settings'``.
    params:
        Top-level ``<Param Name Value>`` entries (``GUID``, ``Name``,
        ``Version``, ``PixelSize``...), raw text, in order.
    sections:
        Child elements in order: a dict for a ``<Param>`` list
        (``LastRefinementOptions``; the sections of ``.settings``) or
        :class:`MRecords` for a list of records (``Species``, ``Sources``,
        ``UsedSpecies``, ``Files``, ``UsedDataSources``).
    """

    kind: str
    params: dict[str, str] = field(default_factory=dict)
    sections: dict[str, dict[str, str] | MRecords] = field(default_factory=dict)

    @property
    def root_tag(self) -> str:
        """Root element name."""
        return {v: k for k, v in CONTAINER_ROOTS.items()}[self.kind]

    @property
    def guid(self) -> str | None:
        """``GUID`` param (species and data sources)."""
        return self.params.get("GUID")

    @property
    def name(self) -> str | None:
        """``Name`` param."""
        return self.params.get("Name")

    @property
    def version(self) -> str | None:
        """``Version`` param (M's content hash of the species or source)."""
        return self.params.get("Version")


def _read_container(path: str | os.PathLike[str], kinds: tuple[str, ...]) -> MContainer:
    root, obj = _parse_xml(path)
    kind = CONTAINER_ROOTS.get(root.tag)
    if kind not in kinds:
        expected = " or ".join(f"<{k}>" for k, v in CONTAINER_ROOTS.items() if v in kinds)
        raise FormatError(f"root element is <{root.tag}>, not {expected}", obj)
    container = MContainer(kind=kind)
    for el in root:
        if not isinstance(el.tag, str):
            continue
        if el.tag == "Param":
            name = el.get("Name")
            if name is None:
                raise FormatError(f"line {el.sourceline}: <Param> without Name", obj)
            container.params[name] = el.get("Value", "")
            continue
        if el.tag in container.sections:
            raise FormatError(f"line {el.sourceline}: <{el.tag}> appears twice", obj)
        kids = [c for c in el if isinstance(c.tag, str)]
        item = _RECORD_ITEMS.get((kind, el.tag))
        if item is None and kids and all(c.tag != "Param" for c in kids):
            item = kids[0].tag
        if item is not None:
            records = MRecords(item=item)
            for c in kids:
                if c.tag != item or len(c):
                    raise FormatError(f"line {c.sourceline}: unexpected <{c.tag}> in <{el.tag}>", obj)
                records.items.append(dict(c.attrib))
            container.sections[el.tag] = records
        else:
            container.sections[el.tag] = _params_from_element(el, obj)
    return container


def read_m_container(path: str | os.PathLike[str]) -> MContainer:
    """Read an M ``.population``, ``.source`` or ``.species`` file (or a ``.settings``).

    Raises :class:`FormatError` for malformed XML (naming the line) or another root element.
    """
    return _read_container(path, ("population", "source", "species", "settings"))


def read_warp_settings(path: str | os.PathLike[str]) -> MContainer:
    """Read a Warp/WarpTools ``.settings`` file (root ``<Settings>``, sections of Params)."""
    return _read_container(path, ("settings",))


def write_m_container(path: str | os.PathLike[str], container: MContainer) -> None:
    """Write an :class:`MContainer` as Warp/M write it (UTF-8 with BOM, tabs), atomically."""
    if container.kind not in CONTAINER_ROOTS.values():
        raise InvalidInput(f"unknown M container kind {container.kind!r}", str(path))
    root = XmlNode(container.root_tag)
    root.children += [XmlNode("Param", {"Name": k, "Value": v}) for k, v in container.params.items()]
    for tag, section in container.sections.items():
        if isinstance(section, MRecords):
            root.children.append(XmlNode(tag, {}, None, [XmlNode(section.item, dict(r)) for r in section.items]))
        else:
            root.children.append(XmlNode(tag, {}, None, [XmlNode("Param", {"Name": k, "Value": v}) for k, v in section.items()]))
    _atomic_write(Path(path), _document_bytes(root))
