"""Mask proposals + class logits -> semantic, panoptic and instance results (Mask2Former's inference).

All functions take one image: ``class_logits`` (Q, K + 1) with void last and ``mask_logits``
(Q, H, W) already resized to the output resolution (:func:`restore_mask_logits`). They reduce over
proposals and classes in row tiles of at most ``TILE_BYTES``, so their memory does not grow with
Q·H·W or K·H·W; a tile's matmul and reductions give bit for bit the values of the whole image's.
An image larger than the model's input is merged at the model's resolution and its label maps resized
(:func:`working_size`, :func:`resize_labels`; docs/design.md, "Post-processing memory").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
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
    logits = _upsample_content(mask_logits, canvas, content)
    if tuple(original) == tuple(content):  # bilinear to the same size is the identity: skip the copy
        return logits
    return resize_mask_logits(logits, original)


def _upsample_content(mask_logits: torch.Tensor, canvas: Tuple[int, int], content: Tuple[int, int]) -> torch.Tensor:
    """``resize_mask_logits(mask_logits, canvas)[:, :content[0], :content[1]]``, bit for bit, without
    interpolating the padding: when the canvas is an integer multiple f of the mask side, output pixel y
    reads source rows floor((y + 0.5) / f - 0.5) and the next, so the content needs the first
    ceil(content / f) + 1 source rows only, interpolated with the same scale 1 / f."""
    h, w = mask_logits.shape[-2:]
    fy, fx = canvas[0] // h, canvas[1] // w
    same_scale = all(  # the kernel's 1 / f from scale_factor equals its h / canvas from a size
        fy * h == canvas[0] and fx * w == canvas[1] and np.float32(1.0 / f) == np.float32(n) / np.float32(c)
        for f, n, c in ((fy, h, canvas[0]), (fx, w, canvas[1]))
    )
    if not same_scale:
        return resize_mask_logits(mask_logits, canvas)[:, : content[0], : content[1]]
    rows, cols = min(h, -(-content[0] // fy) + 1), min(w, -(-content[1] // fx) + 1)
    flat = mask_logits[:, None, :rows, :cols]
    up = F.interpolate(flat, scale_factor=(float(fy), float(fx)), mode="bilinear", align_corners=False)
    return up[:, 0, : content[0], : content[1]]


# Float32 bytes of the largest per-tile intermediate ((Q or K) x rows x W).
TILE_BYTES = 32 << 20


def _row_tiles(height: int, width: int, depth: int) -> List[slice]:
    rows = max(1, TILE_BYTES // (4 * max(depth, 1) * max(width, 1)))
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


# Multiply-adds Q x K x pixels below which CPU post-processing runs on one thread: such an op takes a
# few ms on one core, a second thread saves at most half of that, and costs a scheduler slice (several ms)
# whenever the other core is busy (e.g. 152 vs 19 ms for 1920 x 1080, Q = 100, K = 133 on a loaded
# 2-core machine; docs/design.md, "Post-processing memory").
SINGLE_THREAD_WORK = 1 << 28


@contextlib.contextmanager
def cpu_threads_for(work: int, device: torch.device):
    """Run the block on one torch thread when ``work`` (multiply-adds) is below ``SINGLE_THREAD_WORK`` on
    CPU, then restore the thread count; elsewhere change nothing."""
    before = torch.get_num_threads()
    if device.type != "cpu" or work >= SINGLE_THREAD_WORK or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def working_size(content: Tuple[int, int], original: Tuple[int, int]) -> Tuple[int, int]:
    """Where post-processing runs: the ``original`` size when the image is no larger than the model's
    input (``content``, the resized image on the canvas), else the model's input size; the model saw no
    more detail than that, and the cost stays bounded however large the image."""
    return tuple(original) if max(original) <= max(content) else tuple(content)


def _nearest_sources(source: int, target: int, device) -> torch.Tensor:
    """(target,) index of the source pixel whose centre is nearest each target pixel's centre."""
    return ((torch.arange(target, device=device) + 0.5) * (source / target)).long().clamp_(max=source - 1)


