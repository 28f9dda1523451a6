"""Accuracy parity and latency of every backend against the PyTorch eager reference, on the embedded
default model (issue: benchmark suite).

Each test times one backend's image model with pytest-benchmark *and* asserts its parity with the
reference on the same images and vocabulary, so a fast wrong backend fails. Thresholds per precision:

* fp32 (PyTorch + Triton, ONNX Runtime, TensorRT fp32): max |Δ mask logit| <= 1e-3, max |Δ class prob|
  <= 1e-4, label agreement >= 99.9 %, |Δ PQ|, |Δ mIoU| <= 0.1 — only summation order differs.
* fp16 (the AutoCast fp16 ONNX on ONNX Runtime, and TensorRT engines built from it; LayerNorm/Softmax/
  ReduceL2 kept fp32): max |Δ mask logit| <= 1.0 (~1.3 % of the largest |logit|, ~75; measured 0.32 on
  ONNX Runtime), max |Δ class prob| <= 0.01 (measured 0.0016), logits cosine >= 0.999, label agreement
  >= 99 %, |Δ PQ|, |Δ mIoU| <= 1.0 — fp16 has 11 mantissa bits; pixels where two classes tie flip.
* The fused ONNX with the plugin kernels (``test_fused_onnx_with_plugin_kernels``, ONNX Runtime + Triton's
  interpreter on CPU): fp32 thresholds; its latency is the interpreter's and means nothing.
* int8/fp8 (ModelOpt Q/DQ, the int8 ONNX on ONNX Runtime and TensorRT engines built from it; calibrated on 128
  synthetic train scenes): cosine >= 0.99, agreement >= 97 %, |Δ PQ|, |Δ mIoU| <= 2.0 — calibration error;
  max |Δ mask logit| <= 8.0 (measured 5.9 of 74.6 on the bundled scenes) and max |Δ class prob| <= 0.15 on the
  queries whose mask stays put (measured 0.075; docs/deploy.md, "int8").

Class probabilities are compared on the queries whose binary mask keeps IoU >= 0.8 with the reference's
(``export/parity.py``): a query whose mask moves is classified on other pixels, for every precision.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.evaluation import evaluate_segmenter
from fisa_rt.export.parity import STABLE_IOU, mask_iou
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import named

from conftest import DEVICE, timed


@dataclass
class Threshold:
    max_mask: float
    max_prob: float
    cosine: float
    agreement: float
    metric: float


THRESHOLDS = {
    "fp32": Threshold(1e-3, 1e-4, 0.99999, 0.999, 0.1),
    "fp16": Threshold(1.0, 0.01, 0.999, 0.99, 1.0),
    "int8": Threshold(8.0, 0.15, 0.99, 0.97, 2.0),
    "fp8": Threshold(8.0, 0.15, 0.99, 0.97, 2.0),
}


def _images(size: int) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    pictures = [skimage.data.astronaut(), skimage.data.coffee()] + [load_image(p) for p in sample_images()]
    resized = [np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in pictures]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def reference(validation_slice):
    segmenter = Segmenter.from_engine(default_checkpoint(), backend="torch", device="cpu", cache_dir="")
    segmenter.backend.model.set_kernels("reference")
    segmenter.set_vocabulary(named("synthetic"))
    images = _images(segmenter.backend.image_size)
    raw = segmenter.backend.run(images, segmenter.text)
    dataset = PanopticDataset(validation_slice, "val", segmenter.backend.image_size, augment=False,
                              resize=segmenter.resize, image_mean=segmenter.image_mean)
    metrics = evaluate_segmenter(segmenter, dataset, batch_size=8)
    segmenter.set_vocabulary(named("synthetic"))
    return segmenter, images, raw, metrics, dataset


CANDIDATES = ["torch-triton", "onnxruntime-portable", "onnxruntime-portable.ort", "onnxruntime-portable.fp16",
              "onnxruntime-portable.int8.qdq"] + [
    f"tensorrt-{flavour}-{precision}" for flavour in ("portable", "fused") for precision in ("fp32", "fp16", "int8")
]


def _tensorrt_missing():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return (
            "TensorRT is not installed (pip install tensorrt --extra-index-url https://pypi.nvidia.com, or JetPack 6)"
        )
    return None


def _artefact(candidate: str, folder: str):
    """(path, backend, precision) of a candidate, or skip with the reason it cannot run here."""
    if candidate == "torch-triton":
        if DEVICE != "cuda":
            pytest.skip("PyTorch + Triton kernels need a CUDA GPU; this machine has none")
        return default_checkpoint(), "torch", "fp32"
    if candidate.startswith("onnxruntime-"):
        path = os.path.join(folder, f"fisa-tiny-synthetic.{candidate.split('-', 1)[1]}.onnx")
        if not os.path.isfile(path):
            pytest.skip(f"{path} was not built (the ORT fallback only without TensorRT; fp16/int8 only with ModelOpt)")
        precision = next((p for p in ("fp16", "int8") if f".{p}" in candidate), "fp32")
        return path, "onnxruntime", precision
    _, flavour, precision = candidate.split("-")
    reason = _tensorrt_missing()
    if reason:
        pytest.skip(reason)
    engines = glob.glob(os.path.join(folder, f"*.{flavour}.{precision}.engine"))
    if not engines:
        pytest.skip(
            f"no {flavour} {precision} engine in {folder} "
            f"(python export/build_engine.py --flavour {flavour} --precision {precision})"
        )
    return engines[0], "tensorrt", precision


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_backend_parity_and_latency(benchmark, candidate, request, reference):
    folder = request.getfixturevalue("int8_artefacts" if "int8" in candidate else "artefacts")
    path, backend, precision = _artefact(candidate, folder)
    name = candidate
    ref_segmenter, images, ref, ref_metrics, dataset = reference
    segmenter = Segmenter.from_engine(path, backend=backend, cache_dir="")
    segmenter.set_vocabulary(named("synthetic"), ref_segmenter.text)
    device_images = images.to(segmenter.backend.device)
    out = timed(benchmark, lambda: segmenter.backend.run(device_images, segmenter.text), rounds=10, warmup=2)
    limits = THRESHOLDS[precision]
    mask, prob = out.mask_logits.float().cpu(), out.class_scores.float().cpu()
    ref_mask, ref_prob = ref.mask_logits.float(), ref.class_scores.float()
    max_mask = float((mask - ref_mask).abs().max())
    # over the queries whose binary mask stays put: one whose mask moves is classified on other pixels
    stable = torch.from_numpy(mask_iou((mask > 0).numpy(), (ref_mask > 0).numpy()) >= STABLE_IOU)
    max_prob = float((prob - ref_prob).abs().amax(-1)[stable].max())
    cosine = float(torch.nn.functional.cosine_similarity(mask.flatten(), ref_mask.flatten(), dim=0))
    labels = torch.einsum("bqk,bqhw->bkhw", prob[..., :-1], mask.sigmoid()).argmax(1)
    ref_labels = torch.einsum("bqk,bqhw->bkhw", ref_prob[..., :-1], ref_mask.sigmoid()).argmax(1)
    agreement = float((labels == ref_labels).float().mean())
    metrics = evaluate_segmenter(segmenter, dataset, batch_size=8)
    delta_pq = abs(metrics["all"]["pq"] - ref_metrics["all"]["pq"])
    delta_miou = abs(metrics["all"]["miou"] - ref_metrics["all"]["miou"])
    benchmark.extra_info.update(
        {
            "backend": name,
            "precision": precision,
            "device": str(segmenter.backend.device),
            "batch": len(images),
            "classes": len(segmenter.vocabulary.names),
            "max_abs_mask_logit": max_mask,
            "mean_abs_mask_logit": float((mask - ref_mask).abs().mean()),
            "max_abs_class_prob": max_prob,
            "stable_queries": float(stable.float().mean()),
            "cosine": cosine,
            "label_agreement": agreement,
            "delta_pq": delta_pq,
            "delta_miou": delta_miou,
        }
    )
    assert max_mask <= limits.max_mask and max_prob <= limits.max_prob, (max_mask, max_prob)
    assert cosine >= limits.cosine and agreement >= limits.agreement, (cosine, agreement)
    assert delta_pq <= limits.metric and delta_miou <= limits.metric, (delta_pq, delta_miou)


def test_reference_latency(benchmark, reference):
    """The PyTorch eager reference itself (CPU or GPU), for the other rows to compare against."""
    segmenter, images, *_ = reference
    timed(benchmark, lambda: segmenter.backend.run(images, segmenter.text), rounds=5, warmup=1)
    benchmark.extra_info.update(
        {"backend": "torch-eager", "precision": "fp32", "device": str(segmenter.backend.device), "batch": len(images)}
    )


def test_fused_onnx_with_plugin_kernels(benchmark, artefacts, reference):
    """The fused ONNX on ONNX Runtime, each fisa_rt:: node running its TensorRT plugin kernel (TensorRT's
    parameters) in Triton's interpreter: fp32 parity with the reference on the scenes and photographs."""
    if DEVICE == "cuda":
        pytest.skip("runs the plugin kernels in Triton's CPU interpreter; on a GPU, benchmark the fused engine")
    pytest.importorskip("onnxruntime_extensions", reason="pip install -e '.[test]'")
    from fisa_rt.export.fused_onnxruntime import fused_session

    path = os.path.join(artefacts, "fisa-tiny-synthetic.fused.onnx")
    ref_segmenter, images, ref, *_ = reference
    session = fused_session(path)
    feed = {"image": images.numpy(), "text": ref_segmenter.text}
    mask, prob = (torch.from_numpy(x) for x in timed(benchmark, lambda: session.run(None, feed), rounds=1, warmup=0))
    limits = THRESHOLDS["fp32"]
    max_mask = float((mask - ref.mask_logits.float()).abs().max())
    max_prob = float((prob - ref.class_scores.float()).abs().max())
    benchmark.extra_info.update({
        "backend": "onnxruntime-fused-plugin-kernels", "precision": "fp32", "device": "cpu (interpreter)",
        "batch": len(images), "max_abs_mask_logit": max_mask, "max_abs_class_prob": max_prob,
    })
    assert max_mask <= limits.max_mask and max_prob <= limits.max_prob, (max_mask, max_prob)
