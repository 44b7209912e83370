"""Refinement: the forward model shared by the simulator and the refiner, and (later) the refiner.

Forward-model modules (pure functions over torch tensors; see ``docs/physics.md``):

* :mod:`.ctf` — CTF with RELION's conventions (beam tilt, Zernike terms, magnification);
* :mod:`.euler` — RELION ZYZ Euler angles and rotation matrices;
* :mod:`.projection` — central slices of a padded Fourier map (differentiable);
* :mod:`.backprojection` — Fourier insertion and reconstruction of half-maps;
* :mod:`.aliasing` — aliasing-free box, CTF premultiplication, band-limited CTF²;
* :mod:`.dose` — exposure weighting and per-frame Fourier crops;
* :mod:`.fsc` — Fourier shell correlation and plots;
* :mod:`.fourier`, :mod:`.interp` — grids, centred transforms, trilinear interpolation;
* :mod:`.device` — choice of the torch device.
"""
