"""A procedural open-vocabulary panoptic dataset, deterministic by seed, written in COCO-panoptic format.

Scenes: a wall above a floor ("stuff", each a pattern in the place's palette) and 1–4 textured,
rotated, possibly occluding objects ("things", a colour and a shape). Class names compose words —
"red star", "wavy wall" — and some compositions are **held out**: they never appear in a training
image or caption, only in validation, so a model can only name them by composing words it learned
elsewhere. That is the open-vocabulary transfer FISA is about, in miniature.

Why a global-pooled CLIP does not solve it: every scene holds several objects on two textured
regions, colours are jittered and shaded, objects carry nuisance textures and occlude each other, so
classifying a region needs features of that region, not of the whole image.

Layout (as COCO panoptic): ``ROOT/images/SPLIT/*.png``, ``ROOT/panoptic/SPLIT/*.png`` (segment id =
R + 256 G + 256² B), ``ROOT/annotations/panoptic_SPLIT.json`` and ``ROOT/annotations/captions_SPLIT.json``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import save_image, write_json
from ..errors import InputError, refuse_overwrite

COLOURS = {
    "red": (215, 45, 40),
    "green": (45, 165, 60),
    "blue": (45, 85, 215),
    "yellow": (230, 205, 45),
    "purple": (135, 60, 175),
    "orange": (240, 135, 35),
}
SHAPES = ("circle", "square", "triangle", "star")
PATTERNS = ("striped", "dotted", "checkered", "wavy")
PLACES = {"wall": (175, 185, 200), "floor": (150, 110, 75)}  # base palettes

# One held-out shape per colour, and two held-out stuff compositions: every held-out word is seen in
# training inside other class names.
HELD_OUT = (
    "red star", "green circle", "blue triangle", "yellow square", "purple star", "orange circle",
    "wavy wall", "checkered floor",
)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool

    @property
    def held_out(self) -> bool:
        return self.name in HELD_OUT


def categories() -> List[Category]:
    """All classes, things first; ids start at 1 (0 is 'no segment' in panoptic PNGs)."""
    names = [(f"{c} {s}", True) for c in COLOURS for s in SHAPES] + [(f"{p} {w}", False) for w in PLACES for p in PATTERNS]
    return [Category(i + 1, n, t) for i, (n, t) in enumerate(names)]


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) in {0, 1}: the two-tone layout of a stuff pattern, random phase and scale."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6, 14)
    if kind == "striped":
        theta = rng.uniform(0, math.pi)
        return (np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period) > 0).astype(np.float32)
    if kind == "dotted":
        px, py = (x + rng.uniform(0, period)) % period - period / 2, (y + rng.uniform(0, period)) % period - period / 2
        return (px**2 + py**2 < (period * rng.uniform(0.2, 0.3)) ** 2).astype(np.float32)
    if kind == "checkered":
        return ((np.floor((x + rng.uniform(0, period)) / period) + np.floor((y + rng.uniform(0, period)) / period)) % 2).astype(np.float32)
    if kind == "wavy":
        amplitude, wavelength = rng.uniform(2, 5), rng.uniform(15, 30)
        return (np.sin(2 * math.pi * (y + amplitude * np.sin(2 * math.pi * x / wavelength)) / period) > 0).astype(np.float32)
    raise ValueError(kind)


def _jitter(colour, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        return [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    raise ValueError(shape)


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(0.09, 0.22) * size
    cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        aspect = rng.uniform(0.8, 1.2)
        draw.ellipse([cx - r * aspect, cy - r / aspect, cx + r * aspect, cy + r / aspect], fill=1)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=1)
    return np.asarray(canvas, dtype=bool)


def render_scene(size: int, things: List[Category], stuff: List[Category], rng: np.random.Generator):
    """One scene. Returns (image uint8 (S, S, 3), segment-id map int32 (S, S), segments list)."""
    image = np.zeros((size, size, 3), np.float32)
    ids = np.zeros((size, size), np.int32)
    segments: List[Dict] = []
    # Stuff: a wall above a floor, the horizon tilted and placed at random.
    y, x = np.mgrid[0:size, 0:size]
    horizon = rng.uniform(0.35, 0.65) * size + np.tan(rng.uniform(-0.3, 0.3)) * (x - size / 2)
    for region, place in ((y < horizon, "wall"), (y >= horizon, "floor")):
        options = [c for c in stuff if c.name.endswith(place)]
        category = options[int(rng.integers(len(options)))]
        pattern = category.name.split()[0]
        base = _jitter(PLACES[place], rng, 20)
        tones = _pattern(pattern, size, rng)[..., None]
        image[region] = (base * (0.55 + 0.45 * tones))[region]
        segments.append({"id": len(segments) + 1, "category_id": category.id, "mask": region})
    # Things, drawn in order: later ones occlude earlier ones.
    for _ in range(int(rng.integers(1, 5))):
        category = things[int(rng.integers(len(things)))]
        colour_name, shape = category.name.split()
        mask = _shape_mask(shape, size, rng)
        shading = 1.0 + 0.25 * ((x - rng.uniform(0, size)) * rng.uniform(-1, 1) + (y - rng.uniform(0, size)) * rng.uniform(-1, 1)) / size
        fill = _jitter(COLOURS[colour_name], rng, 25) * shading[..., None]
        if rng.random() < 0.5:  # a nuisance texture that names nothing
            fill = fill * (0.85 + 0.15 * _pattern(PATTERNS[int(rng.integers(len(PATTERNS)))], size, rng)[..., None])
        image[mask] = fill[mask]
        for segment in segments:
            segment["mask"] = segment["mask"] & ~mask
        segments.append({"id": len(segments) + 1, "category_id": category.id, "mask": mask})
    image += rng.normal(0, 6, image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
    kept = []
    for segment in segments:
        area = int(segment["mask"].sum())
        if area < 24:  # too occluded to count as a segment: left unlabelled (void)
            continue
        ids[segment["mask"]] = segment["id"]
        rows, cols = np.nonzero(segment["mask"])
        bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
        kept.append({"id": segment["id"], "category_id": segment["category_id"], "iscrowd": 0, "area": area, "bbox": bbox})
    return np.asarray(picture), ids, kept


def caption(segments: List[Dict], names: Dict[int, str], rng: np.random.Generator) -> str:
    things = [names[s["category_id"]] for s in segments if not names[s["category_id"]].endswith(tuple(PLACES))]
    stuff = [names[s["category_id"]] for s in segments if names[s["category_id"]].endswith(tuple(PLACES))]
    order = rng.permutation(len(things))
    objects = " and ".join(f"a {things[i]}" for i in order) or "nothing"
    places = " above a ".join(stuff) if stuff else "an empty scene"
    template = ["a photo of {o} in front of a {p}.", "{o}, with a {p}.", "there is {o} on a {p}."][int(rng.integers(3))]
    return template.format(o=objects, p=places)


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids < 2^24 of any integer type -> (H, W, 3) uint8 (R + 256 G + 256² B), one channel at a
    time so a large map needs no (H, W, 3) array of its own type."""
    rgb = np.empty((*ids.shape, 3), np.uint8)
    for channel in range(3):
        rgb[..., channel] = (ids >> (8 * channel)) & 255
    return rgb


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def generate(root: str, split: str, num_images: int, seed: int, image_size: int = 128, overwrite: bool = False) -> str:
    """Write ``num_images`` scenes of ``split`` ("train" uses only seen classes; any other split uses all,
    with held-out classes in about half the scenes). Returns the panoptic JSON path."""
    if num_images < 0 or image_size < 16:
        raise InputError(f"need num_images >= 0 and image_size >= 16; got {num_images} and {image_size}")
    json_path = os.path.join(root, "annotations", f"panoptic_{split}.json")
    refuse_overwrite(json_path, overwrite)
    try:
        for folder in (("images", split), ("panoptic", split), ("annotations",)):
            os.makedirs(os.path.join(root, *folder), exist_ok=True)
        probe = os.path.join(root, "annotations", f".write-test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as exc:
        raise InputError(f"cannot write the dataset under {root}: {exc.strerror or exc}") from None
    cats = categories()
    names = {c.id: c.name for c in cats}
    seen_things = [c for c in cats if c.isthing and not c.held_out]
    seen_stuff = [c for c in cats if not c.isthing and not c.held_out]
    images, annotations, captions = [], [], []
    for index in range(num_images):
        # One generator per image keyed by (seed, split, index): any image can be regenerated alone.
        rng = np.random.default_rng([seed, sum(map(ord, split)), index])
        if split == "train" or rng.random() < 0.5:
            things, stuff = seen_things, seen_stuff
        else:
            things = [c for c in cats if c.isthing and c.held_out]
            stuff = [c for c in cats if not c.isthing]
        picture, ids, segments = render_scene(image_size, things, stuff, rng)
        name = f"{split}_{index:06d}.png"
        save_image(Image.fromarray(picture), os.path.join(root, "images", split, name))
        save_image(Image.fromarray(ids_to_rgb(ids)), os.path.join(root, "panoptic", split, name))
        images.append({"id": index, "file_name": name, "width": image_size, "height": image_size})
        annotations.append({"image_id": index, "file_name": name, "segments_info": segments})
        captions.append({"image_id": index, "caption": caption(segments, names, rng)})
    categories_json = [{"id": c.id, "name": c.name, "isthing": int(c.isthing), "held_out": c.held_out} for c in cats]
    write_json(os.path.join(root, "annotations", f"captions_{split}.json"), {"images": images, "annotations": captions})
    # the panoptic JSON last: it is what marks the split as written (and what --overwrite checks)
    write_json(json_path, {"images": images, "annotations": annotations, "categories": categories_json})
    return json_path
