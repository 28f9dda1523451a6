"""Panoptic quality (PQ / SQ / RQ, things and stuff) and mIoU, split into seen and held-out classes.

PQ follows panopticapi's ``pq_compute`` exactly (a prediction matches a ground-truth segment of the same
class at IoU > 0.5; IoU ignores the prediction's pixels on unlabelled ground truth; predictions lying
more than half on unlabelled pixels are not false positives), so numbers compare with published ones
— a test checks them against cityscapesscripts' copy of panopticapi on the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .data.panoptic import PanopticDataset, ground_truth_segments, read_segment_ids
from .data.synthetic import ids_to_rgb
from .postprocess import PanopticResult, panoptic_inference, restore_mask_logits, semantic_inference
from .preprocess import normalize_images

IGNORE = 255


@dataclass
class _ClassStat:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0


@dataclass
class PanopticQuality:
    """Accumulates per-class TP/FP/FN/IoU over images (class = contiguous index)."""

    num_classes: int
    stats: List[_ClassStat] = field(default_factory=list)

    def __post_init__(self):
        self.stats = [_ClassStat() for _ in range(self.num_classes)]

    def add(self, gt_ids: np.ndarray, gt_segments: Dict[int, int], pred_ids: np.ndarray, pred_segments: Dict[int, int]) -> None:
        """gt_ids/pred_ids: (H, W) segment ids, 0 = unlabelled; *_segments: segment id -> class."""
        offset = 1 << 32
        pairs, counts = np.unique(gt_ids.astype(np.int64) * offset + pred_ids.astype(np.int64), return_counts=True)
        overlap = {(int(p // offset), int(p % offset)): int(c) for p, c in zip(pairs, counts)}
        gt_area = {g: 0 for g in gt_segments}
        pred_area = {p: 0 for p in pred_segments}
        for (g, p), c in overlap.items():
            if g in gt_area:
                gt_area[g] += c
            if p in pred_area:
                pred_area[p] += c
        matched_gt, matched_pred = set(), set()
        for (g, p), inter in overlap.items():
            if g not in gt_segments or p not in pred_segments or gt_segments[g] != pred_segments[p]:
                continue
            union = pred_area[p] + gt_area[g] - inter - overlap.get((0, p), 0)
            iou = inter / union
            if iou > 0.5:
                stat = self.stats[gt_segments[g]]
                stat.tp += 1
                stat.iou += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, cls in gt_segments.items():
            if g not in matched_gt:
                self.stats[cls].fn += 1
        for p, cls in pred_segments.items():
            if p in matched_pred or pred_area[p] == 0:
                continue
            if overlap.get((0, p), 0) / pred_area[p] > 0.5:
                continue
            self.stats[cls].fp += 1

    def summary(self, classes: Sequence[int]) -> Dict[str, float]:
        """PQ/SQ/RQ averaged over ``classes`` that occur (TP + FP + FN > 0), in percent."""
        pq, sq, rq, n = 0.0, 0.0, 0.0, 0
        for c in classes:
            s = self.stats[c]
            if s.tp + s.fp + s.fn == 0:
                continue
            n += 1
            rq_c = s.tp / (s.tp + 0.5 * s.fp + 0.5 * s.fn)
            sq_c = s.iou / s.tp if s.tp else 0.0
            pq += sq_c * rq_c
            sq += sq_c
            rq += rq_c
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        return {"pq": 100 * pq / n, "sq": 100 * sq / n, "rq": 100 * rq / n, "n": n}


@dataclass
class SemanticIoU:
    num_classes: int
    confusion: np.ndarray = None

    def __post_init__(self):
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """gt/pred (H, W) class indices; IGNORE in gt is skipped."""
        keep = gt != IGNORE
        self.confusion += np.bincount(
            gt[keep].astype(np.int64) * self.num_classes + pred[keep].astype(np.int64), minlength=self.num_classes**2
        ).reshape(self.num_classes, self.num_classes)

    def miou(self, classes: Sequence[int]) -> float:
        """Mean IoU (percent) over ``classes`` present in the ground truth."""
        ious = []
        for c in classes:
            if self.confusion[c].sum() == 0:
                continue
            union = self.confusion[c].sum() + self.confusion[:, c].sum() - self.confusion[c, c]
            ious.append(self.confusion[c, c] / union)
        return 100 * float(np.mean(ious)) if ious else 0.0


def report(
    pq: PanopticQuality, miou: SemanticIoU, is_thing: Sequence[bool], held_out: Sequence[bool],
    class_groups: Optional[Sequence[str]] = None,
) -> Dict[str, Dict[str, float]]:
    """Scores per group of classes; where ``class_groups`` (one name per class, e.g. "novel_concept") splits
    the held-out classes into several groups, a row for each, beside "held_out" (all of them)."""
    everything = range(len(is_thing))
    groups = {
        "all": list(everything),
        "things": [c for c in everything if is_thing[c]],
        "stuff": [c for c in everything if not is_thing[c]],
        "seen": [c for c in everything if not held_out[c]],
        "held_out": [c for c in everything if held_out[c]],
    }
    held_out_groups = list(dict.fromkeys(g for g, h in zip(class_groups or [], held_out) if h))
    for name in held_out_groups if len(held_out_groups) > 1 else []:
        groups[name] = [c for c in everything if held_out[c] and class_groups[c] == name]
    return {name: {**pq.summary(classes), "miou": miou.miou(classes)} for name, classes in groups.items()}


def _ground_truth(dataset: PanopticDataset, index: int):
    """Ground-truth segment ids, segment -> class, and semantic map, at the original resolution."""
    _, ids, ann = dataset.read(index)
    ids, segments = ground_truth_segments(ids, ann["segments_info"], dataset.contiguous)
    semantic = np.full(ids.shape, IGNORE, np.int64)
    for segment, cls in segments.items():
        semantic[ids == segment] = cls
    return ids, segments, semantic


@torch.no_grad()
def evaluate(
    model,
    dataset: PanopticDataset,
    batch_size: int = 8,
    limit: Optional[int] = None,
    predictions_dir: Optional[str] = None,
    device: str = "cpu",
) -> Dict[str, Dict[str, float]]:
    """Run a PyTorch ``model`` on ``dataset`` with the dataset's whole vocabulary; PQ/SQ/RQ and mIoU per
    group. ``predictions_dir`` also writes COCO-panoptic prediction PNGs + JSON there, for other evaluators."""
    model = model.eval().to(device)
    text = model.encode_vocabulary(dataset.class_names).to(device)
    seen = torch.tensor([not h for h in dataset.held_out], device=device)  # used by the mask-average head

    def predict(images: torch.Tensor):
        out = model(normalize_images(images.to(device), model.cfg.image_mean, model.cfg.image_std), text, seen=seen)
        return out.class_logits, out.mask_logits

    return evaluate_predictions(predict, dataset, model.cfg.postprocess, batch_size, limit, predictions_dir)


def evaluate_segmenter(segmenter, dataset: PanopticDataset, batch_size: int = 8, limit: Optional[int] = None, predictions_dir: Optional[str] = None):
    """The same evaluation through any runtime backend (ONNX Runtime, TensorRT, PyTorch) of
    :class:`fisa_rt.runtime.segmenter.Segmenter`, on the dataset's vocabulary."""
    from .runtime.vocabulary import Vocabulary

    if dataset.image_size != segmenter.backend.image_size:
        raise ValueError("the dataset must be read at the engine's image size")
    segmenter.set_vocabulary(Vocabulary(dataset.class_names, dataset.is_thing))

    def predict(images: torch.Tensor):
        raw = segmenter.backend.run(images.to(segmenter.backend.device), segmenter.text)
        return raw.class_logits(), raw.mask_logits.float()

    return evaluate_predictions(predict, dataset, segmenter.postprocess, batch_size, limit, predictions_dir)


