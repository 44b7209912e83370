"""RELION 3.1 CTF refinement as the peer of mrepo's imaging-model refinement (mrepo.sim.relion_ctf).

One very small noiseless simulation (2 movies of 6 frames, 384² px, 3 Å/px, 32 particles of
the ``large`` species, beam tilt of about 1 mrad per movie) is exported as polished particles
with the imported CTF; the export is checked without RELION, and ``relion_ctf_refine`` is run
on it where RELION is installed: it must read everything, return a CTF for every particle, and
move defocus, astigmatism and beam tilt towards the truth (a sign error in the beam tilt or the
astigmatism angle would move them away).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mrepo.io.mrc import read_mrc
from mrepo.io.star import read_star
from mrepo.sim import SimConfig, defocus_rmse, load_truth, preset, simulate
from mrepo.sim.relion_ctf import (
    ctf_errors,
    export_ctf_project,
    polished_particles,
    read_ctf_star,
    run_ctf_refine,
    true_ctf,
)

SPECIES = "large"
CONFIG = dict(n_movies=2, particles_per_movie=16, n_frames=6, frame_shape_px=(384, 384), snr=None, n_tilt_series=0,
              beam_tilt_sigma_mrad=1.0)
#: Imaging effects the simulator may add (magnification anisotropy, doming, blur) are switched
#: off here: the test checks the conventions of defocus, astigmatism and beam tilt.
OFF = dict(mag_anisotropy=0.0, doming_angstrom=0.0, blur_angstrom=0.0)


def _config():
    known = SimConfig.__dataclass_fields__
    return preset("tiny", species={SPECIES: 1.0}, **CONFIG, **{k: v for k, v in OFF.items() if k in known})


@pytest.fixture(scope="module")
def ctf_sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctf") / "sim"
    res = simulate(out, config=_config(), seed=3, progress=False)
    return out, res


@pytest.fixture(scope="module")
def project(ctf_sim, tmp_path_factory):
    """Exported with the repository's half-maps (no RELION needed)."""
    sim_dir, _ = ctf_sim
    return export_ctf_project(sim_dir, tmp_path_factory.mktemp("ctf") / "project", species=SPECIES,
                              reference="repository")


