"""Segmenter stages at K = 1 and K = 1203 (LVIS size), interleaved call by call (and engine by engine, given
several, e.g. the builds of two commits), so a loaded machine slows all alike: median pre-process, model,
post-process and end-to-end ms, and the end-to-end ratio (issue 19's goal: at most 1.3x).
Usage: python scripts/vocabulary-cost.py ENGINE [ENGINE ...] [--threads N] [--pairs 10]"""

import argparse
import time

import numpy as np
import skimage.data
import torch

from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engines", nargs="+", metavar="ENGINE", help="any artefact Segmenter.from_engine takes")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--pairs", type=int, default=10, help="timed (K = 1, K = 1203) pairs, after 2 untimed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    segmenters = [Segmenter.from_engine(engine, cache_dir="") for engine in args.engines]
    photo = skimage.data.astronaut()  # 512 x 512
    rng = np.random.default_rng(0)
    vocabularies = {}
    for k in (1, 1203):
        text = rng.standard_normal((k, segmenters[0].backend.embed_dim)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        vocabularies[k] = Vocabulary([f"class {i}" for i in range(k)], [i % 2 == 0 for i in range(k)]), text
    times = [{k: {"pre": [], "model": [], "post": [], "end to end": []} for k in vocabularies} for _ in segmenters]
    for pair in range(args.pairs + 2):
        for segmenter, engine_times in zip(segmenters, times):
            for k, vocabulary in vocabularies.items():
                segmenter.set_vocabulary(*vocabulary)
                t0 = time.perf_counter()
                prepared = segmenter.prepare([photo])
                t1 = time.perf_counter()
                raw = segmenter.backend.run(prepared.batch, segmenter.text, segmenter.seen_in_training)
                t2 = time.perf_counter()
                segmenter.merge([photo], raw, prepared, "panoptic")
                t3 = time.perf_counter()
                segmenter.segment(photo)
                t4 = time.perf_counter()
                if pair >= 2:
                    for stage, seconds in zip(engine_times[k], (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        engine_times[k][stage].append(1000 * seconds)
    for engine, engine_times in zip(args.engines, times):
        if len(args.engines) > 1:
            print(engine)
        for k, stages in engine_times.items():
            print(f"K = {k}: " + ", ".join(f"{stage} {np.median(ms):.1f} ms" for stage, ms in stages.items()))
        ratio = np.median(engine_times[1203]["end to end"]) / np.median(engine_times[1]["end to end"])
        print(f"end to end K = 1203 / K = 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
