"""Mask2Former's set prediction loss: Hungarian matching of proposals to segments, then
cross-entropy over classes (void for unmatched proposals, down-weighted) and BCE + dice on matched masks.

Losses are normalised per image and averaged over the batch, so the gradient of a batch split over
several processes (DDP averages them) equals that of the whole batch on one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass
class LossWeights:
    # Mask2Former's weights: class 2, mask BCE 5, dice 5; void ("no object") class weight 0.1.
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    void_weight: float = 0.1


def _dice_cost(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(Q, P) probabilities x (N, P) targets -> (Q, N) dice loss for every pair."""
    numerator = 2 * pred @ target.t()
    return 1 - (numerator + 1) / (pred.sum(-1)[:, None] + target.sum(-1)[None, :] + 1)


def _bce_cost(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (N, P) targets -> (Q, N) mean BCE for every pair."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ target.t() + neg @ (1 - target).t()) / logits.shape[-1]


@torch.no_grad()
def hungarian_match(
    class_logits, mask_logits, labels, masks, weights: LossWeights
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One image: class_logits (Q, K+1), mask_logits (Q, h, w), labels (N,), masks (N, h, w) float.
    Returns (proposal indices, target indices) of the minimum-cost assignment."""
    if labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    probs = class_logits.float().softmax(-1)[:, labels]
    pred = mask_logits.float().flatten(1)
    target = masks.float().flatten(1)
    cost = (
        -weights.class_weight * probs
        + weights.mask_weight * _bce_cost(pred, target)
        + weights.dice_weight * _dice_cost(pred.sigmoid(), target)
    )
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def resize_targets(masks: Sequence[torch.Tensor], size: Tuple[int, int]) -> List[torch.Tensor]:
    """Ground-truth masks at the prediction resolution, as soft (area-averaged) targets."""
    return [
        F.adaptive_avg_pool2d(m.float()[None], size)[0] if m.numel() else m.float().new_zeros(0, *size) for m in masks
    ]


def set_loss(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    labels: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    weights: LossWeights,
) -> Dict[str, torch.Tensor]:
    """class_logits (B, Q, K+1), mask_logits (B, Q, h, w); labels[b] (N_b,), targets[b] (N_b, h, w)
    soft masks at (h, w). Returns the weighted loss terms, each a mean over images."""
    B, Q, C = class_logits.shape
    class_weight = torch.ones(C, device=class_logits.device, dtype=torch.float32)
    class_weight[-1] = weights.void_weight
    terms = {"class": [], "mask": [], "dice": []}
    for b in range(B):
        rows, cols = hungarian_match(class_logits[b], mask_logits[b], labels[b], targets[b], weights)
        rows, cols = rows.to(class_logits.device), cols.to(class_logits.device)
        target_class = torch.full((Q,), C - 1, dtype=torch.int64, device=class_logits.device)
        target_class[rows] = labels[b].to(class_logits.device)[cols]
        terms["class"].append(F.cross_entropy(class_logits[b].float(), target_class, weight=class_weight))
        if rows.numel() == 0:
            zero = mask_logits[b].sum() * 0.0
            terms["mask"].append(zero)
            terms["dice"].append(zero)
            continue
        pred = mask_logits[b, rows].float().flatten(1)
        target = targets[b][cols].to(pred.device).flatten(1)
        terms["mask"].append(F.binary_cross_entropy_with_logits(pred, target))
        numerator = 2 * (pred.sigmoid() * target).sum(-1)
        terms["dice"].append((1 - (numerator + 1) / (pred.sigmoid().sum(-1) + target.sum(-1) + 1)).mean())
    return {
        "class": weights.class_weight * torch.stack(terms["class"]).mean(),
        "mask": weights.mask_weight * torch.stack(terms["mask"]).mean(),
        "dice": weights.dice_weight * torch.stack(terms["dice"]).mean(),
    }


def feature_preservation(adapted, pretrained) -> torch.Tensor:
    """Mean cosine distance, per token or location, between two :class:`fisa_rt.backbone.BackboneOutput` of one
    batch: the adapted encoder's and the pre-trained one's (SEVE skipped). It covers everything downstream reads:
    the generator's feature maps, the mask-attention head's block inputs and the dense CLIP embeddings. MAFT and
    MasQCLIP keep a fine-tuned CLIP near the frozen one the same way, so the adapters may refocus features on
    segmentation without overwriting what pre-training knew (issue 23; docs/training.md)."""
    pairs = [(adapted.features[k], pretrained.features[k], 1) for k in adapted.features]
    pairs += [(a, p, -1) for a, p in zip(adapted.block_inputs, pretrained.block_inputs)]
    if adapted.dense_embeds is not None:
        pairs.append((adapted.dense_embeds, pretrained.dense_embeds, 1))
    distances = [(1 - F.cosine_similarity(a.float(), p.float(), dim=dim)).mean() for a, p, dim in pairs]
    return torch.stack(distances).mean()