def evaluate_predictions(predict, dataset: PanopticDataset, postprocess, batch_size: int, limit: Optional[int], predictions_dir: Optional[str]):
    """``predict(uint8 images (B, 3, S, S))`` -> (class logits (B, Q, K+1), mask logits (B, Q, h, w)) on
    the padded canvas; post-processing and scoring are shared by every backend."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    pq, miou = PanopticQuality(len(dataset.class_names)), SemanticIoU(len(dataset.class_names))
    annotations = []
    if predictions_dir:
        os.makedirs(predictions_dir, exist_ok=True)
    with torch.no_grad():
        for start in range(0, count, batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
            images = torch.stack([s.image for s in samples])
            class_logits, mask_logits = predict(images)
            for b, sample in enumerate(samples):
                gt_ids, gt_segments, gt_semantic = _ground_truth(dataset, sample.index)
                logits = restore_mask_logits(mask_logits[b], images.shape[-2:], sample.size, gt_ids.shape)
                panoptic = panoptic_inference(class_logits[b], logits, dataset.is_thing, postprocess)
                semantic = semantic_inference(class_logits[b], logits)
                pq.add(gt_ids, gt_segments, panoptic.segment_map.cpu().numpy(), {s.id: s.category_id for s in panoptic.segments})
                miou.add(gt_semantic, semantic.label_map.cpu().numpy())
                if predictions_dir:
                    annotations.append(_write_prediction(predictions_dir, dataset, sample.index, panoptic))
    if predictions_dir:
        with open(os.path.join(predictions_dir, "predictions.json"), "w") as f:
            json.dump({"annotations": annotations, "categories": dataset.categories}, f)
    return report(pq, miou, dataset.is_thing, dataset.held_out, dataset.groups)


def _write_prediction(folder: str, dataset: PanopticDataset, index: int, panoptic: PanopticResult) -> Dict:
    info, ann = dataset.records[index]
    ids = panoptic.segment_map.cpu().numpy()
    Image.fromarray(ids_to_rgb(ids)).save(os.path.join(folder, ann["file_name"]))
    segments = [
        {"id": s.id, "category_id": dataset.categories[s.category_id]["id"], "iscrowd": 0, "area": int((ids == s.id).sum())}
        for s in panoptic.segments
    ]
    return {"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments}


def format_report(results: Dict[str, Dict[str, float]]) -> str:
    lines = [f"{'group':17s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'mIoU':>6s} {'classes':>7s}"]
    for name, r in results.items():
        lines.append(f"{name:17s} {r['pq']:6.1f} {r['sq']:6.1f} {r['rq']:6.1f} {r['miou']:6.1f} {r['n']:7d}")
    return "\n".join(lines)


def evaluate_files(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str) -> Dict[str, Dict[str, float]]:
    """PQ of COCO-panoptic prediction files against ground-truth files (any evaluator's format)."""
    with open(gt_json) as f:
        gt = json.load(f)
    with open(pred_json) as f:
        predictions = {a["image_id"]: a for a in json.load(f)["annotations"]}
    contiguous = {c["id"]: i for i, c in enumerate(gt["categories"])}
    pq = PanopticQuality(len(contiguous))
    for ann in gt["annotations"]:
        pred = predictions[ann["image_id"]]
        gt_ids, gt_segments = ground_truth_segments(
            read_segment_ids(os.path.join(gt_dir, ann["file_name"])), ann["segments_info"], contiguous
        )
        pq.add(
            gt_ids,
            gt_segments,
            read_segment_ids(os.path.join(pred_dir, pred["file_name"])),
            {s["id"]: contiguous[s["category_id"]] for s in pred["segments_info"]},
        )
    is_thing = [bool(c["isthing"]) for c in gt["categories"]]
    everything = range(len(is_thing))
    return {
        "all": pq.summary(list(everything)),
        "things": pq.summary([c for c in everything if is_thing[c]]),
        "stuff": pq.summary([c for c in everything if not is_thing[c]]),
    }
