"""One image's segmentation, whatever backend made it: views (semantic labels, panoptic segments,
instances), the overlay picture, and the files ``infer --out`` writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..atomic import write_json
from ..data.panoptic_png import ids_to_rgb
from ..errors import InputError, path_argument
from ..png import save_png
from ..postprocess import InstanceResult, PanopticResult
from ..visualize import overlay_pixels


def rle_encode(mask: np.ndarray) -> Dict[str, object]:
    """COCO's uncompressed RLE of a binary (H, W) mask: column-major run lengths, starting with a run of
    zeros (possibly empty). pycocotools' ``frPyObjects`` reads it."""
    flat = mask.ravel(order="F").astype(np.uint8)
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: Dict[str, object]) -> np.ndarray:
    H, W = rle["size"]
    values = np.arange(len(rle["counts"])) % 2
    return np.repeat(values, rle["counts"]).astype(bool).reshape((H, W), order="F")


# What ``save`` writes per stem: <stem>_overlay.png, ...
OUTPUT_SUFFIXES = {
    "overlay": "_overlay.png", "labels": "_labels.png", "panoptic": "_panoptic.png", "panoptic_json": "_panoptic.json",
    "instances": "_instances.json",
}
FORMATS = ("overlay", "labels", "panoptic", "instances")  # what ``save(formats=...)`` names; panoptic: .png + .json


@dataclass
class SegmentationResult:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    class_names: List[str]
    is_thing: List[bool]
    semantic: np.ndarray  # (H, W) int64 class index per pixel
    panoptic: Optional[PanopticResult] = None
    instances: Optional[InstanceResult] = None

    def segments(self) -> List[Dict[str, object]]:
        """Per segment: id, class, score, area (panoptic), or per instance (instance task)."""
        if self.panoptic is not None:
            return [
                {
                    "id": s.id,
                    "class": self.class_names[s.category_id],
                    "category_id": s.category_id,
                    "score": round(s.score, 4),
                    "isthing": s.is_thing,
                    "area": s.area,
                }
                for s in self.panoptic.segments
            ]
        if self.instances is not None:
            return [
                {
                    "id": i + 1,
                    "class": self.class_names[int(label)],
                    "category_id": int(label),
                    "score": round(float(score), 4),
                }
                for i, (label, score) in enumerate(zip(self.instances.labels, self.instances.scores))
            ]
        classes, areas = np.unique(self.semantic, return_counts=True)
        return [
            {"id": int(c) + 1, "class": self.class_names[int(c)], "category_id": int(c), "area": int(a)}
            for c, a in zip(classes, areas)
        ]

    def summary(self) -> str:
        """One line naming what was found: "red star (0.91), wavy wall (0.77)" or "nothing"."""
        parts = [f"{s['class']} ({s['score']:.2f})" if "score" in s else s["class"] for s in self.segments()]
        return ", ".join(parts) or "nothing"

    def _segment_map(self):
        if self.panoptic is not None:
            ids = self.panoptic.segment_map.cpu().numpy()
            return ids, {s.id: s.category_id for s in self.panoptic.segments}
        if self.instances is not None:
            ids = np.zeros(self.semantic.shape, np.int32)
            masks = self.instances.masks.cpu().numpy()
            for i in range(len(masks) - 1, -1, -1):  # best-scoring instance on top
                ids[masks[i]] = i + 1
            return ids, {i + 1: int(label) for i, label in enumerate(self.instances.labels)}
        return self.semantic.astype(np.int32) + 1, {int(c) + 1: int(c) for c in np.unique(self.semantic)}

    def overlay(self) -> Image.Image:
        return Image.fromarray(self._overlay_pixels())

    def _overlay_pixels(self) -> np.ndarray:
        ids, classes = self._segment_map()
        return overlay_pixels(self.image, ids, classes, self.class_names)

    def save(
        self,
        folder: str,
        stem: str,
        overwrite: bool = False,
        formats: Optional[Sequence[str]] = None,
    ) -> List[str]:
        """Writes <stem>_overlay.png, <stem>_labels.png (16-bit class index per pixel) and, when the task
        produced them, <stem>_panoptic.png + .json (COCO panoptic) and <stem>_instances.json (COCO RLE).
        ``formats``: a list naming some of these (FORMATS; default: all that this result holds).
        Refuses to replace existing files unless ``overwrite``, and a ``stem`` that is not a plain name."""
        folder, stem = path_argument(folder, "folder"), path_argument(stem, "stem")
        if not stem or stem in (".", "..") or "/" in stem or os.sep in stem or (os.altsep and os.altsep in stem):
            raise InputError(f"output stem {stem!r} must be a plain name (no folder): results go inside {folder}")
        formats = self._formats(formats)
        kinds = [k for k in OUTPUT_SUFFIXES if k.replace("_json", "") in formats]
        files = {k: stem + OUTPUT_SUFFIXES[k] for k in kinds}
        targets = {k: os.path.join(folder, v) for k, v in files.items()}
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise InputError(f"cannot write results into {folder}: it is a file, not a folder")
        existing = [t for t in targets.values() if os.path.exists(t)]
        if existing and not overwrite:
            raise InputError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace outputs")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
        # the check above refuses early; each write below also refuses, atomically, a file another process
        # wrote meanwhile (fisa_rt.atomic)
        for kind, path in targets.items():
            if kind == "overlay":
                save_png(self._overlay_pixels(), path, overwrite)
            elif kind == "labels":
                save_png(self.semantic.astype(np.uint16), path, overwrite)
            elif kind == "panoptic":
                save_png(ids_to_rgb(self.panoptic.segment_map.cpu().numpy()), path, overwrite)
            elif kind == "panoptic_json":
                write_json(
                    path,
                    {
                        "file_name": files["panoptic"],
                        "segments_info": self.segments(),
                        "categories": [
                            {"id": k, "name": n, "isthing": int(t)}
                            for k, (n, t) in enumerate(zip(self.class_names, self.is_thing))
                        ],
                    },
                    overwrite,
                )
            elif kind == "instances":
                masks = self.instances.masks.cpu().numpy()
                instances = [{**seg, "segmentation": rle_encode(masks[i])} for i, seg in enumerate(self.segments())]
                write_json(path, instances, overwrite)
        return list(targets.values())

    def _formats(self, formats: Optional[Sequence[str]]) -> Sequence[str]:
        """``save``'s ``formats``, checked: each known and held by this result (an instance result has no
        panoptic files), so that none is dropped silently."""
        held = ["overlay", "labels"] + (["panoptic"] if self.panoptic is not None else [])
        held += ["instances"] if self.instances is not None else []
        if formats is None:
            return held
        if not isinstance(formats, (list, tuple)) or not formats:
            raise InputError(f"formats must be a non-empty list of output formats ({', '.join(FORMATS)}); "
                             f"got {formats!r}")
        for name in formats:
            if name not in FORMATS:
                raise InputError(f"unknown output format {name!r}; the formats are {', '.join(FORMATS)}")
            if name not in held:  # panoptic or instances
                task = "panoptic" if name == "panoptic" else "instance"
                raise InputError(f"output format {name!r} needs a result of task {task!r}; this one holds "
                                 f"{', '.join(held)}")
        return formats
