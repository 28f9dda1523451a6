"""COCO-panoptic datasets (real COCO / ADE20K panoptic, or the synthetic set) as training samples.

Each sample is a square ``image_size`` canvas: the image resized (longer side to ``image_size``, times a
random scale when augmenting — large-scale jitter as Mask2Former/FC-CLIP train), randomly cropped or
padded, randomly flipped; targets are the per-segment masks and contiguous class indices. Randomness is
keyed by (seed, epoch, index): index a dataset with ``(index, epoch)`` and any sample is reproducible
alone — on any number of processes, and after a resume.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..config import OPENAI_MEAN, ResizeConfig
from ..errors import InputError
from ..preprocess import pad_to_canvas, resized_shape
from .panoptic_png import rgb_to_ids


@dataclass
class Sample:
    image: torch.Tensor  # (3, S, S) uint8
    masks: torch.Tensor  # (N, S, S) bool, one per segment (crowd segments excluded)
    labels: torch.Tensor  # (N,) int64 contiguous class index
    valid: torch.Tensor  # (S, S) bool, False on padding
    size: Tuple[int, int]  # (h, w) of the resized image inside the canvas
    index: int


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) uint8
    masks: List[torch.Tensor]
    labels: List[torch.Tensor]
    valid: torch.Tensor  # (B, S, S)
    indices: List[int]


def collate(samples: List[Sample]) -> Batch:
    return Batch(
        images=torch.stack([s.image for s in samples]),
        masks=[s.masks for s in samples],
        labels=[s.labels for s in samples],
        valid=torch.stack([s.valid for s in samples]),
        indices=[s.index for s in samples],
    )


def read_segment_ids(path: str) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO-panoptic PNG (id = R + 256 G + 256² B)."""
    with Image.open(path) as pan:
        return rgb_to_ids(np.asarray(pan.convert("RGB")))


def check_segment_ids(ids: np.ndarray, listed, where: str) -> None:
    """A panoptic PNG and its JSON must list the same segments (0 is unlabelled): a segment only in one of
    them has no class or no pixels, and panopticapi refuses both."""
    present, listed = set(np.unique(ids).tolist()) - {0}, set(listed)
    if present - listed:
        raise InputError(f"{where}: segment ids {sorted(present - listed)[:5]} are in the PNG but not in the JSON")
    if listed - present:
        raise InputError(f"{where}: segment ids {sorted(listed - present)[:5]} are in the JSON but not in the PNG")


def ground_truth_segments(
    ids: np.ndarray, segments_info: List[Dict], contiguous: Dict[int, int], where: str = "ground truth"
) -> Tuple[Dict[int, int], Dict[int, int]]:
    """Non-crowd segment id -> contiguous class, and contiguous class -> its crowd segment id.

    Crowd pixels stay labelled, as in panopticapi's ``pq_compute``: only a prediction of the crowd's own
    class may lie on it without being a false positive, and the crowd never leaves an IoU's union. Like
    panopticapi, the last crowd segment listed for a class is the one that counts."""
    check_segment_ids(ids, [s["id"] for s in segments_info], where)
    segments, crowd = {}, {}
    for s in segments_info:
        if s["category_id"] not in contiguous:
            raise InputError(f"{where}: segment {s['id']} has unknown category_id {s['category_id']}")
        if s.get("iscrowd", 0):
            crowd[contiguous[s["category_id"]]] = s["id"]
        else:
            segments[s["id"]] = contiguous[s["category_id"]]
    return segments, crowd


def check_file_name(name, where: str) -> None:
    """A dataset's ``file_name`` is a relative path that stays inside its split's folder: an absolute one or
    one that climbs out with ``..`` would read (or, for predictions, write) files outside the dataset."""
    if not isinstance(name, str) or not name:
        raise InputError(f"{where} has file_name {name!r}: expected a non-empty string")
    if os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir:
        raise InputError(f"{where} has file_name {name!r}, which leads outside the dataset's folder")


