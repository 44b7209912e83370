"""read_mrc / read_mrc_header over every MRC fixture, truncated and big-endian variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrepo.errors import FormatError, NotFound
from mrepo.io.mrc import read_mrc, read_mrc_header, write_mrc

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
MRC = FIXTURES / "mrc"

# file -> (data shape (z, y, x) after reading, dtype, mode, in-plane pixel size Å or None) from fixtures/README.md
EXPECTED = {
    "EMD-3197.map": ((20, 20, 20), np.float32, 2, 11.4),
    "EMD-3001.map": ((73, 25, 43), np.float32, 2, None),  # 73x43x25 stored with MAPC/MAPR/MAPS = 3,1,2
    "relion_mode12_float16.mrc": ((1, 64, 64), np.float16, 12, 230.1 / 64),
    "eos_mode0_TEM_filter_sample.mrc": ((1, 417, 500), np.uint8, 0, 2.5),
    "eos_mode1_int16_le.mrc": ((1, 512, 512), np.uint16, 1, None),
    "warptools_particleseries_Unt_050_12.00A_000001.mrcs": ((37, 32, 32), np.float16, 12, 12.0),
    "relion_reconstruct_box32_12A.mrc": ((32, 32, 32), np.float32, 2, 384.077 / 32),
    "relion14_ref_3D_ctf.mrc": ((1, 32, 17), np.float32, 2, None),
    "warp_shift_reference_8x8.mrc": ((1, 8, 8), np.float32, 2, 1.0),
}
ITEMSIZE = {0: 1, 1: 2, 2: 4, 12: 2}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_read_every_fixture(name: str) -> None:
    shape, dtype, mode, pixel = EXPECTED[name]
    m = read_mrc(MRC / name)
    assert m.data.shape == shape
    assert m.data.dtype == dtype
    assert m.header.mode == mode and m.header.byte_order == "<"
    if pixel is None:
        assert m.header.pixel_size is None or name == "EMD-3001.map"
    else:
        assert m.header.pixel_size == pytest.approx(pixel, rel=1e-4)
    nz, ny, nx = m.header.shape
    assert m.header.file_size == 1024 + m.header.extended_header_bytes + nx * ny * nz * ITEMSIZE[mode]
    assert np.isfinite(np.asarray(m.data, dtype=np.float64)).all()


def test_emd_3197_header() -> None:
    h = read_mrc_header(MRC / "EMD-3197.map")
    assert h.nstart == (-2, 0, 0) and h.ispg == 1 and h.is_volume
    assert h.labels[0] == "::::EMDATABANK.org::::EMD-3197::::"
    assert h.voxel_size == pytest.approx((11.4, 11.4, 11.4))
    assert h.has_map_id and h.nversion == 0


def test_emd_3001_axis_order_and_cell() -> None:
    m = read_mrc(MRC / "EMD-3001.map")
    h = m.header
    assert h.shape == (25, 43, 73)  # sections, rows, columns as stored
    assert h.axis_order == (3, 1, 2) and h.ispg == 4 and h.extended_header_bytes == 160 and h.exttyp == ""
    assert h.nstart == (0, -21, -12)
    # CELLA 17.93 x 4.71 x 33.03 Å over MX/MY/MZ 40, 12, 72; voxel_size is (z, y, x)
    assert h.voxel_size == pytest.approx((33.03 / 72, 4.71 / 12, 17.93 / 40), rel=1e-4)
    assert any("axis order" in note for note in m.notes)
    # the transposition is a pure reordering of the stored voxels
    raw = np.fromfile(MRC / "EMD-3001.map", dtype="<f4", offset=1024 + 160).reshape(25, 43, 73)
    np.testing.assert_array_equal(np.sort(m.data, axis=None), np.sort(raw, axis=None))
    assert m.data[3, 5, 7] == raw[5, 7, 3]  # data[z, y, x] = stored[section=y, row=x, column=z]


def test_eos_unsigned_modes() -> None:
    m0 = read_mrc(MRC / "eos_mode0_TEM_filter_sample.mrc")
    assert (int(m0.data.min()), int(m0.data.max())) == (38, 252)  # DMIN/DMAX, read as unsigned
    assert not m0.header.has_map_id
    m1 = read_mrc(MRC / "eos_mode1_int16_le.mrc")
    assert int(m1.data.max()) == 41328 and float(m1.data.mean()) == pytest.approx(1390.29, abs=0.01)
    assert any("unsigned 16-bit" in note for note in m1.notes)


def test_warp_shift_reference_has_one_pixel() -> None:
    m = read_mrc(MRC / "warp_shift_reference_8x8.mrc")
    assert float(m.data.sum()) == 1.0 and int(np.count_nonzero(m.data)) == 1


def test_stack_voxel_size() -> None:
    h = read_mrc_header(MRC / "warptools_particleseries_Unt_050_12.00A_000001.mrcs")
    assert h.ispg == 0 and not h.is_volume
    assert h.voxel_size == pytest.approx((12.0, 12.0, 12.0))  # CELLA z = 37 * 12 Å


@pytest.mark.parametrize("name", ["EMD-3197.map", "relion_mode12_float16.mrc", "eos_mode1_int16_le.mrc"])
@pytest.mark.parametrize("keep", [500, -10], ids=["inside-header", "short-data"])
def test_truncated_copies(tmp_path: Path, name: str, keep: int) -> None:
    data = (MRC / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:keep])
    with pytest.raises(FormatError) as err:
        read_mrc(path)
    assert "truncated MRC" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FormatError):
        read_mrc_header(path)


def _big_endian_copy(src: Path, dst: Path, *, machst: bytes | None = b"\x11\x11\x00\x00") -> None:
    """Rewrite a little-endian MRC as big-endian: swap every header word but EXTTYP, MAP and MACHST."""
    raw = bytearray(src.read_bytes())
    h = read_mrc_header(src)
    for word in range(56):
        if word in (26, 52, 53):
            continue
        raw[4 * word : 4 * word + 4] = raw[4 * word : 4 * word + 4][::-1]
    if machst is not None:
        raw[212:216] = machst
    start = 1024 + h.extended_header_bytes
    dtype = {0: "i1", 1: "i2", 2: "f4", 12: "f2"}[h.mode]
    data = np.frombuffer(bytes(raw[start:]), dtype="<" + dtype).astype(">" + dtype)
    dst.write_bytes(bytes(raw[:start]) + data.tobytes())


@pytest.mark.parametrize("name", ["EMD-3197.map", "EMD-3001.map", "relion_mode12_float16.mrc"])
def test_big_endian_variant(tmp_path: Path, name: str) -> None:
    little = read_mrc(MRC / name)
    path = tmp_path / name
    _big_endian_copy(MRC / name, path)
    big = read_mrc(path)
    assert big.header.byte_order == ">"
    assert big.data.dtype == little.data.dtype and big.data.dtype.byteorder in ("=", "|")
    np.testing.assert_array_equal(big.data, little.data)
    for attr in ("shape", "mode", "voxel_size", "nstart", "axis_order", "ispg", "labels", "extended_header_bytes"):
        assert getattr(big.header, attr) == getattr(little.header, attr), attr
    assert any("big-endian" in note for note in big.notes)


def test_big_endian_old_header_without_machst(tmp_path: Path) -> None:
    """Pre-2000 files leave MACHST zero: the byte order is inferred from the header words."""
    path = tmp_path / "eos_be.mrc"
    _big_endian_copy(MRC / "eos_mode1_int16_le.mrc", path, machst=None)
    assert path.read_bytes()[212:216] == b"\x00\x00\x00\x00"
    big = read_mrc(path)
    assert big.header.byte_order == ">"
    np.testing.assert_array_equal(big.data, read_mrc(MRC / "eos_mode1_int16_le.mrc").data)


def test_not_mrc(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_mrc(tmp_path / "missing.mrc")
    path = tmp_path / "text.mrc"
    path.write_bytes(b"\xff" * 2048)
    with pytest.raises(FormatError):
        read_mrc(path)


def test_write_then_read(tmp_path: Path) -> None:
    src = read_mrc(MRC / "EMD-3197.map")
    out = tmp_path / "copy.mrc"
    write_mrc(out, np.asarray(src.data), 11.4, label="mrepo test")
    again = read_mrc(out)
    np.testing.assert_array_equal(again.data, src.data)
    assert again.header.voxel_size == pytest.approx((11.4, 11.4, 11.4))
    assert again.header.is_volume and again.header.labels[-1] == "mrepo test"
