"""A procedural open-vocabulary panoptic dataset, deterministic by seed, written in COCO-panoptic format.

Scenes: a wall above a floor ("stuff", each a pattern in the place's palette) and 1–4 textured,
rotated, possibly occluding objects ("things", a colour and a shape). Class names compose words —
"red star", "wavy wall" — and some compositions are **held out**: they never appear in a training
image or caption, only in validation, so a model can only name them by composing words it learned
elsewhere. That is the open-vocabulary transfer FISA is about, in miniature.

Two worlds (:data:`WORLDS`). ``default`` is the 32-class set above. ``broad`` adds concepts that only
pre-training sees — colours, shapes, patterns and places whose words are *novel concepts*: they appear in
the ``pretrain`` split (CLIP's stage-1 captions and region crops) and in validation, never in a ``train``
image, caption or class name (segmentation stages 2 and 3 read ``train``). Its validation scenes hold
seen classes, novel compositions of seen words, and novel-concept classes, about a third each; its
captions also carry size words ("a small red star"). This is where pre-trained knowledge exists to be
lost by fine-tuning (issue 15).

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

from ..atomic import atomic_folders, output_folder, save_image, write_json
from ..errors import InputError, refuse_overwrite
from .panoptic_png import ids_to_rgb

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
# Concepts of the broad world that only pre-training and validation see (rendered like the others).
NOVEL_COLOURS = {"pink": (240, 130, 190), "cyan": (40, 200, 210)}
NOVEL_SHAPES = ("cross", "ring")
NOVEL_PATTERNS = ("zigzag", "grid")
NOVEL_PLACES = {"sky": (140, 180, 225), "grass": (95, 150, 70)}
# Which band of the scene a place fills: the first above the horizon, the second below it.
TOP_PLACES = ("wall", "sky")
ALL_COLOURS = {**COLOURS, **NOVEL_COLOURS}
ALL_PLACES = {**PLACES, **NOVEL_PLACES}

# One held-out shape per colour, and two held-out stuff compositions: every held-out word is seen in
# training inside other class names.
HELD_OUT = (
    "red star", "green circle", "blue triangle", "yellow square", "purple star", "orange circle",
    "wavy wall", "checkered floor",
)


GROUPS = ("seen", "novel_composition", "novel_concept")


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    group: str = "seen"  # one of GROUPS

    @property
    def held_out(self) -> bool:
        return self.group != "seen"


@dataclass(frozen=True)
class World:
    """The concepts a synthetic dataset is made of; class names compose them (colour shape, pattern place)."""

    name: str
    colours: Tuple[str, ...]
    shapes: Tuple[str, ...]
    patterns: Tuple[str, ...]
    places: Tuple[str, ...]
    held_out: Tuple[str, ...]  # novel compositions: class names of seen words kept out of training
    novel_words: Tuple[str, ...] = ()  # novel concepts: words only pre-training and validation see

    def group(self, name: str) -> str:
        if set(name.split()) & set(self.novel_words):
            return "novel_concept"
        return "novel_composition" if name in self.held_out else "seen"

    def categories(self) -> List[Category]:
        """All classes, things first; ids start at 1 (0 is 'no segment' in panoptic PNGs)."""
        names = [(f"{c} {s}", True) for c in self.colours for s in self.shapes]
        names += [(f"{p} {w}", False) for w in self.places for p in self.patterns]
        return [Category(i + 1, n, t, self.group(n)) for i, (n, t) in enumerate(names)]

    @property
    def seen_patterns(self) -> Tuple[str, ...]:
        return tuple(p for p in self.patterns if p not in self.novel_words)


WORLDS = {
    "default": World("default", tuple(COLOURS), SHAPES, PATTERNS, tuple(PLACES), HELD_OUT),
    "broad": World(
        "broad", tuple(ALL_COLOURS), SHAPES + NOVEL_SHAPES, PATTERNS + NOVEL_PATTERNS, tuple(ALL_PLACES), HELD_OUT,
        novel_words=tuple(NOVEL_COLOURS) + NOVEL_SHAPES + NOVEL_PATTERNS + tuple(NOVEL_PLACES),
    ),
}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown synthetic world {name!r}; choose one of {sorted(WORLDS)}")
    return WORLDS[name]


def categories(world: str = "default") -> List[Category]:
    """The classes of a world (default: the 32-class set the embedded model knows)."""
    return get_world(world).categories()


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
        return (
            (np.floor((x + rng.uniform(0, period)) / period) + np.floor((y + rng.uniform(0, period)) / period)) % 2
        ).astype(np.float32)
    if kind == "wavy":
        amplitude, wavelength = rng.uniform(2, 5), rng.uniform(15, 30)
        return (np.sin(2 * math.pi * (y + amplitude * np.sin(2 * math.pi * x / wavelength)) / period) > 0).astype(
            np.float32
        )
    if kind == "zigzag":  # chevrons: stripes whose phase follows a triangle wave across the image
        tooth = rng.uniform(8, 16)
        triangle = np.abs((x + rng.uniform(0, tooth)) % tooth - tooth / 2) * rng.uniform(0.8, 1.6)
        return (((y + triangle) % period) < period / 2).astype(np.float32)
    if kind == "grid":  # thin lines both ways
        width = period * rng.uniform(0.2, 0.3)
        columns, rows = (x + rng.uniform(0, period)) % period < width, (y + rng.uniform(0, period)) % period < width
        return (columns | rows).astype(np.float32)
    raise ValueError(kind)


def _jitter(colour, rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "triangle":
        return [
            (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    if shape == "cross":  # a plus sign, arms a third of the span wide
        arm = r / 3
        outline = [(arm, r), (arm, arm), (r, arm), (r, -arm), (arm, -arm), (arm, -r)]
        outline += [(-u, -v) for u, v in outline]
        cos, sin = math.cos(angle), math.sin(angle)
        return [(cx + u * cos - v * sin, cy + u * sin + v * cos) for u, v in outline]
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
    elif shape == "ring":  # the hole shows what lies behind, so it is not part of the segment
        aspect, hole = rng.uniform(0.8, 1.2), rng.uniform(0.45, 0.6)
        draw.ellipse([cx - r * aspect, cy - r / aspect, cx + r * aspect, cy + r / aspect], fill=1)
        rx, ry = hole * r * aspect, hole * r / aspect
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=0)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=1)
    return np.asarray(canvas, dtype=bool)


def render_scene(
    size: int, things: List[Category], stuff: List[Category], rng: np.random.Generator,
    nuisance: Tuple[str, ...] = PATTERNS,
):
    """One scene. ``nuisance``: the patterns an object may carry as a texture that names nothing (only
    seen ones, so a novel pattern never shows in a training image). Returns (image uint8 (S, S, 3),
    segment-id map int32 (S, S), segments list)."""
    image = np.zeros((size, size, 3), np.float32)
    ids = np.zeros((size, size), np.int32)
    segments: List[Dict] = []
    # Stuff: a wall above a floor, the horizon tilted and placed at random.
    y, x = np.mgrid[0:size, 0:size]
    horizon = rng.uniform(0.35, 0.65) * size + np.tan(rng.uniform(-0.3, 0.3)) * (x - size / 2)
    for region, top in ((y < horizon, True), (y >= horizon, False)):
        options = [c for c in stuff if (c.name.split()[-1] in TOP_PLACES) == top]
        category = options[int(rng.integers(len(options)))]
        pattern, place = category.name.split()
        base = _jitter(ALL_PLACES[place], rng, 20)
        tones = _pattern(pattern, size, rng)[..., None]
        image[region] = (base * (0.55 + 0.45 * tones))[region]
        segments.append({"id": len(segments) + 1, "category_id": category.id, "mask": region})
    # Things, drawn in order: later ones occlude earlier ones.
    for _ in range(int(rng.integers(1, 5))):
        category = things[int(rng.integers(len(things)))]
        colour_name, shape = category.name.split()
        mask = _shape_mask(shape, size, rng)
        shading = (
            1.0
            + 0.25
            * ((x - rng.uniform(0, size)) * rng.uniform(-1, 1) + (y - rng.uniform(0, size)) * rng.uniform(-1, 1))
            / size
        )
        fill = _jitter(ALL_COLOURS[colour_name], rng, 25) * shading[..., None]
        if rng.random() < 0.5:  # a nuisance texture that names nothing
            fill = fill * (0.85 + 0.15 * _pattern(nuisance[int(rng.integers(len(nuisance)))], size, rng)[..., None])
        image[mask] = fill[mask]
        for segment in segments:
            segment["mask"] = segment["mask"] & ~mask
        segments.append({"id": len(segments) + 1, "category_id": category.id, "mask": mask})
    image += rng.normal(0, 6, image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))
    )
    kept = []
    for segment in segments:
        area = int(segment["mask"].sum())
        if area < 24:  # too occluded to count as a segment: left unlabelled (void)
            continue
        ids[segment["mask"]] = segment["id"]
        rows, cols = np.nonzero(segment["mask"])
        bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
        kept.append(
            {"id": segment["id"], "category_id": segment["category_id"], "iscrowd": 0, "area": area, "bbox": bbox}
        )
    return np.asarray(picture), ids, kept


def _size_word(area: int, image_area: int) -> str:
    """An attribute word from a thing's visible area: what a caption writer would say about its size."""
    fraction = area / image_area
    return "small " if fraction < 0.03 else "large " if fraction > 0.09 else ""


