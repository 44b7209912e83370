"""CLI commands: sim (registered on :data:`mrepo.cli.main`).

``mrepo sim OUT_DIR [--preset tiny|small|paper] [--seed N]`` builds a simulated
population with known ground truth (:func:`mrepo.sim.simulate`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..errors import InvalidInput
from . import main


@main.command("sim")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "small", "paper"]),
              help="Size of the simulation (tiny: seconds, small: a few minutes, paper: large).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same repository).")
@click.option("--species", "species", metavar="NAME=SHARE,...",
              help="Species and proportions, e.g. large=0.6,small=0.35,rare=0.05 (known: large, small, rare).")
@click.option("--snr", type=float, help="Per-particle SNR over all frames of the first species (default 0.1).")
@click.option("--no-noise", is_flag=True, help="Store noiseless expected counts (float) instead of Poisson counts.")
@click.option("--png", is_flag=True, help="Also write truth/frame.png and truth/motion.png.")
@click.option("--device", default="cpu", show_default=True, help="Torch device: cpu, cuda, cuda:N or auto.")
@click.pass_context
def sim(ctx: click.Context, out_dir: str, preset: str, seed: int, species: str | None, snr: float | None,
        no_noise: bool, png: bool, device: str) -> None:
    """Simulate a population with known ground truth into a new repository OUT_DIR.

    The repository holds frame series and tilt series with particles of several species,
    the imperfect starting values a Warp/RELION import would give, and half-maps
    reconstructed with them: one commit. The ground truth (true maps, poses, motion,
    defocus, tilt geometry) is written under OUT_DIR/truth, outside the repository;
    read it with mrepo.sim.load_truth. See docs/simulation.md.
    """
    from ..refine.device import pick_device
    from ..sim import simulate
    from ..sim.config import parse_species_option, preset as get_preset

    if snr is not None and no_noise:
        raise InvalidInput("--snr and --no-noise exclude each other", "mrepo sim")
    cfg = get_preset(preset, species=parse_species_option(species) if species else None)
    if no_noise:
        cfg = dataclasses.replace(cfg, snr=None)
    elif snr is not None:
        cfg = dataclasses.replace(cfg, snr=snr)
    out = Path(ctx.obj["dir"]) / out_dir
    res = simulate(out, seed=seed, config=cfg, png=png, device=pick_device(device), progress=True,
                   echo=lambda s: click.echo(s))
    s = res.summary
    click.echo(f"Simulated population ({res.preset}, seed {res.seed}) in {res.path}: commit {res.commit[:12]}")
    for src, d in s["sources"].items():
        parts = ", ".join(f"{n} {k}" for n, k in d["particles"].items())
        click.echo(f"  {src}: {d['items']} items; particles: {parts}")
    for name, d in s["species"].items():
        r = d["start_resolution_angstrom"]
        click.echo(f"  species {name}: {d['particles']} particles, {d['diameter_angstrom']:.0f} Å, {d['symmetry']}, "
                   f"box {d['box']}, starting half-map resolution {'-' if r is None else f'{r:.1f} Å'} (FSC 0.143)")
    for src, d in s["snr"].items():
        click.echo(f"  per-particle SNR ({src}): " + ", ".join(f"{n} {v:.3g}" for n, v in d.items()))
    click.echo(f"  ground truth: {res.path / 'truth'} (not tracked by the repository)")
    for p in res.pngs:
        click.echo(f"  wrote {p}")
    click.echo(f"  built in {res.timings['total']:.1f} s")
