"""COCO panoptic PNGs: a segment id per pixel, stored as RGB (id = R + 256 G + 256² B)."""

from __future__ import annotations

import numpy as np


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids < 2^24 of any integer type -> (H, W, 3) uint8 (R + 256 G + 256² B): the three low bytes of
    each id as a little-endian uint32, a row band at a time so a large map needs no (H, W) uint32 copy."""
    rgb = np.empty((*ids.shape, 3), np.uint8)
    rows = max(1, (16 << 20) // max(4 * ids.shape[-1], 1))
    for top in range(0, ids.shape[0], rows):
        band = ids[top : top + rows].astype("<u4")
        rgb[top : top + rows] = band.view(np.uint8).reshape(*band.shape, 4)[..., :3]
    return rgb


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int64 ids: the inverse of :func:`ids_to_rgb`."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
