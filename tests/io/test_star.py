"""STAR reading, flavour detection, particle normalisation and writing, against real files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from mrepo.errors import FormatError, InvalidInput, NotFound
from mrepo.io.star import (
    OpticsGroup,
    ParticleTable,
    detect_flavour,
    parse_list,
    read_particles,
    read_star,
    write_particles,
)

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
RELION = FIXTURES / "relion"
WARP = FIXTURES / "warp"
M = FIXTURES / "m"

# file -> (flavour, {block: rows x cols | number of key-values}) as described in fixtures/README.md
STAR_FIXTURES = {
    RELION / "relion14_refine_it002_data.star": ("relion1.4-particles", {"": (9, 26)}),
    RELION / "relion14_refine_it002_model.star": (
        "relion-model",
        {
            "model_general": 20,
            "model_classes": (1, 4),
            "model_class_1": (51, 8),
            "model_groups": (1, 4),
            "model_group_1": (51, 3),
            "model_pdf_orient_class_1": (192, 1),
        },
    ),
    RELION / "relion30_postprocess.star": ("relion-postprocess", {"general": 6, "fsc": (49, 7), "guinier": (49, 3)}),
    RELION / "relion31_class2d_it025_optimiser.star": ("relion-optimiser", {"optimiser_general": 84}),
    RELION / "relion31_default_pipeline.star": (
        "relion-pipeline",
        {
            "pipeline_general": 1,
            "pipeline_processes": (31, 4),
            "pipeline_nodes": (74, 2),
            "pipeline_input_edges": (48, 2),
            "pipeline_output_edges": (72, 2),
        },
    ),
    RELION / "relion31_particles.star": ("relion3.1-particles", {"optics": (1, 9), "particles": (5, 26)}),
    RELION / "relion5_particles.star": ("relion5-particles", {"optics": (1, 18), "particles": (17, 26)}),
    RELION / "relion5_tomo_particles_subset.star": ("relion5-tomo-particles", {"": (15, 26)}),
    RELION / "relion5_tomo_tomograms.star": ("relion-tomograms", {"global": (5, 17)}),
    RELION / "relion5_tomo_tilt_series_TS_01.star": ("relion-tilt-series", {"TS_01": (40, 28)}),
    RELION / "relion5_tomo_optimisation_set.star": ("relion-optimisation-set", {"": 3}),
    RELION / "relion5_motioncorr_TS_03_013_21_0.star": (
        "relion-motioncorr",
        {"general": 11, "global_shift": (8, 3), "hot_pixels": (4193, 2)},
    ),
    WARP / "warptools_export_particles.star": (
        "warptools-particles",
        {"general": 1, "optics": (4, 11), "particles": (40, 15)},
    ),
    WARP / "warptools_export_tomograms.star": (
        "warptools-tomograms",
        {
            "global": (4, 13),
            "Unt_083.tomostar": (37, 9),
            "Unt_050.tomostar": (37, 9),
            "Unt_076.tomostar": (37, 9),
            "Unt_088.tomostar": (37, 9),
        },
    ),
    WARP / "warptools_export_optimisation_set.star": ("relion-optimisation-set", {"": 2}),
    WARP / "warp1_tomo_2d_export_bin8.star": ("warp1-tomo-2d", {"": (219, 20)}),
    WARP / "warptools_Position_16_3.tomostar": ("warptools-tomostar", {"": (31, 6)}),
    M / "m_species_particles_subset.star": ("m-particles", {"": (12, 9)}),
}


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


# ---- read_star / detect_flavour -------------------------------------------------------


@pytest.mark.parametrize("path", list(STAR_FIXTURES), ids=lambda p: p.name)
def test_read_star_blocks_and_flavour(path: Path) -> None:
    flavour, shapes = STAR_FIXTURES[path]
    star = read_star(path)
    assert list(star.blocks) == list(shapes)
    for name, shape in shapes.items():
        block = star.blocks[name]
        if isinstance(shape, tuple):
            assert isinstance(block, pd.DataFrame)
            assert block.shape == shape
            assert len(star.line_numbers[name]) == shape[0]
        else:
            assert isinstance(block, dict)
            assert len(block) == shape
    assert detect_flavour(star) == flavour


def test_versions_and_program_headers() -> None:
    assert read_star(RELION / "relion14_refine_it002_data.star").version is None
    assert read_star(RELION / "relion31_particles.star").version == "30001"
    assert read_star(RELION / "relion5_particles.star").version == "50001"
    post = read_star(RELION / "relion30_postprocess.star")
    assert post.program == "RELION postprocess; version 3.0.8"
    assert post.version is None
    opt = read_star(RELION / "relion31_class2d_it025_optimiser.star")
    assert opt.program == "RELION optimiser; version 3.1.0-commit-1e738e"
    assert opt.version == "30001"
    assert read_star(M / "m_species_particles_subset.star").program == "starfile"


def test_values_keep_their_types() -> None:
    post = read_star(RELION / "relion30_postprocess.star")
    assert post.blocks["general"]["rlnFinalResolution"] == pytest.approx(16.363636)
    assert post.blocks["general"]["rlnMaskName"] == "mask.mrc"
    tomo = read_star(RELION / "relion5_tomo_particles_subset.star").blocks[""]
    assert tomo["rlnTomoName"].iloc[0] == "TS_03"
    assert str(tomo["rlnTomoParticleName"].iloc[0]) == "TS_03/141"
    tilts = read_star(RELION / "relion5_tomo_tilt_series_TS_01.star").blocks["TS_01"]
    assert tilts["rlnTomoTiltMovieFrameCount"].dtype == np.int64  # a number, although its label says "Movie"
    assert tilts["rlnMicrographMovieName"].iloc[0] == "frames/TS_01_038_-57.0.mrc"
    motion = read_star(RELION / "relion5_motioncorr_TS_03_013_21_0.star")
    assert motion.blocks["general"]["rlnMicrographOriginalPixelSize"] == pytest.approx(0.675)
    assert motion.blocks["global_shift"]["rlnMicrographShiftX"].iloc[1] == pytest.approx(-0.40358)
    # numbers in scientific notation
    model = read_star(RELION / "relion14_refine_it002_model.star")
    assert model.blocks["model_general"]["rlnAveragePmax"] == pytest.approx(3.736803e-06)
    # a block name with a dot
    tomograms = read_star(WARP / "warptools_export_tomograms.star")
    assert tomograms.blocks["Unt_083.tomostar"]["rlnTomoProjW"].iloc[0] == "[0,0,0,1]"


def test_line_numbers_point_at_rows() -> None:
    path = RELION / "relion31_particles.star"
    star = read_star(path)
    lines = path.read_text().splitlines()
    first = int(star.line_numbers["particles"][0])
    assert lines[first - 1].split()[0] == "3277.000000"


def test_parse_list() -> None:
    assert parse_list("[0,1,1]") == [0, 1, 1]
    assert parse_list("[0.5,-2e-3]") == [0.5, -0.002]
    assert parse_list("[]") == []
    with pytest.raises(ValueError):
        parse_list("0,1")


# ---- read_particles on every particle flavour -----------------------------------------


def test_relion14_particles() -> None:
    t = read_particles(RELION / "relion14_refine_it002_data.star")
    df = read_star(RELION / "relion14_refine_it002_data.star").blocks[""]
    assert t.flavour == "relion1.4-particles" and len(t) == 9
    (g,) = t.optics
    assert g.pixel_size_angstrom == pytest.approx(14.0 * 1e4 / 39548)  # 3.54 Å
    assert g.pixel_size_angstrom == pytest.approx(3.54, abs=1e-4)
    assert (g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (300.0, 2.0, 0.1)
    assert g.image_size is None
    # rlnOriginX/Y in px -> Å
    np.testing.assert_allclose(t.shifts_angstrom[:, 0], df["rlnOriginX"] * 14e4 / 39548)
    np.testing.assert_allclose(t.shifts_angstrom[:, 1], df["rlnOriginY"] * 14e4 / 39548)
    assert np.all(t.shifts_angstrom[:, 2] == 0)
    np.testing.assert_array_equal(t.coordinates_px[:, 0], df["rlnCoordinateX"])
    assert np.all(t.coordinates_px[:, 2] == 0)
    assert np.all(np.isnan(t.coordinates_angstrom))
    assert t.defocus_u_angstrom[0] == pytest.approx(33863.558594)
    assert t.defocus_angle_deg[0] == pytest.approx(36.07)
    assert np.all(t.half_set == 0)
    assert t.image_name[0] == "000009@Particles/Micrographs/Falcon_2012_06_12-14_33_35_0_particles_autopick.mrcs"
    assert t.micrograph_name[0] == "Micrographs/Falcon_2012_06_12-14_33_35_0.mrc"
    np.testing.assert_array_equal(t.angles_deg[:, 1], df["rlnAngleTilt"])
    # per-particle optics columns became the optics group; the rest is kept
    assert "rlnVoltage" not in t.extra and "rlnMagnification" not in t.extra
    assert list(t.extra)[:2] == ["rlnCtfFigureOfMerit", "rlnNormCorrection"]
    assert t.extra["rlnClassNumber"].dtype == np.int64
    assert t.trajectory_coordinates_angstrom.shape == (9, 1, 3)
    assert t.trajectory_angles_deg.shape == (9, 1, 3)


def test_relion31_particles() -> None:
    t = read_particles(RELION / "relion31_particles.star")
    assert t.flavour == "relion3.1-particles" and len(t) == 5
    (g,) = t.optics
    assert (g.number, g.name) == (1, "opticsGroup1")
    assert (g.pixel_size_angstrom, g.original_pixel_size_angstrom) == (2.806, 1.403)
    assert (g.voltage_kv, g.cs_mm, g.amplitude_contrast, g.image_size, g.dimensionality) == (300.0, 0.01, 0.1, 256, 2)
    df = read_star(RELION / "relion31_particles.star").blocks["particles"]
    np.testing.assert_array_equal(t.shifts_angstrom[:, 0], df["rlnOriginXAngst"])
    np.testing.assert_array_equal(t.half_set, [1, 1, 1, 1, 1])
    assert t.image_name[0] == "000001@relion31.mrcs"
    assert t.extra["rlnImageOriginalName"][0].startswith("000001@Extract/job133/")


def test_relion5_particles_optics() -> None:
    t = read_particles(RELION / "relion5_particles.star")
    assert t.flavour == "relion5-particles" and len(t) == 17
    (g,) = t.optics
    assert g.pixel_size_angstrom == 0.89 and g.voltage_kv == 100.0 and g.cs_mm == 1.6
    assert (g.beam_tilt_x_mrad, g.beam_tilt_y_mrad) == (0.043489, 0.014097)
    assert len(g.odd_zernike) == 6 and len(g.even_zernike) == 9
    assert g.odd_zernike[2] == pytest.approx(-1.79877045848)
    assert g.mag_matrix == ((1.001833, -7.04404e-04), (-8.23335e-04, g.mag_matrix[1][1]))
    assert g.ctf_premultiplied is False
    assert set(np.unique(t.half_set)) == {1, 2}
    assert t.image_name[0] == "1@toy_images_a.mrcs"


def test_relion5_tomo_particles() -> None:
    path = RELION / "relion5_tomo_particles_subset.star"
    t = read_particles(path)
    df = read_star(path).blocks[""]
    assert t.flavour == "relion5-tomo-particles" and len(t) == 15
    assert t.coordinates_centered
    np.testing.assert_array_equal(t.coordinates_angstrom[:, 0], df["rlnCenteredCoordinateXAngst"])
    np.testing.assert_array_equal(t.shifts_angstrom[:, 2], df["rlnOriginZAngst"])
    assert np.all(np.isnan(t.coordinates_px))
    assert t.micrograph_name[0] == "TS_03"
    assert "rlnTomoSubtomogramRot" in t.extra and "rlnTomoVisibleFrames" in t.extra
    # no optics table: one placeholder group, nothing known
    (g,) = t.optics
    assert g.number == 1 and g.pixel_size_angstrom is None
    # with the tomograms table, centred Å become tilt-series px: Å / 1.35 + size / 2
    t2 = read_particles(path, tomograms=RELION / "relion5_tomo_tomograms.star")
    expected = df["rlnCenteredCoordinateXAngst"].to_numpy() / 1.35 + 4000 / 2
    np.testing.assert_allclose(t2.coordinates_px[:, 0], expected)
    np.testing.assert_allclose(t2.coordinates_px[:, 2], df["rlnCenteredCoordinateZAngst"].to_numpy() / 1.35 + 1000)


def test_warp1_tomo_2d_export() -> None:
    t = read_particles(WARP / "warp1_tomo_2d_export_bin8.star")
    assert t.flavour == "warp1-tomo-2d" and len(t) == 219
    (g,) = t.optics
    assert g.pixel_size_angstrom == pytest.approx(1.96 * 1e4 / 10000)
    assert (g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (300.0, 2.7, 0.07)
    assert t.ctf_bfactor[0] == -13.0 and t.ctf_bfactor[1] == -26.0  # changes with dose
    assert t.ctf_scale[1] == pytest.approx(0.9986)  # changes with tilt
    assert t.micrograph_name[0] == "ay19102021_L3_position6_21.mrc"
    assert len(set(t.extra["rlnGroupName"])) == 6  # one group per particle, one row per tilt image


def test_warptools_particles_coordinates() -> None:
    path = WARP / "warptools_export_particles.star"
    t = read_particles(path)
    df = read_star(path).blocks["particles"]
    assert t.flavour == "warptools-particles" and len(t) == 40
    assert [g.number for g in t.optics] == [1, 2, 3, 4]
    g = t.optics[0]
    assert (g.pixel_size_angstrom, g.tilt_series_pixel_size_angstrom, g.image_size) == (12.0, 1.667, 32)
    assert g.ctf_premultiplied and g.extra == {"rlnTomoSubtomogramBinning": 7.19856}
    # WarpTools coordinates are in particle pixels (12 Å): Å = px * 12, tilt-series px = Å / 1.667
    np.testing.assert_allclose(t.coordinates_angstrom[:, 0], df["rlnCoordinateX"] * 12.0)
    np.testing.assert_allclose(t.coordinates_px[:, 2], df["rlnCoordinateZ"] * 12.0 / 1.667)
    assert t.general == {"rlnTomoSubTomosAre2DStacks": 1}
    assert t.extra["rlnTomoVisibleFrames"].shape == (40, 37)
    assert t.extra["rlnTomoVisibleFrames"][0, :2].tolist() == [0, 1]


def test_m_particles() -> None:
    path = M / "m_species_particles_subset.star"
    t = read_particles(path)
    df = read_star(path).blocks[""]
    assert t.flavour == "m-particles" and len(t) == 12
    np.testing.assert_array_equal(t.coordinates_angstrom[:, 0], df["wrpCoordinateX1"])  # M works in Å
    np.testing.assert_array_equal(t.angles_deg[:, 2], df["wrpAnglePsi1"])
    assert t.trajectory_coordinates_angstrom.shape == (12, 1, 3)
    assert np.all(np.isnan(t.coordinates_px))
    np.testing.assert_array_equal(t.half_set, df["wrpRandomSubset"])
    assert t.micrograph_name[0] == "24aug01b_Position_20_1.tomostar"
    assert t.source_hash is not None and all(len(h) == 27 for h in t.source_hash)
    assert t.extra == {}
    t2 = read_particles(path, pixel_size_angstrom=1.54)
    np.testing.assert_allclose(t2.coordinates_px, t.coordinates_angstrom / 1.54)


def test_m_temporal_samples(tmp_path: Path) -> None:
    rows = [
        "\t".join(
            [f"{x + s:.3f}\t{y - s:.3f}\t{z:.3f}" for s in range(3)]
            + [f"{10 + s}\t{20 + s}\t{30 + s}" for s in range(2)]
            + [str(1 + i % 2), "ts_a.tomostar", "HASHHASHHASHHASHHASHHASHHAS"]
        )
        for i, (x, y, z) in enumerate([(100.0, 200.0, 50.0), (300.0, 400.0, 60.0)])
    ]
    labels = [f"_wrpCoordinate{a}{s}" for s in (1, 2, 3) for a in "XYZ"] + [
        f"_wrpAngle{a}{s}" for s in (1, 2) for a in ("Rot", "Tilt", "Psi")
    ]
    labels += ["_wrpRandomSubset", "_wrpSourceName", "_wrpSourceHash"]
    text = "data_\n\nloop_\n" + "".join(f"{lab} #{i}\n" for i, lab in enumerate(labels, 1)) + "\n".join(rows) + "\n"
    path = tmp_path / "species.star"
    path.write_text(text)
    t = read_particles(path)
    assert t.trajectory_coordinates_angstrom.shape == (2, 3, 3)
    assert t.trajectory_angles_deg.shape == (2, 2, 3)
    np.testing.assert_allclose(t.coordinates_angstrom[0], [101.0, 199.0, 50.0])  # mean over time, as M does
    np.testing.assert_allclose(t.angles_deg[0], [10.5, 20.5, 30.5])


# ---- write_particles and round trips ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        RELION / "relion14_refine_it002_data.star",
        RELION / "relion31_particles.star",
        RELION / "relion5_particles.star",
        WARP / "warp1_tomo_2d_export_bin8.star",
    ],
    ids=lambda p: p.name,
)
@pytest.mark.parametrize("flavour", ["relion5", "relion3.1"])
def test_round_trip_single_particle(path: Path, flavour: str, tmp_path: Path) -> None:
    table = read_particles(path)
    out = tmp_path / "particles.star"
    write_particles(out, table, flavour=flavour)
    again = read_particles(out)
    assert again == table
    assert again.flavour == ("relion5-particles" if flavour == "relion5" else "relion3.1-particles")
    # RELION's layout: a version line before every block, optics then particles, shifts in Å
    text = out.read_text()
    version = "50001" if flavour == "relion5" else "30001"
    assert text.count(f"# version {version}") == 2
    assert text.index("data_optics") < text.index("data_particles")
    assert "_rlnOriginXAngst" in text and "_rlnOriginX #" not in text
    # the stock starfile package reads it too
    blocks = starfile.read(out, always_dict=True)
    assert len(blocks["particles"]) == len(table)


def test_round_trip_warptools_as_relion5_tomo(tmp_path: Path) -> None:
    table = read_particles(WARP / "warptools_export_particles.star")
    out = tmp_path / "p.star"
    write_particles(out, table, flavour="relion5-tomo")
    again = read_particles(out)
    assert again == table
    text = out.read_text()
    assert "_rlnTomoName" in text and "_rlnTomoTiltSeriesPixelSize" in text and "_rlnOriginZAngst" in text
    assert "data_general" in text and "_rlnTomoSubTomosAre2DStacks" in text
    assert "[0,1,1,1,1,0," in text  # visible frames written back as RELION lists


def test_round_trip_relion5_tomo_with_optics(tmp_path: Path) -> None:
    table = read_particles(RELION / "relion5_tomo_particles_subset.star")
    out = tmp_path / "p.star"
    with pytest.raises(InvalidInput) as err:
        write_particles(out, table, flavour="relion5-tomo")
    assert_one_line(err, "optics group 1", "pixel size", "voltage")
    assert not out.exists()
    # RELION 5 keeps these in tomograms.star (fixture: 300 kV, Cs 2.7, 0.1, 1.35 Å)
    table.optics = [
        dataclasses.replace(
            table.optics[0],
            pixel_size_angstrom=1.35,
            tilt_series_pixel_size_angstrom=1.35,
            voltage_kv=300.0,
            cs_mm=2.7,
            amplitude_contrast=0.1,
        )
    ]
    write_particles(out, table, flavour="relion5-tomo")
    again = read_particles(out)
    assert again == table
    assert again.coordinates_centered
    assert "_rlnCenteredCoordinateXAngst" in out.read_text()


def test_round_trip_m_with_trajectories(tmp_path: Path) -> None:
    table = read_particles(M / "m_species_particles_subset.star", pixel_size_angstrom=1.54)
    table.optics = [
        dataclasses.replace(table.optics[0], tilt_series_pixel_size_angstrom=1.54, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
    ]
    out = tmp_path / "p.star"
    write_particles(out, table, flavour="relion5-tomo", trajectories=True)
    text = out.read_text()
    assert "_mrepoTrajCoordinateX1" in text and "_mrepoTrajAnglePsi1" in text and "_mrepoSourceHash" in text
    again = read_particles(out)
    assert again == table


def test_trajectory_round_trip_many_samples(tmp_path: Path) -> None:
    n, tc, ta = 4, 5, 3
    rng = np.random.default_rng(1)
    traj = rng.normal(size=(n, tc, 3)) * 100 + 1000
    ang = rng.uniform(-180, 180, size=(n, ta, 3))
    table = ParticleTable(
        coordinates_px=traj.mean(axis=1) / 2.0,
        coordinates_angstrom=traj.mean(axis=1),
        angles_deg=ang.mean(axis=1),
        shifts_angstrom=np.zeros((n, 3)),
        half_set=np.array([1, 2, 1, 2]),
        defocus_u_angstrom=np.full(n, np.nan),
        defocus_v_angstrom=np.full(n, np.nan),
        defocus_angle_deg=np.full(n, np.nan),
        phase_shift_deg=np.zeros(n),
        ctf_bfactor=np.zeros(n),
        ctf_scale=np.ones(n),
        optics_group=np.ones(n, dtype=np.int64),
        micrograph_name=np.array(["ts.tomostar"] * n, dtype=object),
        trajectory_coordinates_angstrom=traj,
        trajectory_angles_deg=ang,
        optics=[OpticsGroup(1, "g1", 2.0, tilt_series_pixel_size_angstrom=2.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)],
        flavour="m-particles",
    )
    out = tmp_path / "traj.star"
    write_particles(out, table, flavour="relion5-tomo", trajectories=True)
    again = read_particles(out)
    np.testing.assert_array_equal(again.trajectory_coordinates_angstrom, traj)
    np.testing.assert_array_equal(again.trajectory_angles_deg, ang)
    np.testing.assert_array_equal(again.coordinates_angstrom, table.coordinates_angstrom)
    np.testing.assert_array_equal(again.coordinates_px, table.coordinates_px)


def test_write_errors(tmp_path: Path) -> None:
    table = read_particles(RELION / "relion31_particles.star")
    with pytest.raises(InvalidInput) as err:
        write_particles(tmp_path / "x.star", table, flavour="relion2")
    assert_one_line(err, "relion2")
    tomo = read_particles(WARP / "warptools_export_particles.star")
    with pytest.raises(InvalidInput) as err:
        write_particles(tmp_path / "x.star", tomo, flavour="relion5")
    assert_one_line(err, "relion5-tomo")
    m = read_particles(M / "m_species_particles_subset.star")
    with pytest.raises(InvalidInput) as err:
        write_particles(tmp_path / "x.star", m, flavour="relion5")
    assert_one_line(err, "optics group 1", "voltage")
    with pytest.raises(NotFound):
        write_particles(tmp_path / "missing" / "x.star", table)


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "p.star"
    out.write_text("old content")
    write_particles(out, read_particles(RELION / "relion31_particles.star"))
    assert read_particles(out).flavour == "relion5-particles"
    assert sorted(os.listdir(tmp_path)) == ["p.star"]  # no temp file left behind


# ---- malformed input -------------------------------------------------------------------


def write_bytes(tmp_path: Path, data: bytes, name: str = "bad.star") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_missing_file() -> None:
    with pytest.raises(NotFound):
        read_star(RELION / "does_not_exist.star")


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", ["empty"]),
        (b"  \n\n\t\n", ["empty"]),
        (b"# only a comment\n", ["no data_ block"]),
        (b"hello world\nthis is not star\n", ["not a STAR file", "line 1"]),
        (b"\x00\x01\x02\x03binary\x00" * 20, ["binary"]),
        (b"data_\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n\xff\xfe 3\n", ["UTF-8", "line 6"]),
        (b"data_a\n_rlnX\n", ["_rlnX", "no value"]),
        (b"data_a\n_rlnX 1 2\n", ["_rlnX", "2 values"]),
        (b"data_a\ndata_b\n_rlnX 1\n", ["data_a", "empty"]),
        (b"data_a\n_rlnX 1\ndata_a\n_rlnY 2\n", ["duplicate block data_a"]),
        (b"data_a\nloop_\n_rlnA #1\n_rlnA #2\n1 2\n", ["duplicate label _rlnA"]),
        (b"data_a\nloop_\n_rlnA #1\n1\n_rlnB #2\n", ["_rlnB", "after the rows"]),
        (b"data_a\nloop_\n", ["no labels"]),
        (b"data_a\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3\n", ["line 6", "1 values", "2 columns"]),
        (b"data_a\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n3 4 5\n", ["line 6", "3 values"]),
    ],
    ids=[
        "empty",
        "blank",
        "comment-only",
        "text",
        "binary",
        "latin1",
        "no-value",
        "two-values",
        "empty-block",
        "duplicate-block",
        "duplicate-label",
        "label-after-rows",
        "loop-no-labels",
        "short-row",
        "long-row",
    ],
)
def test_malformed_star(tmp_path: Path, data: bytes, words: list[str]) -> None:
    path = write_bytes(tmp_path, data)
    with pytest.raises(FormatError) as err:
        read_star(path)
    assert_one_line(err, *words, str(path))


def test_truncated_particle_file(tmp_path: Path) -> None:
    data = (RELION / "relion31_particles.star").read_bytes()
    cut = data[: data.rindex(b"\n", 0, len(data) - 10) + 40]  # stop in the middle of the last row
    with pytest.raises(FormatError) as err:
        read_star(write_bytes(tmp_path, cut))
    assert_one_line(err, "row has", "26 columns")


def test_empty_loop_followed_by_comment_reads(tmp_path: Path) -> None:
    text = (
        "\n# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnImagePixelSize #2\n\n"
        "# version 30001\n\ndata_particles\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n"
    )
    star = read_star(write_bytes(tmp_path, text.encode()))
    assert star.blocks["optics"].shape == (0, 2)
    assert star.blocks["particles"].shape == (0, 2)


def edit_particles(tmp_path: Path, source: Path, edit) -> Path:
    star = read_star(source)
    blocks = {k: (v.copy() if isinstance(v, pd.DataFrame) else dict(v)) for k, v in star.blocks.items()}
    edit(blocks)
    out = tmp_path / "edited.star"
    starfile.write(blocks, out)
    return out


def test_missing_required_column(tmp_path: Path) -> None:
    path = edit_particles(tmp_path, RELION / "relion31_particles.star", lambda b: b["particles"].pop("rlnCoordinateX"))
    with pytest.raises(FormatError) as err:
        read_particles(path)
    assert_one_line(err, "missing column _rlnCoordinateX", "data_particles")


def test_non_numeric_value(tmp_path: Path) -> None:
    def edit(b):
        col = b["particles"]["rlnAngleRot"].astype(object)
        col.iloc[3] = "abc"
        b["particles"]["rlnAngleRot"] = col

    path = edit_particles(tmp_path, RELION / "relion31_particles.star", edit)
    with pytest.raises(FormatError) as err:
        read_particles(path)
    assert_one_line(err, "_rlnAngleRot", "'abc'", "not a number", "line")


def test_optics_group_missing(tmp_path: Path) -> None:
    def edit(b):
        b["particles"].loc[2, "rlnOpticsGroup"] = 7

    path = edit_particles(tmp_path, RELION / "relion31_particles.star", edit)
    with pytest.raises(FormatError) as err:
        read_particles(path)
    assert_one_line(err, "optics group 7", "1 particle", "not in data_optics")


def test_require_single_pixel_size(tmp_path: Path) -> None:
    def edit(b):
        second = b["optics"].iloc[[0]].copy()
        second["rlnOpticsGroup"] = 2
        second["rlnOpticsGroupName"] = "opticsGroup2"
        second["rlnImagePixelSize"] = 1.5
        b["optics"] = pd.concat([b["optics"], second], ignore_index=True)
        b["particles"].loc[0, "rlnOpticsGroup"] = 2

    path = edit_particles(tmp_path, RELION / "relion31_particles.star", edit)
    table = read_particles(path)  # allowed unless asked
    assert sorted(g.pixel_size_angstrom for g in table.optics) == [1.5, 2.806]
    with pytest.raises(FormatError) as err:
        read_particles(path, require_single_pixel_size=True)
    assert_one_line(err, "different pixel sizes", "1 (2.806 Å)", "2 (1.5 Å)")


def test_pixel_shifts_without_pixel_size(tmp_path: Path) -> None:
    def edit(b):
        for lab in ("rlnMagnification", "rlnDetectorPixelSize"):
            b[""].pop(lab)

    path = edit_particles(tmp_path, RELION / "relion14_refine_it002_data.star", edit)
    with pytest.raises(FormatError) as err:
        read_particles(path)
    assert_one_line(err, "_rlnOriginX", "pixel_size_angstrom")
    t = read_particles(path, pixel_size_angstrom=3.54)
    assert t.optics[0].pixel_size_angstrom == 3.54


def test_not_a_particle_file() -> None:
    with pytest.raises(FormatError) as err:
        read_particles(RELION / "relion30_postprocess.star")
    assert_one_line(err, "not a particle file", "relion-postprocess")
    with pytest.raises(FormatError) as err:
        read_particles(RELION / "relion5_tomo_optimisation_set.star")
    assert_one_line(err, "optimisation set", "Polish/job030/particles.star")


def test_tomogram_missing_from_tomograms_file(tmp_path: Path) -> None:
    def edit(b):
        b["global"] = b["global"][b["global"]["rlnTomoName"] != "TS_45"]

    tomograms = edit_particles(tmp_path, RELION / "relion5_tomo_tomograms.star", edit)
    with pytest.raises(FormatError) as err:
        read_particles(RELION / "relion5_tomo_particles_subset.star", tomograms=tomograms)
    assert_one_line(err, "TS_45")


def test_old_file_with_two_pixel_sizes(tmp_path: Path) -> None:
    """Without data_optics, each distinct pixel size / voltage / Cs / Q0 becomes an optics group."""

    def edit(b):
        b[""].loc[[0, 4], "rlnMagnification"] = 50000.0

    path = edit_particles(tmp_path, RELION / "relion14_refine_it002_data.star", edit)
    t = read_particles(path)
    assert [g.number for g in t.optics] == [1, 2]
    assert t.optics[0].pixel_size_angstrom == pytest.approx(14e4 / 50000)
    assert t.optics[1].pixel_size_angstrom == pytest.approx(14e4 / 39548)
    assert t.optics_group.tolist() == [1, 2, 2, 2, 1, 2, 2, 2, 2]
    np.testing.assert_allclose(t.pixel_sizes()[[0, 1]], [2.8, 14e4 / 39548])
    with pytest.raises(FormatError) as err:
        read_particles(path, require_single_pixel_size=True)
    assert_one_line(err, "different pixel sizes", "1 (2.8 Å)", "2 (3.54")
    out = tmp_path / "two.star"
    write_particles(out, t)
    assert read_particles(out) == t


def test_empty_particle_table_round_trip(tmp_path: Path) -> None:
    t = read_particles(RELION / "relion31_particles.star")
    arrays = {f.name: getattr(t, f.name)[:0] for f in dataclasses.fields(t) if isinstance(getattr(t, f.name), np.ndarray)}
    empty = dataclasses.replace(t, **arrays, extra={k: v[:0] for k, v in t.extra.items()})
    out = tmp_path / "empty.star"
    write_particles(out, empty)
    again = read_particles(out)
    assert len(again) == 0 and again == empty
