"""``fisa-rt tune``: measure, ahead of serving, which implementation of each fused op runs on this GPU (or, on a
machine without one, on this CPU for inference)."""

from __future__ import annotations

from typing import List

import numpy as np
import torch

from .backends import open_backend, resolve_artefact


def tune(path: str, batch: int, classes: int, force: bool = False) -> List[str]:
    """Run the checkpoint's PyTorch backend once at (batch, classes): every op and shape bucket it meets that
    has no cached choice is timed then (``fisa_rt.kernels.dispatch``). Returns the table's lines."""
    from fisa_rt.kernels import dispatch

    engine = open_backend(resolve_artefact(path), "torch")
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
