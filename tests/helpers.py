"""Helpers shared by test modules (fixtures live in conftest.py)."""

import torch
import torch.nn.functional as F


def random_text(k: int, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(k, dim), dim=-1)


def open_gates(model, value: float = 1.0) -> None:
    """Give SEVE adapters a non-zero gate, so tests see their effect."""
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(value)
