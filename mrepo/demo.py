"""``mrepo demo``: a guided tour on generated data, running the real CLI.

It writes a small frame stack and a map as MRC files, then runs ``mrepo
init``, ``add``, ``commit``, a second ``add`` + ``commit`` that changes a
few frames, ``log``, ``show``, ``diff``, ``export`` and ``fsck``, printing
each command and its output, and finally checks the exported MRC.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import InvalidInput, MrepoError
from .io.mrc import read_mrc, write_mrc

__all__ = ["run_demo"]

_SIZES = {"tiny": (8, 128, 64), "small": (24, 512, 96)}  # frames, frame edge (px), map edge (px)


def _blob_map(n: int, rng: np.random.Generator) -> np.ndarray:
    """A pseudo-atomic map: a few hundred Gaussian 'atoms' in a sphere."""
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float32) - n / 2
    out = np.zeros((n, n, n), np.float32)
    centres = rng.normal(scale=n / 8, size=(300, 3))
    for c in centres:
        out += np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 2.0)
    return out


def run_demo(directory: Path, *, size: str = "small", echo: Callable[[str], None] = print, seed: int = 0) -> dict:
    """Run the tour in ``directory`` (created; must not already hold a repository)."""
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
