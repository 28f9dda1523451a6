"""The fastest GPU path without TensorRT, end to end (issue 19): per model, batch 1 and 8, fp16, five ways
of running it (gpu_e2e_report.RUNS) in one process; model ms (the backend's ``run`` on a prepared batch),
end-to-end ms (``Segmenter.segment_batch``: host uint8 pictures in, host label maps and segments out),
images/s, peak GPU memory, ratios to eager fp32 and the label agreement with it (asserted >= 99.5 %).

Random weights (no downloads): the mask generator's weights are nudged so proposals are not all alike.
Skipped without CUDA. ``FISA_GPU_E2E_QUICK=1`` (scripts/gpu-check.sh under 25 minutes): fisa-vit-b16 only,
without the two compiled runs, whose compiles take minutes. The table and the rows go to
``FISA_GPU_E2E_OUT`` (a folder; default: pytest's temporary one) as gpu-e2e.md and gpu-e2e.json.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from functools import partial

import numpy as np
import pytest
import torch

from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.model import create_model
from fisa_rt.runtime.backends import TorchBackend
from fisa_rt.runtime.compiled import autocast_forward
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import Vocabulary

import gpu_e2e_report as report

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

QUICK = os.environ.get("FISA_GPU_E2E_QUICK") == "1"
CLASSES = 133  # COCO panoptic
# (model, host picture (H, W)): fisa-vit-b16 fills its 640 canvas's width, fisa-convnext-l its 1024 one;
# fcclip-convnext-l resizes a 480 x 640 picture by FC-CLIP's rule (short side 800, long at most 1333) to
# 800 x 1067 on an 800 x 1088 canvas.
MODELS = [("fisa-vit-b16", (480, 640))] + ([] if QUICK else [("fisa-convnext-l", (768, 1024)),
                                                             ("fcclip-convnext-l", (480, 640))])
BATCHES = (1, 8)
RUNS = report.RUNS[:2] + report.RUNS[3:4] if QUICK else report.RUNS
ITERATIONS = 10 if QUICK else 30


class Rows(list):
    """The rows so far, written out after each one: a run stopped at its time limit keeps what it measured."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def add(self, row: dict) -> None:
        self.append(row)
        with open(os.path.join(self.folder, "gpu-e2e.json"), "w") as f:
            json.dump(self, f, indent=1)
        left_out = ("\nQuick mode (`FISA_GPU_E2E_QUICK=1`): fisa-vit-b16 only, without the torch.compile and "
                    "--compile runs.\n" if QUICK else "")
        with open(os.path.join(self.folder, "gpu-e2e.md"), "w") as f:
            f.write(report.render(self) + left_out)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = os.environ.get("FISA_GPU_E2E_OUT") or str(tmp_path_factory.mktemp("gpu-e2e"))
    os.makedirs(folder, exist_ok=True)
    return Rows(folder)


def _checkpoint(name: str, folder):
    """A random-weight checkpoint of ``name`` and the model's text embedding width."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():  # random but not degenerate proposals
        for p in model.mask_generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = str(folder / f"{name}.safetensors")
    save_checkpoint(path, model, vocabulary=["thing", "stuff"], is_thing=[True, False])
    return path, model.embed_dim


def _backend(path: str, run: str) -> TorchBackend:
    fp16 = None if run == "eager fp32" else torch.float16
    if run in ("eager fp32", "eager fp16"):  # plain PyTorch, as FC-CLIP's code runs: no kernel choice
        backend = TorchBackend(path, "cuda", cuda_graphs=False, autocast=fp16)
        backend.model.set_kernels("reference")
        return backend
    if run == "fisa-rt default":
        return TorchBackend(path, "cuda", autocast=fp16)
    if run == "fisa-rt --compile":
        return TorchBackend(path, "cuda", compile=True, autocast=fp16)
    backend = TorchBackend(path, "cuda", cuda_graphs=False)  # torch.compile(max-autotune) of the reference
    backend.model.set_kernels("reference")
    backend.forward = autocast_forward(torch.compile(backend.wrapper, mode="max-autotune"), backend.device, fp16)
    return backend


def _median_ms(fn, iterations: int) -> float:
    times = []
    for _ in range(iterations):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


@pytest.mark.parametrize("model, picture", MODELS, ids=[m for m, _ in MODELS])
def test_end_to_end(rows, tmp_path, model, picture):
    path, dim = _checkpoint(model, tmp_path)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (*picture, 3), dtype=np.uint8) for _ in range(max(BATCHES))]
    text = rng.standard_normal((CLASSES, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    vocabulary = Vocabulary([f"class {k}" for k in range(CLASSES)], [k % 2 == 0 for k in range(CLASSES)])
    labels = {}
    for run in RUNS:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        segmenter = Segmenter(_backend(path, run), path, cache_dir="")
        segmenter.set_vocabulary(vocabulary, text)
        for batch in BATCHES:
            images = pictures[:batch]
            prepared = segmenter.prepare(images)
            for _ in range(3):  # captures, compiles, autotuning: not timed
                results = segmenter.segment_batch(images)
            # with the seen flags segment_batch passes: the same CUDA graph as the end-to-end calls
            forward = partial(segmenter.backend.run, prepared.batch, segmenter.text, segmenter.seen_in_training)
            model_ms = _median_ms(forward, ITERATIONS)
            e2e_ms = _median_ms(partial(segmenter.segment_batch, images), ITERATIONS)
            semantic = np.stack([r.semantic for r in results])
            labels.setdefault(batch, semantic)
            failure = getattr(getattr(segmenter.backend, "graphs", None), "failure", None)
            notes = [f"{model} {run}: CUDA graphs fell back to eager ({failure})"] if failure else []
            rows.add({
                "model": model, "input": f"{picture[1]}x{picture[0]} -> {'x'.join(map(str, prepared.canvas))}",
                "batch": batch, "run": run, "model_ms": model_ms, "e2e_ms": e2e_ms,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "agreement": float((semantic == labels[batch]).mean()), "notes": notes,
            })
        del segmenter
    failures = report.disagreements([r for r in rows if r["model"] == model])
    assert not failures, "\n".join(failures)