def test_polished_particles_align_and_centre():
    """A blob drifting over the frames comes out where the origin says, the same in every frame."""
    px, box, f = 2.0, 32, 5
    yy, xx = np.mgrid[:96, :96].astype(np.float64)
    start = np.array([[24.3, 27.6], [62.8, 60.2]])  # px
    drift = np.array([1.7, -0.9])  # px per frame
    frames = np.zeros((f, 96, 96))
    pos = np.zeros((2, f, 2))
    for i in range(f):
        for p in range(2):
            c = start[p] + i * drift
            frames[i] += np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 2.5**2))
            pos[p, i] = c * px
    imgs, centres, offsets = polished_particles(frames, pos, np.arange(f) + 0.5, px, box, b_per_exposure=0.0)
    assert imgs.shape == (2, box, box) and imgs.dtype == np.float32
    mid = start + (f // 2) * drift
    np.testing.assert_array_equal(centres, np.rint(mid))
    np.testing.assert_allclose(offsets, mid - np.rint(mid), atol=1e-9)
    by, bx = np.mgrid[:box, :box].astype(np.float64)
    for p in range(2):
        c = box // 2 + offsets[p]
        want = np.exp(-((bx - c[0]) ** 2 + (by - c[1]) ** 2) / (2 * 2.5**2))
        want -= frames.mean()  # each frame's mean is subtracted
        np.testing.assert_allclose(imgs[p], want, atol=2e-3)


def test_export_conventions(ctf_sim, project):
    """The STAR holds the imported CTF (item defocus ± astigmatism + z), one optics group per
    movie with beam tilt 0, origins that put the particle where the image has it."""
    sim_dir, res = ctf_sim
    pop = res.repo.population("HEAD")
    truth = load_truth(sim_dir)
    n = len(pop.species[SPECIES].particles)
    assert len(project) == n and sorted(project.rows.tolist()) == list(range(n))

    star = read_star(project.root / project.particles_star)
    opt, df = star.blocks["optics"], star.blocks["particles"]
    assert list(opt["rlnOpticsGroupName"]) == project.items and len(project.items) == 2
    assert (opt["rlnBeamTiltX"] == 0).all() and (opt["rlnBeamTiltY"] == 0).all()
    assert (opt["rlnImageSize"] == project.box).all()
    assert np.abs(df[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= project.pixel_size_angstrom / 2 + 1e-6
    items = {it.name: it for _s, it in pop.items()}
    z = np.asarray(pop.species[SPECIES].particles.load().coordinates)[project.rows, 0, 2]
    for g, name in enumerate(project.items):
        sel = project.group == g
        im = items[name].imaging
        np.testing.assert_allclose(df["rlnDefocusU"].to_numpy()[sel], im.defocus_u_angstrom + z[sel], atol=1e-3)
        np.testing.assert_allclose(df["rlnDefocusV"].to_numpy()[sel], im.defocus_v_angstrom + z[sel], atol=1e-3)
        np.testing.assert_allclose(df["rlnDefocusAngle"].to_numpy()[sel], im.astigmatism_angle_deg, atol=1e-4)
        assert (df["rlnOpticsGroup"].to_numpy()[sel] == g + 1).all()
    # reading the exported STAR back gives the imported values; its errors are mrepo's metric
    back = read_ctf_star(project.root / project.particles_star, project)
    np.testing.assert_allclose(back.defocus_angstrom, project.imported.defocus_angstrom, atol=1e-3)
    before = ctf_errors(project.imported, project, truth)
    assert before["defocus_rmse_angstrom"] == pytest.approx(defocus_rmse(pop, truth, SPECIES), rel=1e-6)
    assert ctf_errors(true_ctf(project, truth), project, truth)["defocus_rmse_angstrom"] < 1e-6
    assert before["beam_tilt_mrad"] > 0.3  # the simulation has a beam tilt to find

    # the images: the true particle's CTF'ed projection, the right way up (correlates positively)
    stack = read_mrc(project.root / "Particles" / f"{project.items[0]}.mrcs", mmap=False).data
    assert stack.shape == (int((project.group == 0).sum()), project.box, project.box)
    assert np.isfinite(stack).all() and stack.std() > 0


@pytest.mark.relion
def test_relion_refines_the_ctf(ctf_sim, tmp_path):
    for program in ("relion_ctf_refine", "relion_reconstruct"):
        if shutil.which(program) is None:
            pytest.skip(f"RELION not installed ({program} not on PATH)")
    sim_dir, _ = ctf_sim
    truth = load_truth(sim_dir)
    # the reference as relion_refine would have it at these poses: reconstructed by RELION from
    # the exported particles with the imported CTF (the repository's half-maps, made with the
    # imported poses, are too coarse for RELION's CTF fit to converge)
    project = export_ctf_project(sim_dir, tmp_path / "project", species=SPECIES, reference="reconstruct")
    assert project.reference_resolution_angstrom is not None and project.reference_resolution_angstrom < 8.0
    res = run_ctf_refine(project, tmp_path / "ctf", threads=2)
    print(f"relion_ctf_refine {res.wall_s:.1f} s ({', '.join(f'{w:.1f}' for w in res.pass_wall_s)})")
    assert [p for p in res.passes] == [("aniso",), ("defocus",), ("beamtilt",)]
    assert len(res.values) == len(project) and res.values.beam_tilt_mrad.shape == (2, 2)
    assert np.isfinite(res.values.defocus_u_angstrom).all() and np.isfinite(res.values.beam_tilt_mrad).all()
    before = ctf_errors(project.imported, project, truth)
    after = ctf_errors(res.values, project, truth)
    keys = ("defocus_rmse_angstrom", "astigmatism_vector_angstrom", "astigmatism_angle_deg", "beam_tilt_mrad")
    print({k: (round(before[k], 3), round(after[k], 3)) for k in keys})
    print(after["beam_tilt_est_mrad"], after["beam_tilt_true_mrad"])
    assert all(np.isfinite(after[k]) for k in keys)
    # noiseless: RELION's defocus, astigmatism and beam tilt land well closer to the truth
    assert after["defocus_rmse_angstrom"] < 0.5 * before["defocus_rmse_angstrom"]
    assert after["astigmatism_vector_angstrom"] < before["astigmatism_vector_angstrom"]
    assert after["beam_tilt_mrad"] < 0.5 * before["beam_tilt_mrad"]