def resize_labels(labels: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(..., h, w) integer or bool map -> (..., H, W) by nearest pixel centre (every source pixel
    survives when upsampling, so no segment vanishes); memory is the output's only."""
    h, w = labels.shape[-2:]
    # columns first, on the small map; then whole rows are copied
    wide = labels.index_select(-1, _nearest_sources(w, size[1], labels.device))
    return wide.index_select(-2, _nearest_sources(h, size[0], labels.device))


def resized_areas(labels: torch.Tensor, size: Tuple[int, int], minlength: int) -> torch.Tensor:
    """Pixel count of each label (in [0, ``minlength``)) in ``resize_labels(labels, size)``, counted on the small
    (h, w) map: each source pixel stands for (rows that copy it) x (columns that copy it) target pixels."""
    h, w = labels.shape[-2:]
    rows = torch.bincount(_nearest_sources(h, size[0], labels.device), minlength=h)
    cols = torch.bincount(_nearest_sources(w, size[1], labels.device), minlength=w)
    weights = (rows[:, None] * cols[None, :]).flatten()
    # integer counts added up: exact in any order, so allowed under torch.use_deterministic_algorithms on a GPU,
    # where bincount with weights raises
    counts = torch.zeros(minlength, dtype=torch.int64, device=labels.device)
    return counts.scatter_add_(0, labels.flatten().long(), weights)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> SemanticResult:
    """Per-pixel class scores sum_q p(class | q) * sigmoid(mask_q); void proposals contribute nothing."""
    probs = class_logits.softmax(-1)[:, :-1]
    H, W = mask_logits.shape[-2:]
    label_map = torch.empty((H, W), dtype=torch.int64, device=mask_logits.device)
    confidence = torch.empty((H, W), dtype=probs.dtype, device=mask_logits.device)
    for rows in _row_tiles(H, W, max(probs.shape)):
        scores = torch.einsum("qk,qhw->khw", probs, mask_logits[:, rows].sigmoid())
        # A reduction over the outer dimension with indices is slow on CPU (4 ms for 133 x 9216); over a
        # contiguous inner one it is not, and the transposed copy costs less than the difference.
        torch.max(scores.flatten(1).T.contiguous(), 1, out=(confidence[rows].view(-1), label_map[rows].view(-1)))
    return SemanticResult(label_map=label_map, confidence=confidence)


def best_proposal_labels(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(H, W) int64: per pixel, the best non-void class of the proposal with the highest class x mask
    probability, over every proposal. The panoptic task's labels when it keeps no proposal: flat in K past the
    (Q, K + 1) softmax, where Mask2Former's semantic map is a (Q, K) x (Q, pixels) product."""
    scores, labels = class_logits.softmax(-1)[:, :-1].max(-1)
    H, W = mask_logits.shape[-2:]
    label_map = torch.empty((H, W), dtype=torch.int64, device=mask_logits.device)
    for rows in _row_tiles(H, W, scores.shape[0]):
        label_map[rows] = labels[_owners(scores, mask_logits[:, rows].sigmoid())]
    return label_map


def _owners(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(h, w): per pixel, the index of the proposal with the highest ``scores`` (P,) x ``masks`` (P, h, w)."""
    # argmax over the contiguous inner dimension: see semantic_inference
    return (scores[:, None, None] * masks).flatten(1).T.contiguous().argmax(1).view(masks.shape[1:])


@dataclass
class PanopticProposals:
    """The device half of panoptic inference: per pixel, who owns it; per kept proposal, its numbers."""

    # (H, W) int32: 1 + the index (among kept proposals) of the proposal that owns the pixel, negated where
    # the pixel lies outside that proposal's own mask; 0 everywhere when no proposal is kept.
    owners: torch.Tensor
    labels: torch.Tensor  # (N,) int64 class of each kept proposal
    scores: torch.Tensor  # (N,) float32 its class probability
    own_area: torch.Tensor  # (N,) int64 pixels of its own mask (probability >= 0.5)


def panoptic_proposals(class_logits: torch.Tensor, mask_logits: torch.Tensor, cfg: PostprocessConfig):
    """Keep confident non-void proposals and give each pixel to the one with the highest score x mask
    probability, in row tiles; nothing here depends on the vocabulary size past the (Q, K + 1) softmax."""
    num_classes = class_logits.shape[-1] - 1
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = labels.ne(num_classes) & (scores > cfg.object_mask_threshold)
    scores, labels = scores[keep], labels[keep]
    H, W = mask_logits.shape[-2:]
    owners = torch.zeros((H, W), dtype=torch.int32, device=mask_logits.device)
    own_area = torch.zeros(scores.shape[0], dtype=torch.int64, device=mask_logits.device)
    if scores.shape[0]:
        for rows in _row_tiles(H, W, scores.shape[0]):
            masks = mask_logits[:, rows][keep].sigmoid()
            owner = _owners(scores, masks)
            inside = masks.gather(0, owner[None])[0] >= 0.5
            owners[rows] = torch.where(inside, owner + 1, -(owner + 1)).to(torch.int32)
            own_area += (masks >= 0.5).sum((1, 2))
    return PanopticProposals(owners, labels, scores, own_area)


def owned_areas(owners: torch.Tensor, proposals: int, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """(proposals,) pixels each kept proposal owns inside its own mask, counted on ``owners`` as
    :func:`resize_labels` would resize it to ``size`` (default: its own)."""
    owned = owners.clamp(min=0).long()  # 0: not owned; k + 1: proposal k
    if size is None or tuple(size) == tuple(owners.shape):
        return torch.bincount(owned.flatten(), minlength=proposals + 1)[1:]
    return resized_areas(owned, size, proposals + 1)[1:]


def panoptic_segments(
    owners: np.ndarray, labels: Sequence[int], scores: Sequence[float], own_area: Sequence[int],
    areas: Sequence[int], is_thing: Sequence[bool], cfg: PostprocessConfig,
    output_areas: Optional[Sequence[int]] = None,
) -> PanopticResult:
    """The host half: drop proposals that keep less than ``overlap_threshold`` of their own mask (``areas``
    and ``own_area`` counted where they were merged); stuff proposals of one class merge into one segment;
    ``owners`` (H, W) as :class:`PanopticProposals` holds it becomes the segment map, whose segments report
    ``output_areas`` (the areas on ``owners`` when it was resized; default ``areas``)."""
    segments: List[Segment] = []
    segment_of = np.zeros(len(labels) + 1, np.int32)  # proposal + 1 -> segment id
    stuff_segment = {}
    counted = zip(labels, scores, own_area, areas, areas if output_areas is None else output_areas)
    for k, (category, score, original_area, merged_area, area) in enumerate(counted):
        if merged_area == 0 or original_area == 0 or merged_area / original_area < cfg.overlap_threshold:
            continue
        thing = bool(is_thing[category])
        if not thing and category in stuff_segment:
            segment = stuff_segment[category]
            segment.area += area
            segment.score = max(segment.score, score)
        else:
            segment = Segment(id=len(segments) + 1, category_id=category, is_thing=thing, score=score, area=area)
            segments.append(segment)
            if not thing:
                stuff_segment[category] = segment
        segment_of[k + 1] = segment.id
    return PanopticResult(segment_map=torch.from_numpy(segment_of[np.maximum(owners, 0)]), segments=segments)


def panoptic_inference(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, is_thing: Sequence[bool], cfg: PostprocessConfig
) -> PanopticResult:
    """Mask2Former's panoptic inference (:func:`panoptic_proposals`, then :func:`panoptic_segments`); the
    segment map comes back on the host."""
    num_classes = class_logits.shape[-1] - 1
    if len(is_thing) != num_classes:
        raise ValueError(f"is_thing has {len(is_thing)} entries for {num_classes} classes")
    found = panoptic_proposals(class_logits, mask_logits, cfg)
    areas = owned_areas(found.owners, found.scores.shape[0])
    owners, labels, scores, own_area, areas = to_host([found.owners, found.labels, found.scores, found.own_area, areas])
    return panoptic_segments(
        owners, labels.tolist(), scores.tolist(), own_area.tolist(), areas.tolist(), is_thing, cfg
    )


def to_host(tensors: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """NumPy copies of ``tensors`` in one device-to-host copy: on a GPU their bytes are packed into one
    buffer there and copied once into pinned memory (each small copy would cost a sync and a launch)."""
    if all(t.device.type == "cpu" for t in tensors):
        return [t.numpy() for t in tensors]
    packed = pack_bytes(tensors)
    host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    torch.cuda.current_stream(packed.device).synchronize()
    return unpack_bytes(host, tensors)


def _widest_first(tensors: Sequence[torch.Tensor]) -> List[int]:
    # widest elements first, so every tensor starts at a multiple of its own element size
    return sorted(range(len(tensors)), key=lambda i: -tensors[i].element_size())


def pack_bytes(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The bytes of ``tensors``, one flat uint8 tensor on their device (:func:`unpack_bytes` reverses it)."""
    return torch.cat([tensors[i].contiguous().view(-1).view(torch.uint8) for i in _widest_first(tensors)])


def unpack_bytes(packed: torch.Tensor, like: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """NumPy views of host ``packed`` bytes as arrays of the dtypes and shapes of ``like``."""
    arrays, start = {}, 0
    for i in _widest_first(like):
        size = like[i].numel() * like[i].element_size()
        arrays[i] = packed[start : start + size].view(like[i].dtype).view(like[i].shape).numpy()
        start += size
    return [arrays[i] for i in range(len(like))]


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
