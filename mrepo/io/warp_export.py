"""Items as Warp XML: ``mrepo export warp REV OUT_DIR``.

Writes ``OUT_DIR/<source>/<item>.xml`` for every item, as M does after a
refinement (``Movie.SaveMeta``/``TiltSeries.SaveMeta``): the item's original
XML (kept at import as ``sources/<src>/items/<item>/warp.xml``) with the
current models put back:

* ``<CTF>`` params whose value changed (Defocus and DefocusDelta in µm,
  DefocusAngle, PhaseShift in π, Voltage, Cs, Amplitude, Bfactor, Scale,
  BeamTilt, Zernike coefficients); unchanged params keep their text;
* every grid with a Warp name (``Grid*``, ``PyramidShiftX/Y_i``) from the
  model (mrepo writes its refined motion pyramid as ``PyramidShiftX/Y_i``, as M does); grids only mrepo knows are not written;
* tilt series: ``Angles``, ``Dose`` (accumulated), ``UseTilt``,
  ``AxisAngle``, ``AxisOffsetX/Y``; the root ``MagnificationCorrection``.

Values are formatted as .NET does (:func:`~mrepo.io.warp_xml.dotnet_float`),
so an unchanged item is written back byte for byte. Items without a stored
XML get one built from the model alone. ``data_dir`` sets the root
``DataDirectory`` attribute (where Warp finds the raw data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput, NotFound
from ..model import Item
from ..model.population import item_array_name, read_item
from ..store.arrays import read_document
from .popio import require_population
from .warp_import import WARP_XML_DOC, grid_to_warp, imaging_from_ctf, warp_grid_key
from .warp_xml import WarpSeries, dotnet_float, read_warp_xml, warp_ctf, write_warp_xml

__all__ = ["WarpExportReport", "series_for_item", "export_warp"]


@dataclass
class WarpExportReport:
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _decimal(v: float) -> str:
    """A number as .NET writes a ``decimal``: positional, shortest round-trip digits."""
    return np.format_float_positional(float(v), trim="-")


def _list(values: Any, sep: str) -> str:
    return sep.join(dotnet_float(v) for v in values)


def _update_ctf(params: dict[str, str], item: Item, obj: str) -> None:
    """Write the item's imaging model into Warp ``<CTF>`` params, changing only what differs."""
    im = item.imaging
    ctf_px = float(im.extra.get("warp_ctf_pixel_size_angstrom", im.pixel_size_angstrom))
    orig = imaging_from_ctf(warp_ctf(params, obj=obj), im.pixel_size_angstrom, im.mag_matrix)
    changes = {
        "defocus_angstrom": ("Defocus", lambda: _decimal(im.defocus_angstrom / 1e4)),
        "astigmatism_angstrom": ("DefocusDelta", lambda: _decimal(2 * im.astigmatism_angstrom / 1e4)),
        "astigmatism_angle_deg": ("DefocusAngle", lambda: _decimal(im.astigmatism_angle_deg)),
        "phase_shift_deg": ("PhaseShift", lambda: _decimal(im.phase_shift_deg / 180.0)),
        "voltage_kv": ("Voltage", lambda: _decimal(im.voltage_kv)),
        "cs_mm": ("Cs", lambda: _decimal(im.cs_mm)),
        "amplitude_contrast": ("Amplitude", lambda: _decimal(im.amplitude_contrast)),
        "bfactor_a2": ("Bfactor", lambda: _decimal(im.bfactor_a2)),
        "scale": ("Scale", lambda: _decimal(im.scale)),
        "beam_tilt_mrad": ("BeamTilt", lambda: ",".join(_decimal(v) for v in im.beam_tilt_mrad)),
        "odd_zernike": ("ZernikeCoeffsOdd", lambda: _list(im.odd_zernike, ";")),
        "even_zernike": ("ZernikeCoeffsEven", lambda: _list(im.even_zernike, ";")),
    }
    for attr, (name, text) in changes.items():
        a, b = getattr(im, attr), getattr(orig, attr)
        if tuple(np.atleast_1d(a)) != tuple(np.atleast_1d(b)):
            params[name] = text()
    if float(warp_ctf(params).pixel_size_angstrom) != ctf_px and "PixelSize" in params:
        params["PixelSize"] = _decimal(ctf_px)


def _mag_text(m: Any) -> str:
    (m11, m12), (m21, m22) = m
    return ", ".join(dotnet_float(v) for v in (m11, m21, m12, m22))  # Warp's Matrix2 text is column-major


