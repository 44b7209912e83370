"""MRC/MRCS/MAP files: read any mode and byte order, write valid MRC2014.

Reading goes through :mod:`mrcfile` for the header and for the standard modes
(0, 1, 2, 4, 6, 12). Two old modes that mrcfile does not decode (3: complex
int16, 101: 4-bit packed) are decoded here from the raw bytes. Before any data
is touched the file size is checked against the header, so a truncated file is
reported as such instead of being read short.

Data are returned as (z, y, x) arrays in physical axis order (a file written
with a non-standard MAPC/MAPR/MAPS axis order is transposed), in native byte
order. Old files that used mode 0 and 1 as unsigned (DMIN/DMAX outside the
signed range, as IMOD and Eos wrote them) are read as uint8/uint16 and say so
in ``MrcData.notes``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FormatError, NotFound

__all__ = ["MrcHeader", "MrcData", "read_mrc_header", "read_mrc", "write_mrc", "MRC_SUFFIXES"]

MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".st", ".ali", ".rec", ".mrc2014")

_HEADER_BYTES = 1024
_MODE_DTYPES = {0: "i1", 1: "i2", 2: "f4", 3: "i2", 4: "c8", 6: "u2", 12: "f2"}


@dataclass(frozen=True)
class MrcHeader:
    """What the 1024-byte header of an MRC file says.

    Attributes
    ----------
    shape:
        Data shape as stored (nz, ny, nx): sections, rows, columns.
    mode:
        MRC data mode (0, 1, 2, 3, 4, 6, 12, 101).
    byte_order:
        ``"<"`` (little-endian) or ``">"`` (big-endian).
    voxel_size:
        Voxel size in Å along (z, y, x) physical axes; ``None`` for an axis
        whose sampling (MX/MY/MZ) or cell is zero, i.e. unknown.
    origin:
        Header ORIGIN (x, y, z) in Å.
    nstart:
        NXSTART, NYSTART, NZSTART in voxels, in the file's column, row,
        section order (x, y, z only when ``axis_order`` is (1, 2, 3)).
    axis_order:
        MAPC, MAPR, MAPS (1 = X, 2 = Y, 3 = Z); (1, 2, 3) is standard.
    ispg:
        Space group number (0 for image stacks, 1 for volumes, 401 for volume stacks).
    extended_header_bytes:
        NSYMBT, the size of the extended header.
    exttyp:
        Extended header type code (e.g. ``"FEI1"``) or ``""``.
    dmin, dmax, dmean, rms:
        Statistics as written in the header.
    labels:
        Text labels.
    nversion:
        NVERSION (20140 for MRC2014, 0 for older files).
    has_map_id:
        Whether the ``MAP `` identifier is present (missing in pre-2000 files).
    file_size:
        Size of the file in bytes.
    """

    shape: tuple[int, int, int]
    mode: int
    byte_order: str
    voxel_size: tuple[float | None, float | None, float | None]
    origin: tuple[float, float, float]
    nstart: tuple[int, int, int]
    axis_order: tuple[int, int, int]
    ispg: int
    extended_header_bytes: int
    exttyp: str
    dmin: float
    dmax: float
    dmean: float
    rms: float
    labels: tuple[str, ...]
    nversion: int
    has_map_id: bool
    file_size: int

    @property
    def data_bytes(self) -> int:
        """Bytes of voxel data the header announces."""
        nz, ny, nx = self.shape
        if self.mode == 101:
            return nz * ny * ((nx + 1) // 2)
        return nz * ny * nx * np.dtype(_MODE_DTYPES[self.mode]).itemsize * (2 if self.mode == 3 else 1)

    @property
    def is_volume(self) -> bool:
        """Whether the file is a 3D map rather than an image or a stack.

        ISPG 1..230 says volume and 0 says stack in MRC2014, but RELION writes
        ISPG 0 for its reconstructions too; a cube with ISPG 0 is taken as a
        volume, any other shape with ISPG 0 as a stack.
        """
        nz, ny, nx = self.shape
        if nz <= 1:
            return False
        if 1 <= self.ispg <= 230:
            return True
        return self.ispg == 0 and nz == ny == nx

    @property
    def pixel_size(self) -> float | None:
        """The in-plane pixel size in Å when x and y agree, else ``None``."""
        _, y, x = self.voxel_size
        if x is None or y is None or abs(x - y) > 1e-3 * max(x, y):
            return None
        return x


@dataclass
class MrcData:
    """Voxel data of an MRC file with the metadata needed to store it again.

    ``data`` is (z, y, x) for volumes and stacks, (1, y, x) for single images
    unless ``squeeze`` was asked for.
    """

    data: np.ndarray
    header: MrcHeader
    notes: list[str] = field(default_factory=list)

    @property
    def voxel_size(self) -> tuple[float | None, float | None, float | None]:
        return self.header.voxel_size


def _parse_header(path: Path) -> MrcHeader:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFound("no such file", str(path)) from None
    except OSError as e:
        raise FormatError(f"cannot read MRC file: {e.strerror}", str(path)) from None
    if path.is_dir():
        raise FormatError("is a directory, not an MRC file", str(path))
    if size < _HEADER_BYTES:
        raise FormatError(f"truncated MRC: {size} bytes, shorter than the 1024-byte header", str(path))
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER_BYTES)
    except OSError as e:
        raise FormatError(f"cannot read MRC file: {e.strerror}", str(path)) from None
    # Byte order: MACHST first, then the plausibility of the header words.
    machst = raw[212:214]
    order = None
    if machst[:1] in (b"\x44", b"\x41"):
        order = "<"
    elif machst[:1] == b"\x11":
        order = ">"
    if order is None:  # old files: MACHST zero; guess from which order gives a sane mode/size
        for candidate in ("<", ">"):
            n = np.frombuffer(raw[:16], dtype=candidate + "i4")
            if 0 <= n[3] <= 101 and all(0 < v < 1 << 20 for v in n[:3]):
                order = candidate
                break
    if order is None:
        raise FormatError("not an MRC file: header has no valid dimensions or mode", str(path))
    i4 = np.frombuffer(raw, dtype=order + "i4")
    f4 = np.frombuffer(raw, dtype=order + "f4")
    nx, ny, nz, mode = (int(v) for v in i4[:4])
    if mode not in _MODE_DTYPES and mode != 101:
        if raw[208:212] != b"MAP ":
            raise FormatError("not an MRC file: no MAP identifier and no valid mode", str(path))
        raise FormatError(f"unsupported MRC mode {mode}", str(path))
    if min(nx, ny, nz) <= 0:
        raise FormatError(f"invalid MRC dimensions {nx}x{ny}x{nz}", str(path))
    nstart = tuple(int(v) for v in i4[4:7])
    mx, my, mz = (int(v) for v in i4[7:10])
    cella = tuple(float(v) for v in f4[10:13])
    mapcrs = tuple(int(v) for v in i4[16:19])
    if sorted(mapcrs) != [1, 2, 3]:
        mapcrs = (1, 2, 3)  # pre-2000 files leave these zero: standard order
    dmin, dmax, dmean = (float(v) for v in f4[19:22])
    ispg = int(i4[22])
    nsymbt = int(i4[23])
    exttyp = raw[104:108].decode("ascii", "replace").strip("\x00 ")
    nversion = int(i4[27])
    origin = tuple(float(v) for v in f4[49:52])
    has_map_id = raw[208:212] == b"MAP "
    rms = float(f4[54])
    nlabl = max(0, min(10, int(i4[55])))
    labels = tuple(
        raw[224 + 80 * k : 224 + 80 * (k + 1)].decode("ascii", "replace").rstrip("\x00 ") for k in range(nlabl)
    )

    def vs(cell: float, m: int) -> float | None:
        return cell / m if m > 0 and cell > 0 else None

    voxel_xyz = (vs(cella[0], mx), vs(cella[1], my), vs(cella[2], mz))
    if nz == 1 and voxel_xyz[2] is None:
        voxel_xyz = (voxel_xyz[0], voxel_xyz[1], voxel_xyz[0])  # a single image: z sampling is moot
    if nsymbt < 0:
        raise FormatError(f"invalid extended header size {nsymbt}", str(path))
    header = MrcHeader(
        shape=(nz, ny, nx),
        mode=mode,
        byte_order=order,
        voxel_size=(voxel_xyz[2], voxel_xyz[1], voxel_xyz[0]),
        origin=origin,  # type: ignore[arg-type]
        nstart=nstart,  # type: ignore[arg-type]
        axis_order=mapcrs,  # type: ignore[arg-type]
        ispg=ispg,
        extended_header_bytes=nsymbt,
        exttyp=exttyp,
        dmin=dmin,
        dmax=dmax,
        dmean=dmean,
        rms=rms,
        labels=labels,
        nversion=nversion,
        has_map_id=has_map_id,
        file_size=size,
    )
    expected = _HEADER_BYTES + nsymbt + header.data_bytes
    if size < expected:
        raise FormatError(
            f"truncated MRC: header announces {nz}x{ny}x{nx} mode {mode} "
            f"({expected} bytes) but the file has {size} bytes",
            str(path),
        )
    return header


def read_mrc_header(path: str | os.PathLike[str]) -> MrcHeader:
    """Read and check the header of an MRC file (no voxel data is read).

    Raises :class:`~mrepo.errors.FormatError` for a file that is not MRC, has
    an unsupported mode or is shorter than its header announces.
    """
    return _parse_header(Path(path))


def read_mrc(path: str | os.PathLike[str], *, mmap: bool = True) -> MrcData:
    """Read an MRC file of any mode and byte order.

    Parameters
    ----------
    path:
        ``.mrc``, ``.mrcs``, ``.map``, ``.st``... file.
    mmap:
        Map the data instead of reading it (native-order, standard-axis files
        then cost no memory until used).

    Returns
    -------
    MrcData
        ``data`` as a (z, y, x) array (a single image is (1, y, x)), native
        byte order, physical axis order.
    """
    p = Path(path)
    h = _parse_header(p)
    notes: list[str] = []
    offset = _HEADER_BYTES + h.extended_header_bytes
    nz, ny, nx = h.shape
    if h.mode == 101:
        packed = np.fromfile(p, dtype=np.uint8, count=h.data_bytes, offset=offset)
        packed = packed.reshape(nz, ny, (nx + 1) // 2)
        out = np.empty((nz, ny, packed.shape[2] * 2), dtype=np.uint8)
        out[..., 0::2] = packed & 0x0F
        out[..., 1::2] = packed >> 4
        data = out[..., :nx]
        notes.append("mode 101 (4-bit) unpacked to uint8")
    elif h.mode == 3:
        raw = np.fromfile(p, dtype=h.byte_order + "i2", count=nz * ny * nx * 2, offset=offset)
        raw = raw.astype(np.float32).reshape(nz, ny, nx, 2)
        data = (raw[..., 0] + 1j * raw[..., 1]).astype(np.complex64)
        notes.append("mode 3 (complex int16) converted to complex64")
    else:
        dtype = np.dtype(h.byte_order + _MODE_DTYPES[h.mode])
        # Old writers used modes 0 and 1 as unsigned; their DMIN/DMAX betray it.
        if h.mode == 0 and h.dmin >= 0 and h.dmax > 127:
            dtype = np.dtype("u1")
            notes.append("mode 0 read as unsigned 8-bit: header DMIN/DMAX are outside the signed range")
        elif h.mode == 1 and h.dmin >= 0 and h.dmax > 32767:
            dtype = np.dtype(h.byte_order + "u2")
            notes.append("mode 1 read as unsigned 16-bit: header DMIN/DMAX are outside the signed range")
        if mmap:
            data = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=(nz, ny, nx))
        else:
            data = np.fromfile(p, dtype=dtype, count=nz * ny * nx, offset=offset).reshape(nz, ny, nx)
        if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
            data = data.astype(dtype.newbyteorder("="))
            notes.append("big-endian data converted to native byte order")
    if h.axis_order != (1, 2, 3):
        # data axes are (sections, rows, columns) = (MAPS, MAPR, MAPC); reorder to (Z, Y, X)
        labels = (h.axis_order[2], h.axis_order[1], h.axis_order[0])
        perm = [labels.index(3), labels.index(2), labels.index(1)]
        data = np.ascontiguousarray(np.transpose(data, perm))
        notes.append(f"axis order MAPC/MAPR/MAPS={h.axis_order} transposed to z, y, x")
    return MrcData(data=data, header=h, notes=notes)


_WRITE_DTYPES = {
    np.dtype("int8"): np.int8,
    np.dtype("int16"): np.int16,
    np.dtype("float32"): np.float32,
    np.dtype("complex64"): np.complex64,
    np.dtype("uint16"): np.uint16,
    np.dtype("float16"): np.float16,
}


def write_mrc(
    path: str | os.PathLike[str],
    data: np.ndarray,
    voxel_size: float | tuple[float | None, float | None, float | None] | None,
    *,
    origin: tuple[float, float, float] | None = None,
    stack: bool = False,
    label: str | None = None,
) -> None:
    """Write ``data`` as an MRC2014 file, atomically (temp file, fsync, rename).

    Parameters
    ----------
    data:
        2D (y, x) or 3D (z, y, x) array. int8, int16, uint16, float16,
        float32 and complex64 are written as they are (modes 0, 1, 6, 12, 2,
        4); uint8 becomes uint16, other real types float32, complex128 complex64.
    voxel_size:
        Å per voxel, one number or (z, y, x); ``None`` leaves the cell zero.
    origin:
        Header ORIGIN (x, y, z) in Å.
    stack:
        Write a 3D array as an image stack (ISPG 0, ``.mrcs``) instead of a volume.
    """
    import mrcfile

    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise FormatError(f"MRC holds 2D or 3D data, got {arr.ndim}D", str(path))
    if arr.dtype not in _WRITE_DTYPES:
        if arr.dtype == np.uint8:
            arr = arr.astype(np.uint16)
        elif np.iscomplexobj(arr):
            arr = arr.astype(np.complex64)
        elif arr.dtype.kind in "biuf":
            arr = arr.astype(np.float32)
        else:
            raise FormatError(f"cannot write dtype {arr.dtype} to MRC", str(path))
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=target.suffix or ".mrc", dir=target.parent or ".")
    os.close(fd)
    try:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            if stack and arr.ndim == 3:
                m.set_image_stack()
            elif arr.ndim == 3:
                m.set_volume()
            if voxel_size is not None:
                if isinstance(voxel_size, (int, float)):
                    m.voxel_size = float(voxel_size)
                else:
                    z, y, x = (float(v) if v else 0.0 for v in voxel_size)
                    if arr.ndim == 2 or (stack and arr.ndim == 3):
                        z = x  # stacks: sampling along z is the image index; keep it equal to x
                    m.voxel_size = (x, y, z)
            if origin is not None:
                m.header.origin = tuple(float(v) for v in origin)
            if label:
                m.add_label(label[:80])
            m.update_header_stats()
            m.flush()
            os.fsync(m._iostream.fileno())
        os.replace(tmp, target)
        dfd = os.open(target.parent if str(target.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
