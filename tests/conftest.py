import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisa_rt import create_model


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def random_text(k: int, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(k, dim), dim=-1)


def open_gates(model, value: float = 1.0) -> None:
    """Give SEVE adapters a non-zero gate, so tests see their effect."""
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(value)


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return create_model("fisa-tiny").eval()


@pytest.fixture(scope="session")
def tiny_convnext():
    torch.manual_seed(0)
    return create_model("fisa-tiny-convnext").eval()


@pytest.fixture(params=["fisa-tiny", "fisa-tiny-convnext"])
def tiny_model(request):
    """A fresh tiny model of each head (fresh, because tests may change gates or parameters)."""
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    open_gates(model, 0.5)
    return model
