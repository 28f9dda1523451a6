"""``fisa-rt tune``: measure, ahead of serving, which implementation of each fused op runs on this GPU (or, on a
machine without one, on this CPU for inference)."""

from __future__ import annotations

import os
from typing import List

import numpy as np
import torch

from ..errors import InputError, missing_file_error
from .backends import open_backend, resolve_artefact
from .host_memory import refuse_beyond_memory


def tune(path: str, batch: int, classes: int, force: bool = False) -> List[str]:
    """Run the checkpoint's PyTorch backend once at (batch, classes): every op and shape bucket it meets that
    has no cached choice is timed then (``fisa_rt.kernels.dispatch``). Returns the table's lines."""
    from fisa_rt.kernels import dispatch

    artefact = resolve_artefact(path)
    if not os.path.isfile(artefact):
        raise missing_file_error(artefact, "engine")
    if not artefact.lower().endswith(".safetensors"):
        raise InputError(f"tune measures the PyTorch backend's fused ops, so --engine takes a FISA checkpoint "
                         f"(.safetensors); {path} is not one (ONNX and TensorRT engines choose no kernels)")
    engine = open_backend(artefact, "torch")
    # as bench (its random text too: float64, then float32): numpy's 44 TiB allocation error was a traceback
    refuse_beyond_memory(engine, batch, classes, text_bytes=12)
    if force:
        dispatch.reset_choices()
    rng = np.random.default_rng(0)
    S = engine.image_size
    images = torch.from_numpy(rng.integers(0, 256, (batch, 3, S, S), dtype=np.uint8)).to(engine.device)
    text = rng.standard_normal((classes, engine.embed_dim)).astype(np.float32)
    engine.run(images, text / np.linalg.norm(text, axis=1, keepdims=True))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return dispatch.describe_choices()
