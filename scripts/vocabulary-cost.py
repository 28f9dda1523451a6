"""Segmenter stages at K = 1 and K = 1203 (LVIS size), interleaved call by call (and engine by engine, given
several, e.g. the builds of two commits), so a loaded machine slows all alike: median pre-process, model,
post-process and end-to-end ms, and the end-to-end ratio (issue 19's goal: at most 1.3x). ``--profile`` adds, for
ONNX engines, ONNX Runtime's own per-node kernel times on one thread at both sizes: which nodes grow with K.
``--kernels reference auto`` runs each checkpoint once per kernel mode, interleaved with the rest; ``--split on off``
each ONNX engine with and without its vocabulary graph split off (fisa_rt.runtime.vocabulary_graph).
Usage: python scripts/vocabulary-cost.py ENGINE [ENGINE ...] [--threads N] [--pairs 10] [--profile]
       [--kernels MODE ...] [--split on|off ...]"""

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import skimage.data
import torch

from fisa_rt.runtime.backends import OnnxRuntimeBackend
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import Vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engines", nargs="+", metavar="ENGINE", help="any artefact Segmenter.from_engine takes")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--pairs", type=int, default=10, help="timed (K = 1, K = 1203) pairs, after 2 untimed")
    parser.add_argument("--profile", action="store_true", help="ONNX engines: the nodes whose time grows with K")
    parser.add_argument("--kernels", nargs="+", choices=("auto", "triton", "reference"),
                        help="checkpoints: one run per kernel mode (default: the checkpoint's own)")
    parser.add_argument("--split", nargs="+", choices=("on", "off"),
                        help="ONNX engines: one run with and/or without the vocabulary graph split off (default: on)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engines, paths, segmenters = [], [], []
    for engine in args.engines:
        if engine.endswith(".onnx"):
            for split in args.split or ["on"]:
                backend = OnnxRuntimeBackend(engine, threads=args.threads, split_graph=split == "on")
                engines.append(f"{engine} (split {split})" if args.split else engine)
                paths.append(engine)
                segmenters.append(Segmenter(backend, engine, cache_dir=""))
            continue
        for mode in (args.kernels or [None]) if engine.endswith(".safetensors") else [None]:
            segmenter = Segmenter.from_engine(engine, cache_dir="")
            if mode:
                segmenter.backend.model.set_kernels(mode)
            engines.append(f"{engine} (kernels {mode})" if mode else engine)
            paths.append(engine)
            segmenters.append(segmenter)
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
    for engine, engine_times in zip(engines, times):
        if len(engines) > 1:
            print(engine)
        for k, stages in engine_times.items():
            print(f"K = {k}: " + ", ".join(f"{stage} {np.median(ms):.1f} ms" for stage, ms in stages.items()))
        ratio = np.median(engine_times[1203]["end to end"]) / np.median(engine_times[1]["end to end"])
        print(f"end to end K = 1203 / K = 1: {ratio:.2f}x")
    if args.profile:
        for engine, path, segmenter in zip(engines, paths, segmenters):
            if isinstance(segmenter.backend, OnnxRuntimeBackend):
                print_node_growth(engine, path, segmenter, vocabularies, photo, args.pairs)


def print_node_growth(engine, path, segmenter, vocabularies, photo, runs, top=15):
    """Median kernel time of each node at each K, from ONNX Runtime's profiler, on a backend like the engine's but
    with one thread and profiling on; the nodes that grow most from the smallest K to the largest. With the
    vocabulary graph split off, the image graph's nodes: the vocabulary graph runs once per vocabulary."""
    import onnxruntime as ort

    batch = segmenter.prepare([photo]).batch
    node_ms = {}
    for k, vocabulary in vocabularies.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
        segmenter.backend = OnnxRuntimeBackend(path, options=options,
                                               split_graph=segmenter.backend.vocabulary is not None)
        segmenter.set_vocabulary(*vocabulary)
        for _ in range(runs + 2):
            segmenter.backend.run(batch, segmenter.text, segmenter.seen_in_training)
        with open(segmenter.backend.session.end_profiling()) as f:
            events = json.load(f)
        durations = collections.defaultdict(list)
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                durations[event["name"][: -len("_kernel_time")]].append(event["dur"] / 1000)
        node_ms[k] = {name: float(np.median(ms[2:])) for name, ms in durations.items()}
    small, large = min(node_ms), max(node_ms)
    growth = {name: ms - node_ms[small].get(name, 0.0) for name, ms in node_ms[large].items()}
    print(f"{engine}: sum of node medians {sum(node_ms[small].values()):.1f} ms at K = {small}, "
          f"{sum(node_ms[large].values()):.1f} ms at K = {large}; the {top} nodes that grow most:")
    for name in sorted(growth, key=growth.get, reverse=True)[:top]:
        print(f"  {growth[name]:+6.2f} ms  {node_ms[small].get(name, 0.0):6.2f} -> {node_ms[large][name]:6.2f}  {name}")


if __name__ == "__main__":
    main()
