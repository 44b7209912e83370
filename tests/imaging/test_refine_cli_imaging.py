"""`mrepo refine --params ...,defocus,astigmatism,beamtilt,magnification,doming,weights` end to end,
as a user runs it: the commit records the refined imaging model and exposure weights, `mrepo show`
prints them, and `mrepo export relion` / `mrepo export warp` carry them to the other programs.

Noiseless tiny population (frame series only), one iteration with the CTF gate opened
(``--min-ctf-resolution 100``: the tiny maps are far coarser than the default 8 Å)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import starfile

import mrepo
from mrepo.io.extract import particle_defocus
from mrepo.sim import beam_tilt_error_mrad, defocus_rmse, load_truth, preset, simulate

PARAMS = "motion,defocus,astigmatism,beamtilt,magnification,doming,weights"


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    """(repo dir, CLI output, weights PNG) after one imaging refinement of a noiseless tiny population."""
    d = tmp_path_factory.mktemp("cli_imaging") / "sim"
    simulate(d, config=preset("tiny", snr=None, n_tilt_series=0, particles_per_movie=24, n_frames=6,
                                 pose_shift_error_px=0.2, pose_angle_error_deg=0.3, drift_error_angstrom=0.1), seed=4, progress=False)
    png = d.parent / "weights.png"
    r = subprocess.run([sys.executable, "-m", "mrepo", "refine", "--iterations", "1", "--params", PARAMS,
                        "--min-ctf-resolution", "100", "--weights-png", str(png)], cwd=d, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return d, r.stdout, png


def test_commit_records_the_imaging_model_and_weights(refined):
    d, out, png = refined
    repo = mrepo.open_repo(d)
    truth = load_truth(d)
    before, after = repo.population("HEAD~1"), repo.population("HEAD")
    meta = repo.commit_metadata("HEAD")
    assert meta["parameters"]["params"] == PARAMS.split(",")
    series = sorted(k for k in meta["imaging"])
    assert series and all(k.startswith("movies/") for k in series)
    for k in series:
        im = meta["imaging"][k]
        assert {"astigmatism_angstrom", "astigmatism_angle_deg", "beam_tilt_mrad", "defocus_change_rms_angstrom"} <= set(im)
    assert set(meta["exposure_weights"]) and png.is_file() and png.stat().st_size > 10_000
    assert "beam tilt" in out and "wrote" in out
    # the refined values are in the items and particles of the new commit, and closer to the truth
    for (_s, it0), (_s1, it1) in zip(before.items(), after.items()):
        assert it1.imaging.beam_tilt_mrad != it0.imaging.beam_tilt_mrad
        assert not np.allclose(it1.imaging.mag_matrix, it0.imaging.mag_matrix)
        assert {"GridDoseBfacs", "GridDoseBfacsDelta", "GridDoseBfacsAngle", "GridDoseWeights", "GridCTFDoming"} <= set(it1.grids)
    d0, d1 = defocus_rmse(before, truth, "large"), defocus_rmse(after, truth, "large")
    b0, b1 = beam_tilt_error_mrad(before, truth), beam_tilt_error_mrad(after, truth)
    print(f"defocus {d0:.0f} -> {d1:.0f} Å RMS; beam tilt {b0:.3f} -> {b1:.3f} mrad; {meta['resolution_angstrom']}")
    assert d1 < 0.5 * d0
    assert b1 < b0
    assert repo.verify("HEAD") == []


def test_show_and_exports_carry_the_imaging_model(refined, cli, tmp_path):
    d, _out, _png = refined
    repo = mrepo.open_repo(d)
    pop = repo.population("HEAD")
    src, item = next(iter(pop.items()))
    source = src.name
    shown = cli("show", f"HEAD:sources/{source}/items/{item.name}", cwd=d, check=True).stdout
    bt = item.imaging.beam_tilt_mrad
    assert f"beam tilt ({bt[0]:.3f}, {bt[1]:.3f}) mrad" in shown and "magnification [[" in shown
    assert "GridDoseBfacs " in shown and "GridCTFDoming " in shown

    # RELION: beam tilt and magnification per optics group, defocus per particle (z and doming included)
    cli("export", "relion", "HEAD", str(tmp_path / "relion"), "--species", "large", cwd=d, check=True)
    star = starfile.read(next((tmp_path / "relion").rglob("*.star")))
    optics, parts = star["optics"], star["particles"]
    assert len(optics) == len(src.items)  # each item now has its own optics
    sp = pop.species["large"].particles.load()
    for _s, it in pop.items():
        g = optics[np.isclose(optics["rlnBeamTiltX"], it.imaging.beam_tilt_mrad[0], atol=1e-4)]
        assert len(g) == 1
        assert g["rlnBeamTiltY"].iloc[0] == pytest.approx(it.imaging.beam_tilt_mrad[1], abs=1e-4)
        assert g["rlnMagMat00"].iloc[0] == pytest.approx(it.imaging.mag_matrix[0][0], abs=1e-5)
        assert g["rlnMagMat01"].iloc[0] == pytest.approx(it.imaging.mag_matrix[0][1], abs=1e-5)
        mine = parts[parts["rlnOpticsGroup"] == g["rlnOpticsGroup"].iloc[0]]
        idx = sp.in_item(it.data_digest)
        u, v, _a = particle_defocus(it, np.asarray(sp.coordinates)[idx])
        np.testing.assert_allclose(np.sort(mine["rlnDefocusU"].to_numpy()), np.sort(u), atol=0.5)
        np.testing.assert_allclose(np.sort(mine["rlnDefocusV"].to_numpy()), np.sort(v), atol=0.5)

    # Warp: the per-frame B-factors, the doming grid and the optics in each item's XML
    cli("export", "warp", "HEAD", str(tmp_path / "warp"), cwd=d, check=True)
    xml = tmp_path / "warp" / source / f"{item.name}.xml"
    root = ET.parse(xml).getroot()
    tags = {e.tag for e in root}
    assert {"GridDoseBfacs", "GridDoseBfacsDelta", "GridDoseBfacsAngle", "GridDoseWeights", "GridCTFDoming"} <= tags
    n = int(root.find("GridDoseBfacs").get("Depth"))
    assert n == item.n
    ctf = {p.get("Name"): p.get("Value") for p in root.find("CTF")}
    assert [float(v) for v in ctf["BeamTilt"].split(",")] == pytest.approx(list(item.imaging.beam_tilt_mrad), abs=1e-4)
    assert root.get("MagnificationCorrection")


def test_an_unknown_group_is_refused_and_commits_nothing(refined, cli, tmp_path):
    d, _o, _p = refined
    w = tmp_path / "w"
    shutil.copytree(d, w, symlinks=True)
    head = mrepo.open_repo(w).head().commit
    r = cli("refine", "--iterations", "1", "--params", "motion,bogus", cwd=w)
    assert r.returncode != 0 and "bogus" in (r.stderr + r.stdout) and len((r.stderr + r.stdout).strip().splitlines()) <= 2
    assert mrepo.open_repo(w).head().commit == head
