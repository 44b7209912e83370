"""RELION's ZYZ Euler angles (rot, tilt, psi) and their rotation matrices, in torch.

Convention (RELION ``src/euler.cpp``, ``Euler_angles2matrix``): with angles in
degrees ``(rot, tilt, psi) = (φ, θ, ψ)``,

    A = Rz(ψ) · Ry(θ) · Rz(φ),   Rz(a) = [[ cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]],
                                 Ry(b) = [[ cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]

(``Rz``/``Ry`` rotate the *coordinate frame*; A is the transpose of the
active rotation by the intrinsic ZYZ angles). ``A`` maps coordinates of the
reference map (x, y, z) to coordinates of the particle image frame:
``p = A r``. The projection image is therefore ``I(x, y) = ∫ V(Aᵀ (x, y, z)) dz``
and, in Fourier space, the central slice samples ``F_V(Aᵀ (kx, ky, 0))``
(RELION ``Projector::project`` uses ``A⁻¹ = Aᵀ`` in the same way).

Vectors are ``(x, y, z)`` here even though arrays are indexed ``(z, y, x)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import InvalidInput

__all__ = ["euler_to_matrix", "matrix_to_euler"]


def euler_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """RELION rotation matrices from ZYZ Euler angles.

    Parameters
    ----------
    angles_deg:
        ``(..., 3)`` tensor of ``(rot, tilt, psi)`` in degrees (``rlnAngleRot``,
        ``rlnAngleTilt``, ``rlnAnglePsi``). Differentiable.

    Returns
    -------
    ``(..., 3, 3)`` tensor ``A`` with ``p_image = A @ r_map`` for column vectors ``(x, y, z)``.
    """
    angles_deg = torch.as_tensor(angles_deg)
    if not angles_deg.is_floating_point():
        angles_deg = angles_deg.to(torch.get_default_dtype())
    if angles_deg.shape[-1:] != (3,):
        raise InvalidInput("Euler angles must have a last axis of 3 (rot, tilt, psi)", str(tuple(angles_deg.shape)))
    a = torch.deg2rad(angles_deg)
    ca, cb, cg = torch.cos(a[..., 0]), torch.cos(a[..., 1]), torch.cos(a[..., 2])
    sa, sb, sg = torch.sin(a[..., 0]), torch.sin(a[..., 1]), torch.sin(a[..., 2])
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """ZYZ Euler angles ``(rot, tilt, psi)`` in degrees from RELION rotation matrices.

    Inverse of :func:`euler_to_matrix` with RELION's choices
    (``Euler_matrix2angles``): tilt in [0, 180]; when tilt is 0 or 180 the
    rotation is carried by psi and rot is 0.

    Parameters
    ----------
    matrices: ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    ``(..., 3)`` angles in degrees.
    """
    m = torch.as_tensor(matrices)
    if m.shape[-2:] != (3, 3):
        raise InvalidInput("rotation matrices must have shape (..., 3, 3)", str(tuple(m.shape)))
    eps = 16 * torch.finfo(m.dtype).eps
    abs_sb = torch.sqrt(m[..., 0, 2] ** 2 + m[..., 1, 2] ** 2)
    regular = abs_sb > eps
    # Regular case: tilt in (0, 180): sin(tilt) = abs_sb > 0.
    psi = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    rot = torch.atan2(m[..., 2, 1], m[..., 2, 0])
    tilt = torch.atan2(abs_sb, m[..., 2, 2])
    # Degenerate case: rotation about z only.
    up = m[..., 2, 2] > 0
    psi_deg_case = torch.where(up, torch.atan2(-m[..., 1, 0], m[..., 0, 0]), torch.atan2(m[..., 1, 0], -m[..., 0, 0]))
    tilt_deg_case = torch.where(up, torch.zeros_like(tilt), torch.full_like(tilt, math.pi))
    rot = torch.where(regular, rot, torch.zeros_like(rot))
    tilt = torch.where(regular, tilt, tilt_deg_case)
    psi = torch.where(regular, psi, psi_deg_case)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))
