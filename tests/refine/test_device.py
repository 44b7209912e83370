"""Device choice."""

from __future__ import annotations

import pytest
import torch

from mrepo.errors import InvalidInput
from mrepo.refine.device import pick_device


def test_cpu_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("AUTO").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the error path needs none")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(InvalidInput) as info:
        pick_device("cuda")
    assert "CUDA" in str(info.value) and info.value.kind == "invalid-input"
    with pytest.raises(InvalidInput):
        pick_device("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_when_present():
    assert pick_device("cuda").type == "cuda"
    with pytest.raises(InvalidInput):
        pick_device(f"cuda:{torch.cuda.device_count()}")


def test_unknown_device_name():
    with pytest.raises(InvalidInput):
        pick_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_cpu_agree():
    import numpy as np

    from mrepo.refine.backprojection import new_accumulator, backproject, reconstruct
    from mrepo.refine.ctf import CtfParams, ctf_2d
    from mrepo.refine.projection import prepare_volume, project

    rng = np.random.default_rng(0)
    vol = rng.standard_normal((32, 32, 32)).astype(np.float32)
    ang = torch.tensor(rng.uniform(0, 360, (16, 3)))
    sh = torch.tensor(rng.uniform(-3, 3, (16, 2)))
    out = {}
    for dev in ("cpu", "cuda"):
        fv = prepare_volume(vol, 1.5, device=dev)
        p = project(fv, ang.to(dev), sh.to(dev))
        acc = new_accumulator(32, 1.5, device=dev)
        backproject(acc, p, torch.ones(1, device=dev), ang.to(dev), sh.to(dev))
        c = ctf_2d(CtfParams(voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
                             defocus_u_angstrom=torch.tensor([1e4, 2e4], device=dev), defocus_v_angstrom=1.2e4),
                   32, 1.5)
        out[dev] = (p.cpu(), reconstruct(acc).cpu(), c.cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
