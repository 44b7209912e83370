"""inspect_file / format_inspection over every fixture kind and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from mrepo.errors import FormatError, NotFound
from mrepo.io.inspect import Inspection, format_inspection, inspect_file

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
ALL = sorted(p for p in FIXTURES.glob("*/*") if p.suffix not in (".md", ".txt"))


def has(ins: Inspection, *fragments: str) -> None:
    for f in fragments:
        assert any(f in line for line in ins.lines), f"{f!r} not in {ins.lines}"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_fixture_is_described(path: Path) -> None:
    ins = inspect_file(path)
    assert ins.kind in ("star", "mrc", "warp-xml", "warp-settings")
    assert ins.lines
    text = format_inspection(ins)
    assert text.splitlines()[0].startswith(f"{path}: {ins.kind}")
    assert all(line.startswith("  ") for line in text.splitlines()[1:])


def test_star_particles() -> None:
    ins = inspect_file(FIXTURES / "relion" / "relion14_refine_it002_data.star")
    assert (ins.kind, ins.subtype, ins.version) == ("star", "relion1.4-particles", None)
    has(ins, "data_: table, 9 rows x 26 columns", "particles: 9", "pixel 3.5400 Å", "300 kV", "Cs 2 mm")
    ins = inspect_file(FIXTURES / "relion" / "relion5_particles.star")
    assert ins.version == "50001"
    has(ins, "data_optics: table, 1 rows x 18 columns", "particles: 17", "half sets: 1: 11, 2: 6", "box 448")
    ins = inspect_file(FIXTURES / "warp" / "warptools_export_particles.star")
    has(ins, "optics group 4 (opticsGroup4): 10 particles, pixel 12.0000 Å, tilt series 1.6670 Å")
    has(ins, "tilts per particle (rlnTomoVisibleFrames): 37")
    ins = inspect_file(FIXTURES / "relion" / "relion5_tomo_particles_subset.star")
    has(ins, "pixel unknown", "tilts per particle (rlnTomoVisibleFrames): 40, 41", "micrographs/tomograms: 3")


def test_star_other_flavours() -> None:
    ins = inspect_file(FIXTURES / "relion" / "relion30_postprocess.star")
    assert ins.subtype == "relion-postprocess"
    has(ins, "program: RELION postprocess; version 3.0.8", "data_general: 6 key-values", "data_fsc: table, 49 rows x 7 columns")
    has(inspect_file(FIXTURES / "relion" / "relion5_tomo_tilt_series_TS_01.star"), "tilts: 40")
    has(inspect_file(FIXTURES / "warp" / "warptools_Position_16_3.tomostar"), "tilts: 31", "tilt range: -44.99 to 45.01 deg")
    has(inspect_file(FIXTURES / "warp" / "warptools_export_tomograms.star"), "tomogram Unt_083.tomostar: 37 tilts")
    has(inspect_file(FIXTURES / "relion" / "relion5_tomo_tomograms.star"), "tomograms: 5", "tilt-series pixel size: 1.35 Å")


def test_mrc_headers() -> None:
    ins = inspect_file(FIXTURES / "mrc" / "EMD-3001.map")
    assert (ins.kind, ins.subtype) == ("mrc", "volume")
    has(
        ins,
        "dimensions (x, y, z): 73 x 43 x 25",
        "mode: 2 (float32)",
        "axis order (MAPC, MAPR, MAPS): 3, 1, 2 (non-standard)",
        "space group (ISPG): 4",
        "extended header: 160 bytes",
        "start (columns, rows, sections): 0, -21, -12",
        "label: ::::EMDATABANK.org::::EMD-3001::::",
    )
    has(inspect_file(FIXTURES / "mrc" / "relion_mode12_float16.mrc"), "mode: 12 (float16)", "voxel size (x, y, z): 3.5953")
    ins = inspect_file(FIXTURES / "mrc" / "warptools_particleseries_Unt_050_12.00A_000001.mrcs")
    assert ins.subtype == "image stack"
    has(ins, "dimensions (x, y, z): 32 x 32 x 37", "voxel size (x, y, z): 12.0000, 12.0000, 12.0000 Å", "labels: none")
    ins = inspect_file(FIXTURES / "mrc" / "eos_mode1_int16_le.mrc")
    has(ins, "read as uint16", "voxel size (x, y, z): unknown", "MAP id: missing")


def test_mrc_longer_than_its_header_says(tmp_path: Path) -> None:
    """Every fixture's size is exactly header + data; a longer copy is described, with the surplus named."""
    src = FIXTURES / "mrc" / "EMD-3197.map"
    assert not any("more than the header" in line for line in inspect_file(src).lines)
    path = tmp_path / "padded.map"
    path.write_bytes(src.read_bytes() + b"\x00" * 100)
    has(inspect_file(path), "file size: 33124 bytes (100 bytes more than the header announces")


