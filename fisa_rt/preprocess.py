"""Images -> the model's input: float, CLIP-normalised, sides a multiple of 32."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

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


def upload(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host ``pixels`` as a tensor on ``device``: on CUDA through pinned memory (torch's caching host
    allocator reuses it) with a non-blocking copy; on CPU the array itself, copied only when read-only."""
    host = torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())
    if device.type != "cuda":
        return host
    pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    pinned.copy_(host)
    return pinned.to(device, non_blocking=True)


def pad_to_canvas(image: torch.Tensor, canvas: Tuple[int, int], fill: Sequence[float]) -> torch.Tensor:
    """``image`` (..., C, h, w) at the top left of a (..., C, H, W) ``canvas`` of its dtype and device, the
    rest (bottom and right) ``fill``, C values (or one) in the image's scale. The one padding of the
    project: the Segmenter, the datasets and the evaluation pad through it."""
    h, w = image.shape[-2:]
    if h > canvas[0] or w > canvas[1]:
        raise InputError(f"a {h} x {w} image does not fit a {canvas[0]} x {canvas[1]} canvas")
    value = torch.as_tensor(fill, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    out = value.expand(*image.shape[:-2], *canvas).clone()
    out[..., :h, :w] = image
    return out


def resize_work(source: Tuple[int, int], target: Tuple[int, int]) -> int:
    """Multiply-adds of :func:`resize_and_pad`'s separable antialiased resize of a 3-channel ``source`` (h, w)
    to ``target`` (h, w): each output sample reads bilinear's 2 taps per axis, widened by the scale when
    shrinking (the antialias support)."""
    (h, w), (th, tw) = source, target
    taps_h, taps_w = 2 * max(1.0, h / th), 2 * max(1.0, w / tw)
    return int(3 * (h * tw * taps_w + th * tw * taps_h))


def resize_and_pad(
    image: torch.Tensor, size: Tuple[int, int], canvas: Tuple[int, int], fill: Sequence[float],
    dtype: torch.dtype = torch.uint8,
) -> torch.Tensor:
    """(3, H, W) uint8 image, on any device -> (3, canvas) ``dtype`` model input: resized to ``size``
    (bilinear, antialiased, whole pixel values; an image already that size is left as it is) and padded with
    ``fill`` in [0, 255] (:func:`pad_to_canvas`): a uint8 colour, or, in float32, FC-CLIP's unrounded mean
    colour.

    On CPU the resize runs on the uint8 pixels themselves (torch's channels-last uint8 kernel), which gives
    Pillow's ``Image.resize(BILINEAR)`` to within one level on under 1 % of values: the resize the training
    data and detectron2 (FC-CLIP's test-time ``ResizeTransform`` on uint8 images) apply, ~10x faster than in
    float (docs/design.md, "Stage and vocabulary cost on CPU"). Elsewhere (CUDA has no uint8 kernel) it runs
    one channel at a time in float, rounded: a third of the memory of the whole image, within one level of
    the CPU's."""
    if tuple(size) == tuple(image.shape[-2:]):
        resized = image
    elif image.device.type == "cpu":
        # (1, 3, H, W) viewed channels-last: the memory layout that kernel takes (a permuted (H, W, 3) array
        # already is; anything else is copied once into it)
        pixels = image[None].contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    else:
        channels = (image[None, c : c + 1].float() for c in range(3))  # a generator: one float channel alive
        resized = torch.cat(
            [F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True) for x in channels], 1
        )[0].round_().clamp_(0, 255)
    return pad_to_canvas(resized.to(dtype), canvas, fill)


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
