"""Choice of the torch device that the forward model runs on.

Every function in :mod:`mrepo.refine` is device-agnostic: it computes on the
device of its input tensors. This module only turns a user's wish
(``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:1'``) into a :class:`torch.device`,
with a clear error when CUDA is asked for and absent.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInput

__all__ = ["pick_device"]


def pick_device(which: str | torch.device = "auto") -> torch.device:
    """Return the torch device to compute on.

    Parameters
    ----------
    which:
        ``'auto'`` (CUDA device 0 when available, else the CPU), ``'cpu'``,
        ``'cuda'`` or ``'cuda:N'``, or a :class:`torch.device`.

    Raises
    ------
    InvalidInput
        If CUDA is requested but not available, if the CUDA index does not
        exist, or if ``which`` names no known device.
    """
    if isinstance(which, torch.device):
        name = str(which)
    else:
        name = str(which).strip().lower()
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(
                "CUDA was requested but no CUDA device is available to torch "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})",
                name,
            )
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise InvalidInput(f"not a valid device name: {exc}", name) from None
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise InvalidInput(
                f"CUDA device {index} does not exist ({torch.cuda.device_count()} visible)", name
            )
        return torch.device("cuda", index)
    raise InvalidInput("unknown device: expected 'auto', 'cpu', 'cuda' or 'cuda:N'", name)
