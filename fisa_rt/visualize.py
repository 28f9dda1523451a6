"""Overlay pictures: segments blended over the image, outlined, with a legend of class names."""

from __future__ import annotations

import colorsys
from typing import List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours, evenly spread in hue and alternated in lightness so neighbours differ."""
    colours = [colorsys.hls_to_rgb((k * 0.618034) % 1.0, 0.45 + 0.15 * (k % 2), 0.75) for k in range(num_classes)]
    return (np.array(colours) * 255).astype(np.uint8)


LEGEND_CHARS = 40  # longer class names are cut, so the legend strip stays narrow beside any image


def legend_label(name: str) -> str:
    return name if len(name) <= LEGEND_CHARS else name[: LEGEND_CHARS - 3] + "..."


# Rows blended at a time: the float copies are of one band, not of the whole (possibly huge) image.
BAND_ROWS = 256


def _blend(image: np.ndarray, segment_map: np.ndarray, segment_colours: dict, alpha: float) -> np.ndarray:
    """(H, W, 3) uint8: each listed segment's colour blended in, segment outlines white."""
    painted = np.zeros(int(segment_map.max(initial=0)) + 1, bool)
    lut = np.zeros((len(painted), 3), np.uint8)
    for segment, colour in segment_colours.items():
        if 0 <= segment < len(painted):
            painted[segment], lut[segment] = True, colour
    out = np.empty_like(image)
    for top in range(0, image.shape[0], BAND_ROWS):
        ids = segment_map[top : top + BAND_ROWS]
        band = image[top : top + BAND_ROWS].astype(np.float32)
        inside = painted[ids]
        band[inside] = (1 - alpha) * band[inside] + alpha * lut[ids[inside]]
        edges = np.zeros(ids.shape, bool)
        edges[1:] |= ids[1:] != ids[:-1]
        if top:
            edges[0] |= ids[0] != segment_map[top - 1]
        edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        band[edges] = 255
        out[top : top + BAND_ROWS] = band.clip(0, 255).astype(np.uint8)
    return out


def overlay(
    image: np.ndarray, segment_map: np.ndarray, segment_classes: dict, class_names: Sequence[str], alpha: float = 0.55
) -> Image.Image:
    """image (H, W, 3) uint8; segment_map (H, W) ids (0 = none); segment_classes id -> class index.
    Returns the blended picture with a legend strip of the classes present on the right."""
    colours = class_colours(len(class_names))
    out = _blend(image, segment_map, {s: colours[c] for s, c in segment_classes.items()}, alpha)
    present: List[int] = sorted(set(segment_classes.values()))
    font = ImageFont.load_default()
    row = 14
    labels = {c: legend_label(class_names[c]) for c in present}
    legend_width = max([int(font.getlength(labels[c])) for c in present] + [40]) + 24
    canvas = Image.new(
        "RGB", (image.shape[1] + legend_width, max(image.shape[0], row * len(present) + 4)), (255, 255, 255)
    )
    canvas.paste(Image.fromarray(out), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, cls in enumerate(present):
        y = 2 + i * row
        draw.rectangle(
            [image.shape[1] + 4, y + 1, image.shape[1] + 14, y + 11], fill=tuple(int(v) for v in colours[cls])
        )
        draw.text((image.shape[1] + 18, y), labels[cls], fill=(0, 0, 0), font=font)
    return canvas