def series_for_item(item: Item, original: bytes | None, *, data_dir: str | None = None) -> tuple[WarpSeries, list[str]]:
    """The Warp series of an item: its original XML (when given) with the current models."""
    notes: list[str] = []
    if original is not None:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".xml", delete=False) as f:
            f.write(original)
            tmp = f.name
        try:
            s = read_warp_xml(tmp)
        finally:
            os.unlink(tmp)
    else:
        s = WarpSeries(kind="tiltseries" if item.kind == "tilts" else "movie")
        s.attributes["DataDirectory"] = ""
        if item.kind == "tilts":
            s.attributes["AreAnglesInverted"] = "False"
        movies = (item.extra.get("warp") or {}).get("movies")
        if item.kind == "tilts":
            s.tilts["MoviePath"] = np.asarray(movies if movies else [f"{item.name}_{i:03d}.mrc" for i in range(item.n)], dtype=object)
        s.params["CTF"] = {}
        notes.append("no original Warp XML stored: built from the model")
    obj = item.name
    if data_dir is not None:
        s.attributes["DataDirectory"] = str(data_dir)
    mag = item.imaging.mag_matrix
    if tuple(map(tuple, mag)) != tuple(map(tuple, s.magnification_correction)):
        s.attributes["MagnificationCorrection"] = _mag_text(mag)
    ctf = s.params.setdefault("CTF", {})
    if not ctf:
        im = item.imaging
        ctf.update({
            "PixelSize": _decimal(im.extra.get("warp_ctf_pixel_size_angstrom", im.pixel_size_angstrom)),
            "Defocus": _decimal(im.defocus_angstrom / 1e4),
            "DefocusDelta": _decimal(2 * im.astigmatism_angstrom / 1e4),
            "DefocusAngle": _decimal(im.astigmatism_angle_deg),
            "PhaseShift": _decimal(im.phase_shift_deg / 180),
            "Voltage": _decimal(im.voltage_kv),
            "Cs": _decimal(im.cs_mm),
            "Amplitude": _decimal(im.amplitude_contrast),
            "Bfactor": _decimal(im.bfactor_a2),
            "Scale": _decimal(im.scale),
            "BeamTilt": ",".join(_decimal(v) for v in im.beam_tilt_mrad),
            "ZernikeCoeffsOdd": _list(im.odd_zernike, ";"),
            "ZernikeCoeffsEven": _list(im.even_zernike, ";"),
        })
    else:
        _update_ctf(ctf, item, obj)
    if item.kind == "tilts":
        n = item.n
        t = s.tilts
        t["Angles"] = np.asarray(item.tilt_angles_deg, np.float32)
        t["Dose"] = np.asarray(item.pre_exposure, np.float32)
        t["UseTilt"] = np.asarray(item.use, bool)
        if item.tilt_axis_deg is not None:
            t["AxisAngle"] = np.asarray(item.tilt_axis_deg, np.float32)
        if item.tilt_axis_offset_angstrom is not None:
            t["AxisOffsetX"] = np.asarray(item.tilt_axis_offset_angstrom[:, 0], np.float32)
            t["AxisOffsetY"] = np.asarray(item.tilt_axis_offset_angstrom[:, 1], np.float32)
        for k, v in t.items():
            if len(v) != n:
                raise InvalidInput(f"the stored XML lists {len(v)} values in <{k}> for {n} tilts", obj)
    kept = {k for k in s.grids}
    for name, g in sorted(item.grids.items()):
        key = warp_grid_key(name)
        if key is None:
            notes.append(f"grid {name} has no Warp element: not written")
            continue
        s.grids[key] = grid_to_warp(key, g)
        kept.discard(key)
    for key in kept:  # grids the model no longer has
        del s.grids[key]
        if key in s.order:
            s.order.remove(key)
    return s, notes


def export_warp(repo: Any, rev: str, out_dir: str | os.PathLike[str], *, source: str | None = None, data_dir: str | None = None) -> WarpExportReport:
    """Write every item's Warp XML at ``rev`` to ``out_dir/<source>/<item>.xml``."""
    snap = repo.snapshot(rev)
    pop = require_population(snap, "nothing to export")
    if source is not None and source not in pop.sources:
        raise NotFound("no such data source", f"{rev}:sources/{source}")
    out = Path(out_dir)
    report = WarpExportReport(out)
    for src in pop.sources.values():
        if source is not None and src.name != source:
            continue
        (out / src.name).mkdir(parents=True, exist_ok=True)
        for name in sorted(src.items):
            item = read_item(snap, src.name, name, grids=True)
            try:
                original = read_document(snap, item_array_name(src.name, name, WARP_XML_DOC))
            except NotFound:
                original = None
            s, notes = series_for_item(item, original, data_dir=data_dir)
            path = out / src.name / f"{name}.xml"
            write_warp_xml(path, s)
            report.files.append(path)
            report.notes += [f"{src.name}/{name}: {n}" for n in notes]
    if not report.files:
        raise NotFound("no items to export", rev)
    return report
