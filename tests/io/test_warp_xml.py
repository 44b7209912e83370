"""Warp/M XML: real tilt-series files, and frame-series / M containers built after Warp's source."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from mrepo.errors import FormatError, InvalidInput, NotFound
from mrepo.io.warp_xml import (
    CubicGridData,
    MContainer,
    MRecords,
    WarpSeries,
    dotnet_float,
    read_m_container,
    read_warp_settings,
    read_warp_xml,
    write_m_container,
    write_warp_xml,
)

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
TS_1 = FIXTURES / "warp" / "warp_m_tiltseries_TS_1.xml"
UNALIGNED = FIXTURES / "warp" / "warp_tiltseries_00254_unaligned.xml"
SETTINGS = FIXTURES / "warp" / "warptools_tiltseries.settings"
BOM = b"\xef\xbb\xbf"


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


# ---- real tilt series ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ts1() -> WarpSeries:
    return read_warp_xml(TS_1)


def test_ts1_tilts(ts1: WarpSeries) -> None:
    assert ts1.kind == "tiltseries" and ts1.root_tag == "TiltSeries"
    assert ts1.n_tilts == 41
    assert list(ts1.tilts) == ["Angles", "Dose", "UseTilt", "AxisAngle", "AxisOffsetX", "AxisOffsetY", "MoviePath", "FOVFraction"]
    assert all(len(v) == 41 for v in ts1.tilts.values())
    angles = ts1.tilts["Angles"]
    assert angles.dtype == np.float32 and angles[0] == np.float32(40.01) and angles[-1] == np.float32(-39.98)
    assert np.all(np.diff(angles) < 0)  # sorted descending in this file
    dose = ts1.tilts["Dose"]
    assert dose.min() == 0 and dose.max() == 120
    assert dose[int(np.argmin(np.abs(angles)))] == 0  # dose-symmetric: 0 at the 0° tilt
    assert ts1.tilts["UseTilt"].dtype == bool and ts1.tilts["UseTilt"].all()
    assert "-40.0" in ts1.tilts["MoviePath"][0]
    assert ts1.tilts["AxisAngle"][0] == np.float32(-85.60053)


def test_ts1_attributes(ts1: WarpSeries) -> None:
    a = ts1.attributes
    assert list(a)[:3] == ["DataDirectory", "AreAnglesInverted", "PlaneNormal"]
    assert a["AreAnglesInverted"] == "False" and a["LevelAngleX"] == "1.457031" and a["Bfactor"] == "-16.02326"
    assert a["UnselectManual"] == "" and a["CTFResolutionEstimate"] == "4.8"
    assert ts1.plane_normal == pytest.approx((-0.16420516, 0.022072515, 0.98617923))
    # MagnificationCorrection text is column-major "M11, M21, M12, M22"
    assert ts1.magnification_correction == ((1.0062196, 0.004283654), (0.00422745, 1.0009562))


def test_ts1_grids(ts1: WarpSeries) -> None:
    move = ts1.grids["GridMovementX"]
    assert move.dims == (6, 4, 41)
    assert move.values.shape == (41, 4, 6) and move.values.dtype == np.float32
    assert move.margins == (0.0, 0.0, 0.0) and move.duration is None
    # nodes are X fastest, then Y, then Z: check the layout on real values
    assert move.values[0, 0, 0] == np.float32(-1.3210737)
    assert move.values[0, 0, 1] == np.float32(-0.3384567)  # X=1
    assert move.values[0, 1, 0] == np.float32(-4.029536)  # Y=1
    both = np.concatenate([move.values.ravel(), ts1.grids["GridMovementY"].values.ravel()])
    assert -15 < both.min() < -13 and 15 < both.max() < 16
    ctf = ts1.grids["GridCTF"]
    assert ctf.dims == (1, 1, 41) and ctf.values[0, 0, 0] == np.float32(2.8969412)
    assert 2.33 < ctf.values.min() < 2.34 and 2.98 < ctf.values.max() < 2.99
    for name in ("GridCTFDefocusDelta", "GridCTFDefocusAngle", "GridCTFPhase", "GridAngleX", "GridAngleY", "GridAngleZ", "GridDoseBfacs", "GridDoseWeights"):
        assert ts1.grids[name].dims == (1, 1, 41), name
    warp = ts1.grids["GridVolumeWarpX"]
    assert warp.dims == (1, 1, 1) and warp.duration == 1 and warp.margins is None
    assert warp.values.shape == (1, 1, 1, 1)
    assert ts1.grids["GridLocationWeights"].values.ravel().tolist() == [1.0]


def test_ts1_ctf_and_other_elements(ts1: WarpSeries) -> None:
    assert len(ts1.params["CTF"]) == 21 and len(ts1.params["OptionsCTF"]) == 24
    assert ts1.params["OptionsCTF"]["GridDims"] == "5,5,1"
    ctf = ts1.ctf
    assert ctf is not None
    assert ctf.defocus_angstrom == pytest.approx(2.835209e4)  # µm -> Å
    assert ctf.defocus_delta_angstrom == pytest.approx(0.0252866887649325e4)
    assert ctf.defocus_u_angstrom == pytest.approx(2.835209e4 + 0.0252866887649325e4 / 2)
    assert ctf.defocus_angle_deg == 27.0
    assert (ctf.pixel_size_angstrom, ctf.voltage_kv, ctf.amplitude_contrast) == (0.834, 300.0, 0.1)
    assert ctf.cs_mm == pytest.approx(3.27283443186616)
    assert len(ctf.zernike_odd) == 12 and ctf.zernike_odd[0] == pytest.approx(3.4192607)
    assert len(ctf.zernike_even) == 8
    assert ctf.distortion == ((1.0, 0.0), (0.0, 1.0))
    assert sum(k.startswith("TiltPS1D[") for k in ts1.raw) == 41
    assert sum(k.startswith("TiltSimulatedScale[") for k in ts1.raw) == 41
    assert ts1.raw["TiltPS1D[3]"].attributes == {"ID": "3"}
    assert ts1.raw["PS1D"].text.startswith("0|5545.3257;")
    assert "SimulatedScale" in ts1.raw


def test_unaligned_tilt_series() -> None:
    s = read_warp_xml(UNALIGNED)
    assert s.n_tilts == 41
    a = s.tilts["Angles"]
    assert a[0] == np.float32(-60.01) and a[-1] == np.float32(59.98) and np.all(np.diff(a) > 0)
    assert s.plane_normal == (0.0, 0.0, 0.0)
    assert "OptionsCTF" not in s.params and "PS1D" not in s.raw
    assert s.ctf is not None and s.ctf.defocus_angstrom == 1e4 and s.ctf.zernike_odd == ()
    assert all(g.values.size == 1 for g in s.grids.values())


@pytest.mark.parametrize("path", [TS_1, UNALIGNED], ids=lambda p: p.name)
def test_round_trip_is_byte_identical(path: Path, tmp_path: Path) -> None:
    first = read_warp_xml(path)
    out = tmp_path / path.name
    write_warp_xml(out, first)
    assert out.read_bytes() == path.read_bytes()  # BOM, tabs, element order, .NET number format
    assert read_warp_xml(out) == first


def test_written_values_come_from_arrays(tmp_path: Path) -> None:
    s = read_warp_xml(UNALIGNED)
    s.grids["GridMovementX"].values[0, 0, 0] = 1.25
    s.tilts["Angles"][0] = -61.5
    s.tilts["UseTilt"][1] = False
    out = tmp_path / "edited.xml"
    write_warp_xml(out, s)
    again = read_warp_xml(out)
    assert again == s
    text = out.read_text(encoding="utf-8-sig")
    assert '<Node X="0" Y="0" Z="0" Value="1.25" />' in text
    assert "<Angles>-61.5\n-57\n" in text and "<UseTilt>True\nFalse\n" in text


def test_new_grid_is_appended(tmp_path: Path) -> None:
    s = read_warp_xml(UNALIGNED)
    values = np.arange(2 * 3 * 4, dtype=np.float32).reshape(4, 3, 2) / 8
    s.grids["GridCTFDoming"] = CubicGridData("GridCTFDoming", (2, 3, 4), values, (0.1, 0.0, 0.0))
    out = tmp_path / "g.xml"
    write_warp_xml(out, s)
    again = read_warp_xml(out)
    assert again.order[-1] == "GridCTFDoming"
    assert again.grids["GridCTFDoming"] == s.grids["GridCTFDoming"]
    assert 'MarginX="0.1"' in out.read_text(encoding="utf-8-sig")


# ---- .NET number formatting ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (40.01, "40.01"),
        (300.0, "300"),
        (-4.2999735, "-4.2999735"),
        (0.0001, "0.0001"),
        (1e-5, "1E-05"),
        (1.5e10, "1.5E+10"),
        (1e9, "1E+09"),
        (123456789.0, "123456790"),
        (2.8969412, "2.8969412"),
        (0.0, "0"),
        (-0.0, "-0"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (-float("inf"), "-Infinity"),
    ],
)
def test_dotnet_float(value: float, text: str) -> None:
    assert dotnet_float(value) == text
    if np.isfinite(value):
        assert np.float32(float(text)) == np.float32(value)


# ---- frame series, built after WarpLib/Movie/Movie.cs SaveMeta --------------------------


def _grid_text(name: str, dims: tuple[int, int, int], values: np.ndarray) -> str:
    x, y, z = dims
    lines = [f'\t<{name} Width="{x}" Height="{y}" Depth="{z}" MarginX="0" MarginY="0" MarginZ="0">']
    for iz in range(z):
        for iy in range(y):
            for ix in range(x):
                lines.append(f'\t\t<Node X="{ix}" Y="{iy}" Z="{iz}" Value="{dotnet_float(values[iz, iy, ix])}" />')
    lines.append(f"\t</{name}>")
    return "\n".join(lines)


def _movie_xml() -> bytes:
    rng = np.random.default_rng(3)
    frames = 6

    def grid(name: str, dims: tuple[int, int, int]) -> str:
        return _grid_text(name, dims, rng.normal(size=dims[::-1]).astype(np.float32))

    params = lambda tag, items: "\n".join(  # noqa: E731
        [f"\t<{tag}>"] + [f'\t\t<Param Name="{k}" Value="{v}" />' for k, v in items] + [f"\t</{tag}>"]
    )
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<Movie DataDirectory="" UnselectFilter="False" UnselectManual="null" CTFResolutionEstimate="3.1" '
        'MeanFrameMovement="1.52" MaskPercentage="0" Bfactor="-5.5" Weight="1" MagnificationCorrection="1, 0, 0, 1">',
        params("OptionsCTF", [("Window", "512"), ("RangeMin", "0.1"), ("GridDims", "5,5,1")]),
        "\t<PS1D>0|12.5;0.25|3.5;0.5|1</PS1D>",
        "\t<SimulatedBackground>0|1;0.5|0.5</SimulatedBackground>",
        "\t<SimulatedScale>0|1;0.5|1</SimulatedScale>",
        params(
            "CTF",
            [("PixelSize", "0.834"), ("Defocus", "1.523"), ("DefocusDelta", "0.05"), ("DefocusAngle", "33.5"),
             ("PhaseShift", "0.5"), ("Voltage", "300.0"), ("Cs", "2.7"), ("Amplitude", "0.07"),
             ("ZernikeCoeffsOdd", ""), ("ZernikeCoeffsEven", ""), ("BeamTilt", "0.1,-0.2"), ("Distortion", "1, 0, 0, 1")],
        ),
        grid("GridCTF", (3, 3, 1)),
        grid("GridCTFDefocusDelta", (1, 1, 1)),
        grid("GridCTFDefocusAngle", (1, 1, 1)),
        grid("GridCTFCs", (1, 1, 1)),
        grid("GridCTFPhase", (1, 1, 1)),
        grid("GridCTFDoming", (1, 1, 1)),
        params("OptionsMovement", [("RangeMin", "0.05"), ("Bfactor", "-500")]),
        grid("GridMovementX", (1, 1, frames)),
        grid("GridMovementY", (1, 1, frames)),
        grid("GridLocalMovementX", (3, 3, 3)),
        grid("GridLocalMovementY", (3, 3, 3)),
        grid("PyramidShiftX", (1, 1, frames)),
        grid("PyramidShiftX", (2, 2, 3)),
        grid("PyramidShiftY", (1, 1, frames)),
        grid("PyramidShiftY", (2, 2, 3)),
        grid("GridAngleX", (1, 1, 1)),
        grid("GridAngleY", (1, 1, 1)),
        grid("GridAngleZ", (1, 1, 1)),
        grid("GridDoseBfacs", (1, 1, 1)),
        grid("GridDoseBfacsDelta", (1, 1, 1)),
        grid("GridDoseBfacsAngle", (1, 1, 1)),
        grid("GridDoseWeights", (1, 1, 1)),
        grid("GridLocationBfacs", (1, 1, 1)),
        grid("GridLocationWeights", (1, 1, 1)),
        params("OptionsMovieExport", [("DoAverage", "True")]),
        '\t<PickingThresholds>\n\t\t<Threshold Suffix="_boxnet" Value="0.5" />\n\t</PickingThresholds>',
        "</Movie>",
    ]
    return BOM + "\n".join(parts).encode("utf-8")


def test_movie_xml_after_warp_source(tmp_path: Path) -> None:
    path = tmp_path / "movie.xml"
    path.write_bytes(_movie_xml())
    m = read_warp_xml(path)
    assert m.kind == "movie" and m.root_tag == "Movie" and m.n_tilts == 0 and m.tilts == {}
    assert m.attributes["UnselectManual"] == "null"
    assert m.grids["GridMovementX"].dims == (1, 1, 6)
    assert m.grids["GridLocalMovementX"].values.shape == (3, 3, 3)
    assert [k for k in m.grids if k.startswith("PyramidShiftX")] == ["PyramidShiftX[0]", "PyramidShiftX[1]"]
    assert m.grids["PyramidShiftX[1]"].dims == (2, 2, 3)
    assert list(m.params) == ["OptionsCTF", "CTF", "OptionsMovement", "OptionsMovieExport"]
    ctf = m.ctf
    assert ctf.defocus_angstrom == pytest.approx(15230.0) and ctf.phase_shift_deg == pytest.approx(90.0)
    assert ctf.defocus_v_angstrom == pytest.approx(15230.0 - 250.0) and ctf.beam_tilt_mrad == (0.1, -0.2)
    assert m.raw["PickingThresholds"].children[0].attributes == {"Suffix": "_boxnet", "Value": "0.5"}
    out = tmp_path / "again.xml"
    write_warp_xml(out, m)
    assert out.read_bytes() == path.read_bytes()
    assert read_warp_xml(out) == m


def test_write_series_kind_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        write_warp_xml(tmp_path / "x.xml", WarpSeries(kind="stack"))


# ---- M containers, built after WarpLib/Sociology/*.cs ----------------------------------

G1, G2, G3 = (str(uuid.UUID(int=i)) for i in (1, 2, 3))

POPULATION = f"""<?xml version="1.0" encoding="utf-8"?>
<Population>
\t<Param Name="Name" Value="apoferritin project" />
\t<Species>
\t\t<Species GUID="{G1}" Path="species/apo_1a2b3c4d/apo.species" />
\t</Species>
\t<Sources>
\t\t<Source GUID="{G2}" Path="sources/ts.source" />
\t\t<Source GUID="{G3}" Path="sources/frames.source" />
\t</Sources>
\t<LastRefinementOptions>
\t\t<Param Name="NIterations" Value="3" />
\t\t<Param Name="DoDefocus" Value="True" />
\t</LastRefinementOptions>
</Population>"""

SOURCE = f"""<?xml version="1.0" encoding="utf-8"?>
<DataSource>
\t<Param Name="GUID" Value="{G2}" />
\t<Param Name="Version" Value="abcdef0123456789" />
\t<Param Name="Name" Value="ts" />
\t<Param Name="PixelSize" Value="0.834" />
\t<Param Name="DosePerAngstromFrame" Value="0" />
\t<Param Name="GainPath" Value="" />
\t<Param Name="DefectsPath" Value="" />
\t<UsedSpecies>
\t\t<Species GUID="{G1}" Version="1a2b3c4d" />
\t</UsedSpecies>
\t<Files>
\t\t<File Hash="H4dENXaB_9bW0-Sa_-CerxT4lMI" Name="TS_1.xml" Weight="1" Bfactor="-16.02326" />
\t\t<File Hash="MOTUZ_bc2ESRP9ZxZHhM_cZTDT8" Name="TS_2.xml" />
\t</Files>
</DataSource>"""

SPECIES = f"""<?xml version="1.0" encoding="utf-8"?>
<Species>
\t<Param Name="GUID" Value="{G1}" />
\t<Param Name="Version" Value="1a2b3c4d" />
\t<Param Name="Name" Value="apo" />
\t<Param Name="PixelSize" Value="1.668" />
\t<Param Name="Symmetry" Value="O" />
\t<Param Name="TemporalResolutionMovement" Value="1" />
\t<UsedDataSources />
</Species>"""


@pytest.mark.parametrize(
    "name, text, kind",
    [("p.population", POPULATION, "population"), ("s.source", SOURCE, "source"), ("a.species", SPECIES, "species")],
)
def test_m_container_round_trip(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(BOM + text.encode())
    c = read_m_container(path)
    assert c.kind == kind
    out = tmp_path / ("again_" + name)
    write_m_container(out, c)
    assert out.read_bytes() == path.read_bytes()
    assert read_m_container(out) == c


def test_m_container_content(tmp_path: Path) -> None:
    (tmp_path / "p.population").write_text(POPULATION)  # also without BOM
    pop = read_m_container(tmp_path / "p.population")
    assert pop.name == "apoferritin project"
    assert pop.sections["Species"] == MRecords("Species", [{"GUID": G1, "Path": "species/apo_1a2b3c4d/apo.species"}])
    assert [s["Path"] for s in pop.sections["Sources"].items] == ["sources/ts.source", "sources/frames.source"]
    assert pop.sections["LastRefinementOptions"] == {"NIterations": "3", "DoDefocus": "True"}
    (tmp_path / "s.source").write_text(SOURCE)
    src = read_m_container(tmp_path / "s.source")
    assert (src.guid, src.version, src.params["PixelSize"]) == (G2, "abcdef0123456789", "0.834")
    assert src.sections["Files"].items[0]["Hash"] == "H4dENXaB_9bW0-Sa_-CerxT4lMI"
    assert src.sections["UsedSpecies"].items == [{"GUID": G1, "Version": "1a2b3c4d"}]
    (tmp_path / "a.species").write_text(SPECIES)
    sp = read_m_container(tmp_path / "a.species")
    assert sp.sections["UsedDataSources"] == MRecords("DataSource", [])
    assert sp.params["Symmetry"] == "O"


def test_new_container_written_like_warp(tmp_path: Path) -> None:
    c = MContainer(kind="species", params={"GUID": G1, "Name": "a&b <c>"}, sections={"UsedDataSources": MRecords("DataSource", [{"GUID": G2, "Version": "v"}])})
    out = tmp_path / "n.species"
    write_m_container(out, c)
    data = out.read_bytes()
    assert data.startswith(BOM + b'<?xml version="1.0" encoding="utf-8"?>\n<Species>\n\t<Param Name="GUID"')
    assert b'Value="a&amp;b &lt;c&gt;"' in data
    assert read_m_container(out) == c


def test_settings_fixture(tmp_path: Path) -> None:
    s = read_warp_settings(SETTINGS)
    assert s.kind == "settings"
    assert s.params == {"ProcessCTF": "True", "ProcessMovement": "True", "ProcessPicking": "False"}
    assert list(s.sections) == ["Import", "CTF", "Movement", "Grids", "Tomo", "Picking", "Export", "Tasks", "Filter"]
    assert s.sections["Import"]["PixelSize"] == "1.54"
    assert s.sections["Import"]["EERGroupFrames"] == "-40"
    assert s.sections["Import"]["DosePerAngstromFrame"] == "-3.87"
    assert s.sections["Grids"]["MovementZ"] == "20"
    out = tmp_path / "again.settings"
    write_m_container(out, s)
    assert out.read_bytes() == BOM + SETTINGS.read_bytes()  # Warp writes a BOM; the fixture copy has none


# ---- malformed input -------------------------------------------------------------------


def test_missing_file() -> None:
    with pytest.raises(NotFound):
        read_warp_xml(FIXTURES / "warp" / "nope.xml")
    with pytest.raises(NotFound):
        read_m_container(FIXTURES / "warp" / "nope.species")


def test_truncated_xml(tmp_path: Path) -> None:
    data = TS_1.read_bytes()
    path = tmp_path / "truncated.xml"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as err:
        read_warp_xml(path)
    assert_one_line(err, "malformed XML at line", str(path))
    line = int(str(err.value).split("line ")[1].split(":")[0])
    assert line == data[: len(data) // 2].count(b"\n") + 1  # where the file stops


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", ["empty"]),
        (b"data_\nloop_\n_rlnA #1\n1\n", ["malformed XML at line 1"]),
        (b"<TiltSeries><Angles>1\n2</Angles>", ["malformed XML", "line"]),
        (b"<Settings />", ["not a Warp series XML", "<Settings>"]),
        (b'<TiltSeries><Angles>1\nx\n3</Angles></TiltSeries>', ["line 2", "Angles", "'x'", "not a number"]),
        (b"<TiltSeries><UseTilt>True\nMaybe</UseTilt></TiltSeries>", ["UseTilt", "Maybe"]),
        (b"<TiltSeries><Angles>1\n2</Angles><Dose>0\n1\n2</Dose></TiltSeries>", ["different lengths", "Angles 2", "Dose 3"]),
        (
            b'<TiltSeries>\n<GridCTF Width="1" Height="1" Depth="2">\n<Node X="0" Y="0" Z="0" Value="abc" />\n</GridCTF></TiltSeries>',
            ["line 3", "GridCTF", "non-numeric"],
        ),
        (
            b'<TiltSeries>\n<GridCTF Width="1" Height="1" Depth="2">\n<Node X="0" Y="0" Z="5" Value="1" />\n</GridCTF></TiltSeries>',
            ["line 3", "outside the 1x1x2 grid"],
        ),
        (b'<TiltSeries><GridCTF Width="two" /></TiltSeries>', ["Width='two'", "not an integer"]),
        (b'<TiltSeries><CTF><Param Name="Defocus" Value="deep" /></CTF></TiltSeries>', ["CTF Defocus", "'deep'"]),
        (b'<TiltSeries><CTF><Param Value="1" /></CTF></TiltSeries>', ["Param"]),
    ],
    ids=["empty", "star", "unclosed", "wrong-root", "bad-angle", "bad-bool", "lengths", "bad-node", "node-outside", "bad-dims", "bad-ctf", "param-no-name"],
)
def test_malformed_series(tmp_path: Path, data: bytes, words: list[str]) -> None:
    path = tmp_path / "bad.xml"
    path.write_bytes(data)
    with pytest.raises(FormatError) as err:
        read_warp_xml(path)
    assert_one_line(err, *words, str(path))


def test_malformed_containers(tmp_path: Path) -> None:
    with pytest.raises(FormatError) as err:
        read_warp_settings(TS_1)
    assert_one_line(err, "<TiltSeries>", "<Settings>")
    with pytest.raises(FormatError) as err:
        read_m_container(TS_1)
    assert_one_line(err, "<TiltSeries>")
    path = tmp_path / "bad.species"
    path.write_bytes(b"<Species>\n<Param Value='1' />\n</Species>")
    with pytest.raises(FormatError) as err:
        read_m_container(path)
    assert_one_line(err, "line 2", "without Name")
    path.write_bytes(SPECIES.encode()[:200])
    with pytest.raises(FormatError) as err:
        read_m_container(path)
    assert_one_line(err, "malformed XML at line")


def test_write_rejects_inconsistent_series(tmp_path: Path) -> None:
    s = read_warp_xml(UNALIGNED)
    s.tilts["Dose"] = s.tilts["Dose"][:-1]
    with pytest.raises(InvalidInput) as err:
        write_warp_xml(tmp_path / "x.xml", s)
    assert_one_line(err, "Angles 41", "Dose 40")
    s = read_warp_xml(UNALIGNED)
    s.grids["GridCTF"] = CubicGridData("GridCTF", (2, 2, 1), np.zeros(3, dtype=np.float32))
    with pytest.raises(InvalidInput) as err:
        write_warp_xml(tmp_path / "x.xml", s)
    assert_one_line(err, "GridCTF", "2x2x1")
    assert not (tmp_path / "x.xml").exists()
