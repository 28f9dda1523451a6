"""The torch device a user names (``device=`` / ``--device``), checked once: the runtime's backends and
``checkpoint.load_model`` take the same strings."""

from __future__ import annotations

from typing import Optional

import torch

from .errors import InputError


def torch_device(device: Optional[str]) -> torch.device:
    """``device`` (cpu, cuda or cuda:N; None: a GPU where torch sees one) as a torch.device, or one InputError
    naming it: torch's own errors name neither the argument nor what this machine has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device {device!r} is not a torch device (cpu, cuda or cuda:N)") from None
    if chosen.type not in ("cpu", "cuda"):  # mps, xpu, meta...: nothing here runs or was tested there
        raise InputError(f"device {device!r}: fisa-rt runs on cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__})")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen
