"""Single-image segmentation with a PyTorch FISA model: image file -> panoptic + semantic result.

Pre-processing (resize the longer side to the model's size, pad to a multiple of 32) and
post-processing (crop the padding, resize back to the original size) live here once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CheckpointError, InputError
from .postprocess import PanopticResult, SemanticResult, panoptic_inference, restore_mask_logits, semantic_inference
from .preprocess import normalize_images

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


@dataclass
class Prediction:
    panoptic: PanopticResult
    semantic: SemanticResult


class Predictor:
    def __init__(self, model, class_names: Sequence[str], is_thing: Optional[Sequence[bool]] = None, seen: Optional[Sequence[bool]] = None):
        self.model = model.eval()
        self.class_names = list(class_names)
        self.is_thing = list(is_thing) if is_thing is not None else [True] * len(self.class_names)
        device = next(model.parameters()).device
        self.text = model.encode_vocabulary(self.class_names).to(device)
        self.seen = None if seen is None else torch.tensor(list(seen), device=device)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Prediction:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"image must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
        cfg = self.model.cfg
        H, W = image.shape[:2]
        scale = cfg.image_size / max(H, W)
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        canvas = np.zeros((-(-h // 32) * 32, -(-w // 32) * 32, 3), np.uint8)
        canvas[:h, :w] = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        device = self.text.device
        tensor = torch.from_numpy(canvas).permute(2, 0, 1)[None].to(device)
        out = self.model(normalize_images(tensor, cfg.image_mean, cfg.image_std), self.text, self.seen)
        logits = restore_mask_logits(out.mask_logits[0], canvas.shape[:2], (h, w), (H, W))
        return Prediction(
            panoptic=panoptic_inference(out.class_logits[0], logits, self.is_thing, cfg.postprocess),
            semantic=semantic_inference(out.class_logits[0], logits),
        )
