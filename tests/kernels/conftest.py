"""Fixtures of the kernel tests: fresh random inputs and poisoned outputs.

Every kernel is compared with its float64 reference on inputs drawn fresh each run (the seed is printed,
so a failure can be replayed with FISA_TEST_SEED=<seed>). Outputs are poisoned: every tensor the kernel
wrappers allocate starts as NaN (floats) or a large value (integers), so an element the kernel forgets to
write fails the comparison instead of passing on leftover memory.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = int(os.environ.get("FISA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"FISA_TEST_SEED={seed}")
    return seed


def _poison(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.fill_(float("nan") if tensor.is_floating_point() else 2**30 if tensor.dtype != torch.bool else True)


@pytest.fixture
def poisoned(monkeypatch):
    """Make torch.empty / empty_like return poisoned memory while the test runs."""
    empty, empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(empty_like(*a, **k)))

