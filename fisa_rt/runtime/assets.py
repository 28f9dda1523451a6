"""Where the bundled pieces are: the embedded default model and the sample scenes."""

from __future__ import annotations

import os
from importlib import resources
from typing import List

from ..errors import CheckpointError

DEFAULT_CHECKPOINT = "fisa-tiny-synthetic.safetensors"


def default_checkpoint() -> str:
    """Path of the embedded default model (fisa-tiny trained on the synthetic set)."""
    path = str(resources.files("fisa_rt") / "assets" / DEFAULT_CHECKPOINT)
    if not os.path.isfile(path):
        raise CheckpointError(f"the embedded default model is missing from the installation ({path})")
    return path


def sample_images() -> List[str]:
    """The bundled sample scenes."""
    folder = resources.files("fisa_rt") / "assets" / "samples"
    return sorted(str(p) for p in folder.iterdir() if p.name.endswith(".png"))