def test_big_endian_mrc(tmp_path: Path) -> None:
    raw = bytearray((FIXTURES / "mrc" / "EMD-3197.map").read_bytes())
    for word in range(56):
        if word not in (26, 52, 53):
            raw[4 * word : 4 * word + 4] = raw[4 * word : 4 * word + 4][::-1]
    raw[212:216] = b"\x11\x11\x00\x00"
    data = np.frombuffer(bytes(raw[1024:]), dtype="<f4").astype(">f4").tobytes()
    path = tmp_path / "be.map"
    path.write_bytes(bytes(raw[:1024]) + data)
    has(inspect_file(path), "byte order: big-endian", "dimensions (x, y, z): 20 x 20 x 20")


def test_warp_xml() -> None:
    ins = inspect_file(FIXTURES / "warp" / "warp_m_tiltseries_TS_1.xml")
    assert (ins.kind, ins.subtype) == ("warp-xml", "tiltseries")
    has(
        ins,
        "tilts: 41",
        "grid GridMovementX: 6x4x41",
        "grid GridVolumeWarpX: 1x1x1x1",
        "defocus 28352.1 Å",
        "Zernike coefficients: 12 odd, 8 even",
        "OptionsCTF: 24 params",
    )
    ins = inspect_file(FIXTURES / "warp" / "warptools_tiltseries.settings")
    assert (ins.kind, ins.subtype) == ("warp-settings", "settings")
    has(ins, "Grids: CTFX=5", "Tomo: DimensionsX=4096, DimensionsY=4096, DimensionsZ=2000")


def test_m_container(tmp_path: Path) -> None:
    path = tmp_path / "a.species"
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<Species>\n\t<Param Name="Name" Value="apo" />\n'
        '\t<UsedDataSources>\n\t\t<DataSource GUID="g" Version="v" />\n\t</UsedDataSources>\n</Species>',
        encoding="utf-8-sig",
    )
    ins = inspect_file(path)
    assert (ins.kind, ins.subtype) == ("m-container", "species")
    has(ins, "Name: apo", "UsedDataSources: 1 DataSource entries")


def test_tiff_and_npy(tmp_path: Path) -> None:
    tif = tmp_path / "frames.tif"
    tifffile.imwrite(tif, np.zeros((3, 16, 20), dtype=np.uint16), photometric="minisblack")
    ins = inspect_file(tif)
    assert ins.kind == "tiff"
    has(ins, "pages: 3", "page shape: 16 x 20", "dtype: uint16")
    npy = tmp_path / "a.npy"
    np.save(npy, np.ones((4, 5), dtype=np.float32))
    ins = inspect_file(npy)
    assert (ins.kind, ins.version) == ("npy", "1.0")
    has(ins, "shape: (4, 5)", "dtype: float32", "80 data bytes")
    npy.write_bytes(npy.read_bytes()[:-8])
    with pytest.raises(FormatError) as err:
        inspect_file(npy)
    assert "truncated NPY" in str(err.value)


@pytest.mark.parametrize(
    "name, data, words",
    [
        ("empty.star", b"", ["empty"]),
        ("notes.txt", b"just some notes\n", ["unknown file type"]),
        ("bad.star", b"data_\nloop_\n_rlnA #1\n_rlnB #2\n1\n", ["line 5", "2 columns"]),
        ("bad.xml", b"<TiltSeries><Angles>1</Angles>", ["malformed XML"]),
        ("other.xml", b"<html><body/></html>", ["<html>"]),
        ("short.mrc", b"\x00" * 100, ["truncated MRC"]),
        ("bad.tif", b"II*\x00" + b"\xff" * 60, ["TIFF"]),
    ],
)
def test_broken_files(tmp_path: Path, name: str, data: bytes, words: list[str]) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(FormatError) as err:
        inspect_file(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    for w in words:
        assert w in text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        inspect_file(tmp_path / "nothing.mrc")


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    mrc = tmp_path / "volume.bin"
    mrc.write_bytes((FIXTURES / "mrc" / "EMD-3197.map").read_bytes())
    assert inspect_file(mrc).kind == "mrc"
    star = tmp_path / "particles.txt"
    star.write_bytes((FIXTURES / "relion" / "relion31_particles.star").read_bytes())
    assert inspect_file(star).subtype == "relion3.1-particles"
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(FormatError) as err:
        inspect_file(png)
    assert "unknown file type" in str(err.value)


def test_mrc_starting_with_angle_bracket(tmp_path: Path) -> None:
    """NX = 60 makes the first byte '<': the MRC suffix wins over XML sniffing."""
    from mrepo.io.mrc import write_mrc

    path = tmp_path / "sixty.mrc"
    write_mrc(path, np.zeros((4, 60), dtype=np.float32), 2.0)
    assert path.read_bytes()[:1] == b"<"
    ins = inspect_file(path)
    assert ins.kind == "mrc"
    has(ins, "dimensions (x, y, z): 60 x 4 x 1")
