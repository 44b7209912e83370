"""mrepo status / show / verify / inspect speaking the domain, through the real CLI."""

from __future__ import annotations

import numpy as np
import pytest

from mrepo.io.mrc import write_mrc
from mrepo.io.relion_import import import_relion
from mrepo.io.warp_import import import_warp
from mrepo.store import write_array

import synth


@pytest.fixture
def population_repo(repo, tmp_path):
    proj = synth.frame_project(tmp_path / "warp", n_items=2, frames=3, size=176, spacing=60)
    import_warp(repo, proj.folder, source="movies")
    vol = synth.render_volume(proj.atoms, 24, proj.px, proj.sigma)
    write_mrc(tmp_path / "h1.mrc", vol, proj.px)
    write_mrc(tmp_path / "h2.mrc", vol, proj.px)
    synth.write_relion31_star(tmp_path / "run_data.star", proj)
    import_relion(repo, tmp_path / "run_data.star", tmp_path / "h1.mrc", tmp_path / "h2.mrc", species="toy", diameter_angstrom=90)
    return repo, proj


def test_status_and_show_speak_the_domain(population_repo, cli):
    repo, proj = population_repo
    n = len(proj.coords_px)
    st = cli("status", cwd=repo.path, check=True).stdout
    assert "Population movies: 1 source(s), 2 item(s), 1 species" in st
    assert "source  movies: 2 frame series, pixel size 2.5 Å" in st
    assert f"species toy: {n} particles in 2 item(s), box 24 at 2.5 Å/px, C1, resolution unknown" in st
    assert "nothing to commit" in st
    show = cli("show", "HEAD", cwd=repo.path, check=True).stdout
    assert "Import RELION species toy" in show and "Population movies" in show
    sp = cli("show", "HEAD:species/toy", cwd=repo.path, check=True).stdout
    half = np.bincount(proj.half, minlength=3)
    assert f"particles:   {n} in 2 item(s), 1 temporal sample(s)" in sp
    assert f"half sets:   {half[1]} / {half[2]}" in sp and "map half1:   24x24x24 float32" in sp
    assert "defocus_u_angstrom" in sp and "run_data.star (relion3.1-particles), 1 optics group(s)" in sp
    it = cli("show", "HEAD:sources/movies/items/movie_001", cwd=repo.path, check=True).stdout
    assert "raw data:    3x176x176" in it and "defocus 10000.0 Å" in it and "GridMovementX 1x1x3 angstrom" in it
    assert f"particles:   {int((proj.item_of == 0).sum())} of species toy" in it and "M hash:" in it
    # arrays and folders still show as before
    arr = cli("show", "HEAD:species/toy/maps/half1", cwd=repo.path, check=True).stdout
    assert arr.startswith("array:      species/toy/maps/half1") and "voxel size: 2.5 x 2.5 x 2.5 Å" in arr
    bad = cli("show", "HEAD:species/nope", cwd=repo.path)
    assert bad.returncode == 1 and bad.stderr == "error: no such species (species/nope)\n"


def test_plain_repository_status_is_unchanged(repo, tmp_path, cli):
    np.save(tmp_path / "a.npy", np.zeros((4, 4), np.float32))
    cli("add", str(tmp_path / "a.npy"), "--as", "x", cwd=repo.path, check=True)
    cli("commit", "-m", "x", cwd=repo.path, check=True)
    st = cli("status", cwd=repo.path, check=True).stdout
    assert "Population" not in st and "nothing to commit" in st
    v = cli("verify", cwd=repo.path)
    assert v.returncode == 1 and v.stderr.startswith("error: no population in this revision")


def test_verify_reports_each_mismatch(population_repo, cli):
    repo, proj = population_repo
    ok = cli("verify", cwd=repo.path, check=True).stdout
    assert ok.strip().endswith(": ok") and "verified 2 item(s) and 1 species" in ok
    txn = repo.index
    n = len(proj.coords_px)
    write_array(txn, "species/toy/particles/half_set", np.ones(n, np.int8), chunks=(65536,))
    it = repo.population().sources["movies"].items["movie_002"]
    raw = repo.open_array("HEAD", it.raw_array)[...]
    write_array(txn, it.raw_array, raw + 1, chunks=(1, *raw.shape[1:]))
    txn.commit("tamper")
    res = cli("verify", cwd=repo.path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert "mismatch: item movies/movie_002: raw data do not match the item's data digest" in lines
    assert "mismatch: species toy: species digest does not match its maps, particles and models" in lines
    assert "2 mismatch(es)" in res.stdout
    assert cli("verify", "HEAD~1", cwd=repo.path).returncode == 0


def test_inspect(fixtures, tmp_path, cli):
    good = cli("inspect", str(fixtures / "relion" / "relion5_particles.star"), str(fixtures / "mrc" / "EMD-3197.map"), check=True).stdout
    assert "relion5-particles" in good and "particles: 17" in good and "dimensions (x, y, z): 20 x 20 x 20" in good
    (tmp_path / "bad.star").write_text("data_\nloop_\n_rlnA #1\n_rlnB #2\n1\n")
    bad = cli("inspect", str(tmp_path / "bad.star"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "row has 1 values" in bad.stderr
