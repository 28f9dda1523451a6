"""Peak memory and time of an fp16 build (``export/build_engine.py --precision fp16``: the ONNX export, then
ModelOpt AutoCast), and of AutoCast alone on the ONNX it wrote, for shipped configs with random weights (SEVE
gates opened to 0.5, so the adapters act) at each config's own canvas. Each runs in a process of its own; its
peak is the kernel's ``ru_maxrss`` for that process.

    python scripts/fp16-build-memory.py --out /tmp/fp16-memory [--configs fisa-vit-b16 fcclip-convnext-l]

Prints one line per config and step; docs/design.md ("AutoCast's memory") quotes them. GB here is
``ru_maxrss`` KiB / 10^6, as /usr/bin/time's figures in the docs.
"""

import argparse
import os
import subprocess
import sys
import time
from typing import List, Tuple

BUILD_ENGINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "export", "build_engine.py")


def random_checkpoint(name: str, path: str) -> int:
    """Writes ``name``'s model with random weights to ``path``; returns its canvas."""
    import torch

    from fisa_rt import create_model
    from fisa_rt.checkpoint import save_checkpoint
    from fisa_rt.vocab.vocabulary import named

    torch.manual_seed(0)
    model = create_model(name).eval()
    for gate in (p for n, p in model.named_parameters() if n.endswith("gate")):
        gate.data.fill_(0.5)
    vocabulary = named("coco-panoptic")
    save_checkpoint(path, model, vocabulary=vocabulary.names, is_thing=vocabulary.is_thing, overwrite=True)
    return model.cfg.image_size


def measured(command: List[str], log: str) -> Tuple[float, float]:
    """Runs ``command`` with its output in ``log``; its wall seconds and peak resident GB."""
    start = time.time()
    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=out)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command[1:3])} failed, see {log}")
    return time.time() - start, usage.ru_maxrss / 1e6


def autocast(onnx_path: str, calibration: str, out: str) -> None:
    """The child process of the AutoCast step: the build's own conversion on its own calibration batch."""
    import numpy as np

    from fisa_rt.export.mixed_precision import convert_fp16

    with np.load(calibration) as inputs:
        feed = dict(inputs)
    record = convert_fp16(onnx_path, out, feed)
    print(f"reference run '{record['reference_run']}', {len(record['fp32_nodes'])} of {record['nodes']} nodes fp32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", nargs="+", default=["fisa-vit-b16", "fcclip-convnext-l"])
    parser.add_argument("--autocast", nargs=3, metavar=("ONNX", "NPZ", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.autocast:
        return autocast(*args.autocast)

    import numpy as np

    from fisa_rt.checkpoint import load_model
    from fisa_rt.export.build_engine import calibration_inputs

    for name in args.configs:
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        checkpoint = os.path.join(folder, f"{name}.safetensors")
        canvas = random_checkpoint(name, checkpoint)
        build = os.path.join(folder, "build")
        seconds, peak = measured([sys.executable, BUILD_ENGINE, "--checkpoint", checkpoint, "--precision", "fp16",
                                  "--out", build, "--overwrite"], os.path.join(folder, "build.log"))
        print(f"{name} ({canvas} px): fp16 build {seconds / 60:.1f} min, peak {peak:.1f} GB", flush=True)
        calibration = os.path.join(folder, "calibration.npz")
        np.savez(calibration, **calibration_inputs(*load_model(checkpoint)))
        log = os.path.join(folder, "autocast.log")
        seconds, peak = measured([sys.executable, __file__, "--out", args.out, "--autocast",
                                  os.path.join(build, f"{name}.portable.onnx"), calibration,
                                  os.path.join(folder, "autocast.fp16.onnx")], log)
        with open(log) as f:
            said = f.read().strip().splitlines()[-1]
        print(f"{name} ({canvas} px): AutoCast alone {seconds / 60:.1f} min, peak {peak:.1f} GB, {said}", flush=True)


if __name__ == "__main__":
    main()
