"""CLI commands: denoise (registered on :data:`mrepo.cli.main`).

``mrepo denoise`` trains each species' noise2noise denoiser on its half-maps
(resuming from the weights stored in HEAD), denoises the half-maps and their
average, computes the local resolution, and commits weights, maps and metrics
in one commit. The work is :func:`mrepo.refine.denoise.denoise_repository`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import _repo, main


def _png_path(png: str, species: str, several: bool) -> Path:
    p = Path(png)
    if not several:
        return p
    return p.with_name(f"{p.stem}_{species}{p.suffix or '.png'}")


@main.command()
@click.option("--species", "species", multiple=True, metavar="NAME",
              help="Species to denoise (repeatable; default: every species with half-maps).")
@click.option("--iterations", default=800, show_default=True, type=click.IntRange(min=0),
              help="Training steps of this session (0: apply the stored denoiser only).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]", help="Where to compute.")
@click.option("--seed", type=int, default=None,
              help="Seed of the training crops (default: the iterations already trained).")
@click.option("--crop", default=64, show_default=True, type=click.IntRange(min=8), help="Training crop edge (voxels).")
@click.option("--batch", default=2, show_default=True, type=click.IntRange(min=1), help="Crops per training step.")
@click.option("--window", "window_px", type=click.IntRange(min=4), default=None,
              help="Local-resolution window edge in voxels (default: about 24 Å).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write central slices coloured by local resolution to this PNG (one per species, suffixed, if several).")
@click.option("--reset", is_flag=True, help="Start a new denoiser instead of resuming the stored one.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.pass_context
def denoise(ctx: click.Context, species: tuple[str, ...], iterations: int, device: str, seed: int | None, crop: int,
            batch: int, window_px: int | None, png: str | None, reset: bool, message: str | None) -> None:
    """Train each species' noise2noise denoiser on its half-maps, denoise them, commit.

    Stores the weights (species/NAME/denoiser/), the maps denoised_half1,
    denoised_half2, denoised and local_resolution (species/NAME/maps/), and the
    metrics; training resumes from the weights in HEAD.
    """
    from tqdm import tqdm

    from ..refine.denoise import denoise_repository
    from ..refine.localres import plot_local_resolution

    repo = _repo(ctx)
    bars: list = []

    def progress_factory(name: str, n: int):
        if n == 0:
            return None
        bar = tqdm(total=n, desc=f"training {name}", unit="it", file=sys.stderr, disable=None, leave=False)
        bars.append(bar)

        def step(i: int, loss: float) -> None:
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}")

        return step

    try:
        results, commit = denoise_repository(
            repo, list(species) or None, message=message, progress_factory=progress_factory,
            iterations=iterations, device=device, seed=seed, crop=crop, batch=batch, window_px=window_px, reset=reset,
        )
    finally:
        for b in bars:
            b.close()
    for r in results:
        t = r.timings
        m = r.metrics
        rate = f", {t['iterations_per_second']:.2f} it/s" if t.get("iterations_per_second") else ""
        tr = m.get("training", {})
        loss = f"; loss {tr['loss_start']:.4f} -> {tr['loss_end']:.4f}" if r.iterations and tr.get("loss_start") is not None else ""
        click.echo(f"species {r.species}: trained {r.iterations} iterations ({r.iterations_trained} in all) on "
                   f"{t['device']} in {t['train_seconds']:.1f} s{rate}{loss}")
        click.echo(f"  denoised half1, half2 and their average in {t['denoise_seconds']:.1f} s "
                   f"({t['voxels_per_second'] / 1e6:.2f} Mvoxel/s)")
        res = m.get("resolution_half_maps_angstrom")
        lr = m.get("local_resolution_angstrom")
        parts = []
        if res is not None:
            parts.append(f"half-maps {res:.2f} Å (FSC 0.143, within the particle sphere)")
        if lr:
            parts.append(f"local {lr['p10']:.2f}-{lr['p90']:.2f} Å (10th-90th percentile, median {lr['median']:.2f} Å)")
        if parts:
            click.echo("  resolution: " + "; ".join(parts))
        click.echo(f"  maps: {', '.join(r.maps.values())}")
        click.echo(f"  denoiser: {len(r.description['weights'])} arrays, "
                   f"{r.description['architecture']['parameters']:,} parameters, blake3:{r.description['weights_digest'][:16]}")
        if png and r.local_resolution is not None and r.denoised is not None:
            path = plot_local_resolution(
                r.denoised, r.local_resolution, _png_path(png, r.species, len(results) > 1),
                pixel_size_angstrom=r.pixel_size_angstrom, title=f"{r.species}: denoised map coloured by local resolution",
            )
            click.echo(f"  wrote {path}")
    if commit:
        h = repo.head()
        click.echo(f"[{h.branch or 'detached HEAD'} {commit[:12]}] {repo.commit_info(commit).summary}")
    else:
        click.echo("nothing changed; no commit")
