"""pytest configuration for the forward-model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(1234)
    yield