def load_panoptic_json(path: str) -> Dict:
    """The annotation file, checked once here so that a malformed one is a single clear error rather than
    a KeyError in the middle of training or evaluation: the three lists, the fields each entry needs,
    and that every annotation names a listed image and every segment a listed category."""
    if not os.path.isfile(path):
        raise InputError(f"panoptic annotation file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path} as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not COCO-panoptic JSON: it holds a {type(data).__name__}, not an object")
    fields = {
        "images": ("id", "file_name"),
        "annotations": ("image_id", "file_name", "segments_info"),
        "categories": ("id", "name", "isthing"),
    }
    for key, needed in fields.items():
        entries = data.get(key)
        if not isinstance(entries, list):
            raise InputError(f"{path} is not COCO-panoptic JSON: no {key!r} list")
        for i, entry in enumerate(entries):
            missing = [n for n in needed if not isinstance(entry, dict) or n not in entry]
            if missing:
                raise InputError(f"{path}: {key}[{i}] has no {missing[0]!r}")
    for key in ("images", "annotations"):
        for i, entry in enumerate(data[key]):
            check_file_name(entry["file_name"], f"{path}: {key}[{i}]")
    images = {im["id"] for im in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in images:
            raise InputError(f"{path}: annotations[{i}] names image_id {ann['image_id']!r}, which is not in 'images'")
        if not isinstance(ann["segments_info"], list):
            kind = type(ann["segments_info"]).__name__
            raise InputError(f"{path}: annotations[{i}] has 'segments_info' {kind}, not a list of segments")
        for segment in ann["segments_info"]:
            if not isinstance(segment, dict) or "id" not in segment or "category_id" not in segment:
                raise InputError(f"{path}: annotations[{i}] has a segment without 'id' and 'category_id'")
            if segment["category_id"] not in categories:
                raise InputError(
                    f"{path}: annotations[{i}] has category_id {segment['category_id']!r}, which is not in 'categories'"
                )
    return data


class PanopticDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        root: str,
        split: str,
        image_size: int,
        augment: bool,
        seed: int = 0,
        scale_range: Tuple[float, float] = (0.6, 1.6),
        resize: Optional[ResizeConfig] = None,
        image_mean: Sequence[float] = OPENAI_MEAN,
    ):
        """``resize``: the model's inference rule, applied when not augmenting (evaluation), with
        ``image_mean`` its padding colour where it pads with the mean; training jitters around the
        longest-edge rule."""
        self.root, self.split, self.resize, self.image_mean = root, split, resize, image_mean
        self.image_size, self.augment, self.seed, self.scale_range = image_size, augment, seed, scale_range
        self.json_path = os.path.join(root, "annotations", f"panoptic_{split}.json")
        data = load_panoptic_json(self.json_path)
        self.categories = data["categories"]
        self.class_names = [c["name"] for c in self.categories]
        self.is_thing = [bool(c["isthing"]) for c in self.categories]
        self.held_out = [bool(c.get("held_out", False)) for c in self.categories]
        # Evaluation group of each class (synthetic.GROUPS); without one, held-out means novel composition.
        self.groups = [c.get("group", "novel_composition" if h else "seen")
                       for c, h in zip(self.categories, self.held_out)]
        self.contiguous = {c["id"]: i for i, c in enumerate(self.categories)}
        images = {im["id"]: im for im in data["images"]}
        self.records = [(images[a["image_id"]], a) for a in data["annotations"]]

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> Tuple[np.ndarray, np.ndarray, Dict]:
        """Original image (H, W, 3) uint8, segment-id map (H, W) and the annotation record."""
        info, ann = self.records[index]
        image_path = os.path.join(self.root, "images", self.split, info["file_name"])
        try:
            with Image.open(image_path) as im:
                image = np.asarray(im.convert("RGB"))
            ids = read_segment_ids(os.path.join(self.root, "panoptic", self.split, ann["file_name"]))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"cannot read sample {index} of {self.json_path}: {exc}") from None
        return image, ids, ann

    def __getitem__(self, key) -> Sample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, ids, ann = self.read(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        S = self.image_size
        if self.augment:
            scale = S / max(image.shape[:2]) * rng.uniform(*self.scale_range)
            h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        else:
            h, w = resized_shape(*image.shape[:2], S, self.resize)
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize((w, h), Image.NEAREST))
        top = int(rng.integers(0, h - S + 1)) if self.augment and h > S else 0
        left = int(rng.integers(0, w - S + 1)) if self.augment and w > S else 0
        image, ids = image[top : top + S, left : left + S], ids[top : top + S, left : left + S]
        if self.augment and rng.random() < 0.5:
            image, ids = image[:, ::-1], ids[:, ::-1]
        h, w = ids.shape
        colour = self.resize.pad_colour(self.image_mean) if not self.augment and self.resize is not None else [0]
        canvas = pad_to_canvas(torch.from_numpy(np.array(image)).permute(2, 0, 1), (S, S), colour)  # writable copy
        id_canvas = pad_to_canvas(torch.from_numpy(ids.astype(np.int64))[None], (S, S), [0])[0]
        valid = pad_to_canvas(torch.ones((1, h, w), dtype=torch.bool), (S, S), [False])[0]
        masks, labels = [], []
        for segment in ann["segments_info"]:
            if segment.get("iscrowd", 0):
                continue
            mask = id_canvas == segment["id"]
            if mask.any():
                masks.append(mask)
                labels.append(self.contiguous[segment["category_id"]])
        return Sample(
            image=canvas,
            masks=torch.stack(masks) if masks else torch.zeros(0, S, S, dtype=torch.bool),
            labels=torch.tensor(labels, dtype=torch.int64),
            valid=valid,
            size=(h, w),
            index=index,
        )


