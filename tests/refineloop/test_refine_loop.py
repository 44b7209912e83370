"""`mrepo refine` on a simulated population with known truth (the tiny preset)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import mrepo
from mrepo.errors import DegenerateResult, NotFound
from mrepo.model import Particles, write_population
from mrepo.refine.run import RefineOptions, refine_repository
from mrepo.sim import load_truth, motion_rmse_px, pose_error_deg, preset, simulate


#: The tiny preset with enough particles per series for self-consistent
#: refinement (36 per movie, three movies) and a per-particle SNR of 1 over
#: the exposure; frame series only. Builds in seconds.
VIABLE = dict(n_movies=3, particles_per_movie=36, frame_shape_px=(512, 512), snr=1.0, n_tilt_series=0)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A small simulated population, built once."""
    d = tmp_path_factory.mktemp("refine") / "sim"
    simulate(d, config=preset("tiny", **VIABLE), seed=3, progress=False)
    return d


@pytest.fixture
def work(simulated, tmp_path):
    d = tmp_path / "sim"
    shutil.copytree(simulated, d, symlinks=True)
    return d


def test_refine_reduces_motion_error_and_commits(work, cli):
    repo = mrepo.open_repo(work)
    truth = load_truth(work)
    start = repo.population("HEAD")
    parent = repo.head().commit
    out = refine_repository(repo, RefineOptions(iterations=2))
    assert out.commit == repo.head().commit and repo.commit_info(out.commit).parents == (parent,)
    refined = repo.population("HEAD")
    m0, m1 = motion_rmse_px(start, truth), motion_rmse_px(refined, truth)
    print(f"motion error {m0:.3f} -> {m1:.3f} px")
    assert m1 < 0.7 * m0, (m0, m1)
    large = out.species["large"]
    print(f"large: {large.resolution_before:.2f} -> {large.resolution_after:.2f} Å; "
          f"pose {pose_error_deg(start, truth, 'large'):.2f} -> {pose_error_deg(refined, truth, 'large'):.2f} deg")
    assert large.resolution_after <= large.resolution_before * 1.02
    assert pose_error_deg(refined, truth, "large") <= pose_error_deg(start, truth, "large") * 1.1
    meta = repo.commit_metadata("HEAD")
    assert meta["operation"] == "refine" and meta["parameters"]["iterations"] == 2
    assert set(meta["resolution_angstrom"]) == {"large", "small"}
    assert set(meta["species_digests"]) == {"large", "small"} and meta["item_digests"]
    assert repo.verify("HEAD") == []
    sp = refined.species["large"]
    assert sp.resolution_angstrom == pytest.approx(large.resolution_after)
    assert any(k.startswith("PyramidShiftX_") for _s, it in refined.items() if it.kind == "frames" for k in it.grids)
    log = cli("log", "--oneline", "-n", "1", cwd=work, check=True).stdout
    assert "Refine motion+poses" in log and "large" in log
    # unchanged chunks are not stored again: the raw frames are the parent's
    for _s, it in refined.items():
        assert repo.snapshot("HEAD").get(f"data/{it.raw_array}/zarr.json") == repo.snapshot("HEAD~1").get(f"data/{it.raw_array}/zarr.json")
    assert not [c for c in repo.diff("HEAD~1", "HEAD") if c.name.endswith("/raw")]


def test_iterations_zero_only_reconstructs(work, cli):
    r = cli("refine", "--iterations", "0", cwd=work, check=True)
    assert "set-up check" in r.stdout
    repo = mrepo.open_repo(work)
    assert repo.log("HEAD")[0].summary.startswith("Reconstruct at current parameters")
    pop = repo.population("HEAD")
    before = repo.population("HEAD~1")
    for n in pop.species:
        np.testing.assert_array_equal(pop.species[n].particles.load().coordinates[:, :, :2],
                                      before.species[n].particles.load().coordinates[:, :, :2])


def test_reproducible_by_seed_on_cpu(work):
    repo = mrepo.open_repo(work)
    a = refine_repository(repo, RefineOptions(iterations=1, lbfgs_iterations=5, seed=7, device="cpu"), commit=False)
    b = refine_repository(repo, RefineOptions(iterations=1, lbfgs_iterations=5, seed=7, device="cpu"), commit=False)
    for key in a.models:
        for x, y in zip(a.models[key].pyramid.parameters(), b.models[key].pyramid.parameters()):
            assert np.array_equal(x.numpy(), y.numpy())
        for sp in a.models[key].coord_delta:
            assert np.array_equal(a.models[key].coord_delta[sp].numpy(), b.models[key].coord_delta[sp].numpy())
            assert np.array_equal(a.models[key].angle_delta[sp].numpy(), b.models[key].angle_delta[sp].numpy())
    assert a.species["large"].resolution_after == b.species["large"].resolution_after


def test_degenerate_runs_commit_nothing(work, cli):
    repo = mrepo.open_repo(work)
    head = repo.head().commit
    r = cli("refine", "--species", "nosuch", cwd=work)
    assert r.returncode == 1 and r.stderr.strip() == "error: no such species (nosuch)"
    r = cli("refine", "--params", "motion,nonsense", cwd=work)
    assert r.returncode == 1 and "unknown parameter group" in r.stderr
    # particles that lie in no frame series
    pop = repo.population("HEAD")
    p = pop.species["small"].particles.load()
    pop.species["small"].particles = Particles(["f" * 64], np.zeros(len(p), np.int32), p.coordinates, p.angles, p.half_set)
    txn = repo.transaction()
    write_population(txn, pop, items=False)
    bad = txn.commit("particles of small point nowhere")
    with pytest.raises(DegenerateResult, match="no particle"):
        refine_repository(repo, RefineOptions(iterations=1, species=("small",)))
    assert repo.head().commit == bad
    r = cli("refine", "--species", "small", cwd=work)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert repo.head().commit == bad
    assert head != bad


def test_interrupt_leaves_head_as_it_was(work):
    repo = mrepo.open_repo(work)
    head = repo.head().commit

    def progress(msg: str) -> None:
        if msg.startswith("iteration 1/2: reconstructing"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        refine_repository(repo, RefineOptions(iterations=2, lbfgs_iterations=3), progress=progress)
    assert repo.head().commit == head
    assert not repo.index.is_dirty()
    txns = [t for t in (repo.mrepo_dir / "txn").iterdir() if t.name != "index"]
    assert txns == []
    assert repo.fsck().ok


def test_unknown_species_in_python_api(work):
    repo = mrepo.open_repo(work)
    with pytest.raises(NotFound):
        refine_repository(repo, RefineOptions(iterations=0, species=("nosuch",)))
    meta = json.dumps(repo.commit_metadata("HEAD"))
    assert "simulation" in meta
