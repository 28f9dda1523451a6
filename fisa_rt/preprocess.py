"""Images -> the model's input: float, CLIP-normalised, sides a multiple of 32."""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import InputError


def normalize_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) uint8 in [0, 255], or floating point in [0, 1] -> float32 normalised with mean/std."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise InputError(f"images must be uint8 or floating point; got {images.dtype}")
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t
