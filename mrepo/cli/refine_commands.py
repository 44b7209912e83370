"""CLI commands: refine (registered on :data:`mrepo.cli.main`)."""

from __future__ import annotations

import re
import sys

import click

from . import _repo, main


def _grid(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
    if not m:
        raise click.BadParameter("give the finest grid as XxYxT, e.g. 4x4x10")
    return tuple(int(v) for v in m.groups())  # type: ignore[return-value]


@main.command()
@click.option("--iterations", "-n", default=3, show_default=True, type=int, help="Refinement iterations (0: only reconstruct, a set-up check).")
@click.option("--species", default=None, help="Comma-separated species to refine (default: all).")
@click.option("--params", default="motion,poses", show_default=True,
              help="Parameter groups: motion, poses, defocus, astigmatism, beamtilt, magnification, doming, weights.")
@click.option("--grid", default="4x4x10", show_default=True, help="Finest level of the motion pyramid, X x Y x time.")
@click.option("--levels", default=3, show_default=True, type=int, help="Levels of the motion pyramid.")
@click.option("--temporal-samples", default=1, show_default=True, type=click.IntRange(1, 3), help="Control points of each particle's trajectory (more need more signal per particle).")
@click.option("--resolution", type=float, default=None, help="Never use frequencies beyond this resolution (Å).")
@click.option("--lbfgs-iterations", default=20, show_default=True, type=int, help="L-BFGS iterations per resolution stage.")
@click.option("--denoise/--no-denoise", default=True, show_default=True,
              help="Use each species' noise2noise-denoised half-maps as the references (M); --no-denoise: FSC-weighted half-maps.")
@click.option("--denoise-iterations", default=25, show_default=True, type=int,
              help="Denoiser training steps after each reconstruction (resumes from the stored weights).")
@click.option("--min-ctf-resolution", default=8.0, show_default=True, type=float,
              help="Imaging-model groups and exposure weights use only species finer than this (Å).")
@click.option("--isotropic-weights", is_flag=True, help="Fit isotropic exposure B-factors only (no direction).")
@click.option("--weights-per-series", is_flag=True, help="Fit exposure weights for each series on its own.")
@click.option("--weights-in-target", is_flag=True,
              help="Let fitted exposure weights weight the motion/pose target too (default: the reconstruction only).")
@click.option("--weights-png", type=click.Path(dir_okay=False), default=None, help="Write the fitted exposure weights per frame as a PNG.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-m", "--message", default=None, help="Commit message (default: a summary).")
@click.option("--fsc-png", type=click.Path(dir_okay=False), default=None, help="Write the FSC curves before/after as a PNG.")
@click.pass_context
def refine(ctx: click.Context, iterations: int, species: str | None, params: str, grid: str, levels: int,
           temporal_samples: int, resolution: float | None, lbfgs_iterations: int, denoise: bool,
           denoise_iterations: int, min_ctf_resolution: float, isotropic_weights: bool, weights_per_series: bool,
           weights_in_target: bool, weights_png: str | None,
           device: str, seed: int, message: str | None, fsc_png: str | None) -> None:
    """Refine the population at HEAD as M does (motion and poses of all
    particles of all species in each series jointly) and commit the result."""
    from tqdm import tqdm

    from ..refine.run import RefineOptions, refine_repository

    repo = _repo(ctx)
    opts = RefineOptions(
        iterations=iterations,
        species=tuple(s for s in species.split(",") if s) if species else None,
        params=tuple(p.strip() for p in params.split(",") if p.strip()),
        grid=_grid(grid),
        levels=levels,
        temporal_samples=temporal_samples,
        resolution_angstrom=resolution,
        device=device,
        lbfgs_iterations=lbfgs_iterations,
        denoise=denoise,
        denoise_iterations=denoise_iterations,
        min_ctf_resolution_angstrom=min_ctf_resolution,
        anisotropic_weights=not isotropic_weights,
        weights_per_series=weights_per_series,
        weights_in_target=weights_in_target,
        weights_png=weights_png,
        seed=seed,
        message=message,
    )
    bar = tqdm(total=None, desc="refine", file=sys.stderr, unit=" step", disable=None)

    def progress(msg: str) -> None:
        bar.set_postfix_str(msg[:70])
        bar.update(1)

    try:
        out = refine_repository(repo, opts, progress=progress)
    finally:
        bar.close()
    if iterations == 0:
        click.echo("iterations 0: reconstructed at the current parameters (a set-up check); nothing was refined")
    click.echo(f"[{repo.head().branch or 'detached HEAD'} {out.commit[:12] if out.commit else '-'}] "
               f"{out.series} series, {out.particle_frames} particle-frames, {out.seconds:.0f} s")
    click.echo(f"{'species':<16}{'particles':>10}{'before (Å)':>12}{'after (Å)':>11}")
    for s in out.species.values():
        click.echo(f"{s.name:<16}{s.particles:>10}{s.resolution_before:>12.2f}{s.resolution_after:>11.2f}")
    for key, im in out.imaging.items():
        bt = im["beam_tilt_mrad"]
        click.echo(f"{key}: astigmatism {im['astigmatism_angstrom']:.1f} Å at {im['astigmatism_angle_deg']:.1f}°, beam tilt "
                   f"({bt[0]:.3f}, {bt[1]:.3f}) mrad, defocus changed by " +
                   ", ".join(f"{k} {v:.0f} Å RMS" for k, v in im["defocus_change_rms_angstrom"].items()))
    if weights_png and out.weights:
        click.echo(f"wrote {weights_png}")
    if fsc_png:
        from ..refine.fsc import plot_fsc

        plot_fsc({f"{s.name} refined": s.fsc_after for s in out.species.values() if s.fsc_after is not None}, fsc_png)
        click.echo(f"wrote {fsc_png}")
