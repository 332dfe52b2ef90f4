"""Fixtures shared by the test files."""

import pytest
import torch


@pytest.fixture
def float64_default():
    """Exact comparisons in float64; the default dtype is restored for other test files."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
