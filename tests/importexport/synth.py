"""Synthetic Warp/RELION/M inputs for the import/export tests.

Everything here is written the way the programs write it (Warp's
``Movie.SaveMeta`` element order through :func:`mrepo.io.warp_xml.write_warp_xml`,
which reproduces .NET's XmlTextWriter byte for byte on the real fixtures;
M's ``Population/DataSource/Species.Save`` through ``write_m_container``;
M's ``Star.Save`` table layout; RELION 3.1 STAR through the ``starfile``
package), and the images follow RELION's conventions: a particle with Euler
angles A shows an atom at r at (A r)_xy, its white-protein image is the
projection convolved with RELION's CTF, and the raw frames have dark protein.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrepo.io.mrc import write_mrc
from mrepo.io.warp_xml import CubicGridData, MContainer, MRecords, WarpSeries, write_m_container, write_warp_xml


# --------------------------------------------------------------------------------------
# physics (numpy, RELION conventions)
# --------------------------------------------------------------------------------------


def euler(angles_deg: np.ndarray) -> np.ndarray:
    """RELION's Euler_angles2matrix for (N, 3) rot, tilt, psi (deg): (N, 3, 3)."""
    a = np.deg2rad(np.asarray(angles_deg, float).reshape(-1, 3))
    ca, sa, cb, sb, cg, sg = np.cos(a[:, 0]), np.sin(a[:, 0]), np.cos(a[:, 1]), np.sin(a[:, 1]), np.cos(a[:, 2]), np.sin(a[:, 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.stack([np.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], -1),
                     np.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], -1),
                     np.stack([sc, ss, cb], -1)], axis=1)


def relion_ctf(shape: tuple[int, int], px: float, du: float, dv: float, angle_deg: float, kv: float = 300.0, cs_mm: float = 2.7, q0: float = 0.1) -> np.ndarray:
    """RELION's CTF (ctf.h getCTF) on the full FFT grid of an image (DC at [0, 0])."""
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1.0 + v * 0.978466e-6))
    ky = np.fft.fftfreq(shape[0], px)[:, None]
    kx = np.fft.fftfreq(shape[1], px)[None, :]
    u2 = kx**2 + ky**2
    ang = np.arctan2(ky, kx) - np.deg2rad(angle_deg)
    defocus = -(du + dv) / 2 + -(du - dv) / 2 * np.cos(2 * ang)
    k1 = np.pi * lam
    k2 = np.pi / 2 * cs_mm * 1e7 * lam**3
    k3 = np.arctan(q0 / np.sqrt(1 - q0**2))
    return -np.sin(k1 * defocus * u2 + k2 * u2**2 - k3)


