"""Class-agnostic quality of a checkpoint's mask proposals, per class group (seen, novel composition,
novel concept): does the generator, trained on seen classes only, still outline objects it never saw?

For each ground-truth segment, the best IoU of any proposal (sigmoid(mask logit) > 0.5 at the image's
size); reported as the share of segments with a proposal of IoU > 0.5 and the mean best IoU, per group
and (in the JSON) per word of the class names, to see which concept the masks miss. Usage:

    python benchmarks/study/mask-quality.py runs/study/generator.safetensors runs/study/data [--split val] [--limit 300]
"""

import argparse
import json

import numpy as np
import torch

from fisa_rt.checkpoint import load_model
from fisa_rt.data.panoptic import PanopticDataset, ground_truth_segments
from fisa_rt.postprocess import restore_mask_logits
from fisa_rt.preprocess import normalize_images


def best_ious(proposals: torch.Tensor, ids: np.ndarray, segments: dict) -> dict:
    """proposals (Q, H, W) bool; ids (H, W) segment ids -> {segment id: best IoU over proposals}."""
    flat = proposals.flatten(1).float()
    area = flat.sum(1)
    best = {}
    for segment in segments:
        gt = torch.from_numpy(ids == segment).flatten().float()
        inter = flat @ gt
        best[segment] = float((inter / (area + gt.sum() - inter).clamp(min=1)).max())
    return best


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a FISA checkpoint whose mask generator is measured")
    parser.add_argument("data", help="dataset root (fisa-rt make-data --out)")
    parser.add_argument("--split", default="val", help="dataset split to measure on")
    parser.add_argument("--limit", type=int, default=300, help="at most this many images")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    model, _ = load_model(args.checkpoint)
    model.eval()
    dataset = PanopticDataset(args.data, args.split, model.cfg.image_size, augment=False)
    text = model.encode_vocabulary(dataset.class_names)
    scores, by_word = {}, {}
    for index in range(min(args.limit, len(dataset))):
        sample = dataset[index]
        images = normalize_images(sample.image[None], model.cfg.image_mean, model.cfg.image_std)
        mask_logits = model(images, text).mask_logits[0]
        _, ids, ann = dataset.read(index)
        segments, _ = ground_truth_segments(ids, ann["segments_info"], dataset.contiguous)
        proposals = restore_mask_logits(mask_logits, images.shape[-2:], sample.size, ids.shape) > 0
        for segment, iou in best_ious(proposals, ids, segments).items():
            scores.setdefault(dataset.groups[segments[segment]], []).append(iou)
            for word in dataset.class_names[segments[segment]].split():
                by_word.setdefault(word, []).append(iou)
    results = {}
    for group, ious in sorted(scores.items()) + sorted((f"word:{w}", v) for w, v in by_word.items()):
        ious = np.array(ious)
        results[group] = {"segments": len(ious), "recall_at_0.5": 100 * float(np.mean(ious > 0.5)),
                          "mean_best_iou": float(ious.mean())}
    for group, r in results.items():
        if group.startswith("word:"):
            continue
        print(f"{group:17s} {r['segments']:5d} segments: {r['recall_at_0.5']:.1f}% with a proposal of IoU > 0.5, "
              f"mean best IoU {r['mean_best_iou']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
