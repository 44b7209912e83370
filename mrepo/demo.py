"""``mrepo demo``: the main job on an embedded default, and a storage tour.

``run_demo`` (``mrepo demo [DIR]``) simulates a population with known ground
truth (two species sharing frame series), refines it as M does, and prints,
per species, the resolution of the starting, refined and true-parameter
("oracle") reconstructions, the motion and pose errors against the truth
before and after, the time taken and the commits made; it writes FSC and
motion PNGs next to the repository.

``run_store_tour`` (``mrepo demo --tour [DIR]``) walks through the storage
commands on a generated stack and map, running the real CLI: ``init``,
``add``, ``commit``, ``log``, ``show``, ``diff``, ``export``, ``fsck``.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInput, MrepoError
from .io.mrc import read_mrc, write_mrc

__all__ = ["run_demo", "run_store_tour"]

_SIZES = {"tiny": (8, 128, 64), "small": (24, 512, 96)}  # frames, frame edge (px), map edge (px)


def _blob_map(n: int, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-atomic map: a few hundred Gaussian 'atoms' in a sphere."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - n / 2
    out = np.zeros((n, n, n), np.float32)
    centres = rng.normal(scale=n / 8, size=(300, 3))
    for c in centres:
        out += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 2.0)
    return out


def run_store_tour(directory: Path, *, size: str = "small", echo: Callable[[str], None] = print, seed: int = 0) -> dict:
    """Run the storage tour in ``directory`` (created; must not already hold a repository)."""
    from .cli import main

    if size not in _SIZES:
        raise InvalidInput(f"unknown demo size {size!r}")
    directory = Path(directory)
    if (directory / ".git").exists():
        raise InvalidInput("already holds a repository; choose a new folder", str(directory))
    nframes, edge, medge = _SIZES[size]
    rng = np.random.default_rng(seed)
    inputs = directory / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    frames = rng.normal(size=(nframes, edge, edge)).astype(np.float32)
    write_mrc(inputs / "frames.mrcs", frames, (1.0, 1.05, 1.05), stack=True)
    write_mrc(inputs / "map.mrc", _blob_map(medge, rng), 1.05)
    echo(f"Generated {inputs / 'frames.mrcs'} ({nframes} frames of {edge}x{edge}) and {inputs / 'map.mrc'} ({medge}^3), 1.05 Å/px")

    timings: dict[str, float] = {}

    def run(*args: str) -> None:
        echo("")
        echo("$ mrepo " + " ".join(shlex.quote(a) for a in args))
        t0 = time.perf_counter()
        cwd = os.getcwd()
        try:
            rc = main.main(args=["-C", str(directory), *args], standalone_mode=False, prog_name="mrepo")
        finally:
            os.chdir(cwd)
        if rc not in (None, 0):
            raise MrepoError(f"demo step failed: mrepo {' '.join(args)}")
        timings[args[0]] = timings.get(args[0], 0.0) + time.perf_counter() - t0

    run("init", ".")
    run("add", "inputs/frames.mrcs", "--as", "raw/frames", "--chunks", "2," + str(edge) + "," + str(edge))
    run("add", "inputs/map.mrc", "--as", "maps/reference")
    run("status")
    run("commit", "-m", "Import frames and reference map")
    # change two frames, as a motion-correction step would
    frames[2:4] = np.roll(frames[2:4], 3, axis=-1)
    write_mrc(inputs / "frames.mrcs", frames, (1.0, 1.05, 1.05), stack=True)
    run("add", "inputs/frames.mrcs", "--as", "raw/frames", "--chunks", "2," + str(edge) + "," + str(edge))
    run("commit", "-m", "Shift frames 3-4")
    run("tag", "v1")
    run("log", "--oneline")
    run("show", "HEAD:raw/frames")
    run("diff", "HEAD~1", "HEAD")
    run("export", "HEAD:maps/reference", "reference_export.mrc")
    run("fsck")
    back = read_mrc(directory / "reference_export.mrc")
    ok = back.header.voxel_size[2] is not None and abs(back.header.voxel_size[2] - 1.05) < 1e-4
    echo("")
    echo(f"Exported map: {back.data.shape}, voxel size {back.header.voxel_size[2]:.4g} Å: {'matches' if ok else 'DOES NOT MATCH'} the input")
    echo(f"Stock git reads the history too:  git -C {directory} log --stat   |   git -C {directory} show HEAD:data/raw/frames/manifest.json")
    return {"ok": ok, "timings": timings}


def _plot_trajectories(start: Any, refined: Any, truth: Any, item_name: str, path: Path, *, magnify: float = 8.0) -> Path:
    """PNG: each particle's path over the exposure (first frame at its position), true
    (black), as imported (red) and refined (blue), displacements magnified."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sim.geometry import frame_positions, item_motion_grids

    fig, ax = plt.subplots(figsize=(7.5, 7.5), dpi=110)
    for label, pop, colour in (("true", None, "k"), ("imported", start, "tab:red"), ("refined", refined, "tab:blue")):
        first = True
        for name, p_true in truth.particles.items():
            src_pop = pop if pop is not None else start
            item = next(it for _s, it in src_pop.items() if it.name == item_name)
            est = (src_pop.species[name].particles.load() if pop is not None else p_true)
            idx = est.in_item(item.data_digest)
            if not len(idx):
                continue
            grids = item_motion_grids(item) if pop is not None else truth.items[item_name].motion
            pos = frame_positions(np.asarray(est.coordinates)[idx], item.n, item.shape, item.imaging.pixel_size_angstrom, grids)
            base = frame_positions(np.asarray(p_true.coordinates)[idx], item.n, item.shape, item.imaging.pixel_size_angstrom,
                                   truth.items[item_name].motion)[:, :1]
            disp = base + (pos - base) * magnify
            for k in range(len(idx)):
                ax.plot(disp[k, :, 0], disp[k, :, 1], "-", color=colour, lw=0.8, alpha=0.8, label=label if first else None)
                first = False
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"{item_name}: particle paths over the exposure (displacements ×{magnify:g})")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(
    directory: Path,
    *,
    preset: str = "small",
    iterations: int = 3,
    seed: int = 0,
    device: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict:
    """Simulate a population, refine it, and compare with the truth (the README's main job)."""
    from .refine.fsc import plot_fsc
    from .refine.run import RefineOptions, reconstruct_population, refine_repository
    from .repository import open_repo
    from .sim import load_truth, motion_rmse_px, pose_error_deg, simulate
    from .sim import preset as sim_preset
    from .sim.truth import truth_population

    directory = Path(directory)
    if (directory / ".git").exists():
        raise InvalidInput("already holds a repository; choose a new folder", str(directory))
    t0 = time.perf_counter()
    echo(f"1. Simulating a '{preset}' population: two species sharing frame series (the preset's tilt series are left out: "
         "this refines frame series); the ground truth is kept apart ...")
    simulate(directory, config=sim_preset(preset, n_tilt_series=0), seed=seed, progress=False, echo=lambda m: echo("   " + m))
    t_sim = time.perf_counter() - t0
    repo = open_repo(directory)
    truth = load_truth(directory)
    start = repo.population("HEAD")
    echo(f"2. Refining motion and poses, {iterations} iterations (mrepo refine) ...")
    t1 = time.perf_counter()
    out = refine_repository(repo, RefineOptions(iterations=iterations, device=device), progress=lambda m: echo("   " + m))
    t_refine = time.perf_counter() - t1
    refined = repo.population("HEAD")
    echo("3. Reconstructing with the true parameters (the oracle) ...")
    t2 = time.perf_counter()
    oracle = reconstruct_population(repo, truth_population(start, truth), device=device)
    t_oracle = time.perf_counter() - t2
    names = sorted(out.species)
    rows = []
    curves = {}
    for n in names:
        sp = start.species[n]
        curves[f"{n} start"] = out.species[n].fsc_before
        curves[f"{n} refined"] = out.species[n].fsc_after
        curves[f"{n} oracle"] = oracle[n][2]
        res_o = float(oracle[n][2].resolution(0.143))
        rows.append((
            n, len(sp.particles), out.species[n].resolution_before, out.species[n].resolution_after, res_o,
            motion_rmse_px(start, truth, n), motion_rmse_px(refined, truth, n),
            pose_error_deg(start, truth, n), pose_error_deg(refined, truth, n),
        ))
    echo("")
    echo(f"{'species':<9}{'particles':>10}  {'resolution (Å, FSC 0.143)':^27}  {'motion error (px)':^19}  {'pose error (°)':^17}")
    echo(f"{'':<9}{'':>10}  {'start':>8}{'refined':>9}{'oracle':>9}  {'start':>9}{'refined':>9}  {'start':>8}{'refined':>9}")
    for r in rows:
        echo(f"{r[0]:<9}{r[1]:>10}  {r[2]:>8.2f}{r[3]:>9.2f}{r[4]:>9.2f}  {r[5]:>9.3f}{r[6]:>9.3f}  {r[7]:>8.2f}{r[8]:>9.2f}")
    echo("")
    echo(f"time: simulation {t_sim:.0f} s, refinement {t_refine:.0f} s ({out.series} series, {out.particle_frames} particle-frames), oracle {t_oracle:.0f} s")
    plot_fsc(curves, directory / "demo_fsc.png")
    movie = next(it.name for _s, it in start.items() if it.kind == "frames")
    motion_png = _plot_trajectories(start, refined, truth, movie, directory / "demo_motion.png")
    echo(f"plots: {directory / 'demo_fsc.png'} (FSC start/refined/oracle), {motion_png} (particle paths, true/imported/refined)")
    echo("commits:")
    for ci in repo.log("HEAD"):
        echo(f"  {ci.id[:12]} {ci.summary}")
    echo(f"repository: {directory}   (try: mrepo -C {directory} log; mrepo -C {directory} show HEAD; git -C {directory} log --stat)")
    return {"rows": rows, "commit": out.commit, "seconds": time.perf_counter() - t0}
