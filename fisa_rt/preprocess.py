"""Images -> the model's input: float, CLIP-normalised, sides a multiple of 32."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .config import ResizeConfig
from .errors import InputError


def resized_shape(height: int, width: int, image_size: int, resize: Optional[ResizeConfig] = None) -> Tuple[int, int]:
    """(h, w) an (height, width) image is resized to before it is padded onto the ``image_size`` canvas.

    "longest_edge" (the default): the longer side becomes ``image_size``. "shortest_edge": detectron2's
    ``ResizeShortestEdge.get_output_shape`` (detectron2/data/transforms/augmentation_impl.py), which FC-CLIP
    tests with: the shorter side becomes ``short``; if the longer would then pass ``max_size``, both are
    scaled down so it equals ``max_size``; each side rounded half up (``int(x + 0.5)``).
    """
    if height < 1 or width < 1:
        raise InputError(f"an image must have height and width >= 1; got {height} x {width}")
    if resize is None or resize.mode == "longest_edge":
        scale = image_size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    scale = resize.short / min(height, width)
    new_h, new_w = (resize.short, scale * width) if height < width else (scale * height, resize.short)
    if max(new_h, new_w) > resize.max_size:
        scale = resize.max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def padded_canvas(
    sizes: Sequence[Tuple[int, int]], image_size: int, divisible: Optional[int] = None
) -> Tuple[int, int]:
    """(H, W) of the canvas a batch of resized images, (h, w) each, is padded onto (top-left, padding bottom
    and right): the fixed ``image_size`` square; or, given ``divisible``, detectron2's
    ``ImageList.from_tensors(images, size_divisibility=divisible)`` (detectron2/structures/image_list.py),
    as FC-CLIP batches at test time: the largest h and the largest w, each rounded up to a multiple of it."""
    if divisible is None:
        return image_size, image_size
    return tuple(-(-max(size[i] for size in sizes) // divisible) * divisible for i in (0, 1))


def fill_padding(images: torch.Tensor, sizes: Sequence[Tuple[int, int]], colour: Sequence[float]) -> torch.Tensor:
    """Set, in place, every pixel of float ``images`` (B, 3, H, W) outside the top-left ``sizes[b]`` (h, w)
    to ``colour`` (3 values, in the images' scale); returns ``images``."""
    value = torch.as_tensor(colour, dtype=images.dtype, device=images.device).view(3, 1, 1)
    for image, (h, w) in zip(images, sizes):
        image[:, h:] = value
        image[:, :h, w:] = value
    return images


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
