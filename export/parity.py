"""A reduced-precision image model (fp16 AutoCast, int8/fp8 Q/DQ) against its fp32 ONNX, on ONNX Runtime CPU.

The figures the build prints and the tests bound, and how each is judged (docs/deploy.md, "fp16 parity"):
mask logits over every query; class probabilities only over the queries whose binary mask stays put (IoU >=
``STABLE_IOU`` between the two graphs), because the classifier attends only under a query's mask and a
query whose mask changes shape is classified on other pixels; label agreement of the semantic maps.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from fisa_rt.onnxruntime_session import inference_session

STABLE_IOU = 0.8  # one pixel more on a 5-pixel mask is IoU 0.83


def run_onnx(path: str, feed: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(mask logits (B, Q, H, W), class probabilities (B, Q, K+1)) of an image-model ONNX on the CPU, float16
    QuantizeLinear rounded as TensorRT rounds it whatever the ONNX Runtime (``qdq_rounding``)."""
    import onnx

    from .qdq_rounding import onnxruntime_truncates, quantize_in_float32

    source = path
    if onnxruntime_truncates():
        model = onnx.load(path)
        if quantize_in_float32(model):
            source = model.SerializeToString()
    session = inference_session(source)
    names = {i.name for i in session.get_inputs()}
    masks, probs = session.run(["mask_logits", "class_scores"], {k: v for k, v in feed.items() if k in names})
    return masks.astype(np.float32), probs.astype(np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, Q, H, W) bool x2 -> (B, Q) IoU; two empty masks agree (IoU 1)."""
    inter = (a & b).sum((-2, -1))
    union = (a | b).sum((-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a.ravel(), b.ravel()) / denominator) if denominator else 1.0


def label_maps(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(B, H, W) semantic labels as the runtime computes them (``postprocess.semantic_inference``)."""
    import torch

    from fisa_rt.postprocess import semantic_inference

    logits = torch.from_numpy(np.log(np.clip(probs, 1e-12, None)))
    return np.stack([semantic_inference(logits[b], torch.from_numpy(masks[b])).label_map.numpy()
                     for b in range(len(masks))])


def compare(reference: Tuple[np.ndarray, np.ndarray], candidate: Tuple[np.ndarray, np.ndarray]) -> Dict[str, float]:
    """Parity figures of ``candidate`` (masks, probs) against ``reference``; per-image minima are minima over
    the batch."""
    ref_masks, ref_probs = reference
    masks, probs = candidate
    stable = mask_iou(masks > 0, ref_masks > 0) >= STABLE_IOU
    prob_cosines = [_cosine(probs[b][stable[b]], ref_probs[b][stable[b]]) for b in range(len(masks))]
    agreement = (label_maps(masks, probs) == label_maps(ref_masks, ref_probs)).mean((1, 2))
    return {
        "images": int(len(masks)),
        "mask_cosine": _cosine(masks, ref_masks),
        "max_abs_mask_logit": float(np.abs(masks - ref_masks).max()),
        "largest_abs_mask_logit": float(np.abs(ref_masks).max()),
        "mask_flips": float(np.mean((masks > 0) != (ref_masks > 0))),
        "stable_queries": float(stable.mean()),
        "max_abs_prob_stable": float(np.abs(probs - ref_probs).max(-1)[stable].max(initial=0.0)),
        "min_prob_cosine": float(min(prob_cosines)),
        "label_agreement": float(agreement.mean()),
        "min_label_agreement": float(agreement.min()),
    }


def check_onnx(reference: str, candidate: str, feed: Dict[str, np.ndarray],
               ref_outputs: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Dict[str, float]:
    """``compare`` of two image-model ONNX files on ONNX Runtime CPU, on one ``feed``."""
    return compare(ref_outputs or run_onnx(reference, feed), run_onnx(candidate, feed))


def summary(figures: Dict[str, float]) -> str:
    return (f"{figures['images']} images: class-probability cosine >= {figures['min_prob_cosine']:.4f} "
            f"(stable-mask queries, {100 * figures['stable_queries']:.1f} % of them), label agreement "
            f"{100 * figures['label_agreement']:.2f} % (min {100 * figures['min_label_agreement']:.2f} %), "
            f"mask-logit cosine {figures['mask_cosine']:.5f}, max |delta| {figures['max_abs_mask_logit']:.3g} "
            f"of {figures['largest_abs_mask_logit']:.3g}")
