"""Mask proposals + class logits -> semantic, panoptic and instance results (Mask2Former's inference).

All functions take one image: ``class_logits`` (Q, K + 1) with void last and ``mask_logits``
(Q, H, W) already resized to the output resolution (:func:`resize_mask_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .config import PostprocessConfig


@dataclass
class SemanticResult:
    # (H, W) int64 class index per pixel.
    label_map: torch.Tensor
    # (H, W) float score of the chosen class.
    confidence: torch.Tensor


@dataclass
class Segment:
    id: int
    category_id: int
    is_thing: bool
    score: float
    area: int


@dataclass
class PanopticResult:
    # (H, W) int32 segment id per pixel; 0 = no segment.
    segment_map: torch.Tensor
    segments: List[Segment]


@dataclass
class InstanceResult:
    # (N, H, W) bool masks, highest score first.
    masks: torch.Tensor
    # (N,) int64 class index and (N,) float score.
    labels: torch.Tensor
    scores: torch.Tensor


def resize_mask_logits(mask_logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(..., Q, h, w) -> (..., Q, H, W), bilinear as Mask2Former upsamples its predictions."""
    lead = mask_logits.shape[:-2]
    flat = mask_logits.reshape(-1, 1, *mask_logits.shape[-2:])
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*lead, *size)


def restore_mask_logits(
    mask_logits: torch.Tensor, canvas: Tuple[int, int], content: Tuple[int, int], original: Tuple[int, int]
) -> torch.Tensor:
    """(Q, h, w) logits predicted on a padded ``canvas`` whose top-left ``content`` (h, w) holds the
    resized image -> (Q, H, W) logits at the ``original`` image size."""
    logits = resize_mask_logits(mask_logits, canvas)[:, : content[0], : content[1]]
    return resize_mask_logits(logits, original)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> SemanticResult:
    """Per-pixel class scores sum_q p(class | q) * sigmoid(mask_q); void proposals contribute nothing."""
    probs = class_logits.softmax(-1)[:, :-1]
    scores = torch.einsum("qk,qhw->khw", probs, mask_logits.sigmoid())
    confidence, label_map = scores.max(0)
    return SemanticResult(label_map=label_map, confidence=confidence)


def panoptic_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, is_thing: Sequence[bool], cfg: PostprocessConfig
) -> PanopticResult:
    """Keep confident non-void proposals, give each pixel to the proposal with the highest
    score x mask probability, and drop proposals that keep less than ``overlap_threshold`` of their
    own mask; stuff proposals of one class merge into one segment."""
    num_classes = class_logits.shape[-1] - 1
    if len(is_thing) != num_classes:
        raise ValueError(f"is_thing has {len(is_thing)} entries for {num_classes} classes")
    scores, labels = class_logits.softmax(-1).max(-1)
    masks = mask_logits.sigmoid()
    keep = labels.ne(num_classes) & (scores > cfg.object_mask_threshold)
    scores, labels, masks = scores[keep], labels[keep], masks[keep]
    segment_map = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32, device=mask_logits.device)
    segments: List[Segment] = []
    if masks.shape[0] == 0:
        return PanopticResult(segment_map=segment_map, segments=segments)
    owner = (scores[:, None, None] * masks).argmax(0)
    stuff_segment = {}
    for k in range(masks.shape[0]):
        category = int(labels[k])
        own = masks[k] >= 0.5
        mask = (owner == k) & own
        original_area, area = int(own.sum()), int(mask.sum())
        if area == 0 or original_area == 0 or area / original_area < cfg.overlap_threshold:
            continue
        thing = bool(is_thing[category])
        if not thing and category in stuff_segment:
            segment = stuff_segment[category]
            segment_map[mask] = segment.id
            segment.area += area
            segment.score = max(segment.score, float(scores[k]))
            continue
        segment = Segment(id=len(segments) + 1, category_id=category, is_thing=thing, score=float(scores[k]), area=area)
        segment_map[mask] = segment.id
        segments.append(segment)
        if not thing:
            stuff_segment[category] = segment
    return PanopticResult(segment_map=segment_map, segments=segments)


def instance_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, is_thing: Sequence[bool], cfg: PostprocessConfig
) -> InstanceResult:
    """Top-k (proposal, class) pairs over thing classes, each scored by class probability x the mean
    mask probability inside its binary mask (Mask2Former)."""
    Q, num_classes = class_logits.shape[0], class_logits.shape[-1] - 1
    if len(is_thing) != num_classes:
        raise ValueError(f"is_thing has {len(is_thing)} entries for {num_classes} classes")
    thing = torch.as_tensor(list(is_thing), dtype=torch.bool, device=class_logits.device)
    probs = class_logits.softmax(-1)[:, :-1].masked_fill(~thing, 0.0)
    k = min(cfg.instance_topk, Q * num_classes)
    class_scores, flat = probs.flatten().topk(k)
    labels, proposal = flat % num_classes, flat // num_classes
    keep = class_scores > 0
    class_scores, labels, proposal = class_scores[keep], labels[keep], proposal[keep]
    logits = mask_logits[proposal]
    masks = logits > 0
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    scores = class_scores * mask_scores
    order = scores.argsort(descending=True)
    return InstanceResult(masks=masks[order], labels=labels[order], scores=scores[order])