def caption(segments: List[Dict], names: Dict[int, str], rng: np.random.Generator, image_area: int = 0) -> str:
    """A scene caption; with ``image_area`` > 0 each object also gets a size word."""
    is_stuff = [names[s["category_id"]].split()[-1] in ALL_PLACES for s in segments]
    things = [s for s, st in zip(segments, is_stuff) if not st]
    stuff = [names[s["category_id"]] for s, st in zip(segments, is_stuff) if st]
    order = rng.permutation(len(things))
    words = [(_size_word(t["area"], image_area) if image_area else "") + names[t["category_id"]] for t in things]
    objects = " and ".join(f"a {words[i]}" for i in order) or "nothing"
    places = " above a ".join(stuff) if stuff else "an empty scene"
    template = ["a photo of {o} in front of a {p}.", "{o}, with a {p}.", "there is {o} on a {p}."][int(rng.integers(3))]
    return template.format(o=objects, p=places)


def _scene_classes(cats: List[Category], split: str, world: World, rng: np.random.Generator) -> Tuple[List, List]:
    """(things, stuff) a scene of ``split`` draws from. ``train``: seen classes. ``pretrain``: every class
    but the novel compositions (those stay novel everywhere but validation). Other splits: one group per
    scene, chosen uniformly (default world: seen or novel composition)."""
    def of(groups):
        chosen = [c for c in cats if c.group in groups]
        return [c for c in chosen if c.isthing], [c for c in chosen if not c.isthing]

    if split == "train":
        return of({"seen"})
    if split == "pretrain":
        return of({"seen", "novel_concept"})
    groups = GROUPS if world.novel_words else GROUPS[:2]
    group = groups[int(rng.random() * len(groups))]
    if group == "seen":
        return of({"seen"})
    if group == "novel_composition":
        return of({"novel_composition"})[0], of({"seen", "novel_composition"})[1]
    return of({"novel_concept"})


