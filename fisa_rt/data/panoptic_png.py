"""COCO panoptic PNGs: a segment id per pixel, stored as RGB (id = R + 256 G + 256² B)."""

from __future__ import annotations

import numpy as np


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids < 2^24 of any integer type -> (H, W, 3) uint8 (R + 256 G + 256² B), one channel at a
    time so a large map needs no (H, W, 3) array of its own type."""
    rgb = np.empty((*ids.shape, 3), np.uint8)
    for channel in range(3):
        rgb[..., channel] = (ids >> (8 * channel)) & 255
    return rgb


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int64 ids: the inverse of :func:`ids_to_rgb`."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
