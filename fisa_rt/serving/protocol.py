"""The wire format of the ``fisa_python`` model and the ``fisa`` ensemble, shared by the server side and the
client: tensor names, request parameters, and how a ``SegmentationResult`` travels.

Inputs: ``image`` (1, H, W, 3) uint8 RGB, ``classes`` (1, K) BYTES (UTF-8 class names; "a, b" is one class
with synonyms, as in ``--classes``). Request parameters: ``task`` (semantic|panoptic|instance), ``labels``
(full|rle) and ``max_side`` (label maps downscaled, nearest pixel, so their longer side is at most this; 0: full
size). Outputs: ``semantic`` and ``segment_map`` (1, h, w) int32 (``labels: full``), and ``result`` (1,) BYTES,
a JSON object holding the segments, the instance masks (COCO RLE) and, with ``labels: rle``, both label maps
run-length encoded: an 8000 x 8000 label map is 256 MB as int32, a few kB as runs.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError
from ..postprocess import InstanceResult, PanopticResult, Segment, resize_labels
from ..runtime.results import SegmentationResult, rle_decode, rle_encode

IMAGE, CLASSES = "image", "classes"
SEMANTIC, SEGMENT_MAP, RESULT = "semantic", "segment_map", "result"
TASKS = ("semantic", "panoptic", "instance")
LABEL_FORMATS = ("full", "rle")


def check_parameters(parameters: Dict[str, object]) -> Tuple[str, str, int]:
    """(task, labels, max_side) of a request's parameters, or one InputError naming the bad one."""
    unknown = sorted(set(parameters) - {"task", "labels", "max_side"})
    if unknown:
        raise InputError(f"unknown request parameter {unknown[0]!r}; known: task, labels, max_side")
    task = parameters.get("task", "panoptic")
    labels = parameters.get("labels", "full")
    max_side = parameters.get("max_side", 0)
    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}; got {task!r}")
    if labels not in LABEL_FORMATS:
        raise InputError(f"labels must be one of {LABEL_FORMATS}; got {labels!r}")
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 0:
        raise InputError(f"max_side must be an integer >= 0 (0: full size); got {max_side!r}")
    return task, labels, max_side


def label_size(size: Tuple[int, int], max_side: int) -> Tuple[int, int]:
    """The (h, w) label maps are returned at: ``size`` scaled so its longer side is at most ``max_side``."""
    if not max_side or max(size) <= max_side:
        return tuple(size)
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _label_rle(labels: np.ndarray) -> Dict[str, object]:
    """A label map as one COCO RLE per value present."""
    values = {int(v): rle_encode(labels == v)["counts"] for v in np.unique(labels)}
    return {"size": list(labels.shape), "values": values}


def _label_unrle(encoded: Dict[str, object]) -> np.ndarray:
    labels = np.zeros(encoded["size"], np.int32)
    for value, counts in encoded["values"].items():
        labels[rle_decode({"size": encoded["size"], "counts": counts})] = int(value)
    return labels


def encode_result(result: SegmentationResult, labels: str, max_side: int) -> Dict[str, np.ndarray]:
    """The outputs of one request: label maps (at most ``max_side``) as tensors or runs, the rest as JSON."""
    size = label_size(result.semantic.shape, max_side)
    semantic = resize_labels(torch.from_numpy(result.semantic.astype(np.int32)), size).numpy()
    segment_map = resize_labels(torch.from_numpy(result._segment_map()[0].astype(np.int32)), size).numpy()
    body: Dict[str, object] = {"size": list(result.semantic.shape), "label_size": list(size),
                               "segments": result.segments()}
    if result.instances is not None:
        body["instance_masks"] = [rle_encode(m) for m in result.instances.masks.cpu().numpy()]
    outputs = {}
    if labels == "rle":
        body["semantic_rle"], body["segment_map_rle"] = _label_rle(semantic), _label_rle(segment_map)
    else:
        outputs[SEMANTIC], outputs[SEGMENT_MAP] = semantic[None], segment_map[None]
    outputs[RESULT] = np.array([json.dumps(body).encode()], dtype=np.object_)
    return outputs


def decode_result(
    image: np.ndarray, names: List[str], is_thing: List[bool], task: str, body: Dict[str, object],
    semantic: Optional[np.ndarray], segment_map: Optional[np.ndarray],
) -> SegmentationResult:
    """A ``SegmentationResult`` from one response: what local ``Segmenter.segment`` returns, with label maps at
    the size the request asked for (``image`` is resized to match, so overlays line up)."""
    if semantic is None:
        semantic, segment_map = _label_unrle(body["semantic_rle"]), _label_unrle(body["segment_map_rle"])
    semantic, segment_map = np.asarray(semantic).reshape(body["label_size"]), np.asarray(segment_map)
    segment_map = segment_map.reshape(body["label_size"])
    if tuple(body["label_size"]) != image.shape[:2]:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize(tuple(body["label_size"][::-1]), Image.BILINEAR))
    panoptic = instances = None
    segments = body["segments"]
    if task == "panoptic":
        panoptic = PanopticResult(
            torch.from_numpy(segment_map.astype(np.int32)),
            [Segment(s["id"], s["category_id"], bool(s["isthing"]), s["score"], s["area"]) for s in segments],
        )
    elif task == "instance":
        masks = [rle_decode(m) for m in body["instance_masks"]]
        stacked = np.stack(masks) if masks else np.zeros((0, *body["size"]), bool)
        masks_t = resize_labels(torch.from_numpy(stacked), tuple(body["label_size"])) if masks else torch.from_numpy(
            np.zeros((0, *body["label_size"]), bool))
        instances = InstanceResult(
            masks_t, torch.tensor([s["category_id"] for s in segments], dtype=torch.int64),
            torch.tensor([s["score"] for s in segments], dtype=torch.float32),
        )
    return SegmentationResult(image, list(names), list(is_thing), semantic.astype(np.int64), panoptic, instances)
