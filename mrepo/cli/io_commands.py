"""CLI commands: io (registered on :data:`mrepo.cli.main`).

``mrepo import warp|relion|m``, ``mrepo export relion|warp`` (subcommands of
the ``export`` group), ``mrepo inspect`` and ``mrepo verify``. Each command
calls one library function and prints its report.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import InvalidInput, MrepoError
from . import _repo, export, human_bytes, main


class _Progress:
    """A tqdm bar on stderr (terminals only) fed by the library's progress callbacks."""

    def __init__(self, desc: str, total: int | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=None, leave=False)

    def __call__(self, what: str) -> None:
        self.bar.set_postfix_str(what[:40], refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _floats3(text: str | None, what: str) -> tuple[float, float, float] | None:
    if not text:
        return None
    try:
        v = tuple(float(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise InvalidInput(f"{what} wants three numbers like 4096,4096,2000", text) from None
    if len(v) != 3 or min(v) <= 0:
        raise InvalidInput(f"{what} wants three positive numbers like 4096,4096,2000", text)
    return v  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------


@main.group("import")
def import_group() -> None:
    """Import a Warp project, a RELION refinement or an M population (one commit each)."""


@import_group.command("warp")
@click.argument("warp_dir", type=click.Path())
@click.option("--source", metavar="NAME", help="Data source name (default: the folder's name).")
@click.option("--data-dir", type=click.Path(), help="Folder with the raw data, overriding the XMLs' DataDirectory.")
@click.option("--dose-per-frame", type=float, help="e⁻/Å² per frame of frame series (negative: total per movie).")
@click.option("--tomo-dims", metavar="X,Y,Z", help="Tomogram size in px of the tilt images (tilt series).")
@click.option("-m", "--message", help="Commit message.")
@click.pass_context
def import_warp_cmd(ctx: click.Context, warp_dir: str, source: str | None, data_dir: str | None, dose_per_frame: float | None,
                    tomo_dims: str | None, message: str | None) -> None:
    """Import a Warp processing folder (frame- or tilt-series XML and their raw data) as a data source."""
    from ..io.warp_import import import_warp

    repo = _repo(ctx)
    bar = _Progress("importing items")
    try:
        rep = import_warp(repo, warp_dir, source=source, data_dir=data_dir, dose_per_frame=dose_per_frame,
                          tomo_dims_px=_floats3(tomo_dims, "--tomo-dims"), message=message, progress=bar)
    finally:
        bar.close()
    for src, names in rep.sources.items():
        click.echo(f"imported {len(names)} item(s) into source {src} ({human_bytes(rep.bytes)} of raw data)")
    for name, notes in rep.notes.items():
        for n in notes:
            click.echo(f"  note: {name}: {n}")
    click.echo(f"[{rep.commit[:12]}] committed")


@import_group.command("relion")
@click.option("--particles", required=True, type=click.Path(), help="Particles STAR (run_data.star).")
@click.option("--half1", required=True, type=click.Path(), help="First half-map (MRC).")
@click.option("--half2", required=True, type=click.Path(), help="Second half-map (MRC).")
@click.option("--mask", type=click.Path(), help="Mask (MRC).")
@click.option("--species", required=True, metavar="NAME", help="Species name.")
@click.option("--diameter", required=True, type=float, metavar="Å", help="Particle diameter in Å.")
@click.option("--symmetry", default="C1", show_default=True, help="Point group (C1, Cn, Dn, T, O, I).")
@click.option("--allow-unmatched", is_flag=True, help="Leave out particles whose micrograph matches no item (default: error).")
@click.option("--source", metavar="NAME", help="Match particles only to items of this data source.")
@click.option("--coordinate-pixel-size", type=float, metavar="Å", help="Pixel size of rlnCoordinateX/Y (default: rlnMicrographPixelSize, else the item's).")
@click.option("--tomograms", type=click.Path(), help="RELION 5 tomograms.star (sizes for centred coordinates).")
@click.option("-m", "--message", help="Commit message.")
@click.pass_context
def import_relion_cmd(ctx: click.Context, particles: str, half1: str, half2: str, mask: str | None, species: str, diameter: float,
                      symmetry: str, allow_unmatched: bool, source: str | None, coordinate_pixel_size: float | None,
                      tomograms: str | None, message: str | None) -> None:
    """Import a RELION refinement (particles, half-maps, mask) as a species of the repository's items."""
    from ..io.relion_import import import_relion

    repo = _repo(ctx)
    bar = _Progress("importing species")
    try:
        from ..refine.denoise import attach_initial_denoiser

        rep = import_relion(repo, particles, half1, half2, species=species, diameter_angstrom=diameter, mask=mask, symmetry=symmetry,
                            prepare_species=attach_initial_denoiser,
                            allow_unmatched=allow_unmatched, source=source, coordinate_pixel_size=coordinate_pixel_size,
                            tomograms=tomograms, message=message, progress=bar)
    finally:
        bar.close()
    left = f", left out {rep.unmatched} unmatched" if rep.unmatched else ""
    click.echo(f"imported species {rep.species}: {rep.particles} particles in {rep.items} item(s){left}; "
               f"maps {rep.box}^3 at {rep.pixel_size_angstrom:g} Å/px")
    for n in rep.notes:
        click.echo(f"  note: {n}")
    click.echo(f"[{rep.commit[:12]}] committed")


@import_group.command("m")
@click.argument("population_file", type=click.Path())
@click.option("--data-dir", type=click.Path(), help="Folder with the raw data, overriding the XMLs' DataDirectory.")
@click.option("--allow-unmatched", is_flag=True, help="Leave out particles whose source hash matches no item.")
@click.option("-m", "--message", help="Commit message.")
@click.pass_context
def import_m_cmd(ctx: click.Context, population_file: str, data_dir: str | None, allow_unmatched: bool, message: str | None) -> None:
    """Import an M population (.population with its .source and .species) with particle trajectories."""
    from ..io.m_import import import_m

    repo = _repo(ctx)
    bar = _Progress("importing population")
    try:
        from ..refine.denoise import attach_initial_denoiser

        rep = import_m(repo, population_file, data_dir=data_dir, allow_unmatched=allow_unmatched, message=message, progress=bar,
                       prepare_species=attach_initial_denoiser)
    finally:
        bar.close()
    for s, n in rep.sources.items():
        click.echo(f"imported source {s}: {n} item(s)")
    for s, n in rep.species.items():
        left = f", left out {rep.unmatched[s]} unmatched" if rep.unmatched.get(s) else ""
        click.echo(f"imported species {s}: {n} particles{left}")
    for n in rep.notes:
        click.echo(f"  note: {n}")
    click.echo(f"[{rep.commit[:12]}] committed")


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------


@export.command("relion")
@click.argument("rev")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--species", required=True, metavar="NAME", help="Species to export.")
@click.option("--trajectories", is_flag=True, help="Add every temporal sample as _mrepoTraj* columns.")
@click.option("--extract", "extract_box", type=int, metavar="BOX", help="Also extract particle images (box in px) from the raw frames.")
@click.option("--no-invert", is_flag=True, help="Keep the raw contrast of extracted images (default: invert to white protein).")
@click.option("--relion-version", type=click.Choice(["5", "3.1"]), default="5", show_default=True,
              help="STAR layout for frame-series particles (3.1 is also read by RELION 4).")
@click.pass_context
def export_relion_cmd(ctx: click.Context, rev: str, out_dir: str, species: str, trajectories: bool, extract_box: int | None,
                      no_invert: bool, relion_version: str) -> None:
    """Write species NAME at REV as RELION particles STAR, half-maps and mask (and particle images)."""
    from ..io.relion_export import export_relion

    bar = _Progress("exporting")
    try:
        rep = export_relion(_repo(ctx), rev, species, out_dir, trajectories=trajectories, extract_box=extract_box,
                            invert=not no_invert, flavour="relion5" if relion_version == "5" else "relion3.1", progress=bar)
    finally:
        bar.close()
    click.echo(f"wrote {rep.particles} particles to {rep.particles_star} ({rep.flavour})")
    if rep.images:
        click.echo(f"wrote {rep.images} particle images in {len(rep.stacks)} stack(s) under {rep.out_dir / 'Particles'}")
    for role, path in rep.maps.items():
        click.echo(f"wrote {role} to {path}")
    if rep.tomograms_star:
        click.echo(f"wrote {rep.tomograms_star}")
    for n in rep.notes:
        click.echo(f"  note: {n}")


@export.command("warp")
@click.argument("rev")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--source", metavar="NAME", help="Only this data source.")
@click.option("--data-dir", help="Set DataDirectory (where Warp finds the raw data) in every XML.")
@click.pass_context
def export_warp_cmd(ctx: click.Context, rev: str, out_dir: str, source: str | None, data_dir: str | None) -> None:
    """Write every item at REV as Warp XML with its current models (OUT_DIR/<source>/<item>.xml)."""
    from ..io.warp_export import export_warp

    rep = export_warp(_repo(ctx), rev, out_dir, source=source, data_dir=data_dir)
    click.echo(f"wrote {len(rep.files)} Warp XML file(s) under {rep.out_dir}")
    for n in rep.notes:
        click.echo(f"  note: {n}")


# --------------------------------------------------------------------------------------
# inspect, verify
# --------------------------------------------------------------------------------------


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.pass_context
def inspect(ctx: click.Context, files: tuple[str, ...]) -> None:
    """Print what mrepo understands of STAR, MRC, Warp/M XML, TIFF and .npy files."""
    from ..io.inspect import format_inspection, inspect_file

    failed = 0
    for i, f in enumerate(files):
        try:
            text = format_inspection(inspect_file(f))
        except MrepoError as e:
            click.echo(f"error: {e}", err=True)
            failed += 1
            continue
        if i:
            click.echo("")
        click.echo(text.rstrip("\n"))
    if failed:
        ctx.exit(1)


@main.command()
@click.argument("rev", default="HEAD")
@click.option("--no-raw", is_flag=True, help="Do not re-hash the items' raw data (faster).")
@click.pass_context
def verify(ctx: click.Context, rev: str, no_raw: bool) -> None:
    """Recompute the provenance digests of the population at REV; exit 1 on any mismatch."""
    repo = _repo(ctx)
    problems = repo.verify(rev, raw=not no_raw)
    pop: Any = repo.population(rev, grids=False)
    for p in problems:
        click.echo(f"mismatch: {p}", err=True)
    n_items = sum(len(s.items) for s in pop.sources.values())
    summary = f"verified {n_items} item(s) and {len(pop.species)} species at {repo.resolve(rev)[:12]}"
    if problems:
        click.echo(f"{summary}: {len(problems)} mismatch(es)")
        ctx.exit(1)
    click.echo(f"{summary}: ok")
