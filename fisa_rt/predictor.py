"""Where the bundled pieces are (the embedded default model, the sample scenes) and how an image file
is read; segmentation itself is :class:`fisa_rt.runtime.segmenter.Segmenter`."""

from __future__ import annotations

import os
from importlib import resources
from typing import List

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CheckpointError, InputError

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


def load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing, unreadable or corrupt file is an InputError naming it."""
    if not os.path.isfile(path):
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