def generate(
    root: str, split: str, num_images: int, seed: int, image_size: int = 128, overwrite: bool = False,
    world: str = "default",
) -> str:
    """Write ``num_images`` scenes of ``split`` of a :data:`WORLDS` world: "train" uses only seen classes
    (and its JSON names only classes without a novel concept); "pretrain" every class but the novel
    compositions; any other split every group (see :func:`_scene_classes`). Returns the panoptic JSON path."""
    if num_images < 0 or image_size < 16:
        raise InputError(f"need num_images >= 0 and image_size >= 16; got {num_images} and {image_size}")
    spec = get_world(world)

    # The split is written into staging and swapped in whole, its panoptic JSON last (what marks it as written):
    # a failed or interrupted run leaves no partial split, and --overwrite leaves none of the earlier one's files.
    parts = [os.path.join("images", split), os.path.join("panoptic", split)]
    parts += [os.path.join("annotations", f"{kind}_{split}.json") for kind in ("captions", "panoptic")]
    json_path = os.path.join(root, parts[3])
    refuse_overwrite(json_path, overwrite)  # before the other parts: the JSON is what names the split as there
    cats = spec.categories()
    names = {c.id: c.name for c in cats}
    images, annotations, captions = [], [], []
    with output_folder(root), atomic_folders(root, parts, overwrite) as staging:
        for folder in parts[:2] + ["annotations"]:
            os.makedirs(os.path.join(staging, folder))
        for index in range(num_images):
            # One generator per image keyed by (seed, split, index): any image can be regenerated alone.
            rng = np.random.default_rng([seed, sum(map(ord, split)), index])
            things, stuff = _scene_classes(cats, split, spec, rng)
            picture, ids, segments = render_scene(image_size, things, stuff, rng, spec.seen_patterns)
            name = f"{split}_{index:06d}.png"
            save_image(Image.fromarray(picture), os.path.join(staging, parts[0], name))
            save_image(Image.fromarray(ids_to_rgb(ids)), os.path.join(staging, parts[1], name))
            images.append({"id": index, "file_name": name, "width": image_size, "height": image_size})
            annotations.append({"image_id": index, "file_name": name, "segments_info": segments})
            size_words = image_size * image_size if spec.novel_words else 0
            captions.append({"image_id": index, "caption": caption(segments, names, rng, size_words)})
        # A training split does not even name the novel concepts.
        listed = [c for c in cats if not (split == "train" and c.group == "novel_concept")]
        categories_json = [
            {"id": c.id, "name": c.name, "isthing": int(c.isthing), "held_out": c.held_out, "group": c.group}
            for c in listed
        ]
        write_json(os.path.join(staging, parts[2]), {"images": images, "annotations": captions})
        write_json(os.path.join(staging, parts[3]), {"images": images, "annotations": annotations,
                                                     "categories": categories_json})
    return json_path
