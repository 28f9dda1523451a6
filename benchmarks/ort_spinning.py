"""ONNX Runtime's worker spinning (session.intra_op.allow_spinning) measured on Segmenter.segment: the whole call
(pre-processing, model, post-processing) and the model alone, spinning on and off, interleaved.

    python benchmarks/ort_spinning.py BUILD_FOLDER [--threads N] [--rounds R]
"""

import argparse
import statistics
import time

import numpy as np
from PIL import Image


def main():
    from fisa_rt.runtime.assets import sample_images
    from fisa_rt.runtime.backends import OnnxRuntimeBackend, resolve_artefact
    from fisa_rt.runtime.segmenter import Segmenter
    from fisa_rt.runtime.threads import apply_torch_threads, resolve_threads

    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    threads = resolve_threads(args.threads)
    apply_torch_threads(threads)
    path = resolve_artefact(args.build)
    segmenters = {}
    for spinning in (True, False):
        segmenter = Segmenter(OnnxRuntimeBackend(path, threads=threads, spinning=spinning), path, cache_dir="")
        segmenter.set_vocabulary(["red star", "blue circle", "wavy wall"])
        segmenters[spinning] = segmenter
    image = np.asarray(Image.open(sample_images()[0]).convert("RGB"))
    calls = {True: [], False: []}
    for _ in range(args.rounds):
        for spinning, segmenter in segmenters.items():
            segmenter.segment(image)  # warm
            start = time.perf_counter()
            for _ in range(args.iterations):
                segmenter.segment(image)
            calls[spinning].append(1000 * (time.perf_counter() - start) / args.iterations)
    for spinning, segmenter in segmenters.items():
        t = segmenter.timings
        n = max(t.images, 1)
        rounds = ", ".join(f"{c:.1f}" for c in calls[spinning])
        stages = (f"pre {1000 * t.preprocess / n:.1f}, model {1000 * t.model / n:.1f}, "
                  f"post {1000 * t.postprocess / n:.1f}")
        print(f"spinning={'on ' if spinning else 'off'} threads={threads}: segment median "
              f"{statistics.median(calls[spinning]):.1f} ms (rounds {rounds}); {stages} ms")


if __name__ == "__main__":
    main()
