"""Noise2noise map denoising: a small 3D U-Net per species (M's denoiser, DESIGN.md §4).

What it does
------------
A species has two gold-standard half-maps: the same signal with independent
noise. A network trained to predict half-map 2 from half-map 1 (and 1 from 2)
cannot predict the other half's noise, so at the minimum of the squared error
it outputs the expected signal given its input: it denoises (noise2noise,
Lehtinen et al. 2018). M trains one such network per species and keeps it
with the species, so it keeps improving as the species is refined; it filters
each half-map to its *local* resolution instead of one global filter.

1. **Whitening.** Both halves are divided, shell by shell in Fourier space, by
   the square root of their mean radial power spectrum (and scaled to unit
   variance), so that every frequency reaches the network at the same scale:
   without it the few strong low frequencies would swamp the rest and the
   network would learn little more than a low-pass filter.
2. **Bands.** A whitened map is split into ``bands`` frequency bands (raised
   cosines at equal steps from 0 to Nyquist that add up to one); the network
   sees the bands' magnitudes as input channels and outputs, for every voxel
   and band, a gain between 0 and 1; the denoised map is the sum of the bands
   times their gains. The network therefore learns a *local filter*: how much of each
   frequency band to keep at each place, from what it sees there. Its gains
   start at the global (masked) FSC of each band, the best global linear
   filter for one half-map (SNR / (1 + SNR) = FSC), and training makes them
   local. The output of a half is a filtered version of that half only, so
   the two halves' outputs share nothing but the network.
3. **Training.** Mini-batches of random matching crops (``crop``³ voxels, 64
   by default) at the same random position of both halves, in the same random
   orientation (one of the 48 symmetries of the cube: 24 rotations, with or
   without a mirror), input one half, target the other (direction random per
   sample); Adam, learning rate decaying exponentially from 1e-3 to 1e-5 over
   the session. The loss is, band by band, the squared difference between the
   input's gained band and the other half's band, each band weighted by the
   inverse of its energy so that all bands count the same (the few
   low-frequency Fourier voxels carry most of a map's density; in a plain
   whitened loss they would hardly count). Training resumes from given weights.
4. **Denoising.** Each half-map (and their average) goes through the network
   on its own, in overlapping windows whose outputs are blended with smooth
   weights; the output is un-whitened (the inverse of step 1), so the denoised
   maps are in the units and spectral weighting of the input maps.

The network (:class:`UNet3D`): a 2-level U-Net of 3×3×3 convolutions with
LeakyReLU, max-pool down, trilinear up-sampling, skip connections, and a
1×1×1 output convolution to one gain logit per band (sigmoid).

Every function computes on the device it is given (``cpu`` or ``cuda``). On
the CPU training is deterministic: the same seed, weights, maps and thread
count give the same weights bit for bit.

Storage (see :func:`denoise_species`): the weights are arrays
``species/<sp>/denoiser/<param>`` (content-addressed, so unchanged weights
cost nothing), described by ``Species.denoiser``; the denoised maps are
``Species.maps['denoised_half1' | 'denoised_half2' | 'denoised']`` and the
local resolution ``Species.maps['local_resolution']`` (:mod:`.localres`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CorruptObject, DegenerateResult, InvalidInput, NotFound
from .device import pick_device

__all__ = [
    "ARCHITECTURE",
    "DenoiserConfig",
    "TrainSettings",
    "UNet3D",
    "Whitening",
    "DenoiseOutput",
    "DenoiseResult",
    "build_model",
    "model_weights",
    "load_model",
    "initial_denoiser",
    "spectral_whitening",
    "band_split",
    "band_fsc",
    "set_initial_gains",
    "band_weights",
    "cube_symmetry",
    "train_denoiser",
    "apply_denoiser",
    "denoise_half_maps",
    "weights_digest",
    "denoiser_description",
    "write_denoiser",
    "read_denoiser",
    "attach_initial_denoiser",
    "describe_denoiser",
    "update_species_denoiser",
    "denoise_species",
    "denoise_repository",
    "DENOISED_ROLES",
]

ARCHITECTURE = "unet3d-bandgain"
DENOISED_ROLES = ("denoised_half1", "denoised_half2", "denoised")
LOCAL_RES_ROLE = "local_resolution"


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser.

    Attributes
    ----------
    channels: feature channels of the first level; level ``l`` has ``channels * 2**l``.
    depth: number of down-sampling steps (levels below the first); inputs must be
        divisible by ``2**depth`` voxels along each axis.
    bands: frequency bands between 0 and Nyquist (input channels and output gains).
    gain_level: level at which the gains are predicted (0: full resolution; 1: half,
        up-sampled trilinearly): local resolution varies slowly, and smooth gains
        filter the noise rather than modulate it.
    negative_slope: slope of the LeakyReLU activations for negative inputs.
    """

    channels: int = 12
    depth: int = 2
    bands: int = 8
    gain_level: int = 1
    negative_slope: float = 0.1

    def __post_init__(self) -> None:
        if (not 1 <= int(self.channels) <= 256 or not 1 <= int(self.depth) <= 5 or not 2 <= int(self.bands) <= 64
                or not 0 <= int(self.gain_level) < int(self.depth)):
            raise InvalidInput("denoiser needs 1-256 channels, 1-5 levels, 2-64 bands and a gain level below the depth",
                               f"{self.channels}, {self.depth}, {self.bands}, {self.gain_level}")

    @property
    def multiple(self) -> int:
        return 2 ** int(self.depth)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": ARCHITECTURE,
            "input": "|bands|",
            "channels": [int(self.channels) * 2**i for i in range(int(self.depth) + 1)],
            "depth": int(self.depth),
            "bands": int(self.bands),
            "kernel": 3,
            "convs_per_level": [1] + [2] * int(self.depth),
            "gain_level": int(self.gain_level),
            "activation": f"leaky_relu({self.negative_slope:g})",
            "down": "maxpool 2",
            "up": "trilinear 2",
            "output": "sigmoid gain per band",
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "DenoiserConfig":
        if d.get("name") != ARCHITECTURE:
            raise CorruptObject(f"unknown denoiser architecture {d.get('name')!r} (this version knows {ARCHITECTURE}; "
                                "`mrepo denoise --reset` starts a new denoiser)", "denoiser")
        try:
            slope = float(str(d.get("activation", "leaky_relu(0.1)")).split("(")[1].rstrip(")"))
            return cls(channels=int(d["channels"][0]), depth=int(d["depth"]), bands=int(d["bands"]),
                       gain_level=int(d.get("gain_level", 0)), negative_slope=slope)
        except (KeyError, IndexError, TypeError, ValueError):
            raise CorruptObject("denoiser architecture description is malformed", "denoiser") from None


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, slope: float, convs: int = 2) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.LeakyReLU(slope)]
        super().__init__(*layers)


