"""Latency per stage (pre-process, image model, post-process, encoding a new vocabulary), end to end,
and scaling with vocabulary size K (1 -> 2000) and image size, on every backend this machine has."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from fisa_rt.config import get_model_config
from fisa_rt.model import create_model
from fisa_rt.preprocess import normalize_images
from fisa_rt.runtime.assets import default_checkpoint
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import named

from conftest import DEVICE, timed

BACKENDS = ["onnxruntime", "torch"]


def _photo():
    import skimage.data

    return skimage.data.astronaut()  # 512 x 512 RGB


@pytest.fixture(scope="module", params=BACKENDS)
def segmenter(request, artefacts):
    if request.param == "onnxruntime":
        path = os.path.join(artefacts, "fisa-tiny-synthetic.portable.onnx")
        if not os.path.isfile(path):
            pytest.skip(f"{path} was not built")
        seg = Segmenter.from_engine(path, cache_dir="")
    else:
        seg = Segmenter.from_engine(default_checkpoint(), backend="torch", cache_dir="")
    seg.set_vocabulary(named("synthetic"))
    return seg


@pytest.mark.parametrize("stage", ["preprocess", "model", "postprocess", "end-to-end"])
def test_stage_latency(benchmark, segmenter, stage):
    photo = _photo()
    canvas, content = segmenter._canvas(photo)
    raw = segmenter.backend.run(canvas, segmenter.text)

    def postprocess():
        return segmenter._postprocess(photo, raw.class_logits()[0], raw.mask_logits[0], content, "panoptic")

    fn = {
        "preprocess": lambda: segmenter._canvas(photo),
        "model": lambda: segmenter.backend.run(canvas, segmenter.text),
        "postprocess": postprocess,
        "end-to-end": lambda: segmenter.segment(photo),
    }[stage]
    timed(benchmark, fn, rounds=10, warmup=2)
    benchmark.extra_info.update(
        {"backend": segmenter.backend.name, "device": str(segmenter.backend.device), "stage": stage, "image": "512x512"}
    )


def test_new_vocabulary_encoding(benchmark, segmenter):
    """Encoding ADE20K's 150 classes x the model's prompt templates from scratch (no cache)."""
    vocabulary = named("ade20k-150")
    timed(benchmark, lambda: segmenter.text_encoder.encode(vocabulary, cache_dir=""), rounds=3, warmup=1)
    benchmark.extra_info.update({"backend": segmenter.backend.name, "stage": "text-encoding", "classes": 150})


@pytest.mark.parametrize("classes", [1, 10, 150, 1203, 2000])
def test_vocabulary_size_scaling(benchmark, segmenter, classes):
    rng = np.random.default_rng(0)
    text = rng.standard_normal((classes, segmenter.backend.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    canvas, _ = segmenter._canvas(_photo())
    timed(benchmark, lambda: segmenter.backend.run(canvas, text), rounds=5, warmup=1)
    benchmark.extra_info.update({"backend": segmenter.backend.name, "classes": classes})


@pytest.mark.parametrize("size", [128, 256, 384])
def test_image_size_scaling(benchmark, size):
    """The fisa-tiny architecture (random weights) in PyTorch at growing input sizes: how the model's
    cost grows with pixels (ViT tokens grow quadratically with the side)."""
    cfg = dataclasses.replace(get_model_config("fisa-tiny"), image_size=size)
    model = create_model(cfg).eval().to(DEVICE)
    text = torch.nn.functional.normalize(torch.randn(150, model.embed_dim, device=DEVICE), dim=-1)
    images = normalize_images(
        torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device=DEVICE), cfg.image_mean, cfg.image_std
    )
    with torch.no_grad():
        timed(benchmark, lambda: model(images, text), rounds=5, warmup=1)
    benchmark.extra_info.update({"backend": "torch-eager", "image": f"{size}x{size}", "classes": 150})
