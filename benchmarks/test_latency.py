"""Latency per stage (pre-process, image model, post-process, encoding a new vocabulary), end to end,
and scaling with vocabulary size K (1 -> 2000) and image size, on every backend this machine has."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import torch

from fisa_rt.config import get_model_config
from fisa_rt.model import create_model
from fisa_rt.preprocess import normalize_images, resize_and_pad, resized_shape, upload
from fisa_rt.runtime.assets import default_checkpoint
from fisa_rt.runtime.segmenter import Segmenter, Timings
from fisa_rt.vocab.vocabulary import Vocabulary, named

from conftest import DEVICE, synchronize, timed

BACKENDS = ["onnxruntime", "torch"]


def _photo():
    import skimage.data

    return skimage.data.astronaut()  # 512 x 512 RGB


@pytest.fixture(scope="module", params=BACKENDS)
def segmenter(request, artefacts):
    if request.param == "onnxruntime":
        # what `fisa-rt infer --engine <build folder>` runs on ONNX Runtime: the ORT-optimised model where the
        # build wrote one (no TensorRT), else the portable ONNX
        paths = [os.path.join(artefacts, f"fisa-tiny-synthetic.{kind}.onnx") for kind in ("portable.ort", "portable")]
        path = next((p for p in paths if os.path.isfile(p)), None)
        if path is None:
            pytest.skip(f"no portable ONNX in {artefacts}")
        seg = Segmenter.from_engine(path, cache_dir="")
    else:
        seg = Segmenter.from_engine(default_checkpoint(), backend="torch", cache_dir="")
    seg.set_vocabulary(named("synthetic"))
    return seg


STAGES = ["preprocess", "model", "postprocess", "end-to-end"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_latency(benchmark, segmenter, stage):
    """The three calls ``Segmenter.segment_batch`` times (``prepare``, the backend's ``run``, ``merge``), so
    these rows and ``fisa-rt infer``'s summary measure the same stages; the end-to-end row also records the
    Segmenter's own per-stage split over its rounds (``segmenter_ms``), to compare with the stage rows."""
    _time_stage(benchmark, segmenter, _photo(), stage, rounds=10, warmup=2)


def _time_stage(benchmark, segmenter, photo, stage: str, rounds: int, warmup: int):
    prepared = segmenter.prepare([photo])
    raw = segmenter.backend.run(prepared.batch, segmenter.text, segmenter.seen_in_training)
    fn = {
        "preprocess": lambda: segmenter.prepare([photo]),
        "model": lambda: segmenter.backend.run(prepared.batch, segmenter.text, segmenter.seen_in_training),
        "postprocess": lambda: segmenter.merge([photo], raw, prepared, "panoptic"),
        "end-to-end": lambda: segmenter.segment(photo),
    }[stage]
    segmenter.timings = Timings()
    timed(benchmark, fn, rounds=rounds, warmup=warmup)
    benchmark.extra_info.update({"backend": segmenter.backend.name, "device": str(segmenter.backend.device),
                                 "model": segmenter.backend.manifest.get("model"), "stage": stage,
                                 "image": f"{photo.shape[1]}x{photo.shape[0]}"})
    if stage == "end-to-end":
        benchmark.extra_info["segmenter_ms"] = _stage_split(segmenter.timings)


@pytest.fixture(scope="module")
def vit_b16_build(tmp_path_factory):
    """fisa-vit-b16 with random weights (the weights do not change the work), its checkpoint and
    ``build_engine.py --precision fp32`` artefacts in one folder; FISA_BENCH_VIT_BUILD=<folder> reuses one."""
    import contextlib
    import io

    from fisa_rt.checkpoint import save_checkpoint
    from fisa_rt.export.build_engine import build, parse_args

    folder = os.environ.get("FISA_BENCH_VIT_BUILD")
    if folder:
        return folder
    folder = str(tmp_path_factory.mktemp("build-vit-b16"))
    checkpoint = os.path.join(folder, "fisa-vit-b16-random.safetensors")
    vocabulary = named("coco-panoptic")
    torch.manual_seed(0)
    save_checkpoint(checkpoint, create_model("fisa-vit-b16").eval(), vocabulary=vocabulary.names,
                    is_thing=vocabulary.is_thing)
    with contextlib.redirect_stdout(io.StringIO()):
        build(parse_args(["--checkpoint", checkpoint, "--precision", "fp32", "--out", folder]))
    return folder


@pytest.fixture(scope="module", params=BACKENDS)
def vit_b16_segmenter(request, vit_b16_build):
    suffix = ".portable.onnx" if request.param == "onnxruntime" else ".safetensors"
    path = next((os.path.join(vit_b16_build, f) for f in sorted(os.listdir(vit_b16_build)) if f.endswith(suffix)), None)
    if path is None:
        pytest.skip(f"no {suffix} in {vit_b16_build}")
    segmenter = Segmenter.from_engine(path, backend=request.param, cache_dir="")
    segmenter.set_vocabulary(*_vocabulary(segmenter, 133))
    return segmenter


@pytest.mark.parametrize("stage", STAGES)
def test_stage_latency_vit_b16_1080p(benchmark, vit_b16_segmenter, stage):
    """The stage rows for fisa-vit-b16 (640 px canvas) on a 1920 x 1080 photo with COCO's 133 classes:
    issue 19's goal is pre- and post-processing each no more than the model, here as for fisa-tiny."""
    from PIL import Image

    photo = np.asarray(Image.fromarray(_photo()).resize((1920, 1080), Image.BILINEAR))
    _time_stage(benchmark, vit_b16_segmenter, photo, stage, rounds=3, warmup=1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("picture, canvas", [((512, 512), 128), ((1080, 1920), 640), ((4000, 6000), 640)])
def test_resize_and_pad(benchmark, picture, canvas, threads):
    """Pre-processing's resize and padding of one random photo on the CPU with ``threads`` torch threads
    (``Segmenter.prepare`` picks one below ``SINGLE_THREAD_WORK``; docs/design.md, "Stage and vocabulary cost
    on CPU")."""
    pixels = np.random.default_rng(0).integers(0, 256, (*picture, 3), dtype=np.uint8)
    size = resized_shape(*picture, canvas)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timed(benchmark, lambda: resize_and_pad(upload(pixels, torch.device("cpu")).permute(2, 0, 1), size,
                                                (canvas, canvas), (0, 0, 0)), rounds=5, warmup=1)
    finally:
        torch.set_num_threads(before)
    benchmark.extra_info.update({"stage": "resize-and-pad", "image": f"{picture[1]}x{picture[0]}",
                                 "threads": threads})


def _stage_split(timings: Timings) -> dict:
    n = max(timings.images, 1)
    return {k: round(1000 * getattr(timings, k) / n, 2) for k in ("preprocess", "model", "postprocess")}


def _vocabulary(segmenter, classes: int, seed: int = 0):
    """``classes`` random unit embeddings named "class k", every other one a thing."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((classes, segmenter.backend.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return Vocabulary([f"class {k}" for k in range(classes)], [k % 2 == 0 for k in range(classes)]), text


@pytest.mark.parametrize("classes", [1, 133, 1203])
def test_vocabulary_scaling_end_to_end(benchmark, segmenter, classes):
    """``Segmenter.segment`` (panoptic) on the 512 x 512 photo with K = 1, 133 (COCO panoptic) and 1203 (LVIS)
    classes: beyond the classifier's own (Q, K) product nothing should grow with K (goal: K = 1203 at most
    1.3x K = 1 end to end; :func:`test_vocabulary_cost_ratio` measures it interleaved)."""
    photo = _photo()
    segmenter.set_vocabulary(*_vocabulary(segmenter, classes))
    try:
        segmenter.timings = Timings()
        timed(benchmark, lambda: segmenter.segment(photo), rounds=10, warmup=2)
        benchmark.extra_info.update({"backend": segmenter.backend.name, "classes": classes, "stage": "end-to-end",
                                     "segmenter_ms": _stage_split(segmenter.timings)})
    finally:
        segmenter.set_vocabulary(named("synthetic"))


def test_vocabulary_cost_ratio(benchmark, segmenter):
    """End to end K = 1203 over K = 1, the two interleaved call by call (a loaded machine slows both alike)."""
    photo = _photo()
    vocabularies = {k: _vocabulary(segmenter, k) for k in (1, 1203)}
    times = {1: [], 1203: []}

    def pair():
        for k, (vocabulary, text) in vocabularies.items():
            segmenter.set_vocabulary(vocabulary, text)
            start = time.perf_counter()
            segmenter.segment(photo)
            synchronize()
            times[k].append(time.perf_counter() - start)

    try:
        benchmark.pedantic(pair, rounds=15, warmup_rounds=2, iterations=1)
    finally:
        segmenter.set_vocabulary(named("synthetic"))
    median = {k: float(np.median(v[2:])) for k, v in times.items()}
    benchmark.extra_info.update({"backend": segmenter.backend.name, "k1_ms": round(1000 * median[1], 2),
                                 "k1203_ms": round(1000 * median[1203], 2),
                                 "ratio": round(median[1203] / median[1], 3)})


@pytest.mark.parametrize("width", ["longest prompt", "whole context"])
def test_new_vocabulary_encoding(benchmark, segmenter, width):
    """Encoding ADE20K's 150 classes x the model's prompt templates from scratch (no cache), each batch of prompts
    run as wide as its longest (the product) or over the text encoder's whole context (the alternative)."""
    vocabulary = named("ade20k-150")
    model = getattr(segmenter.backend, "model", None)
    cuts = [c for c in (segmenter.text_encoder, model and model.text) if c is not None and c.any_width]
    try:
        for cut in cuts:
            cut.any_width = width == "longest prompt"
        timed(benchmark, lambda: segmenter.text_encoder.encode(vocabulary, cache_dir=""), rounds=3, warmup=1)
    finally:
        for cut in cuts:
            cut.any_width = True
    benchmark.extra_info.update({"backend": segmenter.backend.name, "stage": "text-encoding", "classes": 150,
                                 "width": width})


@pytest.mark.parametrize("classes", [1, 10, 150, 1203, 2000])
def test_vocabulary_size_scaling(benchmark, segmenter, classes):
    rng = np.random.default_rng(0)
    text = rng.standard_normal((classes, segmenter.backend.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    batch = segmenter.prepare([_photo()]).batch
    timed(benchmark, lambda: segmenter.backend.run(batch, text), rounds=5, warmup=1)
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