class CaptionDataset(torch.utils.data.Dataset):
    """(image, caption) pairs for contrastive CLIP pre-training, from ``captions_SPLIT.json``.

    With ``region_fraction`` > 0 that fraction of the pairs is a *region* pair instead: the crop of one
    segment's box and a single-object prompt of its class ("a photo of a red star."). Scene captions alone
    let a tiny CLIP match by object count and stuff words without binding attribute to object; region
    pairs teach it the single-object sentences that classification prompts are (RegionCLIP's argument).
    """

    def __init__(self, root: str, split: str, image_size: int, seed: int = 0, region_fraction: float = 0.0):
        self.panoptic = PanopticDataset(root, split, image_size, augment=True, seed=seed)
        self.region_fraction = region_fraction
        path = os.path.join(root, "annotations", f"captions_{split}.json")
        if not os.path.isfile(path):
            raise InputError(f"caption file {path} does not exist")
        with open(path) as f:
            self.captions = {a["image_id"]: a["caption"] for a in json.load(f)["annotations"]}

    def __len__(self) -> int:
        return len(self.panoptic)

    def __getitem__(self, key) -> Tuple[torch.Tensor, str]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.panoptic[(index, epoch)]
        rng = np.random.default_rng([self.panoptic.seed, epoch, index, 1])
        if len(sample.labels) and rng.random() < self.region_fraction:
            return self.region(sample, rng)
        image_id = self.panoptic.records[sample.index][1]["image_id"]
        return sample.image, self.captions[image_id]

    def region(self, sample: Sample, rng: np.random.Generator, k: Optional[int] = None) -> Tuple[torch.Tensor, str]:
        k = int(rng.integers(len(sample.labels))) if k is None else k
        rows, cols = torch.nonzero(sample.masks[k], as_tuple=True)
        top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        # A square crop with some context, as a detector's box crop would have.
        side = max(bottom - top, right - left) * 1.2 + 4
        cy, cx = (top + bottom) / 2, (left + right) / 2
        S = sample.image.shape[-1]
        y0, x0 = int(max(0, cy - side / 2)), int(max(0, cx - side / 2))
        y1, x1 = int(min(S, cy + side / 2)), int(min(S, cx + side / 2))
        crop = sample.image[None, :, y0:y1, x0:x1].float()
        image = torch.nn.functional.interpolate(crop, size=(S, S), mode="bilinear", align_corners=False)
        name = self.panoptic.class_names[int(sample.labels[k])]
        return image[0].round().clamp(0, 255).to(torch.uint8), f"a photo of a {name}."


def caption_collate(items: List[Tuple[torch.Tensor, str]]) -> Tuple[torch.Tensor, List[str]]:
    return torch.stack([i for i, _ in items]), [c for _, c in items]
