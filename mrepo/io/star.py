"""STAR files (RELION, Warp, M): read any flavour, normalise particles, write RELION 3.1/5.

Three layers, each usable alone:

* :func:`read_star` returns the blocks of a STAR file as the :mod:`starfile`
  package gives them (a :class:`pandas.DataFrame` per ``loop_`` block, a dict
  per key-value block), plus the ``# version`` and the program header. The
  file is checked line by line first, so that a malformed file is reported in
  one line (:class:`~mrepo.errors.FormatError`) instead of being read wrongly:
  starfile silently fills short rows with NaN, merges an empty block into the
  next one and crashes on an empty table followed by a comment.
* :func:`detect_flavour` names what wrote the file (``'relion5-particles'``,
  ``'warptools-tomostar'``, ``'m-particles'``, ...).
* :func:`read_particles` turns any particle flavour into one
  :class:`ParticleTable` in mrepo's units (Å, px, degrees; shifts in Å; RELION
  ZYZ Euler angles), and :func:`write_particles` writes it back as a RELION
  3.1/4/5 file with ``data_optics`` and ``data_particles``.

Coordinates
-----------
``ParticleTable.coordinates_px`` are in pixels of the frame RELION uses: the
micrograph for single particles, the (unbinned) tilt series for tomography
(``rlnTomoTiltSeriesPixelSize``). ``coordinates_angstrom`` are physical
positions where the file makes them known:

========================  ====================================================
flavour                   coordinates
========================  ====================================================
RELION 1.4 / 3.0 / 3.1/5  ``rlnCoordinateX/Y`` px; Å only when the optics
                          table gives ``rlnMicrographPixelSize``
RELION 4 tomo             ``rlnCoordinateX/Y/Z`` in tilt-series px; Å =
                          px × ``rlnTomoTiltSeriesPixelSize``
RELION 5 tomo             ``rlnCenteredCoordinateX/Y/ZAngst``: Å from the
                          tomogram centre (``coordinates_centered``); px only
                          with ``tomograms=`` (px = Å / pixel + size / 2)
WarpTools export          ``rlnCoordinateX/Y/Z`` in particle px
                          (``rlnImagePixelSize``); converted to tilt-series px
                          by ``rlnImagePixelSize / rlnTomoTiltSeriesPixelSize``
M species table           ``_wrpCoordinateX1..N`` in Å (M's unit); px only
                          with ``pixel_size_angstrom=``
========================  ====================================================
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from ..errors import FormatError, InvalidInput, NotFound

__all__ = [
    "StarFile",
    "OpticsGroup",
    "ParticleTable",
    "PARTICLE_FLAVOURS",
    "read_star",
    "detect_flavour",
    "parse_list",
    "read_particles",
    "write_particles",
]

#: Flavours :func:`read_particles` understands.
PARTICLE_FLAVOURS = (
    "relion1.4-particles",
    "relion3.0-particles",
    "relion3.1-particles",
    "relion5-particles",
    "relion4-tomo-particles",
    "relion5-tomo-particles",
    "warptools-particles",
    "warp1-tomo-2d",
    "m-particles",
)

# --------------------------------------------------------------------------------------
# read_star
# --------------------------------------------------------------------------------------


@dataclass
class StarFile:
    """The blocks of a STAR file.

    Attributes
    ----------
    blocks:
        Block name (``data_<name>`` without ``data_``; ``''`` for ``data_``) to a
        :class:`pandas.DataFrame` (``loop_`` table, one column per label without
        the leading ``_``) or a dict (key-value block), in file order. Values are
        numbers where the whole column parses as numbers; labels that name files
        or objects (``...Name``, ``...File``, ``...Hash``, ``...Image``) stay
        strings.
    version:
        ``'30001'`` (RELION 3.1/4), ``'50001'`` (RELION 5) or ``None`` (no
        ``# version`` line: RELION ≤ 3.0, Warp, starfile).
    program:
        The first header comment, e.g. ``'RELION postprocess; version 3.0.8'``,
        or ``'starfile'`` for files re-written by the starfile package.
    path:
        Where the file was read from.
    line_numbers:
        For each loop block, the 1-based file line of each row (for messages).
    """

    blocks: dict[str, pd.DataFrame | dict[str, Any]]
    version: str | None = None
    program: str | None = None
    path: Path | None = None
    line_numbers: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class _Block:
    name: str
    line: int
    kind: str | None = None  # 'loop' | 'pairs'
    labels: list[str] = field(default_factory=list)
    row_lines: list[int] = field(default_factory=list)


# Labels whose values are names or paths (never coerced to numbers): ...Name(Even/Odd), ...File,
# ...Hash, ...Path, ...Image, ...Metadata, ...Spectrum, ...Tomogram(Half1/2, Denoised), ...MapHalf1/2.
_STRING_LABEL = re.compile(r"Name|(File|Hash|Path|Image|Metadata|Spectrum|Tomogram|Half\d|Denoised)$")
_TOKEN = re.compile(r"\"[^\"]*\"|'[^']*'|\S+")


def _is_string_label(label: str) -> bool:
    return bool(_STRING_LABEL.search(label))


def _tokens(line: str) -> list[str]:
    if '"' in line or "'" in line:
        return _TOKEN.findall(line)
    return line.split()


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise NotFound("no such file", str(path)) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not a STAR file", str(path)) from None
    except OSError as e:
        raise FormatError(f"cannot read file: {e.strerror}", str(path)) from None
    if not raw.strip():
        raise FormatError("empty file: no data_ block", str(path))
    if b"\x00" in raw[:65536]:
        raise FormatError("not a STAR file: binary data (NUL bytes)", str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise FormatError(f"not UTF-8 text: invalid byte at line {line}", str(path)) from None


def _scan(text: str, path: Path) -> tuple[list[_Block], str | None, str | None, bool]:
    """Check the structure of a STAR file line by line.

    Returns the blocks (labels, kind, line of each loop row), the first
    ``# version``, the program header and whether starfile needs a copy without
    comments and blank lines (it mishandles those in two places).
    """
    obj = str(path)
    blocks: list[_Block] = []
    names: set[str] = set()
    version: str | None = None
    program: str | None = None
    needs_clean = False
    state = "start"  # start | block | loop_header | loop_rows | pairs
    block: _Block | None = None
    header_gap = False  # blank/comment line seen after loop_ before the first row
    loop_comment = False  # comment line seen inside the current loop

    def close(b: _Block | None) -> bool:
        if b is None:
            return False
        _finish_block(b, obj)
        # starfile 0.5.13 raises on a loop with no rows followed by a comment
        return b.kind == "loop" and not b.row_lines and loop_comment

    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            if s.startswith("#"):
                words = s[1:].split()
                if len(words) >= 2 and words[0] == "version":
                    version = version or words[1]
                elif state == "start" and program is None and words:
                    body = s[1:].strip()
                    program = "starfile" if body.startswith("Created by the starfile") else body
                if state in ("loop_header", "loop_rows"):
                    loop_comment = True
            if state == "loop_header":
                header_gap = True
            continue
        if s.startswith("data_"):
            needs_clean |= close(block)
            name = s[5:].split()[0] if s[5:].split() else ""
            if name in names:
                raise FormatError(f"line {no}: duplicate block data_{name}", obj)
            names.add(name)
            block = _Block(name=name, line=no)
            blocks.append(block)
            state = "block"
            header_gap = loop_comment = False
            continue
        if block is None:
            raise FormatError(f"not a STAR file: line {no} comes before any data_ block", obj)
        if s.startswith("loop_"):
            if state != "block":
                raise FormatError(f"line {no}: loop_ in the middle of block data_{block.name}", obj)
            block.kind = "loop"
            state = "loop_header"
            header_gap = False
            continue
        if s.startswith("_"):
            words = _tokens(s)
            label = words[0][1:]
            if not label:
                raise FormatError(f"line {no}: empty label in data_{block.name}", obj)
            if state == "loop_header":
                if label in block.labels:
                    raise FormatError(f"line {no}: duplicate label _{label} in data_{block.name}", obj)
                if header_gap:  # starfile stops reading labels at a blank or comment line
                    needs_clean = True
                block.labels.append(label)
                header_gap = False
                continue
            if state == "loop_rows":
                raise FormatError(f"line {no}: label _{label} after the rows of the loop in data_{block.name}", obj)
            block.kind = "pairs"
            state = "pairs"
            if len(words) < 2:
                raise FormatError(f"line {no}: label _{label} in data_{block.name} has no value", obj)
            if len(words) > 2:
                raise FormatError(f"line {no}: label _{label} in data_{block.name} has {len(words) - 1} values", obj)
            if label in block.labels:
                raise FormatError(f"line {no}: duplicate label _{label} in data_{block.name}", obj)
            block.labels.append(label)
            continue
        if state in ("loop_header", "loop_rows"):
            if not block.labels:
                raise FormatError(f"line {no}: loop_ in data_{block.name} has no labels", obj)
            state = "loop_rows"
            row = s.split("#", 1)[0] if "#" in s else s  # starfile (pandas) cuts rows at '#'
            count = len(_tokens(row))
            if count != len(block.labels):
                raise FormatError(
                    f"line {no}: row has {count} values but the loop in data_{block.name} "
                    f"has {len(block.labels)} columns",
                    obj,
                )
            block.row_lines.append(no)
            continue
        if state == "block":
            raise FormatError(f"line {no}: text {s[:30]!r} in data_{block.name} is not a label, loop_ or row", obj)
        raise FormatError(f"line {no}: value {s[:30]!r} without a label in data_{block.name}", obj)
    needs_clean |= close(block)
    if not blocks:
        raise FormatError("not a STAR file: no data_ block", obj)
    return blocks, version, program, needs_clean


def _finish_block(block: _Block, obj: str) -> None:
    if block.kind is None:
        raise FormatError(f"block data_{block.name} (line {block.line}) is empty: no labels or loop", obj)
    if block.kind == "loop" and not block.labels:
        raise FormatError(f"loop_ in data_{block.name} (line {block.line}) has no labels", obj)


def read_star(path: str | os.PathLike[str]) -> StarFile:
    """Read every block of a STAR file.

    Raises
    ------
    NotFound
        The file does not exist.
    FormatError
        Empty file, no ``data_`` block, a row whose value count differs from the
        loop's column count, a label without value, text that is not STAR,
        non-UTF-8 or binary content. The message names the line.
    """
    p = Path(path)
    text = _read_text(p)
    layout, version, program, needs_clean = _scan(text, p)
    string_labels = sorted({lab for b in layout for lab in b.labels if _is_string_label(lab)})
    tmp: str | None = None
    source: Path = p
    try:
        if needs_clean:
            # starfile 0.5.13 fails on an empty loop followed by a comment and on
            # blank/comment lines inside a loop header: hand it a copy without them.
            lines = [ln.strip() for ln in text.splitlines()]
            kept = [ln for ln in lines if ln and not ln.startswith("#")]
            fd, tmp = tempfile.mkstemp(suffix=".star")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(kept) + "\n")
            source = Path(tmp)
        try:
            parsed = starfile.read(source, always_dict=True, parse_as_string=string_labels)
        except Exception as e:  # noqa: BLE001 - starfile/pandas raise many kinds
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FormatError(f"malformed STAR: {msg}", str(p)) from None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    blocks: dict[str, pd.DataFrame | dict[str, Any]] = {}
    line_numbers: dict[str, np.ndarray] = {}
    for b in layout:
        got = parsed.get(b.name)
        if b.kind == "loop":
            if not isinstance(got, pd.DataFrame) or list(got.columns) != b.labels or len(got) != len(b.row_lines):
                raise FormatError(f"malformed STAR: could not read the loop in data_{b.name}", str(p))
            got = got.reset_index(drop=True)
            if len(got) == 0:
                got = pd.DataFrame({lab: pd.Series([], dtype=object) for lab in b.labels})
            line_numbers[b.name] = np.asarray(b.row_lines, dtype=np.int64)
        else:
            if not isinstance(got, dict) or list(got) != b.labels:
                raise FormatError(f"malformed STAR: could not read the pairs in data_{b.name}", str(p))
        blocks[b.name] = got
    return StarFile(blocks=blocks, version=version, program=program, path=p, line_numbers=line_numbers)


def parse_list(value: Any) -> list[float] | list[int]:
    """Parse a bracketed STAR list such as ``[0,1,1]`` or ``[0.1,-2e-3]``.

    Integers stay ``int`` when every item is an integer. Raises ``ValueError``
    for anything else (callers turn it into a :class:`FormatError`).
    """
    s = str(value).strip()
    if len(s) < 2 or s[0] != "[" or s[-1] != "]":
        raise ValueError(f"not a bracketed list: {s[:40]!r}")
    body = s[1:-1].strip()
    if not body:
        return []
    items = [t.strip() for t in body.split(",")]
    try:
        return [int(t) for t in items]
    except ValueError:
        return [float(t) for t in items]


# --------------------------------------------------------------------------------------
# detect_flavour
# --------------------------------------------------------------------------------------

_PARTICLE_MARKERS = ("rlnImageName", "rlnAngleRot", "rlnCoordinateX", "rlnCenteredCoordinateXAngst", "wrpCoordinateX1")
_RELION30_MARKERS = (
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnRandomSubset",
    "rlnImagePixelSize",
    "rlnCtfMaxResolution",
)


def _loops(star: StarFile) -> dict[str, pd.DataFrame]:
    return {k: v for k, v in star.blocks.items() if isinstance(v, pd.DataFrame)}


def _pairs(star: StarFile) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in star.blocks.items() if isinstance(v, dict)}


def _particle_block(star: StarFile) -> str | None:
    loops = _loops(star)
    if "particles" in loops:
        return "particles"
    for name, df in loops.items():
        if any(m in df.columns for m in _PARTICLE_MARKERS):
            return name
    return None


def _is_warp1_tomo_2d(df: pd.DataFrame) -> bool:
    """Warp 1.x tomography 2D export: one row per tilt image, grouped by rlnGroupName."""
    need = ("rlnGroupName", "rlnMicrographName", "rlnCtfBfactor", "rlnCtfScalefactor")
    if not all(c in df.columns for c in need) or len(df) < 2:
        return False
    groups = df.groupby("rlnGroupName", sort=False)["rlnMicrographName"]
    sizes = groups.size()
    if sizes.max() < 2:
        return False
    return bool((groups.nunique() == sizes).all())


def detect_flavour(star: StarFile) -> str:
    """Name the kind of STAR file from its blocks and labels.

    Returns one of :data:`PARTICLE_FLAVOURS` or ``'relion-optimisation-set'``,
    ``'relion-tomograms'``, ``'relion4-tomograms'``, ``'warptools-tomograms'``,
    ``'relion-tilt-series'``, ``'warptools-tomostar'``, ``'relion-motioncorr'``,
    ``'relion-postprocess'``, ``'relion-model'``, ``'relion-optimiser'``,
    ``'relion-pipeline'``, ``'relion-micrographs'``, ``'relion-movies'``,
    ``'generic'``.
    """
    loops = _loops(star)
    pairs = _pairs(star)
    names = set(star.blocks)
    pair_keys = {k for d in pairs.values() for k in d}
    loop_cols = {name: set(df.columns) for name, df in loops.items()}
    all_cols = set().union(*loop_cols.values()) if loop_cols else set()

    if pair_keys & {"rlnTomoParticlesFile", "rlnTomoTomogramsFile"} and not loops:
        return "relion-optimisation-set"
    if names & {"pipeline_general", "pipeline_processes", "pipeline_nodes"}:
        return "relion-pipeline"
    if "optimiser_general" in names:
        return "relion-optimiser"
    if "model_general" in names:
        return "relion-model"
    if "fsc" in loops and "rlnFinalResolution" in pair_keys:
        return "relion-postprocess"
    if "global_shift" in loops or "rlnMotionModelVersion" in pair_keys:
        return "relion-motioncorr"
    if "wrpCoordinateX1" in all_cols:
        return "m-particles"
    if {"wrpMovieName", "wrpAngleTilt"} <= all_cols:
        return "warptools-tomostar"
    if "global" in loops and "rlnTomoName" in loop_cols["global"]:
        if any("rlnTomoProjX" in c for c in loop_cols.values()):
            return "warptools-tomograms" if star.version is None else "relion4-tomograms"
        return "relion-tomograms"
    tilt_series_labels = ({"rlnTomoNominalStageTiltAngle"}, {"rlnTomoProjX", "rlnMicrographPreExposure"})
    if any(labels <= c for labels in tilt_series_labels for c in loop_cols.values()):
        return "relion-tilt-series"
    pblock = _particle_block(star)
    if pblock is not None:
        cols = loop_cols[pblock]
        if "rlnTomoName" in cols:
            if "rlnCenteredCoordinateXAngst" in cols:
                return "relion5-tomo-particles"
            return "warptools-particles" if star.version is None else "relion4-tomo-particles"
        if "optics" in loops:
            return "relion5-particles" if (star.version or "").startswith("5") else "relion3.1-particles"
        if _is_warp1_tomo_2d(loops[pblock]):
            return "warp1-tomo-2d"
        if cols & set(_RELION30_MARKERS):
            return "relion3.0-particles"
        return "relion1.4-particles"
    if "micrographs" in loops:
        return "relion-micrographs"
    if "movies" in loops:
        return "relion-movies"
    return "generic"


# --------------------------------------------------------------------------------------
# Particle tables
# --------------------------------------------------------------------------------------

_IDENTITY2 = ((1.0, 0.0), (0.0, 1.0))


@dataclass
class OpticsGroup:
    """One RELION optics group (a row of ``data_optics``), in mrepo units.

    ``None`` means the file does not say.

    Attributes
    ----------
    number, name:
        ``rlnOpticsGroup``, ``rlnOpticsGroupName``.
    pixel_size_angstrom:
        Pixel size of the particle images (``rlnImagePixelSize``; RELION ≤ 3.0:
        ``rlnDetectorPixelSize`` µm × 10⁴ / ``rlnMagnification``), Å.
    original_pixel_size_angstrom:
        ``rlnMicrographOriginalPixelSize`` (movie pixel size), Å.
    micrograph_pixel_size_angstrom:
        ``rlnMicrographPixelSize`` (pixel size of the coordinate frame in 2D), Å.
    tilt_series_pixel_size_angstrom:
        ``rlnTomoTiltSeriesPixelSize`` (coordinate frame in tomography), Å.
    voltage_kv, cs_mm, amplitude_contrast:
        ``rlnVoltage`` (kV), ``rlnSphericalAberration`` (mm), ``rlnAmplitudeContrast``.
    image_size, dimensionality:
        ``rlnImageSize`` (box, px), ``rlnImageDimensionality`` (2 or 3).
    beam_tilt_x_mrad, beam_tilt_y_mrad:
        ``rlnBeamTiltX/Y`` in mrad.
    odd_zernike, even_zernike:
        ``rlnOddZernike`` / ``rlnEvenZernike`` coefficients (RELION order).
    mag_matrix:
        ``rlnMagMat00..11`` as ((m00, m01), (m10, m11)).
    ctf_premultiplied:
        ``rlnCtfDataAreCtfPremultiplied``.
    extra:
        Every other optics column (``rlnTomoSubtomogramBinning``, ``rlnMtfFileName``, ...).
    """

    number: int
    name: str
    pixel_size_angstrom: float | None = None
    original_pixel_size_angstrom: float | None = None
    micrograph_pixel_size_angstrom: float | None = None
    tilt_series_pixel_size_angstrom: float | None = None
    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None
    image_size: int | None = None
    dimensionality: int | None = None
    beam_tilt_x_mrad: float = 0.0
    beam_tilt_y_mrad: float = 0.0
    odd_zernike: tuple[float, ...] = ()
    even_zernike: tuple[float, ...] = ()
    mag_matrix: tuple[tuple[float, float], tuple[float, float]] = _IDENTITY2
    ctf_premultiplied: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_ARRAY_FIELDS = (
    "coordinates_px",
    "coordinates_angstrom",
    "angles_deg",
    "shifts_angstrom",
    "half_set",
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "phase_shift_deg",
    "ctf_bfactor",
    "ctf_scale",
    "optics_group",
    "micrograph_name",
    "trajectory_coordinates_angstrom",
    "trajectory_angles_deg",
)


@dataclass(eq=False)
class ParticleTable:
    """Particles of one STAR file, normalised to mrepo units. N particles (rows).

    Attributes
    ----------
    coordinates_px:
        (N, 3) float64 x, y, z in px of the micrograph (z = 0) or tilt series;
        NaN where unknown (see the module docstring).
    coordinates_angstrom:
        (N, 3) float64 x, y, z in Å where known, else NaN. Relative to the
        tomogram centre when ``coordinates_centered``.
    coordinates_centered:
        True for RELION 5 ``rlnCenteredCoordinate*Angst``.
    angles_deg:
        (N, 3) float64 rot, tilt, psi (RELION ZYZ), degrees; NaN if the file has none.
    shifts_angstrom:
        (N, 3) float64 ``rlnOriginX/Y/ZAngst`` in Å (old ``rlnOriginX/Y`` px are
        multiplied by the optics group's pixel size).
    half_set:
        (N,) int64 1 or 2 (``rlnRandomSubset``, ``_wrpRandomSubset``); 0 if unknown.
    defocus_u_angstrom, defocus_v_angstrom, defocus_angle_deg:
        (N,) float64; NaN when the file has no per-particle CTF.
    phase_shift_deg, ctf_bfactor, ctf_scale:
        (N,) float64 ``rlnPhaseShift`` (deg, default 0), ``rlnCtfBfactor`` (Å²,
        default 0), ``rlnCtfScalefactor`` (default 1).
    optics_group:
        (N,) int64 number of the particle's :class:`OpticsGroup`.
    micrograph_name:
        (N,) object array of str: ``rlnTomoName`` (tomography),
        ``rlnMicrographName`` or ``_wrpSourceName``; ``''`` if none.
    image_name:
        (N,) object array of str (``rlnImageName``) or None.
    source_hash:
        (N,) object array of str (M's ``_wrpSourceHash``) or None.
    trajectory_coordinates_angstrom:
        (N, Tc, 3) float64 positions in Å over time (M's temporal samples);
        Tc = 1 and equal to ``coordinates_angstrom`` for non-M files.
    trajectory_angles_deg:
        (N, Ta, 3) float64 rot, tilt, psi over time; Ta = 1 for non-M files.
    optics:
        The optics groups the particles refer to.
    extra:
        Every other particle column, by label (no leading ``_``): numbers as
        int64/float64 arrays, strings as object arrays, bracketed lists
        (``rlnTomoVisibleFrames``) as (N, K) arrays.
    general:
        Key-values of a ``data_general`` block (``rlnTomoSubTomosAre2DStacks``).
    flavour:
        Flavour of the file it was read from (:func:`detect_flavour`).
    """

    coordinates_px: np.ndarray
    coordinates_angstrom: np.ndarray
    angles_deg: np.ndarray
    shifts_angstrom: np.ndarray
    half_set: np.ndarray
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    ctf_bfactor: np.ndarray
    ctf_scale: np.ndarray
    optics_group: np.ndarray
    micrograph_name: np.ndarray
    trajectory_coordinates_angstrom: np.ndarray
    trajectory_angles_deg: np.ndarray
    optics: list[OpticsGroup]
    image_name: np.ndarray | None = None
    source_hash: np.ndarray | None = None
    coordinates_centered: bool = False
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    general: dict[str, Any] = field(default_factory=dict)
    flavour: str = "generic"

    def __len__(self) -> int:
        return int(self.angles_deg.shape[0])

    def optics_by_number(self) -> dict[int, OpticsGroup]:
        """Optics groups keyed by ``number``."""
        return {g.number: g for g in self.optics}

    def pixel_sizes(self) -> np.ndarray:
        """(N,) float64 image pixel size of each particle's optics group, Å (NaN if unknown)."""
        lut = {g.number: (g.pixel_size_angstrom if g.pixel_size_angstrom is not None else np.nan) for g in self.optics}
        return np.array([lut.get(int(o), np.nan) for o in self.optics_group], dtype=np.float64)

    def __eq__(self, other: object) -> bool:
        """Same columns, optics, extras and general block (NaN equals NaN); ``flavour`` is ignored."""
        if not isinstance(other, ParticleTable):
            return NotImplemented
        for name in _ARRAY_FIELDS:
            if not _array_equal(getattr(self, name), getattr(other, name)):
                return False
        for name in ("image_name", "source_hash"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None) or (a is not None and not _array_equal(a, b)):
                return False
        if self.coordinates_centered != other.coordinates_centered:
            return False
        if self.optics != other.optics or self.general != other.general:
            return False
        if list(self.extra) != list(other.extra):
            return False
        return all(_array_equal(self.extra[k], other.extra[k]) for k in self.extra)


def _array_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.size == 0:  # an empty STAR column has no type
        return True
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    if a.dtype.kind != b.dtype.kind and not (a.dtype.kind in "iu" and b.dtype.kind in "iu"):
        return False
    return bool(np.array_equal(a, b))


class _Columns:
    """Typed access to the columns of one loop block, with one-line errors."""

    def __init__(self, star: StarFile, block: str) -> None:
        self.star = star
        self.block = block
        self.df: pd.DataFrame = star.blocks[block]  # type: ignore[assignment]
        self.obj = str(star.path) if star.path else None
        self.used: set[str] = set()

    def __contains__(self, label: str) -> bool:
        return label in self.df.columns

    def _line(self, row: int) -> str:
        lines = self.star.line_numbers.get(self.block)
        if lines is not None and row < len(lines):
            return f"line {int(lines[row])}"
        return f"row {row + 1}"

    def num(self, label: str, default: float | None = None) -> np.ndarray:
        """Column as float64; ``default`` (or a FormatError naming it) when absent."""
        if label not in self.df.columns:
            if default is None:
                raise FormatError(f"missing column _{label} in data_{self.block}", self.obj)
            return np.full(len(self.df), default, dtype=np.float64)
        self.used.add(label)
        col = self.df[label]
        if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
            conv = pd.to_numeric(col, errors="coerce")
            bad = np.flatnonzero(conv.isna().to_numpy() & ~col.isin(["nan", "NaN"]).to_numpy())
            if len(bad):
                i = int(bad[0])
                raise FormatError(
                    f"{self._line(i)}: _{label} value {str(col.iloc[i])[:40]!r} is not a number (data_{self.block})",
                    self.obj,
                )
            col = conv
        return col.to_numpy(dtype=np.float64, na_value=np.nan)

    def integer(self, label: str, default: int | None = None) -> np.ndarray:
        """Column as int64; must hold whole numbers."""
        if label not in self.df.columns and default is not None:
            return np.full(len(self.df), default, dtype=np.int64)
        x = self.num(label)
        bad = np.flatnonzero(~np.isfinite(x) | (np.mod(x, 1) != 0))
        if len(bad):
            i = int(bad[0])
            raise FormatError(
                f"{self._line(i)}: _{label} value {self.df[label].iloc[i]!r} is not a whole number (data_{self.block})",
                self.obj,
            )
        return x.astype(np.int64)

    def text(self, label: str) -> np.ndarray:
        """Column as an object array of str."""
        self.used.add(label)
        col = self.df[label]
        return np.array([_as_text(v) for v in col.tolist()], dtype=object)

    def remaining(self) -> dict[str, np.ndarray]:
        """Columns not used yet, as arrays (bracketed lists parsed)."""
        out: dict[str, np.ndarray] = {}
        for label in self.df.columns:
            if label in self.used:
                continue
            out[label] = _column_array(self.df[label])
        return out


def _as_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and not math.isinf(v):
        return repr(v)
    return str(v)


def _column_array(col: pd.Series) -> np.ndarray:
    """A column as int64/float64, (N, K) for bracketed lists of equal length, else str objects."""
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(col.dtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    values = [str(v) for v in col.tolist()]
    if values and all(v.startswith("[") and v.endswith("]") for v in values):
        try:
            lists = [parse_list(v) for v in values]
        except ValueError:
            lists = None
        if lists is not None and len({len(x) for x in lists}) == 1:
            arr = np.array(lists)
            if arr.dtype.kind in "iuf":
                return arr
    return np.array(values, dtype=object)


def _optional(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _optics_from_block(star: StarFile) -> list[OpticsGroup]:
    cols = _Columns(star, "optics")
    df = cols.df
    n = len(df)
    numbers = cols.integer("rlnOpticsGroup") if "rlnOpticsGroup" in cols else np.arange(1, n + 1, dtype=np.int64)
    if "rlnOpticsGroupName" in cols:
        names = cols.text("rlnOpticsGroupName")
    else:
        names = np.array([f"opticsGroup{k}" for k in numbers], dtype=object)

    def opt(label: str) -> np.ndarray:
        return cols.num(label) if label in cols else np.full(n, np.nan)

    pix = opt("rlnImagePixelSize")
    if np.all(np.isnan(pix)) and "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        pix = cols.num("rlnDetectorPixelSize") * 1e4 / cols.num("rlnMagnification")
    orig = opt("rlnMicrographOriginalPixelSize")
    mpix = opt("rlnMicrographPixelSize")
    tspix = opt("rlnTomoTiltSeriesPixelSize")
    kv = opt("rlnVoltage")
    cs = opt("rlnSphericalAberration")
    ac = opt("rlnAmplitudeContrast")
    size = opt("rlnImageSize")
    dim = opt("rlnImageDimensionality")
    btx = opt("rlnBeamTiltX")
    bty = opt("rlnBeamTiltY")
    mags = [opt(f"rlnMagMat{i}{j}") for i, j in ((0, 0), (0, 1), (1, 0), (1, 1))]
    premult = opt("rlnCtfDataAreCtfPremultiplied")
    odd = cols.text("rlnOddZernike") if "rlnOddZernike" in cols else None
    even = cols.text("rlnEvenZernike") if "rlnEvenZernike" in cols else None
    extras = cols.remaining()
    groups: list[OpticsGroup] = []
    for i in range(n):
        mag = _IDENTITY2
        if not all(np.isnan(m[i]) for m in mags):
            identity = (1.0, 0.0, 0.0, 1.0)
            vals = [identity[k] if np.isnan(m[i]) else float(m[i]) for k, m in enumerate(mags)]
            mag = ((vals[0], vals[1]), (vals[2], vals[3]))
        try:
            oz = tuple(float(v) for v in parse_list(odd[i])) if odd is not None else ()
            ez = tuple(float(v) for v in parse_list(even[i])) if even is not None else ()
        except ValueError as e:
            raise FormatError(f"data_optics: Zernike coefficients are not a bracketed list ({e})", cols.obj) from None
        groups.append(
            OpticsGroup(
                number=int(numbers[i]),
                name=str(names[i]),
                pixel_size_angstrom=_optional(pix[i]),
                original_pixel_size_angstrom=_optional(orig[i]),
                micrograph_pixel_size_angstrom=_optional(mpix[i]),
                tilt_series_pixel_size_angstrom=_optional(tspix[i]),
                voltage_kv=_optional(kv[i]),
                cs_mm=_optional(cs[i]),
                amplitude_contrast=_optional(ac[i]),
                image_size=None if np.isnan(size[i]) else int(size[i]),
                dimensionality=None if np.isnan(dim[i]) else int(dim[i]),
                beam_tilt_x_mrad=0.0 if np.isnan(btx[i]) else float(btx[i]),
                beam_tilt_y_mrad=0.0 if np.isnan(bty[i]) else float(bty[i]),
                odd_zernike=oz,
                even_zernike=ez,
                mag_matrix=mag,
                ctf_premultiplied=bool(not np.isnan(premult[i]) and premult[i] != 0),
                extra={k: _scalar(v[i]) for k, v in extras.items()},
            )
        )
    nums = [g.number for g in groups]
    if len(set(nums)) != len(nums):
        raise FormatError("data_optics lists the same optics group number twice", cols.obj)
    return groups


def _scalar(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return tuple(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


_PER_PARTICLE_OPTICS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnMagnification",
    "rlnDetectorPixelSize",
    "rlnImagePixelSize",
)


def _optics_from_particles(cols: _Columns, pixel_size: float | None) -> tuple[list[OpticsGroup], np.ndarray]:
    """Optics groups of a file without ``data_optics`` (RELION ≤ 3.0, Warp 1.x, M, tomo subsets)."""
    n = len(cols.df)
    df = cols.df
    spa = "rlnCoordinateZ" not in df.columns and "rlnTomoName" not in df.columns and "wrpCoordinateX1" not in df.columns
    if "rlnImagePixelSize" in cols:
        pix = cols.num("rlnImagePixelSize")
    elif "rlnDetectorPixelSize" in cols and "rlnMagnification" in cols:
        pix = cols.num("rlnDetectorPixelSize") * 1e4 / cols.num("rlnMagnification")
    else:
        pix = np.full(n, np.nan)
    if pixel_size is not None:
        pix = np.where(np.isnan(pix), float(pixel_size), pix)
    kv = cols.num("rlnVoltage") if "rlnVoltage" in cols else np.full(n, np.nan)
    cs = cols.num("rlnSphericalAberration") if "rlnSphericalAberration" in cols else np.full(n, np.nan)
    ac = cols.num("rlnAmplitudeContrast") if "rlnAmplitudeContrast" in cols else np.full(n, np.nan)
    if "rlnOpticsGroup" in cols:
        numbers = cols.integer("rlnOpticsGroup")
        # the per-particle optics columns may vary inside a group here: keep them as columns too
        for lab in _PER_PARTICLE_OPTICS:
            cols.used.discard(lab)
    else:  # one group per distinct (pixel size, voltage, Cs, amplitude contrast), in order of appearance
        keys = list(zip(*(np.nan_to_num(v, nan=-1.0).tolist() for v in (pix, kv, cs, ac)), strict=True))
        lookup = {key: k for k, key in enumerate(dict.fromkeys(keys), 1)}
        numbers = np.array([lookup[key] for key in keys], dtype=np.int64)
    first: dict[int, int] = {}
    for i, k in enumerate(numbers.tolist()):
        first.setdefault(k, i)
    groups = [
        OpticsGroup(
            number=k,
            name=f"opticsGroup{k}",
            pixel_size_angstrom=_optional(pix[i]),
            voltage_kv=_optional(kv[i]),
            cs_mm=_optional(cs[i]),
            amplitude_contrast=_optional(ac[i]),
            dimensionality=2 if spa else None,
        )
        for k, i in sorted(first.items())
    ]
    return groups, numbers


def _read_tomogram_table(tomograms: str | os.PathLike[str] | StarFile) -> dict[str, tuple[np.ndarray, float]]:
    ts = tomograms if isinstance(tomograms, StarFile) else read_star(tomograms)
    obj = str(ts.path) if ts.path else None
    if "global" not in ts.blocks or not isinstance(ts.blocks["global"], pd.DataFrame):
        raise FormatError("not a tomograms STAR file: no data_global table", obj)
    cols = _Columns(ts, "global")
    names = cols.text("rlnTomoName")
    sx, sy, sz = (cols.num(f"rlnTomoSize{a}") for a in "XYZ")
    pix = cols.num("rlnTomoTiltSeriesPixelSize")
    return {str(names[i]): (np.array([sx[i], sy[i], sz[i]], dtype=np.float64), float(pix[i])) for i in range(len(names))}


def read_particles(
    path: str | os.PathLike[str] | StarFile,
    *,
    require_single_pixel_size: bool = False,
    pixel_size_angstrom: float | None = None,
    tomograms: str | os.PathLike[str] | StarFile | None = None,
) -> ParticleTable:
    """Read the particles of any particle STAR flavour into a :class:`ParticleTable`.

    Parameters
    ----------
    path:
        RELION 1.4/3.0/3.1/4/5 (single-particle or tomography), WarpTools
        export, Warp 1.x tomography 2D export or M species particle table
        (or a :class:`StarFile` already read from one).
    require_single_pixel_size:
        Fail when the particles' optics groups have different pixel sizes.
    pixel_size_angstrom:
        Pixel size (Å) to use where the file gives none: image pixel size of
        files without optics, and the coordinate frame of M tables (whose
        coordinates are in Å).
    tomograms:
        A RELION 5 ``tomograms.star`` (path or :class:`StarFile`): with it,
        ``rlnCenteredCoordinate*Angst`` are also converted to tilt-series px.

    Raises
    ------
    FormatError
        Not a particle file, a required column missing (named), a value that
        is not a number, an optics group used by particles but absent from
        ``data_optics``, different pixel sizes with ``require_single_pixel_size``.
    """
    star = path if isinstance(path, StarFile) else read_star(path)
    obj = str(star.path) if star.path else None
    flavour = detect_flavour(star)
    if flavour == "relion-optimisation-set":
        pairs = next(iter(_pairs(star).values()))
        raise FormatError(f"an optimisation set, not a particle file: read {pairs.get('rlnTomoParticlesFile')}", obj)
    if flavour not in PARTICLE_FLAVOURS:
        raise FormatError(f"not a particle file (flavour {flavour})", obj)
    block = _particle_block(star)
    assert block is not None
    cols = _Columns(star, block)

    optics, group = _particle_optics(star, cols, pixel_size_angstrom)
    if require_single_pixel_size:
        sizes = {g.number: g.pixel_size_angstrom for g in optics if g.number in set(group.tolist())}
        if len(set(sizes.values())) > 1:
            listing = ", ".join(f"{k} ({'unknown' if v is None else f'{v:g} Å'})" for k, v in sizes.items())
            raise FormatError(f"optics groups have different pixel sizes: {listing}", obj)

    def per_particle(attr: str) -> np.ndarray:
        """(N,) float64 value of an optics attribute for each particle (NaN if unknown)."""
        lut = {g.number: (np.nan if getattr(g, attr) is None else getattr(g, attr)) for g in optics}
        return np.array([lut[k] for k in group.tolist()], dtype=np.float64)

    micrograph, image, source_hash = _particle_names(cols)
    angles, traj_angles = _particle_angles(cols, flavour)
    if flavour == "m-particles":
        shifts = np.zeros((len(cols.df), 3))  # M's coordinates already include the shifts
    else:
        shifts = _particle_shifts(cols, per_particle("pixel_size_angstrom"))
    coords_px, coords_a, traj_xyz, centered = _particle_coordinates(
        cols, flavour, per_particle, micrograph, tomograms, pixel_size_angstrom
    )
    half = np.zeros(len(cols.df), dtype=np.int64)
    for lab in ("rlnRandomSubset", "wrpRandomSubset"):
        if lab in cols:
            half = cols.integer(lab)
            break
    ctf = {
        "defocus_u_angstrom": cols.num("rlnDefocusU", np.nan),
        "defocus_v_angstrom": cols.num("rlnDefocusV", np.nan),
        "defocus_angle_deg": cols.num("rlnDefocusAngle", np.nan),
        "phase_shift_deg": cols.num("rlnPhaseShift", 0.0),
        "ctf_bfactor": cols.num("rlnCtfBfactor", 0.0),
        "ctf_scale": cols.num("rlnCtfScalefactor", 1.0),
    }
    general = star.blocks.get("general")
    return ParticleTable(
        coordinates_px=coords_px,
        coordinates_angstrom=coords_a,
        angles_deg=angles,
        shifts_angstrom=shifts,
        half_set=half,
        optics_group=group,
        micrograph_name=micrograph,
        trajectory_coordinates_angstrom=traj_xyz,
        trajectory_angles_deg=traj_angles,
        optics=optics,
        image_name=image,
        source_hash=source_hash,
        coordinates_centered=centered,
        extra=cols.remaining(),
        general=dict(general) if isinstance(general, dict) else {},
        flavour=flavour,
        **ctf,
    )


def _particle_optics(star: StarFile, cols: _Columns, pixel_size: float | None) -> tuple[list[OpticsGroup], np.ndarray]:
    """Optics groups (all of ``data_optics``, or those made from per-particle columns) and each particle's group."""
    n = len(cols.df)
    if not isinstance(star.blocks.get("optics"), pd.DataFrame):
        return _optics_from_particles(cols, pixel_size)
    optics = _optics_from_block(star)
    numbers = {g.number for g in optics}
    if "rlnOpticsGroup" in cols:
        group = cols.integer("rlnOpticsGroup")
    elif len(optics) == 1:
        group = np.full(n, optics[0].number, dtype=np.int64)
    else:
        raise FormatError(f"missing column _rlnOpticsGroup in data_{cols.block} ({len(optics)} optics groups)", cols.obj)
    missing = sorted(set(np.unique(group).tolist()) - numbers)
    if missing:
        count = int(np.isin(group, missing).sum())
        also = f" (also {missing[1:]})" if len(missing) > 1 else ""
        raise FormatError(f"optics group {missing[0]} used by {count} particle(s) is not in data_optics{also}", cols.obj)
    if pixel_size is not None:
        for g in optics:
            if g.pixel_size_angstrom is None:
                g.pixel_size_angstrom = float(pixel_size)
    return optics, group


def _particle_names(cols: _Columns) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Micrograph/tomogram names, image names and M source hashes."""
    for lab in ("rlnTomoName", "rlnMicrographName", "wrpSourceName"):
        if lab in cols:
            micrograph = cols.text(lab)
            break
    else:
        micrograph = np.array([""] * len(cols.df), dtype=object)
    image = cols.text("rlnImageName") if "rlnImageName" in cols else None
    source_hash = None
    for lab in ("wrpSourceHash", "mrepoSourceHash"):
        if lab in cols:
            source_hash = cols.text(lab)
            break
    return micrograph, image, source_hash


_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def _particle_angles(cols: _Columns, flavour: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) angles and (N, Ta, 3) their temporal samples."""
    if flavour == "m-particles":
        traj = _temporal(cols, ("wrpAngleRot", "wrpAngleTilt", "wrpAnglePsi"))
        angles = traj.mean(axis=1)  # M's AnglesMean
    else:
        if any(lab in cols for lab in _ANGLES):
            angles = np.stack([cols.num(lab, 0.0) for lab in _ANGLES], axis=1)  # RELION: missing = 0
        else:
            angles = np.full((len(cols.df), 3), np.nan)
        traj = angles[:, None, :].copy()
    if "mrepoTrajAngleRot1" in cols:
        traj = _temporal(cols, ("mrepoTrajAngleRot", "mrepoTrajAngleTilt", "mrepoTrajAnglePsi"))
    return angles, traj


def _particle_shifts(cols: _Columns, pixel_size: np.ndarray) -> np.ndarray:
    """(N, 3) shifts in Å from ``rlnOrigin*Angst`` or, in old files, ``rlnOrigin*`` px."""
    shifts = np.zeros((len(cols.df), 3))
    for k, axis in enumerate("XYZ"):
        if f"rlnOrigin{axis}Angst" in cols:
            shifts[:, k] = cols.num(f"rlnOrigin{axis}Angst")
        elif f"rlnOrigin{axis}" in cols:
            px = cols.num(f"rlnOrigin{axis}")
            if np.any(np.isnan(pixel_size) & (px != 0)):
                raise FormatError(
                    f"_rlnOrigin{axis} is in pixels and the file gives no pixel size: pass pixel_size_angstrom", cols.obj
                )
            shifts[:, k] = np.where(px == 0, 0.0, px * pixel_size)
    return shifts


def _particle_coordinates(
    cols: _Columns,
    flavour: str,
    per_particle: Any,
    micrograph: np.ndarray,
    tomograms: str | os.PathLike[str] | StarFile | None,
    pixel_size: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Coordinates in px and Å, their temporal samples, and whether Å are centred (see module doc)."""
    n = len(cols.df)
    px = np.full((n, 3), np.nan)
    angstrom = np.full((n, 3), np.nan)
    traj: np.ndarray | None = None
    centered = False
    if flavour == "m-particles":
        traj = _temporal(cols, ("wrpCoordinateX", "wrpCoordinateY", "wrpCoordinateZ"))
        angstrom = traj.mean(axis=1)  # M's CoordinatesMean
        if pixel_size is not None:
            px = angstrom / float(pixel_size)
    elif "rlnCenteredCoordinateXAngst" in cols:
        centered = True
        angstrom = np.stack([cols.num(f"rlnCenteredCoordinate{a}Angst") for a in "XYZ"], axis=1)
        if tomograms is not None:
            tomo = _read_tomogram_table(tomograms)
            absent = sorted({str(t) for t in micrograph} - set(tomo))
            if absent:
                raise FormatError(f"tomogram {absent[0]} of the particles is not in the tomograms file", cols.obj)
            size = np.stack([tomo[str(t)][0] for t in micrograph])
            tilt_pixel = np.array([tomo[str(t)][1] for t in micrograph])
            px = angstrom / tilt_pixel[:, None] + size / 2.0  # RELION: centre = size / 2 (float)
    else:
        px = np.stack([cols.num("rlnCoordinateX"), cols.num("rlnCoordinateY"), cols.num("rlnCoordinateZ", 0.0)], axis=1)
        if flavour == "warptools-particles":
            # WarpTools writes particle pixels (rlnImagePixelSize); RELION reads tilt-series pixels.
            ratio = per_particle("pixel_size_angstrom") / per_particle("tilt_series_pixel_size_angstrom")
            px = px * np.where(np.isnan(ratio), 1.0, ratio)[:, None]
        tomo_file = "rlnTomoName" in cols
        frame = per_particle("tilt_series_pixel_size_angstrom" if tomo_file else "micrograph_pixel_size_angstrom")
        angstrom = px * frame[:, None]
    if "mrepoTrajCoordinateX1" in cols:
        traj = _temporal(cols, ("mrepoTrajCoordinateX", "mrepoTrajCoordinateY", "mrepoTrajCoordinateZ"))
        angstrom = traj.mean(axis=1)
    if traj is None:
        traj = angstrom[:, None, :].copy()
    return px, angstrom, traj, centered


def _temporal(cols: _Columns, prefixes: tuple[str, str, str]) -> np.ndarray:
    """(N, T, 3) from columns ``<prefix>1 .. <prefix>T`` (M's temporal samples)."""
    t = 0
    while all(f"{p}{t + 1}" in cols for p in prefixes):
        t += 1
    if t == 0:
        raise FormatError(f"missing column _{prefixes[0]}1 in data_{cols.block}", cols.obj)
    return np.stack([np.stack([cols.num(f"{p}{i + 1}") for p in prefixes], axis=1) for i in range(t)], axis=1)


# --------------------------------------------------------------------------------------
# write_particles
# --------------------------------------------------------------------------------------

_WRITE_FLAVOURS = {"relion5": "50001", "relion5-tomo": "50001", "relion3.1": "30001"}
_TOMO_FLAVOURS = ("relion4-tomo-particles", "relion5-tomo-particles", "warptools-particles")


def write_particles(
    path: str | os.PathLike[str],
    table: ParticleTable,
    *,
    flavour: str = "relion5",
    trajectories: bool = False,
) -> None:
    """Write particles as a RELION 3.1/4/5 STAR file, atomically.

    The file has ``data_optics`` and ``data_particles`` (plus ``data_general``
    when the table has one), each after a ``# version 50001`` (``relion5``,
    ``relion5-tomo``) or ``# version 30001`` (``relion3.1``) line. Shifts are
    written as ``rlnOriginX/Y(/Z)Angst``. ``relion5-tomo`` writes
    ``rlnTomoName`` and ``rlnCenteredCoordinate*Angst`` when the table's
    coordinates are centred, else ``rlnCoordinateX/Y/Z`` in tilt-series px.

    Parameters
    ----------
    trajectories:
        Also write the full temporal samples as ``_mrepoTrajCoordinateX1..T``
        (Å) and ``_mrepoTrajAngleRot1..T`` (deg) columns, which RELION ignores
        and :func:`read_particles` reads back.

    Raises
    ------
    InvalidInput
        Unknown flavour, or what RELION needs is unknown (coordinates, the
        pixel size, voltage, Cs or amplitude contrast of an optics group).
    """
    if flavour not in _WRITE_FLAVOURS:
        raise InvalidInput(f"unknown STAR flavour {flavour!r}: use one of {sorted(_WRITE_FLAVOURS)}", str(path))
    version = _WRITE_FLAVOURS[flavour]
    tomo = flavour == "relion5-tomo"
    if not tomo and (table.coordinates_centered or table.flavour in _TOMO_FLAVOURS):
        raise InvalidInput(f"tomography particles ({table.flavour}): write them with flavour='relion5-tomo'", str(path))
    n = len(table)
    used_numbers = sorted(set(np.asarray(table.optics_group).tolist()))
    by_number = table.optics_by_number()
    absent = [k for k in used_numbers if k not in by_number]
    if absent:
        raise InvalidInput(f"particles use optics group {absent[0]} which the table does not define", str(path))
    optics = _optics_frame(table.optics, tomo, str(path))

    cols: dict[str, Any] = {}
    if tomo:
        cols["rlnTomoName"] = _text_column(table.micrograph_name)
    if table.coordinates_centered and tomo:
        for k, a in enumerate("XYZ"):
            cols[f"rlnCenteredCoordinate{a}Angst"] = table.coordinates_angstrom[:, k]
    else:
        px = np.asarray(table.coordinates_px, dtype=np.float64)
        if np.isnan(px[:, :2]).any():
            what = "centred Å (write with flavour='relion5-tomo')" if table.coordinates_centered else "unknown"
            raise InvalidInput(f"particle coordinates in pixels are {what}", str(path))
        cols["rlnCoordinateX"] = px[:, 0]
        cols["rlnCoordinateY"] = px[:, 1]
        if tomo or np.any(px[:, 2] != 0):
            cols["rlnCoordinateZ"] = px[:, 2]
    if table.image_name is not None:
        cols["rlnImageName"] = _text_column(table.image_name)
    if not tomo and any(str(m) for m in table.micrograph_name):
        cols["rlnMicrographName"] = _text_column(table.micrograph_name)
    cols["rlnOpticsGroup"] = np.asarray(table.optics_group, dtype=np.int64)
    if not np.all(np.isnan(table.angles_deg)):
        for k, lab in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            cols[lab] = table.angles_deg[:, k]
    shifts = np.asarray(table.shifts_angstrom, dtype=np.float64)
    cols["rlnOriginXAngst"] = shifts[:, 0]
    cols["rlnOriginYAngst"] = shifts[:, 1]
    if tomo or np.any(shifts[:, 2] != 0):
        cols["rlnOriginZAngst"] = shifts[:, 2]
    for lab, values, default in (
        ("rlnDefocusU", table.defocus_u_angstrom, np.nan),
        ("rlnDefocusV", table.defocus_v_angstrom, np.nan),
        ("rlnDefocusAngle", table.defocus_angle_deg, np.nan),
        ("rlnPhaseShift", table.phase_shift_deg, 0.0),
        ("rlnCtfBfactor", table.ctf_bfactor, 0.0),
        ("rlnCtfScalefactor", table.ctf_scale, 1.0),
    ):
        v = np.asarray(values, dtype=np.float64)
        if not np.all((v == default) | (np.isnan(v) & np.isnan(default))):
            if np.isnan(v).any():
                raise InvalidInput(f"{lab} is unknown for some particles", str(path))
            cols[lab] = v
    if np.any(table.half_set != 0):
        cols["rlnRandomSubset"] = np.asarray(table.half_set, dtype=np.int64)
    if table.source_hash is not None:
        cols["mrepoSourceHash"] = _text_column(table.source_hash)
    if trajectories:
        traj = table.trajectory_coordinates_angstrom
        for i in range(traj.shape[1]):
            for k, a in enumerate("XYZ"):
                cols[f"mrepoTrajCoordinate{a}{i + 1}"] = traj[:, i, k]
        traj = table.trajectory_angles_deg
        for i in range(traj.shape[1]):
            for k, a in enumerate(("Rot", "Tilt", "Psi")):
                cols[f"mrepoTrajAngle{a}{i + 1}"] = traj[:, i, k]
    for lab, values in table.extra.items():
        if lab not in cols:
            cols[lab] = values
    for lab, values in cols.items():
        if len(values) != n:
            raise InvalidInput(f"column {lab} has {len(values)} values for {n} particles", str(path))

    parts = [f"# mrepo particles ({flavour})\n"]
    if table.general:
        parts.append(_pairs_text("general", table.general, version))
    parts.append(_loop_text("optics", optics, version))
    parts.append(_loop_text("particles", cols, version))
    _atomic_write(Path(path), "".join(parts).encode("utf-8"))


def _text_column(values: np.ndarray) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def _optics_frame(groups: list[OpticsGroup], tomo: bool, obj: str) -> dict[str, list[Any]]:
    need = {
        "pixel_size_angstrom": "pixel size",
        "voltage_kv": "voltage",
        "cs_mm": "Cs",
        "amplitude_contrast": "amplitude contrast",
    }
    if tomo:
        need["tilt_series_pixel_size_angstrom"] = "tilt-series pixel size"
    for g in groups:
        missing = [label for attr, label in need.items() if getattr(g, attr) is None]
        if missing:
            raise InvalidInput(f"optics group {g.number} has no {', '.join(missing)}: RELION needs them", obj)
    cols: dict[str, list[Any]] = {
        "rlnOpticsGroup": [g.number for g in groups],
        "rlnOpticsGroupName": [g.name for g in groups],
        "rlnVoltage": [g.voltage_kv for g in groups],
        "rlnSphericalAberration": [g.cs_mm for g in groups],
        "rlnAmplitudeContrast": [g.amplitude_contrast for g in groups],
        "rlnImagePixelSize": [g.pixel_size_angstrom for g in groups],
    }

    def optional(label: str, values: list[Any]) -> None:
        if any(v is not None for v in values):
            if any(v is None for v in values):
                raise InvalidInput(f"optics {label} is known for some groups only", obj)
            cols[label] = values

    optional("rlnMicrographOriginalPixelSize", [g.original_pixel_size_angstrom for g in groups])
    optional("rlnMicrographPixelSize", [g.micrograph_pixel_size_angstrom for g in groups])
    optional("rlnTomoTiltSeriesPixelSize", [g.tilt_series_pixel_size_angstrom for g in groups])
    optional("rlnImageSize", [g.image_size for g in groups])
    optional("rlnImageDimensionality", [g.dimensionality for g in groups])
    cols["rlnCtfDataAreCtfPremultiplied"] = [int(g.ctf_premultiplied) for g in groups]
    if any(g.beam_tilt_x_mrad or g.beam_tilt_y_mrad for g in groups):
        cols["rlnBeamTiltX"] = [g.beam_tilt_x_mrad for g in groups]
        cols["rlnBeamTiltY"] = [g.beam_tilt_y_mrad for g in groups]
    if any(g.odd_zernike for g in groups):
        cols["rlnOddZernike"] = [_format_list(g.odd_zernike) for g in groups]
    if any(g.even_zernike for g in groups):
        cols["rlnEvenZernike"] = [_format_list(g.even_zernike) for g in groups]
    if any(g.mag_matrix != _IDENTITY2 for g in groups):
        for i in range(2):
            for j in range(2):
                cols[f"rlnMagMat{i}{j}"] = [g.mag_matrix[i][j] for g in groups]
    extra_labels: list[str] = []
    for g in groups:
        extra_labels += [k for k in g.extra if k not in extra_labels and k not in cols]
    for lab in extra_labels:
        values = [g.extra.get(lab) for g in groups]
        if any(v is None for v in values):
            raise InvalidInput(f"optics column {lab} is set for some groups only", obj)
        cols[lab] = [_format_list(v) if isinstance(v, (tuple, list)) else v for v in values]
    return cols


def _format_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _format_list(values: Any) -> str:
    return "[" + ",".join(_format_value(v) for v in values) + "]"


def _quote(s: str) -> str:
    if s == "" or s.split() != [s]:  # empty or holding whitespace (str.split runs in C)
        if '"' in s:
            raise InvalidInput(f"cannot write a STAR value holding both spaces and quotes: {s[:40]!r}")
        return f'"{s}"'
    return s


def _string_series(values: Any) -> pd.Series:
    arr = np.asarray(values)
    if arr.ndim == 2:
        return pd.Series([_format_list(row) for row in arr.tolist()], dtype=object)
    if arr.dtype.kind in "iub":
        return pd.Series(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        return pd.Series(arr.astype(np.float64))
    return pd.Series([_quote(_format_value(v)) for v in arr.tolist()], dtype=object)


def _loop_text(name: str, columns: Mapping[str, Any], version: str) -> str:
    labels = list(columns)
    header = [f"\n# version {version}\n", f"\ndata_{name}\n", "\nloop_\n"]
    header += [f"_{lab} #{i}\n" for i, lab in enumerate(labels, 1)]
    frame = pd.DataFrame({lab: _string_series(columns[lab]) for lab in labels})
    body = frame.to_csv(sep="\t", header=False, index=False, lineterminator="\n", na_rep="nan") if len(frame) else ""
    return "".join(header) + body + "\n"


def _pairs_text(name: str, pairs: Mapping[str, Any], version: str) -> str:
    lines = [f"\n# version {version}\n", f"\ndata_{name}\n\n"]
    lines += [f"_{k}\t{_quote(_format_value(v))}\n" for k, v in pairs.items()]
    return "".join(lines) + "\n"


def _atomic_write(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target``: temp file in the same folder, fsync, rename, fsync folder."""
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