class UNet3D(nn.Module):
    """A small 3D U-Net that filters a map locally: ``bands (B, J, D, H, W) -> map (B, 1, D, H, W)``.

    The input is a whitened map split into ``J = config.bands`` frequency bands
    (:func:`band_split`); the network predicts a gain in [0, 1] per voxel and band
    (:meth:`gains`) from the bands' magnitudes and returns the sum of the bands
    times their gains. The gains do not depend on the sign of the map, so the
    denoiser is an odd function (``d(-x) = -d(x)``): on noise alone its output has
    no mean pattern that two independent halves could share. ``D, H, W`` must be
    multiples of ``2**config.depth``.

    Layers (``c`` = ``config.channels``, depth 2): full resolution, one 3×3×3
    convolution J -> c on ``|bands|``; max-pool, two convolutions c -> 2c -> 2c; max-pool, two
    convolutions 2c -> 4c -> 4c; trilinear up-sampling, concatenation with the
    skip connection and two convolutions (6c -> 2c -> 2c); a 1×1×1 convolution
    2c -> J, the gain logits at half resolution (zero weights at initialisation,
    biases from the global FSC: :func:`set_initial_gains`), up-sampled
    trilinearly to full resolution (``gain_level`` 1, the default; with 0 the
    decoder goes on to full resolution with one convolution 3c -> c and the
    1×1×1 convolution is c -> J). LeakyReLU after every 3×3×3 convolution. The
    full-resolution level has one convolution because it costs the most on a
    CPU; trilinear up-sampling (not transposed convolutions) leaves no
    checkerboard pattern.
    """

    def __init__(self, config: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        self.config = config
        ch = [config.channels * 2**i for i in range(config.depth + 1)]
        s = config.negative_slope
        self.enc = nn.ModuleList([_Block(config.bands, ch[0], s, 1)] + [_Block(ch[i], ch[i + 1], s) for i in range(config.depth)])
        lv = config.gain_level
        self.dec = nn.ModuleList([_Block(ch[i + 1] + ch[i], ch[i], s, 1 if i == 0 else 2) for i in range(lv, config.depth)])
        self.out = nn.Conv3d(ch[lv], config.bands, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def gains(self, bands: torch.Tensor) -> torch.Tensor:
        """``(B, J, D, H, W)`` gains in [0, 1] for every voxel and band."""
        skips = []
        h = self.enc[0](bands.abs())
        for i in range(self.config.depth):
            skips.append(h)
            h = self.enc[i + 1](F.max_pool3d(h, 2))
        lv = self.config.gain_level
        for i in reversed(range(lv, self.config.depth)):
            up = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            h = self.dec[i - lv](torch.cat([up, skips[i]], dim=1))
        logits = self.out(h)
        if lv:
            logits = F.interpolate(logits, scale_factor=2**lv, mode="trilinear", align_corners=False)
        return torch.sigmoid(logits)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        return (self.gains(bands) * bands).sum(dim=1, keepdim=True)


def _memory_format(device: torch.device) -> torch.memory_format:
    # oneDNN's 3D convolutions are several times faster channels-last on the CPU
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU for the duration (restored after)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def build_model(config: DenoiserConfig = DenoiserConfig(), *, seed: int = 0) -> UNet3D:
    """A freshly initialised network (PyTorch's default initialisation, seeded; the
    output layer zero, so every gain is 0.5 until :func:`set_initial_gains`).
    Does not touch the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return UNet3D(config)


def set_initial_gains(model: UNet3D, gains: Any) -> None:
    """Make an untrained network output ``gains`` (``(J,)`` in (0, 1)) everywhere:
    zero output weights, biases ``logit(gains)`` (clipped to 0.001-0.999)."""
    g = np.clip(np.asarray(gains, np.float64), 1e-3, 1 - 1e-3)
    if g.shape != (model.config.bands,):
        raise InvalidInput(f"initial gains must be ({model.config.bands},)", str(g.shape))
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.copy_(torch.from_numpy(np.log(g / (1 - g))).to(model.out.bias))


def model_weights(model: UNet3D) -> dict[str, np.ndarray]:
    """The network's parameters as float32 numpy arrays, by parameter name."""
    return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in model.state_dict().items()}


def load_model(weights: Mapping[str, Any], config: DenoiserConfig = DenoiserConfig()) -> UNet3D:
    """A network with ``weights`` (parameter name -> array); raises
    :class:`~mrepo.errors.CorruptObject` if they do not fit ``config``."""
    model = UNet3D(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CorruptObject(f"denoiser weights do not fit the architecture ({what})", "denoiser")
    state = {}
    for k, ref in expected.items():
        a = np.asarray(weights[k][...], dtype=np.float32)
        if tuple(a.shape) != tuple(ref.shape):
            raise CorruptObject(f"denoiser weight {k} has shape {tuple(a.shape)}, expected {tuple(ref.shape)}", "denoiser")
        if not np.all(np.isfinite(a)):
            raise CorruptObject(f"denoiser weight {k} is not finite", "denoiser")
        state[k] = torch.from_numpy(a.copy())
    model.load_state_dict(state)
    return model


def initial_denoiser(species: Any = None, *, config: DenoiserConfig | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of an untrained denoiser for a new species (e.g. one created by import).

    Its gains are 0.5 everywhere until it first sees half-maps: the first
    training session (:func:`denoise_half_maps` with weights whose
    ``iterations_trained`` is 0, which :func:`denoise_species` does) resets them
    to the half-maps' global FSC. ``species`` is accepted for future per-species
    sizing and ignored now. Store the weights with :func:`write_denoiser` (or use
    :func:`attach_initial_denoiser`).
    """
    return model_weights(build_model(config or DenoiserConfig(), seed=seed))


def weights_digest(weights: Mapping[str, Any]) -> str:
    """BLAKE3 of the canonical JSON ``{param: array content digest}`` of a set of weights."""
    from ..model.digests import array_content_digest, json_digest

    return json_digest({k: array_content_digest(np.asarray(v[...], np.float32)) for k, v in sorted(weights.items())})


# ---------------------------------------------------------------------------
# whitening, bands, FSC
# ---------------------------------------------------------------------------
def _radius(n: int, device: torch.device) -> torch.Tensor:
    """Fourier radius (px) of every rfftn voxel of an ``n``³ cube, ``(n, n, n//2+1)`` float64."""
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64)
    kx = torch.arange(n // 2 + 1, device=device, dtype=torch.float64)
    return torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)


def _band_profiles(n: int, bands: int, device: torch.device) -> torch.Tensor:
    """``(J, n, n, n//2+1)`` raised-cosine band profiles that add up to one.

    Band ``j`` is centred on ``j / (J - 1)`` of Nyquist; the last band also takes
    everything beyond Nyquist (the corners of the cube).
    """
    r = _radius(n, device)
    delta = (n / 2) / (bands - 1)
    out = []
    for j in range(bands):
        x = ((r - j * delta) / delta).clamp(-1.0, 1.0)
        p = torch.cos(0.5 * math.pi * x) ** 2
        if j == bands - 1:
            p = torch.where(r > j * delta, torch.ones_like(p), p)
        out.append(p)
    return torch.stack(out)


@dataclass(frozen=True)
class Whitening:
    """A shell-wise spectral filter that flattens the half-maps' power spectrum.

    ``whitened = irfftn(rfftn(map - mean) * gain[shell]) / scale``; :meth:`unwhiten`
    inverts it (adding ``mean`` back).

    Attributes
    ----------
    gain: ``(n_shells,)`` float64, 1 / sqrt(mean power) per integer Fourier shell.
    scale: standard deviation of the whitened half-maps (so they have unit variance).
    mean: mean of the two half-maps.
    """

    gain: np.ndarray
    scale: float
    mean: float

    def _apply(self, volume: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        n = volume.shape[-1]
        shell = torch.round(_radius(n, volume.device)).long()
        ft = torch.fft.rfftn(volume.to(torch.float64), dim=(-3, -2, -1))
        ft = ft * factor.to(volume.device)[shell]
        return torch.fft.irfftn(ft, s=(n, n, n), dim=(-3, -2, -1))

    def whiten(self, volume: torch.Tensor) -> torch.Tensor:
        """``(n, n, n)`` map -> whitened float32 map (unit variance for the half-maps)."""
        g = torch.from_numpy(self.gain)
        return (self._apply(volume.to(torch.float64) - self.mean, g) / self.scale).to(torch.float32)

    def unwhiten(self, volume: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`whiten`: float32 map in the input maps' units."""
        g = torch.from_numpy(self.gain)
        inv = torch.where(g > 0, 1.0 / torch.where(g > 0, g, torch.ones_like(g)), torch.zeros_like(g))
        return (self._apply(volume.to(torch.float64) * self.scale, inv) + self.mean).to(torch.float32)


def spectral_whitening(half1: torch.Tensor, half2: torch.Tensor) -> Whitening:
    """The whitening filter of a pair of half-maps ``(n, n, n)``: 1 / sqrt of their
    mean radial power spectrum. The same filter serves both halves (and their
    average), so the noise2noise relation between them is kept."""
    n = half1.shape[-1]
    dev = half1.device
    mean = float((half1.double().mean() + half2.double().mean()) / 2)
    shell = torch.round(_radius(n, dev)).long().flatten()
    n_shells = int(shell.max()) + 1

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_shells, dtype=torch.float64, device=dev).index_add_(0, shell, v.flatten())

    power = torch.zeros(n_shells, dtype=torch.float64, device=dev)
    for h in (half1, half2):
        f = torch.fft.rfftn(h.to(torch.float64) - mean)
        power += shell_sum(f.real**2 + f.imag**2)
    power = power / (2 * shell_sum(torch.ones(shell.shape, dtype=torch.float64, device=dev)).clamp_min(1))
    floor = float(power[1:].max()) * 1e-12 if n_shells > 1 else 0.0
    if not floor > 0:
        raise DegenerateResult("the half-maps are constant; nothing to denoise", f"{n}³")
    gain = 1.0 / torch.sqrt(power.clamp_min(floor))
    gain[0] = 0.0  # the mean is handled separately
    w = Whitening(gain.cpu().numpy(), 1.0, mean)
    s1 = w.whiten(half1).double().std()
    s2 = w.whiten(half2).double().std()
    return Whitening(w.gain, float(torch.sqrt((s1**2 + s2**2) / 2)), mean)


def band_split(volume: torch.Tensor, bands: int) -> torch.Tensor:
    """Split a map ``(n, n, n)`` into ``bands`` frequency bands ``(J, n, n, n)`` float32 that add up to it."""
    n = volume.shape[-1]
    ft = torch.fft.rfftn(volume.to(torch.float64))
    prof = _band_profiles(n, bands, volume.device)
    return torch.stack([torch.fft.irfftn(ft * p, s=(n, n, n)).to(torch.float32) for p in prof])


def band_fsc(half1: torch.Tensor, half2: torch.Tensor, bands: int, mask: torch.Tensor | None = None) -> np.ndarray:
    """FSC of two maps ``(n, n, n)`` in each band of :func:`band_split` (optionally
    masked), clipped to [0, 1]: ``(J,)``. For a half-map whose SNR in a band is
    SNR, SNR / (1 + SNR) equals this FSC and is the gain of the best linear
    estimate of the signal."""
    n = half1.shape[-1]
    a = half1.to(torch.float64)
    b = half2.to(a.device, torch.float64)
    a = a - a.mean()
    b = b - b.mean()
    if mask is not None:
        m = mask.to(a.device, torch.float64)
        a, b = a * m, b * m
    fa = torch.fft.rfftn(a)
    fb = torch.fft.rfftn(b)
    mult = torch.full(fa.shape, 2.0, dtype=torch.float64, device=a.device)
    mult[..., 0] = 1.0
    if n % 2 == 0:
        mult[..., n // 2] = 1.0
    out = []
    for p in _band_profiles(n, bands, a.device):
        w = p * p * mult
        num = (w * (fa * fb.conj()).real).sum()
        den = torch.sqrt((w * fa.abs() ** 2).sum() * (w * fb.abs() ** 2).sum())
        out.append(float(num / den) if den > 0 else 0.0)
    return np.clip(np.asarray(out), 0.0, 1.0)


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """One training session.

    Attributes
    ----------
    iterations: optimiser steps (0: no training).
    crop: edge of the training crops (voxels; reduced to the box if bigger, rounded
        down to a multiple of ``2**depth``).
    batch: crops per step.
    lr_start, lr_end: learning rate of the first and last step (exponential decay).
    seed: seed of the crop positions, orientations and directions.
    """

    iterations: int = 800
    crop: int = 64
    batch: int = 2
    lr_start: float = 1e-3
    lr_end: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.iterations) < 0:
            raise InvalidInput("iterations must be >= 0", str(self.iterations))
        if int(self.crop) < 8 or int(self.batch) < 1:
            raise InvalidInput("crop must be >= 8 voxels and batch >= 1", f"{self.crop}, {self.batch}")
        if not (self.lr_start > 0 and self.lr_end > 0):
            raise InvalidInput("learning rates must be positive", f"{self.lr_start}, {self.lr_end}")

    def learning_rate(self, step: int) -> float:
        """``lr_start * (lr_end / lr_start) ** (step / (iterations - 1))``."""
        n = int(self.iterations)
        t = step / (n - 1) if n > 1 else 0.0
        return float(self.lr_start * (self.lr_end / self.lr_start) ** t)

    def to_json(self) -> dict[str, Any]:
        return {"iterations": int(self.iterations), "crop": int(self.crop), "batch": int(self.batch),
                "lr": [float(self.lr_start), float(self.lr_end)], "seed": int(self.seed)}


def cube_symmetry(x: torch.Tensor, index: int) -> torch.Tensor:
    """Apply symmetry ``index`` (0-47) of the cube to the last three axes of ``x``.

    ``index // 8`` picks a permutation of the axes (6), ``index % 8`` which axes are
    flipped (3 bits): the 48 elements of the full octahedral group, i.e. the 24
    rotations of the cube with and without a mirror. ``index`` 0 is the identity.
    """
    perms = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
    if not 0 <= index < 48:
        raise InvalidInput("cube symmetry index must be 0-47", str(index))
    lead = x.dim() - 3
    p = perms[index // 8]
    y = x.permute(*range(lead), *(lead + a for a in p))
    flips = [lead + a for a in range(3) if (index % 8) >> a & 1]
    return y.flip(flips) if flips else y


def _training_crops(
    rng: np.random.Generator, bands1: torch.Tensor, bands2: torch.Tensor, crop: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` matching crops of the two halves' bands: input and target, ``(batch, J, c, c, c)`` each.

    The direction (1 -> 2 or 2 -> 1) is random per crop; input and target share
    position and symmetry.
    """
    n = bands1.shape[-1]
    xs, ys = [], []
    for _ in range(batch):
        z, y, x = (int(v) for v in rng.integers(0, n - crop + 1, size=3))
        sym = int(rng.integers(0, 48))
        sl = (slice(None), slice(z, z + crop), slice(y, y + crop), slice(x, x + crop))
        a, t = (bands1[sl], bands2[sl]) if not rng.integers(0, 2) else (bands2[sl], bands1[sl])
        xs.append(cube_symmetry(a, sym))
        ys.append(cube_symmetry(t, sym))
    return torch.stack(xs), torch.stack(ys)


def band_weights(bands1: torch.Tensor, bands2: torch.Tensor) -> torch.Tensor:
    """``(J,)`` loss weights that make every band count the same: 1 / mean energy of the
    band in the two halves (each band's squared error relative to its energy)."""
    e = ((bands1.double() ** 2).mean(dim=(1, 2, 3)) + (bands2.double() ** 2).mean(dim=(1, 2, 3))) / 2
    return (1.0 / e.clamp_min(float(e.max()) * 1e-9)).to(torch.float32)


def train_denoiser(
    model: UNet3D,
    whitened1: torch.Tensor,
    whitened2: torch.Tensor,
    settings: TrainSettings,
    *,
    bands1: torch.Tensor | None = None,
    bands2: torch.Tensor | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place noise2noise on two whitened half-maps ``(n, n, n)``.

    The loss, band by band, is the squared difference between the gained band of
    the input half and the same band of the other half, weighted so that every band
    counts the same (:func:`band_weights`; with the plain squared error of the
    whitened maps the many high-frequency Fourier voxels would dominate and the few
    low-frequency ones, which carry most of a map's density, would hardly count).
    ``bands1``/``bands2`` are the halves' :func:`band_split` (computed if not
    given). The model and the maps must be on the same device. Returns the loss of
    every step; ``progress(step, loss)`` is called after each step.
    """
    if settings.iterations == 0:
        return []
    device = whitened1.device
    n = int(whitened1.shape[-1])
    mult = model.config.multiple
    crop = (min(int(settings.crop), n) // mult) * mult
    if crop < mult:
        raise InvalidInput(f"maps of {n} voxels are too small for a denoiser of depth {model.config.depth}", str(n))
    J = model.config.bands
    b1 = band_split(whitened1, J) if bands1 is None else bands1
    b2 = band_split(whitened2, J) if bands2 is None else bands2
    lam = band_weights(b1, b2).to(device)[None, :, None, None, None]
    rng = np.random.default_rng(int(settings.seed))
    fmt = _memory_format(device)
    model.to(device=device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr_start)
    losses: list[float] = []
    with _deterministic(device):
        for step in range(int(settings.iterations)):
            for g in opt.param_groups:
                g["lr"] = settings.learning_rate(step)
            x, y = (t.contiguous(memory_format=fmt) for t in _training_crops(rng, b1, b2, crop, int(settings.batch)))
            opt.zero_grad(set_to_none=True)
            loss = (lam * (model.gains(x) * x - y) ** 2).mean()
            loss.backward()
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DegenerateResult("denoiser training diverged (non-finite loss)", f"step {step}")
            losses.append(value)
            if progress is not None:
                progress(step, value)
    model.eval()
    return losses


# ---------------------------------------------------------------------------
# denoising in overlapping windows
# ---------------------------------------------------------------------------
def _ramp(length: int, margin: int, floor: float = 1e-3) -> np.ndarray:
    """1D blending weight: raised-cosine rise over ``margin`` voxels at both ends, 1 inside."""
    i = np.arange(length) + 0.5
    t = np.clip(np.minimum(i, length - i) / max(margin, 1), 0.0, 1.0)
    return np.maximum(np.sin(0.5 * np.pi * t) ** 2, floor)


def _starts(length: int, window: int, stride: int) -> list[int]:
    s = list(range(0, length - window + 1, stride))
    if s[-1] != length - window:
        s.append(length - window)
    return s


@torch.no_grad()
def apply_denoiser(
    model: UNet3D,
    bands: torch.Tensor,
    *,
    window: int = 64,
    overlap: int = 16,
    batch: int = 2,
    return_gains: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over a band-split whitened map ``(J, n, n, n)`` in overlapping windows.

    The bands are padded by reflection by ``overlap // 2`` voxels (and up to a
    multiple of ``2**depth``), cut into ``window``³ windows overlapping by at
    least ``overlap`` voxels (one window along an axis whose padded length is at
    most 5/4 of ``window``), and the outputs are blended with weights that rise
    as a raised cosine over ``overlap // 2`` voxels from each window face.
    Computes on ``bands``' device; returns the denoised whitened map ``(n, n, n)``
    float32 (and the blended gains ``(J, n, n, n)`` with ``return_gains``).
    """
    device = bands.device
    J = int(bands.shape[0])
    n = [int(s) for s in bands.shape[1:]]
    mult = model.config.multiple
    margin = max(0, int(overlap) // 2)
    pads = []
    padded_len = []
    for s in n:
        L = max(s + 2 * margin, mult)
        L = -(-L // mult) * mult
        padded_len.append(L)
        pads.append((margin, L - s - margin))
    base_win = (int(window) // mult) * mult or mult
    # one window per axis when the padded map is at most a quarter bigger than a window
    win = [L if L <= base_win * 5 // 4 else base_win for L in padded_len]
    mode = "reflect" if all(a < s and b < s for s, (a, b) in zip(n, pads)) else "constant"
    flat_pad = [p for a, b in reversed(pads) for p in (a, b)]
    vp = F.pad(bands[None].to(torch.float32), flat_pad, mode=mode)[0]
    starts = [_starts(L, w, max(1, w - 2 * margin)) for L, w in zip(padded_len, win)]
    weight = torch.from_numpy(np.einsum("i,j,k->ijk", *(_ramp(w, margin) for w in win)).astype(np.float32)).to(device)
    acc = torch.zeros((J + 1 if return_gains else 1, *padded_len), dtype=torch.float32, device=device)
    wsum = torch.zeros(padded_len, dtype=torch.float32, device=device)
    fmt = _memory_format(device)
    model.to(device=device, memory_format=fmt).eval()
    corners = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    step = max(1, int(batch))
    with _deterministic(device):
        for i in range(0, len(corners), step):
            group = corners[i : i + step]
            x = torch.stack([vp[:, z : z + win[0], y : y + win[1], x0 : x0 + win[2]] for z, y, x0 in group])
            x = x.contiguous(memory_format=fmt)
            g = model.gains(x)
            out = (g * x).sum(dim=1, keepdim=True)
            if return_gains:
                out = torch.cat([out, g], dim=1)
            for (z, y, x0), o in zip(group, out):
                acc[:, z : z + win[0], y : y + win[1], x0 : x0 + win[2]] += o * weight
                wsum[z : z + win[0], y : y + win[1], x0 : x0 + win[2]] += weight
    res = (acc / wsum)[:, margin : margin + n[0], margin : margin + n[1], margin : margin + n[2]].contiguous()
    return (res[0], res[1:]) if return_gains else res[0]


# ---------------------------------------------------------------------------
# the whole operation on two half-maps
# ---------------------------------------------------------------------------
@dataclass
class DenoiseOutput:
    """What :func:`denoise_half_maps` returns.

    Unpacks as ``denoised1, denoised2, weights, metrics = out``; ``average`` is the
    denoised average of the two halves (``(half1 + half2) / 2`` through the same network).
    """

    half1: np.ndarray
    half2: np.ndarray
    weights: dict[str, np.ndarray]
    metrics: dict[str, Any]
    average: np.ndarray | None = None
    losses: list[float] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.half1
        yield self.half2
        yield self.weights
        yield self.metrics


def _as_cube(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a[...] if not isinstance(a, np.ndarray) else a, dtype=np.float32)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InvalidInput(f"{what} must be a cube (n, n, n)", str(arr.shape))
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what} has non-finite values", what)
    return arr


def _loss_summary(losses: list[float], points: int = 50) -> list[float]:
    """Mean loss over ``points`` equal runs of steps (a compact training curve)."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(points, len(losses)) + 1).astype(int)
    return [float(np.mean(losses[a:b])) for a, b in zip(edges[:-1], edges[1:])]


def denoise_half_maps(
    half1: Any,
    half2: Any,
    weights: Mapping[str, Any] | None = None,
    *,
    config: DenoiserConfig | None = None,
    iterations: int = 800,
    crop: int = 64,
    batch: int = 2,
    seed: int = 0,
    device: str | torch.device = "auto",
    window: int = 64,
    overlap: int = 16,
    average: bool = True,
    mask: Any | None = None,
    reset_gains: bool | None = None,
    init_seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> DenoiseOutput:
    """Train (or continue training) a denoiser on two half-maps and denoise each of them.

    Parameters
    ----------
    half1, half2: ``(n, n, n)`` half-maps (numpy, zarr or anything array-like).
    weights: parameter name -> array of a previous session (e.g. the species'
        stored denoiser); ``None`` starts from :func:`initial_denoiser` (seeded by ``init_seed``).
    config: architecture (default :class:`DenoiserConfig`; must match ``weights``).
    iterations, crop, batch, seed: training session (:class:`TrainSettings`); 0 iterations
        only applies the given weights.
    device: ``'auto'``, ``'cpu'``, ``'cuda'``...
    window, overlap: windows used to denoise the maps (voxels).
    average: also denoise ``(half1 + half2) / 2``.
    mask: optional soft mask ``(n, n, n)`` around the particle for the band FSC
        that sets the initial gains (:func:`band_fsc`); the species' call uses a
        sphere of its diameter.
    reset_gains: set the gains to the band FSC before training (:func:`set_initial_gains`);
        default: when starting without ``weights``.
    progress: ``progress(step, loss)`` after each training step.

    Returns
    -------
    :class:`DenoiseOutput`: the denoised halves (float32, in the units of the input),
    the new weights, metrics (losses, timings, initial gains), and the denoised
    average. Each half is denoised on its own: its output is its own bands times
    gains computed from its own bands.
    """
    h1 = _as_cube(half1, "half-map 1")
    h2 = _as_cube(half2, "half-map 2")
    if h1.shape != h2.shape:
        raise InvalidInput("the two half-maps differ in shape", f"{h1.shape} vs {h2.shape}")
    cfg = config or DenoiserConfig()
    settings = TrainSettings(iterations=iterations, crop=crop, batch=batch, seed=seed)
    dev = pick_device(device)
    model = load_model(weights, cfg) if weights is not None else build_model(cfg, seed=init_seed)
    t1 = torch.from_numpy(h1).to(dev)
    t2 = torch.from_numpy(h2).to(dev)
    tm = None if mask is None else torch.from_numpy(_as_cube(mask, "mask")).to(dev)
    if tm is not None and tm.shape != t1.shape:
        raise InvalidInput("the mask and the half-maps differ in shape", f"{tuple(tm.shape)} vs {h1.shape}")
    wh = spectral_whitening(t1, t2)
    w1 = wh.whiten(t1)
    w2 = wh.whiten(t2)
    del t1, t2
    J = cfg.bands
    initial = band_fsc(w1, w2, J, tm)
    if reset_gains if reset_gains is not None else weights is None:
        set_initial_gains(model, initial)
    b1 = band_split(w1, J)
    b2 = band_split(w2, J)
    t0 = time.perf_counter()
    losses = train_denoiser(model, w1, w2, settings, bands1=b1, bands2=b2, progress=progress)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kw = {"window": window, "overlap": overlap, "batch": batch}
    d1 = wh.unwhiten(apply_denoiser(model, b1, **kw))
    d2 = wh.unwhiten(apply_denoiser(model, b2, **kw))
    avg = None
    if average:
        b1 += b2
        b1 *= 0.5
        avg = wh.unwhiten(apply_denoiser(model, b1, **kw))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    denoise_s = time.perf_counter() - t0
    maps_done = 3 if average else 2
    n_vox = int(np.prod(h1.shape))
    metrics = {
        "iterations": int(settings.iterations),
        "training": settings.to_json(),
        "band_fsc": [float(v) for v in initial],
        "loss_start": float(np.mean(losses[: max(1, len(losses) // 20)])) if losses else None,
        "loss_end": float(np.mean(losses[-max(1, len(losses) // 20) :])) if losses else None,
        "losses": _loss_summary(losses),
        "train_seconds": train_s,
        "iterations_per_second": (len(losses) / train_s) if losses and train_s > 0 else None,
        "denoise_seconds": denoise_s,
        "voxels_per_second": maps_done * n_vox / denoise_s if denoise_s > 0 else None,
        "device": str(dev),
    }
    return DenoiseOutput(
        half1=d1.cpu().numpy(),
        half2=d2.cpu().numpy(),
        weights=model_weights(model),
        metrics=metrics,
        average=None if avg is None else avg.cpu().numpy(),
        losses=losses,
    )


# ---------------------------------------------------------------------------
# the denoiser as part of a species
# ---------------------------------------------------------------------------
def _weight_array_name(species: str, param: str) -> str:
    from ..model.population import species_array_name

    return species_array_name(species, f"denoiser/{param}")


def denoiser_description(
    species: str,
    weights: Mapping[str, Any],
    config: DenoiserConfig,
    *,
    iterations_trained: int,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``Species.denoiser`` document for ``weights`` stored under the species.

    Keys: ``architecture`` (:meth:`DenoiserConfig.to_json` plus the parameter count),
    ``iterations_trained`` (all sessions), ``seed`` (of the last session's crops),
    ``history`` (one entry per session: iterations, crop, batch, lr, seed), ``weights``
    (parameter -> array name; the species digest covers these arrays by content) and
    ``weights_digest`` (:func:`weights_digest`).
    """
    hist = list(history or [])
    return {
        "architecture": {**config.to_json(), "parameters": int(sum(int(np.prod(np.shape(v))) for v in weights.values()))},
        "iterations_trained": int(iterations_trained),
        "seed": hist[-1]["seed"] if hist else None,
        "history": hist,
        "weights": {k: _weight_array_name(species, k) for k in sorted(weights)},
        "weights_digest": weights_digest(weights),
    }


def write_denoiser(
    txn: Any,
    species: Any,
    weights: Mapping[str, Any],
    *,
    config: DenoiserConfig | None = None,
    iterations_trained: int = 0,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Stage ``weights`` as ``species/<sp>/denoiser/<param>`` arrays and set ``species.denoiser``.

    Arrays of an older denoiser that this one does not have are removed. The
    caller writes the species afterwards (:func:`mrepo.model.write_species`).
    Returns the new description.
    """
    from ..model.population import species_array_name
    from ..store.arrays import delete_node, node_kind, write_array

    cfg = config or DenoiserConfig()
    desc = denoiser_description(species.name, weights, cfg, iterations_trained=iterations_trained, history=history)
    prefix = "data/" + species_array_name(species.name, "denoiser/")
    existing = {k[len("data/") : -len("/zarr.json")] for k, _ in txn.iter_entries(prefix) if k.endswith("/zarr.json")}
    for name in sorted(existing - set(desc["weights"].values())):
        if node_kind(txn, name) == "array":
            delete_node(txn, name)
    for param, name in desc["weights"].items():
        a = np.ascontiguousarray(np.asarray(weights[param], dtype=np.float32))
        write_array(txn, name, a, chunks=a.shape or None, attributes={"denoiser_parameter": param})
    species.denoiser = desc
    return desc


def read_denoiser(view: Any, species: Any) -> tuple[dict[str, np.ndarray], DenoiserConfig] | None:
    """The stored weights and architecture of ``species``' denoiser, or None if it has none.

    Raises :class:`~mrepo.errors.CorruptObject` when the description names arrays
    that are missing or do not fit the architecture.
    """
    from ..store.arrays import open_view_array

    desc = species.denoiser or {}
    names = desc.get("weights")
    if not isinstance(names, Mapping) or not names:
        return None
    config = DenoiserConfig.from_json(desc.get("architecture", {}))
    weights = {}
    for param, name in names.items():
        try:
            weights[param] = np.asarray(open_view_array(view, name)[...], dtype=np.float32)
        except NotFound:
            raise CorruptObject("denoiser weight array is missing", name) from None
    load_model(weights, config)  # validates shapes and values
    return weights, config


def attach_initial_denoiser(txn: Any, species: Any, *, seed: int = 0, config: DenoiserConfig | None = None) -> dict[str, Any]:
    """Give a new species (e.g. from import) an untrained denoiser: stage its weights
    and set ``species.denoiser``. Call before :func:`mrepo.model.write_species`."""
    cfg = config or DenoiserConfig()
    return write_denoiser(txn, species, initial_denoiser(species, config=cfg, seed=seed), config=cfg, iterations_trained=0,
                          history=[])


def describe_denoiser(species: Any, view: Any | None = None) -> list[str]:
    """Lines describing a species' denoiser, for ``mrepo show REV:species/NAME``.

    With ``view`` (a Snapshot or Transaction) the weights digest is recomputed
    from the stored arrays and a mismatch is flagged.
    """
    desc = species.denoiser or {}
    if not desc.get("weights"):
        return ["denoiser:   none"]
    arch = desc.get("architecture", {})
    ch = arch.get("channels", [])
    params = arch.get("parameters")
    hist = desc.get("history", [])
    lines = [
        f"denoiser:   {arch.get('name', '?')} ({arch.get('depth', '?')} levels, channels {'/'.join(map(str, ch))}"
        + (f", {params:,} parameters" if isinstance(params, int) else "") + ")",
        f"trained:    {desc.get('iterations_trained', 0)} iterations in {len(hist)} session{'s' if len(hist) != 1 else ''}"
        + (f" (last: {hist[-1].get('iterations')} iterations, {hist[-1].get('crop')}³ crops, batch {hist[-1].get('batch')}, seed {hist[-1].get('seed')})" if hist else " (untrained)"),
    ]
    digest = desc.get("weights_digest", "?")
    note = ""
    if view is not None:
        try:
            got = read_denoiser(view, species)
            if got is not None and weights_digest(got[0]) != digest:
                note = "  (MISMATCH: stored weights differ)"
        except (CorruptObject, NotFound) as e:
            note = f"  ({e})"
    lines.append(f"weights:    blake3:{digest} ({len(desc['weights'])} arrays under species/{species.name}/denoiser/){note}")
    dn = [r for r in DENOISED_ROLES + (LOCAL_RES_ROLE,) if r in species.maps]
    if dn:
        lines.append("maps:       " + ", ".join(dn))
    m = species.metrics.get("denoise", {}) if isinstance(species.metrics, Mapping) else {}
    lr = m.get("local_resolution_angstrom") if isinstance(m, Mapping) else None
    if isinstance(lr, Mapping) and lr.get("median") is not None:
        lines.append(f"local res.: {lr['p10']:.2f}-{lr['p90']:.2f} Å (10th-90th percentile, median {lr['median']:.2f} Å) within the particle")
    return lines


@dataclass
class DenoiseResult:
    """What :func:`update_species_denoiser` / :func:`denoise_species` did.

    Attributes
    ----------
    species: species name.
    commit: the new commit id (None when given a transaction, or when nothing changed).
    iterations: training steps of this session; iterations_trained: all sessions.
    maps: role -> array name of the maps written (denoised halves, average, local resolution).
    weights: the new weights; description: the new ``Species.denoiser``.
    metrics: ``Species.metrics['denoise']`` (deterministic figures only).
    timings: seconds and rates of this run (also in the commit metadata).
    half1, half2, denoised: the denoised half-maps and average (float32 ``(n, n, n)``;
        the refinement loop's next references).
    local_resolution: the local-resolution map (Å per voxel), if computed.
    """

    species: str
    commit: str | None
    iterations: int
    iterations_trained: int
    maps: dict[str, str]
    weights: dict[str, np.ndarray]
    description: dict[str, Any]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    half1: np.ndarray | None = None
    half2: np.ndarray | None = None
    denoised: np.ndarray | None = None
    local_resolution: np.ndarray | None = None
    losses: list[float] = field(default_factory=list)
    pixel_size_angstrom: float | None = None


def _species_sphere(box: int, pixel_size: float, diameter: float) -> np.ndarray:
    from .fourier import soft_sphere_mask

    radius = min(box / 2 - 2, 0.5 * diameter / pixel_size)
    return soft_sphere_mask(box, max(radius, 1.0), edge_px=3.0).numpy()


def update_species_denoiser(
    txn: Any,
    sp: Any,
    *,
    half1: Any | None = None,
    half2: Any | None = None,
    iterations: int = 800,
    device: str | torch.device = "auto",
    seed: int | None = None,
    crop: int = 64,
    batch: int = 2,
    local_resolution: bool = True,
    window_px: int | None = None,
    config: DenoiserConfig | None = None,
    reset: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> DenoiseResult:
    """Train species ``sp``'s denoiser, denoise its half-maps, stage the arrays; update ``sp`` in place.

    For the refinement loop, which holds the species in memory: ``half1``/``half2``
    are the new half-maps (default: the arrays ``sp.maps['half1'|'half2']`` in
    ``txn``). The training resumes from the weights that ``sp.denoiser`` names in
    ``txn`` (i.e. the parent commit's, unless staged since). Stages the weights
    (:func:`write_denoiser`) and the maps ``species/<sp>/maps/{denoised_half1,
    denoised_half2, denoised, local_resolution}``, and sets ``sp.denoiser``,
    ``sp.maps`` and ``sp.metrics['denoise']``. The caller then writes the species
    (:func:`mrepo.model.write_species`) and the population document: the
    species digest covers the new weights and maps.

    ``seed`` (crop positions, orientations) defaults to the number of iterations
    the denoiser has already been trained, so successive sessions draw new crops
    and the result is still determined by the stored state. ``config`` is the
    architecture of a new denoiser (default :class:`DenoiserConfig`); a stored
    denoiser of another architecture is an error unless ``reset`` (start a new
    denoiser, dropping the stored one).
    """
    from ..model.population import species_array_name
    from ..store.arrays import open_view_array, write_array
    from .fsc import fsc as fsc_curve
    from .localres import local_resolution as compute_local_resolution

    if half1 is None or half2 is None:
        missing = [r for r in ("half1", "half2") if r not in sp.maps]
        if missing:
            raise InvalidInput(f"species has no half-maps ({' and '.join(missing)} missing); reconstruct or import them first", sp.name)
    h1 = _as_cube(half1 if half1 is not None else open_view_array(txn, sp.maps["half1"]), "half-map 1")
    h2 = _as_cube(half2 if half2 is not None else open_view_array(txn, sp.maps["half2"]), "half-map 2")
    stored = None if reset else read_denoiser(txn, sp)
    if stored is not None:
        weights, stored_config = stored
        if config is not None and config != stored_config:
            raise InvalidInput("the species' denoiser has another architecture; reset it to train a new one", sp.name)
        config = stored_config
    else:
        weights, config = None, config or DenoiserConfig()
    trained_before = int((sp.denoiser or {}).get("iterations_trained", 0)) if stored is not None else 0
    history = list((sp.denoiser or {}).get("history", [])) if stored is not None else []
    seed_used = int(trained_before if seed is None else seed)
    px = float(sp.pixel_size_angstrom)
    sphere = _species_sphere(h1.shape[0], px, sp.diameter_angstrom)
    out = denoise_half_maps(h1, h2, weights, config=config, iterations=iterations, crop=crop, batch=batch,
                            seed=seed_used, device=device, mask=sphere, reset_gains=trained_before == 0,
                            progress=progress)
    t0 = time.perf_counter()
    locres = compute_local_resolution(h1, h2, px, window_px=window_px, device=device) if local_resolution else None
    locres_s = time.perf_counter() - t0
    total = trained_before + int(iterations)
    if iterations > 0:
        history.append(TrainSettings(iterations=iterations, crop=crop, batch=batch, seed=seed_used).to_json())
    desc = write_denoiser(txn, sp, out.weights, config=config, iterations_trained=total, history=history)
    attrs = {"voxel_size": [px] * 3, "voxel_size_unit": "angstrom"}
    maps: dict[str, str] = {}
    for role, vol in (("denoised_half1", out.half1), ("denoised_half2", out.half2), ("denoised", out.average)):
        name = sp.maps.get(role) or species_array_name(sp.name, f"maps/{role}")
        write_array(txn, name, vol, attributes={**attrs, "denoiser_weights": desc["weights_digest"]})
        maps[role] = name
    previous = (sp.metrics or {}).get("denoise", {}) if isinstance(sp.metrics, Mapping) else {}
    if iterations > 0 or not isinstance(previous.get("training"), Mapping):
        training = {"iterations": int(iterations), "seed": seed_used, "band_fsc": out.metrics["band_fsc"],
                    "loss_start": out.metrics["loss_start"], "loss_end": out.metrics["loss_end"],
                    "losses": out.metrics["losses"]}
    else:  # applied only: the last training session's figures still describe the weights
        training = previous["training"]
    metrics: dict[str, Any] = {"iterations_trained": total, "training": training}
    try:
        metrics["resolution_half_maps_angstrom"] = fsc_curve(h1, h2, px, mask=sphere).resolution()
    except DegenerateResult:
        metrics["resolution_half_maps_angstrom"] = None
    try:  # not gold-standard: the halves share the network (see docs/denoise.md)
        metrics["resolution_denoised_halves_angstrom"] = fsc_curve(out.half1, out.half2, px, mask=sphere).resolution()
    except DegenerateResult:
        metrics["resolution_denoised_halves_angstrom"] = None
    if locres is not None:
        name = sp.maps.get(LOCAL_RES_ROLE) or species_array_name(sp.name, f"maps/{LOCAL_RES_ROLE}")
        write_array(txn, name, locres.map, attributes={**attrs, "unit": "angstrom", "method": locres.method,
                                                    "window_px": locres.window_px, "threshold": locres.threshold})
        maps[LOCAL_RES_ROLE] = name
        inside = locres.map[sphere > 0.5]
        metrics["local_resolution_angstrom"] = {
            "median": float(np.median(inside)), "p10": float(np.percentile(inside, 10)),
            "p90": float(np.percentile(inside, 90)), "window_px": int(locres.window_px),
            "within": "sphere of the species diameter",
        }
    sp.maps.update(maps)
    sp.metrics = {**(sp.metrics or {}), "denoise": metrics}
    timings = {
        "device": out.metrics["device"],
        "train_seconds": out.metrics["train_seconds"],
        "iterations_per_second": out.metrics["iterations_per_second"],
        "denoise_seconds": out.metrics["denoise_seconds"],
        "voxels_per_second": out.metrics["voxels_per_second"],
        "local_resolution_seconds": locres_s,
    }
    return DenoiseResult(
        species=sp.name, commit=None, iterations=int(iterations), iterations_trained=total, maps=maps,
        weights=out.weights, description=desc, metrics=metrics, timings=timings, half1=out.half1, half2=out.half2,
        denoised=out.average, local_resolution=None if locres is None else locres.map, losses=out.losses,
        pixel_size_angstrom=px,
    )


def _write_species_and_digest(txn: Any, pop: Any, name: str) -> None:
    """Write species ``name`` and its digest in population.json (other species untouched)."""
    from ..model import write_population

    try:
        write_population(txn, pop, items=False, species=[name])
    except TypeError:  # a model API without per-species writes: write them all
        write_population(txn, pop, items=False)


def denoise_species(
    repo_or_txn: Any,
    species_name: str,
    *,
    message: str | None = None,
    **options: Any,
) -> DenoiseResult:
    """Train the species' denoiser on its half-maps, denoise them, store everything.

    ``repo_or_txn`` is a :class:`~mrepo.repository.Repository` (a transaction on the
    current branch is opened and committed; the training resumes from the weights
    in its head commit) or a transaction (everything is staged in it, nothing is
    committed).

    Reads the species from the population, runs :func:`update_species_denoiser`
    (``options``: iterations, device, seed, crop, batch, local_resolution,
    window_px, config, reset, progress), writes the species
    (:func:`mrepo.model.write_species`) and its digest in ``population.json``,
    and commits (with timings in the commit metadata) when it opened the
    transaction and something changed.

    Raises :class:`~mrepo.errors.InvalidInput` if the species has no half-maps,
    :class:`~mrepo.errors.NotFound` if there is no such species.
    """
    from ..model import read_population

    own_txn = not hasattr(repo_or_txn, "set_entries")
    txn = repo_or_txn.transaction() if own_txn else repo_or_txn
    try:
        pop = read_population(txn, grids=False)
        if species_name not in pop.species:
            raise NotFound("no such species", species_name)
        sp = pop.species[species_name]
        res = update_species_denoiser(txn, sp, **options)
        _write_species_and_digest(txn, pop, sp.name)
        if own_txn and txn.changes():
            res.commit = txn.commit(
                message or f"Denoise species {sp.name} ({res.iterations} iterations, {res.iterations_trained} in all)",
                metadata={"operation": "denoise", "summary": f"{sp.name}: {res.iterations_trained} iterations",
                          "species": sp.name, "iterations": res.iterations,
                          "seed": (res.description.get("history") or [{}])[-1].get("seed"), **res.timings},
            )
        return res
    finally:
        if own_txn:
            txn.discard()


def denoise_repository(
    repo: Any,
    species: list[str] | tuple[str, ...] | None = None,
    *,
    message: str | None = None,
    progress_factory: Callable[[str, int], Callable[[int, float], None] | None] | None = None,
    **options: Any,
) -> tuple[list[DenoiseResult], str | None]:
    """Denoise several species of the current branch in one commit (what ``mrepo denoise`` does).

    ``species``: names (default: every species that has both half-maps; an error if
    none has). ``options`` go to :func:`denoise_species` (iterations, device, seed,
    crop, batch, window_px...). ``progress_factory(species, iterations)`` may return
    a per-step callback. Returns the results and the new commit id (None if nothing
    changed).
    """
    from ..model import read_population

    txn = repo.transaction()
    try:
        pop = read_population(txn, grids=False)
        if species:
            names = list(dict.fromkeys(species))
            for n in names:
                if n not in pop.species:
                    raise NotFound("no such species", n)
        else:
            names = [n for n, sp in pop.species.items() if "half1" in sp.maps and "half2" in sp.maps]
            if not names:
                raise InvalidInput("no species has half-maps to denoise (maps half1 and half2)", pop.name)
        results = []
        for n in names:
            cb = progress_factory(n, int(options.get("iterations", 800))) if progress_factory else None
            results.append(denoise_species(txn, n, progress=cb, **options))
        commit = None
        if txn.changes():
            total = {r.species: r.iterations_trained for r in results}
            iters = int(options.get("iterations", 800))
            commit = txn.commit(
                message or f"Denoise {', '.join(names)} ({iters} iterations)",
                metadata={
                    "operation": "denoise",
                    "summary": ", ".join(f"{k}: {v} iterations" for k, v in total.items()),
                    "species": {r.species: {"iterations": r.iterations, "iterations_trained": r.iterations_trained,
                                            "seed": (r.description.get("history") or [{}])[-1].get("seed"), **r.timings}
                                for r in results},
                },
            )
        for r in results:
            r.commit = commit
        return results, commit
    finally:
        txn.discard()
