"""mrepo import warp / export warp: real tilt-series XML (fixtures) and frame series built after Warp's source."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import leftover_transactions

import mrepo
from mrepo.errors import FormatError, NotFound
from mrepo.io.mrc import read_mrc, write_mrc
from mrepo.io.warp_export import export_warp
from mrepo.io.warp_import import import_warp, m_data_hash, scan_warp_folder
from mrepo.io.warp_xml import read_warp_xml, write_warp_xml
from mrepo.model import array_content_digest
from mrepo.model.population import item_array_name, read_item
from mrepo.store.arrays import write_document

import synth


def _ts_project(tmp: Path, fixture: Path, *, averages: bool = True, stack: bool = False, movies: bool = False) -> tuple[Path, Path]:
    """The real TS_1 XML copied unchanged into proc/, with tilt images where its MoviePath points
    (../2/<movie> relative to the data folder 3/)."""
    proc, data = tmp / "proc", tmp / "3"
    proc.mkdir(parents=True)
    data.mkdir()
    shutil.copy(fixture, proc / "TS_1.xml")
    s = read_warp_xml(proc / "TS_1.xml")
    rng = np.random.default_rng(0)
    for i, mp in enumerate(s.tilts["MoviePath"]):
        p = (data / mp).resolve()
        if averages:
            (p.parent / "average").mkdir(parents=True, exist_ok=True)
            write_mrc(p.parent / "average" / (p.stem + ".mrc"), rng.normal(size=(24, 32)).astype(np.float32) + i, 0.834 * 8)
        if movies:
            p.parent.mkdir(parents=True, exist_ok=True)
            import tifffile

            tifffile.imwrite(p, rng.integers(0, 4, (3, 24, 32)).astype(np.uint8), photometric="minisblack")
    if stack:
        used = s.tilts["UseTilt"]
        (proc / "tiltstack" / "TS_1").mkdir(parents=True)
        write_mrc(proc / "tiltstack" / "TS_1" / "TS_1.st", rng.normal(size=(int(used.sum()), 24, 32)).astype(np.float32), 6.672, stack=True)
    return proc, data


def test_real_tilt_series_xml_imports_and_exports_byte_identical(repo, fixtures, tmp_path):
    fx = fixtures / "warp" / "warp_m_tiltseries_TS_1.xml"
    proc, data = _ts_project(tmp_path, fx)
    rep = import_warp(repo, proc, source="ts", data_dir=data)
    assert rep.sources == {"ts": ["TS_1"]}
    pop = repo.population()
    it = pop.sources["ts"].items["TS_1"]
    s = read_warp_xml(fx)
    assert it.kind == "tilts" and it.shape == (41, 24, 32)
    np.testing.assert_array_equal(it.tilt_angles_deg, s.tilts["Angles"].astype(np.float64))
    np.testing.assert_array_equal(it.pre_exposure, s.tilts["Dose"].astype(np.float64))
    assert np.allclose(it.dose, 3.0)  # dose-symmetric scheme, 3 e/Å² a tilt
    assert it.tilt_axis_offset_angstrom.shape == (41, 2)
    # CTF: Defocus 2.835209 µm, DefocusDelta 0.0252866887649325 µm (RELION U/V = Defocus ± Delta / 2)
    im = it.imaging
    assert im.defocus_angstrom == pytest.approx(28352.09)
    assert im.defocus_u_angstrom == pytest.approx(28352.09 + 252.866887649325 / 2)
    assert im.cs_mm == pytest.approx(3.27283443186616) and im.amplitude_contrast == 0.1 and im.astigmatism_angle_deg == 27.0
    assert im.odd_zernike[:2] == pytest.approx((3.4192607, -11.709824))
    assert im.mag_matrix[0] == pytest.approx((1.0062196, 0.004283654))
    assert im.pixel_size_angstrom == pytest.approx(0.834 * 8, rel=1e-6)  # from the averages' header
    g = it.grids["GridMovementX"]
    assert g.dims == (6, 4, 41) and g.unit == "angstrom"
    np.testing.assert_array_equal(g.values, s.grids["GridMovementX"].values)
    assert it.grids["GridVolumeWarpX"].extra["linear4d"] == {"dims": [1, 1, 1], "duration": 1}
    raw = repo.open_array("HEAD", it.raw_array)
    first = (data / s.tilts["MoviePath"][0]).resolve()
    np.testing.assert_array_equal(raw[0], read_mrc(first.parent / "average" / (first.stem + ".mrc")).data[0])
    assert it.data_digest == array_content_digest(raw)
    assert it.m_hash is None  # the tilt movies are not there
    assert repo.verify() == []
    # export: unchanged models give Warp's bytes back
    out = export_warp(repo, "HEAD", tmp_path / "out")
    assert out.files[0].read_bytes() == fx.read_bytes()


def test_changed_models_are_exported_and_round_trip(repo, fixtures, tmp_path):
    fx = fixtures / "warp" / "warp_m_tiltseries_TS_1.xml"
    proc, data = _ts_project(tmp_path, fx)
    import_warp(repo, proc, source="ts", data_dir=data)
    snap = repo.snapshot()
    it = read_item(snap, "ts", "TS_1")
    it.imaging.defocus_angstrom = 30000.0
    it.grids["GridMovementX"].values[3, 2, 1] = 7.25
    it.use[5] = False
    txn = repo.transaction()
    from mrepo.model import write_item

    write_item(txn, "ts", it)
    txn.commit("refined")
    txn.discard()
    out = export_warp(repo, "HEAD", tmp_path / "out")
    s = read_warp_xml(out.files[0])
    assert s.params["CTF"]["Defocus"] == "3"
    orig = read_warp_xml(fx)
    assert s.params["CTF"]["DefocusDelta"] == orig.params["CTF"]["DefocusDelta"]  # unchanged text kept
    assert s.grids["GridMovementX"].values[3, 2, 1] == np.float32(7.25)
    assert not s.tilts["UseTilt"][5]
    # re-import the exported XML: the same models
    proc2 = tmp_path / "proc2"
    proc2.mkdir()
    shutil.copy(out.files[0], proc2 / "TS_1.xml")
    r2 = mrepo.init_repo(tmp_path / "r2")
    import_warp(r2, proc2, source="ts", data_dir=data)
    again = read_item(r2.snapshot(), "ts", "TS_1")
    assert again.imaging == it.imaging
    assert again.grids == it.grids
    np.testing.assert_array_equal(again.use, it.use)
    from mrepo.model import item_digest

    assert item_digest(again) == item_digest(it)


def test_missing_files_are_reported_by_name_and_nothing_is_stored(repo, fixtures, tmp_path, cli):
    proc = tmp_path / "proc"
    proc.mkdir()
    shutil.copy(fixtures / "warp" / "warp_m_tiltseries_TS_1.xml", proc / "TS_1.xml")
    shutil.copy(fixtures / "warp" / "warp_tiltseries_00254_unaligned.xml", proc / "00254.xml")
    head = repo.head().commit
    with pytest.raises(NotFound) as e:
        import_warp(repo, proc)
    assert "2 item(s) point to missing files: 00254, TS_1" in str(e.value)
    assert repo.head().commit == head and leftover_transactions(repo) == []
    res = cli("import", "warp", str(proc), cwd=repo.path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: 2 item(s) point to missing files")
    assert repo.head().commit == head


def test_tilt_stack_and_tilt_movies(repo, fixtures, tmp_path):
    fx = fixtures / "warp" / "warp_tiltseries_00254_unaligned.xml"
    proc, data = tmp_path / "proc", tmp_path / "3"
    proc.mkdir()
    data.mkdir()
    s = read_warp_xml(fx)
    s.tilts["UseTilt"][[0, 40]] = False
    write_warp_xml(proc / "00254.xml", s)
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(39, 16, 20)).astype(np.float32)
    (proc / "tiltstack" / "00254").mkdir(parents=True)
    write_mrc(proc / "tiltstack" / "00254" / "00254.st", stack, 10.0, stack=True)
    import_warp(repo, proc, source="stack", data_dir=data)
    it = repo.population().sources["stack"].items["00254"]
    raw = repo.open_array("HEAD", it.raw_array)[...]
    assert it.extra["warp"]["raw_mode"] == "tilt-stack" and it.imaging.pixel_size_angstrom == 10.0
    np.testing.assert_array_equal(raw[1:40], stack)
    assert not raw[0].any() and not raw[40].any() and not it.use[0]
    # per-tilt movies (TIFF): each tilt is the plain sum of its frames; M's hash reads the first movie
    proc2, data2 = _ts_project(tmp_path / "m", fixtures / "warp" / "warp_m_tiltseries_TS_1.xml", averages=False, movies=True)
    import_warp(repo, proc2, source="movies", data_dir=data2)
    it2 = repo.population().sources["movies"].items["TS_1"]
    assert it2.extra["warp"]["raw_mode"] == "tilt-movies"
    first = (data2 / read_warp_xml(proc2 / "TS_1.xml").tilts["MoviePath"][0]).resolve()
    import tifffile

    np.testing.assert_array_equal(repo.open_array("HEAD", it2.raw_array)[0], tifffile.imread(first).astype(np.float32).sum(0))
    assert it2.m_hash == synth.m_hash("TS_1", first)


def test_frame_series_project(repo, tmp_path):
    proj = synth.frame_project(tmp_path / "warp", n_items=2, frames=5, size=176, spacing=64)
    rep = import_warp(repo, proj.folder)
    assert rep.sources == {"warp": ["movie_001", "movie_002"]}
    pop = repo.population()
    it = pop.sources["warp"].items["movie_002"]
    frames = read_mrc(proj.folder / "movie_002.mrc").data
    assert it.kind == "frames" and it.shape == frames.shape == (5, 176, 176)
    np.testing.assert_array_equal(repo.open_array("HEAD", it.raw_array)[...], frames)
    assert np.allclose(it.dose, 1.5) and np.allclose(it.pre_exposure, np.arange(5) * 1.5)  # OptionsMovement DosePerAngstromFrame
    assert it.imaging.defocus_angstrom == pytest.approx(14000.0) and it.imaging.astigmatism_angstrom == pytest.approx(200.0)
    np.testing.assert_allclose(it.grids["GridMovementX"].values.reshape(-1), proj.shifts[1][:, 0].astype(np.float32))
    # M's data hash (Movie.GetDataHash): SHA-1 of the root name (UTF-16) and the first 512 KiB of the movie
    data = (proj.folder / "movie_002.mrc").read_bytes()
    assert len(data) > (1 << 19)
    expect = base64.b64encode(hashlib.sha1("movie_002".encode("utf-16-le") + data[: 1 << 19]).digest()).decode()
    assert it.m_hash == expect.rstrip("=").replace("/", "-").replace("+", "_") and len(it.m_hash) == 27
    assert m_data_hash("movie_002", proj.folder / "movie_002.mrc") == it.m_hash
    assert repo.verify() == []
    # the original XML is kept and exported back unchanged
    out = export_warp(repo, "HEAD", tmp_path / "out")
    for f in out.files:
        assert f.read_bytes() == (proj.folder / f.name).read_bytes()


def test_settings_folder_and_dose_override(repo, tmp_path):
    """A WarpTools project: .settings names the processing folder, the data folder and the extension."""
    proj = synth.frame_project(tmp_path / "frames", n_items=1, frames=3, size=128, spacing=64)
    proc = tmp_path / "warp_frameseries"
    proc.mkdir()
    shutil.move(str(proj.folder / "movie_001.xml"), proc / "movie_001.xml")
    (tmp_path / "warp_frameseries.settings").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<Settings>\n\t<Import>\n\t\t<Param Name="DataFolder" Value="frames" />\n'
        '\t\t<Param Name="Extension" Value="*.mrc" />\n\t\t<Param Name="ProcessingFolder" Value="warp_frameseries" />\n'
        '\t\t<Param Name="PixelSize" Value="2.5" />\n\t</Import>\n</Settings>')
    found = scan_warp_folder(tmp_path)
    assert [(f.name, f.raw_files[0].parent.name) for f in found] == [("movie_001", "frames")]
    import_warp(repo, tmp_path, source="fs", dose_per_frame=-6.0)  # negative: total over the movie, as in Warp
    it = repo.population().sources["fs"].items["movie_001"]
    assert np.allclose(it.dose, 2.0)


def test_malformed_xml_is_one_line_error(repo, tmp_path, cli):
    proj = synth.frame_project(tmp_path / "warp", n_items=1, frames=3, size=128, spacing=64)
    (proj.folder / "broken.xml").write_bytes(b'<?xml version="1.0"?>\n<Movie>\n<CTF><Param Name="Defocus" Value="1"')
    head = repo.head().commit
    with pytest.raises(FormatError) as e:
        import_warp(repo, proj.folder)
    assert "malformed XML" in str(e.value) and "broken.xml" in str(e.value)
    assert repo.head().commit == head and leftover_transactions(repo) == []
    res = cli("import", "warp", str(proj.folder), cwd=repo.path)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    # a non-series XML next to them is skipped, and a source of that name cannot be imported twice
    (proj.folder / "broken.xml").write_text('<?xml version="1.0"?>\n<Settings />')
    res = cli("import", "warp", str(proj.folder), "--source", "movies", cwd=repo.path, check=True)
    assert "imported 1 item(s) into source movies" in res.stdout
    res = cli("import", "warp", str(proj.folder), "--source", "movies", cwd=repo.path)
    assert res.returncode == 1 and "source movies already exists" in res.stderr


def test_error_midway_discards_everything(repo, tmp_path, monkeypatch):
    proj = synth.frame_project(tmp_path / "warp", n_items=2, frames=3, size=128, spacing=64)
    import mrepo.io.warp_import as wi

    calls = []
    real = wi.write_item

    def failing(txn, src, item, raw=None):
        calls.append(item.name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(txn, src, item, raw=raw)

    monkeypatch.setattr(wi, "write_item", failing)
    head = repo.head().commit
    with pytest.raises(OSError):
        import_warp(repo, proj.folder)
    assert repo.head().commit == head and leftover_transactions(repo) == []


def test_real_m_hashes_have_the_form_of_sha1_in_warp_base64(fixtures):
    """The _wrpSourceHash values M wrote are 20-byte SHA-1 digests in MathHelper.GetSHA1's alphabet."""
    from mrepo.io.star import read_particles

    hashes = set(read_particles(fixtures / "m" / "m_species_particles_subset.star").source_hash)
    assert len(hashes) == 3
    for h in hashes:
        assert len(h) == 27 and not set(h) & set("+/=")
        assert len(base64.b64decode(h.replace("-", "/").replace("_", "+") + "=")) == 20
