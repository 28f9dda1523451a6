"""Panoptic quality (PQ / SQ / RQ, things and stuff) and mIoU, split into seen and held-out classes.

PQ follows panopticapi's ``pq_compute`` exactly (a prediction matches a non-crowd ground-truth segment
of the same class at IoU > 0.5; IoU ignores the prediction's pixels on unlabelled ground truth, not those
on crowd regions; a prediction lying more than half on unlabelled pixels plus the crowd region of its own
class is not a false positive), so numbers compare with published ones — a test checks them against
cityscapesscripts' copy of panopticapi on random files with crowd regions.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_folder, save_image, write_json
from .config import ResizeConfig
from .data.panoptic import PanopticDataset, check_segment_ids, ground_truth_segments, read_segment_ids
from .data.panoptic_png import ids_to_rgb
from .errors import InputError
from .postprocess import PanopticResult, panoptic_inference, restore_mask_logits, semantic_inference
from .preprocess import normalize_images, pad_to_canvas, padded_canvas

IGNORE = 255
PREDICTIONS_JSON = "predictions.json"


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

    def add(
        self,
        gt_ids: np.ndarray,
        gt_segments: Dict[int, int],
        pred_ids: np.ndarray,
        pred_segments: Dict[int, int],
        crowd: Optional[Dict[int, int]] = None,
    ) -> None:
        """gt_ids/pred_ids: (H, W) segment ids, 0 = unlabelled; *_segments: non-crowd segment id -> class;
        ``crowd``: class -> the ground truth's crowd segment id of that class (see ground_truth_segments)."""
        crowd = crowd or {}
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
            ignored = overlap.get((0, p), 0) + (overlap.get((crowd[cls], p), 0) if cls in crowd else 0)
            if ignored / pred_area[p] > 0.5:
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
        for name, labels in (("ground-truth", gt[keep]), ("predicted", pred)):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise InputError(f"{name} labels span [{labels.min()}, {labels.max()}]; {self.num_classes} classes")
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
    """Ground-truth segment ids, segment -> class, class -> crowd segment, and semantic map (crowd regions
    ignored), at the original resolution."""
    _, ids, ann = dataset.read(index)
    segments, crowd = ground_truth_segments(ids, ann["segments_info"], dataset.contiguous, ann["file_name"])
    semantic = np.full(ids.shape, IGNORE, np.int64)
    for segment, cls in segments.items():
        semantic[ids == segment] = cls
    return ids, segments, crowd, semantic