def atom_model(n_atoms: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) x, y, z (Å) of random atoms in a ball, clearly chiral."""
    pts = []
    while len(pts) < n_atoms:
        p = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(p) < radius:
            pts.append(p)
    return np.asarray(pts)


def render_volume(atoms: np.ndarray, box: int, px: float, sigma: float) -> np.ndarray:
    """(box, box, box) z, y, x sum of 3D Gaussians (centre at index box // 2)."""
    g = (np.arange(box) - box // 2) * px
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((box, box, box))
    for a in atoms:
        vol += np.exp(-((x - a[0]) ** 2 + (y - a[1]) ** 2 + (z - a[2]) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def splat(image: np.ndarray, atoms: np.ndarray, angles_deg: np.ndarray, centres_px: np.ndarray, px: float, sigma: float, half: int = 24) -> None:
    """Add the projections of the atom model at (N, 2) centres (px) with (N, 3) angles to ``image``."""
    mats = euler(angles_deg)
    for m, c in zip(mats, centres_px):
        pos = (atoms @ m.T)[:, :2] / px + c  # (A r)_xy
        ix, iy = int(round(c[0])), int(round(c[1]))
        ys, xs = np.mgrid[iy - half : iy + half, ix - half : ix + half]
        patch = np.zeros(xs.shape)
        s = sigma / px
        for p in pos:
            patch += np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * s**2))
        image[iy - half : iy + half, ix - half : ix + half] += patch * (np.sqrt(2 * np.pi) * sigma / px)


def fourier_shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``image`` moved by (dx, dy) px: out(p) = image(p − d)."""
    ky = np.fft.fftfreq(image.shape[0])[:, None]
    kx = np.fft.fftfreq(image.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * np.exp(-2j * np.pi * (kx * dx + ky * dy))).real


# --------------------------------------------------------------------------------------
# Warp frame series
# --------------------------------------------------------------------------------------


def grid(name: str, dims: tuple[int, int, int], values: np.ndarray, margins=(0.0, 0.0, 0.0)) -> CubicGridData:
    return CubicGridData(name, dims, np.asarray(values, np.float32).reshape(dims[2], dims[1], dims[0]), tuple(margins))


def movie_series(*, px: float, defocus_um: float, delta_um: float, angle: float, dose: float, frames: int,
                 shifts_x: np.ndarray, shifts_y: np.ndarray, data_dir: str = "") -> WarpSeries:
    """A ``<Movie>`` as Warp's Movie.SaveMeta writes it (element order of SaveMeta)."""
    s = WarpSeries(kind="movie")
    s.attributes.update({"DataDirectory": data_dir, "UnselectFilter": "False", "UnselectManual": "null",
                         "CTFResolutionEstimate": "4.2", "MeanFrameMovement": "1.1", "MaskPercentage": "0",
                         "Bfactor": "0", "Weight": "1", "MagnificationCorrection": "1, 0, 0, 1"})
    s.params["OptionsCTF"] = {"Window": "256", "PixelSize": f"{px}", "BinTimes": "0", "Voltage": "300", "Cs": "2.7", "Amplitude": "0.1"}
    s.params["CTF"] = {"PixelSize": f"{px}", "Defocus": f"{defocus_um}", "DefocusDelta": f"{delta_um}", "DefocusAngle": f"{angle}",
                       "PhaseShift": "0", "Voltage": "300", "Cs": "2.7", "Amplitude": "0.1", "Bfactor": "0", "Scale": "1",
                       "BeamTilt": "0,0", "ZernikeCoeffsOdd": "", "ZernikeCoeffsEven": "", "Distortion": "1, 0, 0, 1"}
    for name in ("GridCTF", "GridCTFDefocusDelta", "GridCTFDefocusAngle", "GridCTFCs", "GridCTFPhase", "GridCTFDoming"):
        s.grids[name] = grid(name, (1, 1, 1), [0.0])
    s.params["OptionsMovement"] = {"RangeMin": "0.05", "RangeMax": "0.25", "Bfactor": "-500", "PixelSize": f"{px}",
                                   "DosePerAngstromFrame": f"{dose}"}
    s.grids["GridMovementX"] = grid("GridMovementX", (1, 1, frames), shifts_x)
    s.grids["GridMovementY"] = grid("GridMovementY", (1, 1, frames), shifts_y)
    s.grids["GridLocalMovementX"] = grid("GridLocalMovementX", (1, 1, 1), [0.0])
    s.grids["GridLocalMovementY"] = grid("GridLocalMovementY", (1, 1, 1), [0.0])
    for name in ("GridAngleX", "GridAngleY", "GridAngleZ", "GridDoseBfacs", "GridDoseBfacsDelta", "GridDoseBfacsAngle",
                 "GridLocationBfacs"):
        s.grids[name] = grid(name, (1, 1, 1), [0.0])
    s.grids["GridDoseWeights"] = grid("GridDoseWeights", (1, 1, 1), [1.0])
    s.grids["GridLocationWeights"] = grid("GridLocationWeights", (1, 1, 1), [1.0])
    s.order = list(s.params)[:2] + [k for k in s.grids if k.startswith("GridCTF")] + ["OptionsMovement"] + [
        k for k in s.grids if not k.startswith("GridCTF")]
    return s


@dataclass
class FrameProject:
    """A Warp frame-series project with particles of a known map."""

    folder: Path
    px: float
    box: int
    atoms: np.ndarray
    sigma: float
    items: list[str]
    defocus_um: list[float]
    coords_px: np.ndarray      # (N, 2) true centres in the micrograph (px)
    angles: np.ndarray         # (N, 3)
    item_of: np.ndarray        # (N,) index into items
    half: np.ndarray           # (N,) 1/2
    shifts: list[np.ndarray] = field(default_factory=list)  # per item (frames, 2) Å
    clean: list[np.ndarray] = field(default_factory=list)   # per item white-protein image (CTF applied)


def frame_project(folder: Path, *, n_items: int = 2, frames: int = 4, size: int = 384, px: float = 2.5, box: int = 48,
                  spacing: int = 56, noise: float = 1.0, seed: int = 0, sigma: float = 3.0, n_atoms: int = 30,
                  radius: float = 28.0, motion_angstrom: float = 6.0, dose: float = 1.5) -> FrameProject:
    """Write ``folder/movie_00k.mrc`` (frames with dark protein and per-frame motion) and
    ``movie_00k.xml`` (CTF, GridMovementX/Y holding that motion) for ``n_items`` movies."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    atoms = atom_model(n_atoms, radius, rng)
    margin = box // 2 + 4
    grid_pos = np.arange(margin, size - margin + 1, spacing)
    centres = np.array([(x, y) for y in grid_pos for x in grid_pos], float)
    coords, angles, item_of, halves, shifts_all, clean_all, items, defoci = [], [], [], [], [], [], [], []
    for k in range(n_items):
        name = f"movie_{k + 1:03d}"
        items.append(name)
        c = centres + rng.uniform(-3, 3, centres.shape)
        a = np.stack([rng.uniform(-180, 180, len(c)), np.rad2deg(np.arccos(rng.uniform(-1, 1, len(c)))), rng.uniform(-180, 180, len(c))], 1)
        img = np.zeros((size, size))
        splat(img, atoms, a, c, px, sigma)
        df = 1.0 + 0.4 * k
        defoci.append(df)
        ctf = relion_ctf(img.shape, px, df * 1e4 + 200, df * 1e4 - 200, 30.0)
        white = np.fft.ifft2(np.fft.fft2(img) * ctf).real
        clean_all.append(white)
        t = np.linspace(0, 1, frames)
        sx = motion_angstrom * (t - 0.5) + rng.normal(0, 0.5, frames)
        sy = -0.7 * motion_angstrom * (t - 0.5) ** 2 + rng.normal(0, 0.5, frames)
        stack = np.stack([fourier_shift(-white, -sx[f] / px, -sy[f] / px) + rng.normal(0, noise * np.sqrt(frames), white.shape)
                          for f in range(frames)]).astype(np.float32)
        write_mrc(folder / f"{name}.mrc", stack, px, stack=True)
        s = movie_series(px=px, defocus_um=df, delta_um=0.04, angle=30.0, dose=dose, frames=frames, shifts_x=sx, shifts_y=sy)
        write_warp_xml(folder / f"{name}.xml", s)
        shifts_all.append(np.stack([sx, sy], 1))
        coords.append(c)
        angles.append(a)
        item_of.append(np.full(len(c), k))
        halves.append(rng.integers(1, 3, len(c)))
    return FrameProject(folder, px, box, atoms, sigma, items, defoci, np.concatenate(coords), np.concatenate(angles),
                        np.concatenate(item_of), np.concatenate(halves), shifts_all, clean_all)


def write_relion31_star(path: Path, proj: FrameProject, *, origin_px: np.ndarray | None = None, micrograph_dir: str = "MotionCorr/job002/") -> None:
    """The project's particles as a RELION 3.1 refinement STAR (written by ``starfile``)."""
    import pandas as pd
    import starfile

    n = len(proj.coords_px)
    origin = np.zeros((n, 2)) if origin_px is None else origin_px
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnMicrographOriginalPixelSize": [proj.px],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [proj.px], "rlnImageSize": [proj.box], "rlnImageDimensionality": [2]})
    df = [proj.defocus_um[k] * 1e4 for k in proj.item_of]
    parts = pd.DataFrame({
        "rlnCoordinateX": proj.coords_px[:, 0] + origin[:, 0], "rlnCoordinateY": proj.coords_px[:, 1] + origin[:, 1],
        "rlnAngleRot": proj.angles[:, 0], "rlnAngleTilt": proj.angles[:, 1], "rlnAnglePsi": proj.angles[:, 2],
        "rlnOriginXAngst": origin[:, 0] * proj.px, "rlnOriginYAngst": origin[:, 1] * proj.px,
        "rlnDefocusU": np.array(df) + 200, "rlnDefocusV": np.array(df) - 200, "rlnDefocusAngle": np.full(n, 30.0),
        "rlnMicrographName": [f"{micrograph_dir}{proj.items[k]}.mrc" for k in proj.item_of],
        "rlnImageName": [f"{i + 1:06d}@Extract/job005/{proj.items[k]}.mrcs" for i, k in enumerate(proj.item_of)],
        "rlnOpticsGroup": np.ones(n, int), "rlnRandomSubset": proj.half, "rlnClassNumber": np.ones(n, int),
        "rlnGroupName": [f"group_{k}" for k in proj.item_of],
    })
    starfile.write({"optics": optics, "particles": parts}, path)


# --------------------------------------------------------------------------------------
# M
# --------------------------------------------------------------------------------------


def m_hash(root_name: str, path: Path) -> str:
    """M's data hash written out independently from the definition in Movie.GetDataHash."""
    data = path.read_bytes()[: 1 << 19]
    h = hashlib.sha1(np.frombuffer(root_name.encode("utf-16-le"), np.uint8).tobytes() + data).digest()
    return base64.b64encode(h).decode().rstrip("=").replace("/", "-").replace("+", "_")


def write_m_star(path: Path, columns: dict[str, list[str]]) -> None:
    """A table as Warp's ``Star.Save`` writes it: right-aligned columns, two spaces apart."""
    names = list(columns)
    rows = list(zip(*columns.values()))
    widths = [max(len(v) for v in columns[n]) for n in names]
    out = ["\n", "data_\n", "\n", "loop_\n"] + [f"_{n} #{i + 1}\n" for i, n in enumerate(names)]
    for r in rows:
        out.append("".join(" " * (2 + w - len(v)) + v for v, w in zip(r, widths)) + "\n")
    path.write_text("".join(out))


def guid(i: int) -> str:
    return str(uuid.UUID(int=0x1234_0000_0000_0000_0000_0000_0000_0000 + i))


def m_population(folder: Path, proj: FrameProject, half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, *, temporal: int = 3,
                 seed: int = 1, hash_override: dict[str, str] | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """An M population over the frame project: ``.population``, ``.source`` next to the
    movies' XML, ``species/<name>_<guid8>/<name>.species`` with maps and particles
    holding ``temporal`` samples per particle. Returns the population path and
    the trajectories (N, T, 3) Å and angles (N, T, 3) written."""
    rng = np.random.default_rng(seed)
    g_pop, g_src, g_sp = guid(1), guid(2), guid(3)
    hashes = {name: m_hash(name, proj.folder / f"{name}.mrc") for name in proj.items}
    hashes.update(hash_override or {})
    src = MContainer("source", {"GUID": g_src, "Version": "", "DontVersion": "False", "PreviousVersion": "", "Name": "movies",
                                "RelativeWeight": "1", "RelativeBFactor": "0, 0, 0", "PixelSize": f"{proj.px}",
                                "DimensionsX": "3712", "DimensionsY": "3712", "DimensionsZ": "1400", "FrameLimit": "-1",
                                "GainFlipX": "False", "GainFlipY": "False", "GainTranspose": "False",
                                "DosePerAngstromFrame": "1.5", "EERGroupFrames": "10", "GainPath": "", "DefectsPath": ""},
                     {"UsedSpecies": MRecords("Species", [{"GUID": g_sp, "Version": "abc"}]),
                      "Files": MRecords("File", [{"Hash": hashes[n], "Name": f"{n}.mrc", "Weight": "1", "Bfactor": "0"} for n in proj.items])})
    write_m_container(proj.folder / "movies.source", src)
    spdir = folder / "species" / f"apo_{g_sp[:8]}"
    spdir.mkdir(parents=True, exist_ok=True)
    sp = MContainer("species", {"GUID": g_sp, "Version": "abc", "DontVersion": "False", "PreviousVersion": "", "Name": "apo",
                                "PixelSize": f"{proj.px}", "MolecularWeightkDa": "100", "DiameterAngstrom": "90", "Symmetry": "C1",
                                "HelicalUnits": "1", "TemporalResolutionMovement": str(temporal),
                                "TemporalResolutionRotation": str(temporal), "GlobalResolution": "7.5"},
                    {"UsedDataSources": MRecords("DataSource", [{"GUID": g_src, "Version": ""}])})
    write_m_container(spdir / "apo.species", sp)
    for suffix, data in (("_half1.mrc", half1), ("_half2.mrc", half2), ("_mask.mrc", mask)):
        write_mrc(spdir / f"apo{suffix}", data, proj.px)
    n = len(proj.coords_px)
    base = np.concatenate([proj.coords_px * proj.px, np.zeros((n, 1))], axis=1)
    traj = base[:, None, :] + rng.normal(0, 0.5, (n, temporal, 3))
    ang = proj.angles[:, None, :] + rng.normal(0, 0.3, (n, temporal, 3))
    traj = np.round(traj, 5)
    ang = np.round(ang, 5)
    cols: dict[str, list[str]] = {}
    for i in range(temporal):
        for k, a in enumerate("XYZ"):
            cols[f"wrpCoordinate{a}{i + 1}"] = [f"{v:.5f}" for v in traj[:, i, k]]
    for i in range(temporal):
        for k, a in enumerate(("Rot", "Tilt", "Psi")):
            cols[f"wrpAngle{a}{i + 1}"] = [f"{v:.5f}" for v in ang[:, i, k]]
    cols["wrpRandomSubset"] = [str(h) for h in proj.half]
    cols["wrpSourceName"] = [f"{proj.items[k]}.mrc" for k in proj.item_of]
    cols["wrpSourceHash"] = [hashes[proj.items[k]] for k in proj.item_of]
    cols["aisFilamentID"] = [str(i % 7) for i in range(n)]
    write_m_star(spdir / "apo_particles.star", cols)
    pop = MContainer("population", {"Name": "toy population"},
                     {"Species": MRecords("Species", [{"GUID": g_sp, "Path": f"species/apo_{g_sp[:8]}/apo.species"}]),
                      "Sources": MRecords("Source", [{"GUID": g_src, "Path": str((proj.folder / "movies.source").relative_to(folder))}]),
                      "LastRefinementOptions": {"NIterations": "3", "DoDefocus": "True"}})
    write_m_container(folder / "toy.population", pop)
    return folder / "toy.population", traj, ang
