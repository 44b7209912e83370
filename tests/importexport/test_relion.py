"""mrepo import relion / export relion on the real STAR fixtures: conversions, round trips, RELION reads the output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile
from conftest import add_items, leftover_transactions

from mrepo.errors import FormatError, InvalidInput, NotFound
from mrepo.io.mrc import read_mrc, write_mrc
from mrepo.io.relion_export import export_relion
from mrepo.io.relion_import import import_relion, item_stem, matrix_euler
from mrepo.io.star import read_particles

import synth

# fixture, item kind, item pixel size (Å), tomogram size (Å) or None, tomograms.star
CASES = {
    "relion14": ("relion/relion14_refine_it002_data.star", "frames", 3.54, None, None),
    "relion31": ("relion/relion31_particles.star", "frames", 2.806, None, None),
    "relion5": ("relion/relion5_particles.star", "frames", 0.89, None, None),
    "relion5-tomo": ("relion/relion5_tomo_particles_subset.star", "tilts", 1.35, (5400.0, 5400.0, 2700.0), "relion/relion5_tomo_tomograms.star"),
    "warptools": ("warp/warptools_export_particles.star", "tilts", 1.667, (4400 * 1.667, 6000 * 1.667, 1400 * 1.667), None),
    "warp1-2d": ("warp/warp1_tomo_2d_export_bin8.star", "frames", 1.96, None, None),
    "m-table": ("m/m_species_particles_subset.star", "tilts", 1.54, (4096 * 1.54, 4096 * 1.54, 2000 * 1.54), None),
}


def _maps(tmp: Path, px: float = 2.0, n: int = 16) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("h1", "h2", "mask"):
        p = tmp / f"{name}.mrc"
        write_mrc(p, rng.normal(size=(n, n, n)).astype(np.float32), px)
        paths.append(p)
    return tuple(paths)  # type: ignore[return-value]


def _setup(repo, fixtures, case):
    rel, kind, px, dims, _ = CASES[case]
    t = read_particles(fixtures / rel)
    names = sorted({item_stem(m)[-1] for m in t.micrograph_name})
    add_items(repo, names, kind=kind, px=px, dims_angstrom=dims)
    return fixtures / rel, t


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_import_export_round_trip(repo, fixtures, tmp_path, case, relion_bin):
    star, table = _setup(repo, fixtures, case)
    tomograms = fixtures / CASES[case][4] if CASES[case][4] else None
    h1, h2, mask = _maps(tmp_path)
    rep = import_relion(repo, star, h1, h2, mask=mask, species="a", diameter_angstrom=150, tomograms=tomograms)
    assert rep.particles == len(table) and rep.unmatched == 0
    a = repo.population().species["a"]
    assert len(a.particles) == len(table) and set(a.maps) == {"half1", "half2", "mask"}
    assert repo.verify() == []
    out = tmp_path / "export"
    ex = export_relion(repo, "HEAD", "a", out)
    # RELION itself reads what mrepo wrote
    res = subprocess.run(["relion_star_printtable", str(ex.particles_star), "data_particles", "rlnAngleRot"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == len(table)
    res = subprocess.run(["relion_star_handler", "--i", str(ex.particles_star), "--o", str(tmp_path / "handled.star")], capture_output=True, text=True)
    assert res.returncode == 0 and (tmp_path / "handled.star").exists(), res.stdout + res.stderr
    # and importing the export gives the same particles
    import_relion(repo, ex.particles_star, ex.maps["half1"], ex.maps["half2"], mask=ex.maps["mask"], species="b", diameter_angstrom=150)
    b = repo.population().species["b"]
    assert b.particles == a.particles
    assert b.pixel_size_angstrom == a.pixel_size_angstrom and b.box == a.box
    for role in ("half1", "half2", "mask"):
        np.testing.assert_array_equal(repo.open_array("HEAD", b.maps[role])[...], repo.open_array("HEAD", a.maps[role])[...])
    if case == "relion31":
        # RELION reads the exported maps with the species' voxel size
        for role, path in ex.maps.items():
            res = subprocess.run(["relion_image_handler", "--i", str(path), "--stats"], capture_output=True, text=True)
            assert res.returncode == 0 and "16 x 16 x 16" in res.stdout, res.stdout + res.stderr
            assert float(res.stdout.split("angpix =")[1].split()[0]) == pytest.approx(a.pixel_size_angstrom), res.stdout
        # the RELION 3.1 layout (--relion-version 3.1) is read by RELION 3.1 and imports back to the same particles
        ex31 = export_relion(repo, "HEAD", "a", tmp_path / "v31", flavour="relion3.1")
        assert ex31.particles_star.read_text().count("# version 30001") == 2
        res = subprocess.run(["relion_star_handler", "--i", str(ex31.particles_star), "--o", str(tmp_path / "h31.star")], capture_output=True, text=True)
        assert res.returncode == 0 and (tmp_path / "h31.star").exists(), res.stdout + res.stderr
        import_relion(repo, ex31.particles_star, h1, h2, species="d", diameter_angstrom=150)
        assert repo.population().species["d"].particles == a.particles
    if case not in ("m-table", "relion5-tomo", "relion31"):
        return
    # with every temporal sample too
    ex2 = export_relion(repo, "HEAD", "a", tmp_path / "traj", trajectories=True)
    import_relion(repo, ex2.particles_star, h1, h2, species="c", diameter_angstrom=150)
    assert repo.population().species["c"].particles == a.particles


def test_spa_conversions_relion31(repo, fixtures, tmp_path):
    star, _ = _setup(repo, fixtures, "relion31")
    raw = starfile.read(star)["particles"]
    h1, h2, _ = _maps(tmp_path)
    import_relion(repo, star, h1, h2, species="s", diameter_angstrom=150)
    p = repo.population().species["s"].particles.load()
    px = 2.806  # item pixel size: the file gives no rlnMicrographPixelSize
    expect_x = raw["rlnCoordinateX"].to_numpy() * px - raw["rlnOriginXAngst"].to_numpy()  # shifts folded in (M's convention)
    np.testing.assert_allclose(p.coordinates[:, 0, 0], expect_x.astype(np.float32))
    np.testing.assert_allclose(p.coordinates[:, 0, 1], (raw["rlnCoordinateY"] * px - raw["rlnOriginYAngst"]).to_numpy().astype(np.float32))
    np.testing.assert_array_equal(p.angles[:, 0, 1], raw["rlnAngleTilt"].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(p.half_set, raw["rlnRandomSubset"].to_numpy())
    np.testing.assert_array_equal(p.extra["defocus_u_angstrom"], raw["rlnDefocusU"].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(p.extra["origin_angstrom"][:, 0], raw["rlnOriginXAngst"].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(p.extra["rlnClassNumber"], raw["rlnClassNumber"].to_numpy())
    sp = repo.population().species["s"]
    assert sp.extra["relion"]["image_stacks"] == ["relion31.mrcs"]
    assert sp.extra["relion"]["optics"][0]["micrograph_pixel_size_angstrom"] == px
    cats = sp.extra["relion"]["categories"]["rlnImageOriginalName"]
    assert np.asarray(cats)[p.extra["rlnImageOriginalName"]].tolist() == raw["rlnImageOriginalName"].tolist()


def test_exported_maps_keep_voxel_size_and_origin(repo, fixtures, tmp_path):
    star, _ = _setup(repo, fixtures, "relion31")
    vol = np.random.default_rng(3).normal(size=(16, 16, 16)).astype(np.float32)
    for name in ("h1", "h2", "mask"):
        write_mrc(tmp_path / f"{name}.mrc", vol, 1.75, origin=(-16.0, 8.0, 4.5))
    import_relion(repo, star, tmp_path / "h1.mrc", tmp_path / "h2.mrc", mask=tmp_path / "mask.mrc", species="o", diameter_angstrom=100)
    ex = export_relion(repo, "HEAD", "o", tmp_path / "out")
    for role in ("half1", "half2", "mask"):
        m = read_mrc(ex.maps[role])
        assert m.header.voxel_size == (1.75, 1.75, 1.75) and m.header.origin == (-16.0, 8.0, 4.5)
        np.testing.assert_array_equal(m.data, vol)


def test_subtomogram_angles_are_composed_like_relion(repo, fixtures, tmp_path):
    star, _ = _setup(repo, fixtures, "relion5-tomo")
    raw = starfile.read(star)
    tomo = starfile.read(fixtures / "relion" / "relion5_tomo_tomograms.star").set_index("rlnTomoName")
    h1, h2, _ = _maps(tmp_path)
    import_relion(repo, star, h1, h2, species="t", diameter_angstrom=150, tomograms=fixtures / "relion" / "relion5_tomo_tomograms.star")
    p = repo.population().species["t"].particles.load()
    assert "rlnTomoSubtomogramRot" not in p.extra
    sub = synth.euler(raw[["rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt", "rlnTomoSubtomogramPsi"]].to_numpy())
    part = synth.euler(raw[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    # RELION 5 ParticleSet::getMatrix3x3: A = A_subtomogram * A_particle
    np.testing.assert_allclose(synth.euler(p.angles[:, 0].astype(np.float64)), sub @ part, atol=2e-6)
    # getPosition: centred Å + size/2 (here in Å) - A_subtomogram * origin
    size = tomo.loc[raw["rlnTomoName"], ["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].to_numpy() * tomo.loc[raw["rlnTomoName"], "rlnTomoTiltSeriesPixelSize"].to_numpy()[:, None]
    centred = raw[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]].to_numpy()
    origin = raw[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy()
    expect = centred + size / 2 - np.einsum("nij,nj->ni", sub, origin)
    np.testing.assert_allclose(p.coordinates[:, 0], expect, rtol=1e-6, atol=1e-3)
    # visible-frame lists of different lengths (tomograms with different tilt counts) are kept as categories
    cats = repo.population().species["t"].extra["relion"]["categories"]["rlnTomoVisibleFrames"]
    assert np.asarray(cats)[p.extra["rlnTomoVisibleFrames"]].tolist() == raw["rlnTomoVisibleFrames"].tolist()


def test_euler_round_trip_matches_relion_branches():
    rng = np.random.default_rng(5)
    a = np.stack([rng.uniform(-180, 180, 500), rng.uniform(0.5, 179.5, 500), rng.uniform(-180, 180, 500)], 1)
    np.testing.assert_allclose(matrix_euler(synth.euler(a)), a, atol=1e-9)
    # gimbal lock: tilt 0 puts everything into psi (RELION's Euler_matrix2angles)
    got = matrix_euler(synth.euler(np.array([[30.0, 0.0, 20.0], [30.0, 180.0, 20.0]])))
    np.testing.assert_allclose(synth.euler(got), synth.euler(np.array([[30.0, 0.0, 20.0], [30.0, 180.0, 20.0]])), atol=1e-12)
    assert got[0, 0] == 0 and got[0, 1] == 0


def test_unmatched_particles(repo, fixtures, tmp_path, cli):
    star = fixtures / "warp" / "warp1_tomo_2d_export_bin8.star"
    t = read_particles(star)
    names = sorted({item_stem(m)[-1] for m in t.micrograph_name})
    add_items(repo, names[:30], px=1.96)
    h1, h2, _ = _maps(tmp_path)
    head = repo.head().commit
    with pytest.raises(InvalidInput) as e:
        import_relion(repo, star, h1, h2, species="x", diameter_angstrom=200)
    n_bad = int(np.isin([item_stem(m)[-1] for m in t.micrograph_name], names[30:]).sum())
    assert f"{n_bad} of 219 particles match no item (first: {names[30]}.mrc" in str(e.value)
    assert repo.head().commit == head and leftover_transactions(repo) == []
    rep = import_relion(repo, star, h1, h2, species="x", diameter_angstrom=200, allow_unmatched=True)
    assert rep.unmatched == n_bad and rep.particles == 219 - n_bad
    res = cli("import", "relion", "--particles", str(star), "--half1", str(h1), "--half2", str(h2), "--species", "y", "--diameter", "200",
              cwd=repo.path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "match no item" in res.stderr


def test_bad_inputs_are_one_line_errors_and_store_nothing(repo, fixtures, tmp_path, cli):
    star, _ = _setup(repo, fixtures, "relion31")
    h1, h2, mask = _maps(tmp_path)
    head = repo.head().commit
    other = tmp_path / "h_other.mrc"
    write_mrc(other, np.zeros((12, 12, 12), np.float32), 2.0)
    coarse = tmp_path / "h_coarse.mrc"
    write_mrc(coarse, np.zeros((16, 16, 16), np.float32), 2.5)
    # a second optics group with another pixel size, used by the last particle
    two = tmp_path / "two.star"
    t2 = starfile.read(star)
    opt = t2["optics"]
    extra_row = opt.iloc[[0]].copy()
    extra_row["rlnOpticsGroup"] = 2
    extra_row["rlnOpticsGroupName"] = "opticsGroup2"
    extra_row["rlnImagePixelSize"] = 1.403
    t2["optics"] = __import__("pandas").concat([opt, extra_row], ignore_index=True)
    t2["particles"].loc[len(t2["particles"]) - 1, "rlnOpticsGroup"] = 2
    starfile.write(t2, two)
    noangle = tmp_path / "noangle.star"
    t3 = starfile.read(star)
    t3["particles"] = t3["particles"].drop(columns=["rlnAngleRot"])
    starfile.write(t3, noangle)
    cases = [
        ((star, h1, other), FormatError, "half-maps have different shapes: 16x16x16 and 12x12x12"),
        ((star, h1, coarse), FormatError, "half-maps have different voxel sizes: 2 Å and 2.5 Å"),
        ((two, h1, h2), FormatError, "optics groups have different pixel sizes"),
        ((noangle, h1, h2), FormatError, "missing column _rlnAngleRot"),
        ((tmp_path / "none.star", h1, h2), NotFound, "no such file"),
    ]
    for (s, a, b), err, words in cases:
        with pytest.raises(err) as e:
            import_relion(repo, s, a, b, species="z", diameter_angstrom=100)
        assert words in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
        if err is NotFound or "optics" in words:
            continue  # the CLI is checked on the others (each run costs a process start)
        res = cli("import", "relion", "--particles", str(s), "--half1", str(a), "--half2", str(b), "--species", "z", "--diameter", "100",
                  cwd=repo.path)
        assert res.returncode == 1 and res.stderr.count("\n") == 1 and words in res.stderr
    with pytest.raises(FormatError, match="mask is 12x12x12"):
        import_relion(repo, star, h1, h2, mask=other, species="z", diameter_angstrom=100)
    assert repo.head().commit == head and leftover_transactions(repo) == []
    import_relion(repo, star, h1, h2, species="z", diameter_angstrom=100)
    with pytest.raises(InvalidInput, match="species z already exists"):
        import_relion(repo, star, h1, h2, species="z", diameter_angstrom=100)


def test_needs_items(repo, fixtures, tmp_path):
    h1, h2, _ = _maps(tmp_path)
    with pytest.raises(NotFound, match="no population in this revision"):
        import_relion(repo, fixtures / "relion" / "relion31_particles.star", h1, h2, species="s", diameter_angstrom=100)