@torch.no_grad()
def evaluate(
    model,
    dataset: PanopticDataset,
    batch_size: int = 8,
    limit: Optional[int] = None,
    predictions_dir: Optional[str] = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> Dict[str, Dict[str, float]]:
    """Run a PyTorch ``model`` on ``dataset`` with the dataset's whole vocabulary; PQ/SQ/RQ and mIoU per
    group. ``predictions_dir`` also writes COCO-panoptic prediction PNGs + JSON there, for other evaluators."""
    refuse_no_categories(dataset)
    model = model.eval().to(device)
    text = model.encode_vocabulary(dataset.class_names).to(device)
    seen = torch.tensor([not h for h in dataset.held_out], device=device)  # used by the mask-average head
    cfg = model.cfg
    divisible = cfg.resize.divisible if cfg.resize.pad == "divisible" else None

    def predict(images: torch.Tensor, sizes):
        images = images.to(device)
        if divisible:  # FC-CLIP's padding: the mean colour unrounded, exactly 0 once normalised
            images = _repad(images.float() / 255.0, sizes, cfg.resize.pad_fill(cfg.image_mean))
        out = model(normalize_images(images, cfg.image_mean, cfg.image_std), text, seen=seen)
        return out.class_logits, out.mask_logits

    return evaluate_predictions(
        predict, dataset, cfg.postprocess, batch_size, limit, predictions_dir, overwrite, divisible
    )


def evaluate_segmenter(
    segmenter, dataset: PanopticDataset, batch_size: int = 8, limit: Optional[int] = None,
    predictions_dir: Optional[str] = None, overwrite: bool = False,
):
    """The same evaluation through any runtime backend (ONNX Runtime, TensorRT, PyTorch) of
    :class:`fisa_rt.runtime.segmenter.Segmenter`, on the dataset's vocabulary."""
    from .vocab.vocabulary import Vocabulary

    if dataset.image_size != segmenter.backend.image_size or (dataset.resize or ResizeConfig()) != segmenter.resize:
        raise ValueError("the dataset must be read at the engine's image size and by its resize rule")
    refuse_no_categories(dataset)
    segmenter.set_vocabulary(Vocabulary(dataset.class_names, dataset.is_thing))
    seen = np.array([not h for h in dataset.held_out])  # as evaluate() passes them
    backend = segmenter.backend
    divisible = segmenter.resize.divisible if backend.variable_canvas else None
    # float32 mean x 255 as the model's normalisation computes it, so the padding becomes exactly 0
    fill = (torch.tensor(segmenter.resize.pad_fill(segmenter.image_mean), dtype=torch.float32) * 255.0).tolist()

    def predict(images: torch.Tensor, sizes):
        images = images.to(backend.device)
        if divisible:  # as Segmenter pads for this backend: float, the mean colour unrounded
            images = _repad(images.float(), sizes, fill)
        raw = backend.run(images, segmenter.text, seen)
        return raw.class_logits(), raw.mask_logits.float()

    return evaluate_predictions(
        predict, dataset, segmenter.postprocess, batch_size, limit, predictions_dir, overwrite, divisible
    )


def _repad(images: torch.Tensor, sizes, fill) -> torch.Tensor:
    """Float ``images`` (B, 3, H, W) with everything outside each one's top-left ``sizes[b]`` set to ``fill``."""
    return torch.stack([pad_to_canvas(im[:, :h, :w], im.shape[-2:], fill) for im, (h, w) in zip(images, sizes)])


def evaluate_predictions(
    predict, dataset: PanopticDataset, postprocess, batch_size: int, limit: Optional[int],
    predictions_dir: Optional[str], overwrite: bool = False, divisible: Optional[int] = None,
):
    """``predict(uint8 images (B, 3, H, W), sizes)`` -> (class logits (B, Q, K+1), mask logits (B, Q, h, w))
    on the padded canvas, whose top-left ``sizes[b]`` (h, w) hold the resized images; post-processing and
    scoring are shared by every backend. The canvas is the dataset's S x S square, or, given ``divisible``
    (resize.pad "divisible"), its top-left part that holds the batch's largest image rounded up to a
    multiple of ``divisible``, as FC-CLIP pads (fisa_rt.preprocess.padded_canvas)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count <= 0:
        raise InputError(f"no images to evaluate: {dataset.json_path} lists {len(dataset)}, limit {limit}")
    pq, miou = PanopticQuality(len(dataset.class_names)), SemanticIoU(len(dataset.class_names))
    annotations = []
    folder = contextlib.nullcontext()
    if predictions_dir:
        refuse_predictions_inside(predictions_dir, dataset.root)
        names = [dataset.records[i][1]["file_name"] for i in range(count)]
        folder = predictions_folder(predictions_dir, names, overwrite)
    with folder as written, torch.no_grad():
        for start in range(0, count, batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
            images = torch.stack([s.image for s in samples])
            sizes = [s.size for s in samples]
            if divisible:
                height, width = padded_canvas(sizes, dataset.image_size, divisible)
                images = images[..., :height, :width]
            class_logits, mask_logits = predict(images, sizes)
            for b, sample in enumerate(samples):
                gt_ids, gt_segments, crowd, gt_semantic = _ground_truth(dataset, sample.index)
                logits = restore_mask_logits(mask_logits[b], images.shape[-2:], sample.size, gt_ids.shape)
                panoptic = panoptic_inference(class_logits[b], logits, dataset.is_thing, postprocess)
                semantic = semantic_inference(class_logits[b], logits)
                pred_segments = {s.id: s.category_id for s in panoptic.segments}
                pq.add(gt_ids, gt_segments, panoptic.segment_map.cpu().numpy(), pred_segments, crowd)
                miou.add(gt_semantic, semantic.label_map.cpu().numpy())
                if written:
                    annotations.append(_write_prediction(written, dataset, sample.index, panoptic))
        if written:
            predictions = {"annotations": annotations, "categories": dataset.categories}
            write_json(os.path.join(written, PREDICTIONS_JSON), predictions)
    return report(pq, miou, dataset.is_thing, dataset.held_out, dataset.groups)


def refuse_no_categories(dataset: PanopticDataset) -> None:
    """The vocabulary is the dataset's categories: without any, the text encoder's "empty vocabulary" would
    blame class names the user never gave."""
    if not dataset.class_names:
        raise InputError(f"the dataset has no categories: {dataset.json_path} lists none to evaluate")


def refuse_predictions_inside(predictions_dir: str, data_root: str) -> None:
    """Prediction PNGs carry the ground truth's file names: written anywhere inside the dataset (its
    ``panoptic/<split>`` folder above all) they could replace the ground truth, so that is refused whatever
    ``overwrite`` says."""
    predictions, root = os.path.realpath(predictions_dir), os.path.realpath(data_root)
    if os.path.commonpath([predictions, root]) == root:
        raise InputError(
            f"--predictions {predictions_dir} is inside the dataset {data_root}: predictions could replace its "
            "ground truth; choose a folder outside it"
        )


def predictions_folder(folder: str, file_names: Sequence[str], overwrite: bool):
    """The :func:`~fisa_rt.atomic.atomic_folder` the predictions are written to, checked before the run.
    Prediction PNGs are named after the annotations' ``file_name``, which comes from a dataset file: only
    plain, distinct base names are used, so nothing is written outside ``folder``. An existing, non-empty
    ``folder`` is replaced wholly, so only with ``overwrite`` and only if an earlier eval wrote it (it holds
    predictions.json): other files are never deleted."""
    seen = set()
    for name in file_names:
        plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
        if not plain or os.path.basename(name) != name:
            raise InputError(f"annotation file_name {name!r} is not a plain file name: predictions stay in {folder}")
        if name in seen or name == PREDICTIONS_JSON:
            raise InputError(f"annotation file_name {name!r} appears twice; predictions would overwrite each other")
        seen.add(name)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"predictions folder {folder} is a file, not a folder")
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(os.path.join(folder, PREDICTIONS_JSON)):
            raise InputError(f"predictions folder {folder} is not empty and holds no {PREDICTIONS_JSON}, so not an "
                             "earlier eval's: even --overwrite does not replace it; choose a new or empty folder")
        if not overwrite:
            raise InputError(f"predictions folder {folder} is not empty; "
                             "pass overwrite=True (--overwrite) to replace it")
    return atomic_folder(folder, overwrite)


def _write_prediction(folder: str, dataset: PanopticDataset, index: int, panoptic: PanopticResult) -> Dict:
    info, ann = dataset.records[index]
    ids = panoptic.segment_map.cpu().numpy()
    save_image(Image.fromarray(ids_to_rgb(ids)), os.path.join(folder, ann["file_name"]))
    segments = [
        {
            "id": s.id,
            "category_id": dataset.categories[s.category_id]["id"],
            "iscrowd": 0,
            "area": int((ids == s.id).sum()),
        }
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
    if not gt["annotations"]:
        raise InputError(f"{gt_json} lists no images to evaluate")
    contiguous = {c["id"]: i for i, c in enumerate(gt["categories"])}
    pq = PanopticQuality(len(contiguous))
    for ann in gt["annotations"]:
        if ann["image_id"] not in predictions:
            raise InputError(f"{pred_json} has no prediction for image {ann['image_id']!r}")
        pred = predictions[ann["image_id"]]
        gt_ids = read_segment_ids(os.path.join(gt_dir, ann["file_name"]))
        gt_segments, crowd = ground_truth_segments(gt_ids, ann["segments_info"], contiguous, ann["file_name"])
        pred_ids = read_segment_ids(os.path.join(pred_dir, pred["file_name"]))
        check_segment_ids(pred_ids, [s["id"] for s in pred["segments_info"]], pred["file_name"])
        unknown = [s["category_id"] for s in pred["segments_info"] if s["category_id"] not in contiguous]
        if unknown:
            raise InputError(f"{pred['file_name']}: unknown category_id {unknown[0]}")
        pred_segments = {s["id"]: contiguous[s["category_id"]] for s in pred["segments_info"]}
        pq.add(gt_ids, gt_segments, pred_ids, pred_segments, crowd)
    is_thing = [bool(c["isthing"]) for c in gt["categories"]]
    everything = range(len(is_thing))
    return {
        "all": pq.summary(list(everything)),
        "things": pq.summary([c for c in everything if is_thing[c]]),
        "stuff": pq.summary([c for c in everything if not is_thing[c]]),
    }
