"""What splitting the vocabulary part off costs when an ONNX model loads (fisa_rt.runtime.vocabulary_graph): load
seconds, the process's peak and settled RSS over what it used before, and the vocabulary graph's own time at
K = 1203 (paid once per vocabulary), split on and off, each load in a process of its own, alternating.

    python benchmarks/ort_split_load.py ONNX [--rounds 3]
"""

import argparse
import resource
import subprocess
import sys
import time


def rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 2**20  # 64 KiB pages on some aarch64 kernels


def load_once(path: str, split: bool) -> str:
    import numpy as np

    from fisa_rt.runtime.backends import OnnxRuntimeBackend

    before = rss_mb()
    start = time.perf_counter()
    backend = OnnxRuntimeBackend(path, split_graph=split)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    line = (f"split {'on ' if split else 'off'}: load {seconds:.2f} s, peak RSS +{peak - before} MB, "
            f"settled RSS +{rss_mb() - before} MB")
    if split:
        text = np.random.default_rng(0).standard_normal((1203, backend.embed_dim)).astype(np.float32)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            backend.vocabulary.session.run(backend.vocabulary.boundary, {"text": text})
            runs.append(1000 * (time.perf_counter() - start))
        line += f"; vocabulary graph at K = 1203: {np.median(runs):.1f} ms"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(load_once(args.onnx, args.one == "on"))
        return
    print(args.onnx)
    for _ in range(args.rounds):
        for split in ("off", "on"):
            child = subprocess.run([sys.executable, __file__, args.onnx, "--one", split], capture_output=True,
                                   text=True, check=True)
            print(child.stdout.strip())


if __name__ == "__main__":
    main()
