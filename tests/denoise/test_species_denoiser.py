"""The denoiser as part of a species' state in the repository, and ``mrepo denoise``."""

from __future__ import annotations

import json
import subprocess

import mrcfile
import numpy as np
import pytest

import mrepo
from mrepo.model import write_population
from mrepo.refine.denoise import (
    DenoiserConfig,
    attach_initial_denoiser,
    denoise_species,
    describe_denoiser,
    read_denoiser,
)
from mrepo.store import write_array

from .helpers import BOX, PIXEL, make_population

TINY = DenoiserConfig(channels=4, bands=6)
QUICK = dict(iterations=3, crop=16, batch=1, device="cpu", config=TINY)


def test_denoise_species_commits_weights_maps_and_metrics(repo):
    make_population(repo)
    r = denoise_species(repo, "apo", **QUICK)
    assert r.commit is not None and repo.head().commit == r.commit
    assert repo.verify() == []
    sp = repo.population().species["apo"]
    # weights are arrays of the species, described by Species.denoiser
    d = sp.denoiser
    assert d["iterations_trained"] == 3 and d["architecture"]["name"] == "unet3d-bandgain"
    assert d["history"] == [{"iterations": 3, "crop": 16, "batch": 1, "lr": [1e-3, 1e-5], "seed": 0}]
    assert all(name.startswith("species/apo/denoiser/") for name in d["weights"].values())
    weights, config = read_denoiser(repo.snapshot("HEAD"), sp)
    assert config == TINY and all(np.array_equal(weights[k], r.weights[k]) for k in weights)
    # denoised maps and local resolution, with the voxel size
    for role in ("denoised_half1", "denoised_half2", "denoised", "local_resolution"):
        a = repo.open_array("HEAD", sp.maps[role])
        assert a.shape == (BOX,) * 3 and a.attrs["voxel_size"] == [PIXEL] * 3
    lr = repo.open_array("HEAD", sp.maps["local_resolution"])[...]
    assert np.all(lr >= 2 * PIXEL - 1e-3) and np.all(np.isfinite(lr))
    m = sp.metrics["denoise"]
    assert m["iterations_trained"] == 3 and len(m["training"]["losses"]) == 3
    assert m["resolution_half_maps_angstrom"] > 2 * PIXEL
    # timings are commit metadata, not species state
    meta = repo.commit_info(r.commit).metadata
    assert meta["operation"] == "denoise" and meta["iterations"] == 3 and meta["train_seconds"] > 0
    lines = describe_denoiser(sp, repo.snapshot("HEAD"))
    assert any("unet3d-bandgain" in s for s in lines) and any("3 iterations" in s for s in lines)
    assert any(d["weights_digest"] in s for s in lines) and not any("MISMATCH" in s for s in lines)
    # git shows the description
    doc = subprocess.run(["git", "-C", str(repo.path), "show", "HEAD:docs/species/apo/species.json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(doc)["denoiser"]["weights_digest"] == d["weights_digest"]


def test_training_resumes_from_the_parent_commit(repo):
    make_population(repo)
    first = denoise_species(repo, "apo", **QUICK)
    second = denoise_species(repo, "apo", **QUICK)
    assert second.iterations_trained == 6
    assert [h["seed"] for h in second.description["history"]] == [0, 3]
    # the same session from the first commit's weights gives the same weights: it resumed from them
    from mrepo.refine.denoise import denoise_half_maps

    sp = repo.population(first.commit).species["apo"]
    h1 = repo.open_array(first.commit, sp.maps["half1"])[...]
    h2 = repo.open_array(first.commit, sp.maps["half2"])[...]
    again = denoise_half_maps(h1, h2, first.weights, config=TINY, iterations=3, crop=16, batch=1, seed=3, device="cpu",
                              reset_gains=False, average=False)
    assert all(np.array_equal(again.weights[k], second.weights[k]) for k in again.weights)
    # applying the stored denoiser again changes nothing: no commit
    assert denoise_species(repo, "apo", iterations=0, device="cpu").commit is None
    assert repo.head().commit == second.commit
    # unchanged weights are stored once: the chunks of the first commit's weights are shared
    assert repo.diff(first.commit, second.commit)
    assert repo.fsck().ok


def test_species_digest_covers_the_weights(repo):
    make_population(repo)
    r = denoise_species(repo, "apo", **QUICK)
    sp = repo.population().species["apo"]
    name = sp.denoiser["weights"]["out.bias"]
    txn = repo.index
    write_array(txn, name, r.weights["out.bias"] + 1.0, chunks=r.weights["out.bias"].shape)
    bad = txn.commit("tamper with the denoiser")
    problems = [str(p) for p in repo.verify(bad)]
    assert any("species apo" in p and "digest" in p for p in problems)
    lines = describe_denoiser(repo.population(bad).species["apo"], repo.snapshot(bad))
    assert any("MISMATCH" in s for s in lines)


def test_species_without_half_maps_is_a_one_line_error(repo, cli):
    head = make_population(repo, with_maps=False)
    with pytest.raises(mrepo.InvalidInput, match="no half-maps"):
        denoise_species(repo, "apo", **QUICK)
    res = cli("denoise", "--species", "apo", "--iterations", "2", "--device", "cpu", cwd=repo.path)
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: species has no half-maps") and "(apo)" in err[0]
    res = cli("denoise", "--species", "nope", cwd=repo.path)
    assert res.returncode == 1 and res.stderr.strip() == "error: no such species (nope)"
    from mrepo.refine.denoise import denoise_repository

    with pytest.raises(mrepo.InvalidInput, match="no species has half-maps"):
        denoise_repository(repo, iterations=1)
    assert repo.head().commit == head  # nothing committed
    assert not list((repo.mrepo_dir / "txn").glob("2*"))  # no transaction left behind


def test_initial_denoiser_for_an_imported_species(repo):
    make_population(repo)
    txn = repo.index
    pop = repo.population()
    sp = pop.species["apo"]
    attach_initial_denoiser(txn, sp, config=TINY)
    write_population(txn, pop, items=False)
    sha = txn.commit("import: initial denoiser")
    assert repo.verify(sha) == []
    sp = repo.population(sha).species["apo"]
    assert sp.denoiser["iterations_trained"] == 0
    assert any("untrained" in s for s in describe_denoiser(sp))
    # the first session starts from the stored (untrained) weights, gains reset to the maps' FSC
    r = denoise_species(repo, "apo", iterations=2, crop=16, batch=1, device="cpu")
    assert r.iterations_trained == 2 and r.description["architecture"]["channels"][0] == TINY.channels
    assert repo.verify() == []
    with pytest.raises(mrepo.InvalidInput, match="another architecture"):
        denoise_species(repo, "apo", iterations=1, crop=16, device="cpu", config=DenoiserConfig(channels=6, bands=6))
    r = denoise_species(repo, "apo", iterations=1, crop=16, device="cpu", config=DenoiserConfig(channels=6, bands=6), reset=True)
    assert r.iterations_trained == 1 and repo.verify() == []
    # the old architecture's arrays are gone
    names = set(repo.population().species["apo"].denoiser["weights"].values())
    present = {k[len("data/"):-len("/zarr.json")] for k, _ in repo.snapshot("HEAD").iter_entries("data/species/apo/denoiser/")
               if k.endswith("/zarr.json") and k != "data/species/apo/denoiser/zarr.json"}
    assert present == names


def test_cli_denoise_png_and_export(repo, cli, tmp_path):
    make_population(repo)
    png = tmp_path / "locres.png"
    res = cli("denoise", "--iterations", "2", "--crop", "16", "--batch", "1", "--device", "cpu", "--png", str(png),
              cwd=repo.path, check=True)
    assert "species apo: trained 2 iterations (2 in all) on cpu" in res.stdout
    assert "local" in res.stdout and f"wrote {png}" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "denoised.mrc"
    cli("export", "HEAD:species/apo/maps/denoised", str(out), cwd=repo.path, check=True)
    with mrcfile.open(out) as m:
        assert m.data.shape == (BOX,) * 3 and abs(float(m.voxel_size.x) - PIXEL) < 1e-4
        expect = repo.open_array("HEAD", "species/apo/maps/denoised")[...]
        assert np.array_equal(m.data, expect)
    log = cli("log", "--oneline", cwd=repo.path, check=True).stdout
    assert "operation=denoise" in log
    assert repo.fsck().ok and repo.verify() == []
