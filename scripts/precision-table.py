"""fp32 / fp16 / int8 of the embedded model on ONNX Runtime CPU: accuracy on data never calibrated on and latency
(docs/deploy.md, "int8").

Builds with ``export/build_engine.py`` (fp16; int8 calibrated on ``--calibration-count`` synthetic *train*
scenes, seed 2), then for each ONNX: PQ / mIoU (all, seen, held-out classes) on the synthetic validation
split (seed 0, ``--val`` scenes, ``fisa_rt.evaluation.evaluate_segmenter`` as ``fisa-rt eval`` runs it), the
parity figures against fp32 on those scenes plus three scikit-image photographs (``export/parity.py``), and
the image model's latency at batch 1 (median of ``--runs``, ORT's default graph optimisations).

    python scripts/precision-table.py --out /tmp/precision [--val 100] [--calibration-count 128] [--runs 30]
"""

import argparse
import contextlib
import io
import os
import time

import numpy as np


def latency_ms(path: str, feed, runs: int) -> float:
    from fisa_rt.onnxruntime_session import inference_session

    session = inference_session(path)
    names = {i.name for i in session.get_inputs()}
    one = {k: (v[:1] if k == "image" else v) for k, v in feed.items() if k in names}
    for _ in range(3):
        session.run(None, one)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, one)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--calibration-count", type=int, default=128)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    import importlib.util

    from fisa_rt.data.panoptic import PanopticDataset
    from fisa_rt.data.synthetic import generate
    from fisa_rt.evaluation import evaluate_segmenter
    from fisa_rt.export import parity
    from fisa_rt.export.build_engine import build, parse_args
    from fisa_rt.runtime.segmenter import Segmenter

    here = os.path.dirname(__file__)
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(here, "int8-sensitivity.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)

    train, val = os.path.join(args.out, "train"), os.path.join(args.out, "val")
    generate(train, "train", args.calibration_count, seed=2, overwrite=True)
    generate(val, "val", args.val, seed=0, overwrite=True)
    name = os.path.join(args.out, "{}", "fisa-tiny-synthetic.portable.{}onnx")
    paths = {"fp32": name.format("fp16", ""), "fp16": name.format("fp16", "fp16."),
             "int8": name.format("int8", "int8.qdq.")}
    with contextlib.redirect_stdout(io.StringIO()):
        if not os.path.isfile(paths["fp16"]):  # kept between runs: a new int8 recipe rebuilds int8 only
            build(parse_args(["--out", os.path.join(args.out, "fp16"), "--overwrite"]))
        build(parse_args(["--out", os.path.join(args.out, "int8"), "--precision", "int8", "--overwrite",
                          "--calibration", os.path.join(train, "images", "train")]))

    reference = Segmenter.from_engine(paths["fp32"], backend="onnxruntime", cache_dir="")
    dataset = PanopticDataset(val, "val", reference.backend.image_size, augment=False, resize=reference.resize,
                              image_mean=reference.image_mean)
    reference.set_vocabulary(dataset.class_names)
    pictures = sweep.held_out(reference.backend.image_size, os.path.join(args.out, "val-check"))
    feed = {"image": pictures, "text": reference.text}
    ref_outputs = parity.run_onnx(paths["fp32"], feed)
    print(f"validation: {args.val} synthetic val scenes (seed 0); parity: {len(pictures)} images "
          f"(24 val scenes + 3 photographs); int8 calibrated on {args.calibration_count} train scenes (seed 2)\n")
    print("| precision | PQ all | PQ seen | PQ held-out | mIoU all | mIoU seen | mIoU held-out | min prob cosine | "
          "label agreement (min image) | mask-logit cosine | ORT CPU ms (batch 1) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for precision, path in paths.items():
        scores = evaluate_segmenter(Segmenter.from_engine(path, backend="onnxruntime", cache_dir=""), dataset,
                                    batch_size=8)
        figures = parity.check_onnx(paths["fp32"], path, feed, ref_outputs)
        groups = [g for g in ("all", "seen", "held_out") if g in scores]
        cells = [f"{scores[g]['pq']:.2f}" for g in groups] + [f"{scores[g]['miou']:.2f}" for g in groups]
        print(f"| {precision} | " + " | ".join(cells) + f" | {figures['min_prob_cosine']:.4f} | "
              f"{100 * figures['label_agreement']:.2f} % ({100 * figures['min_label_agreement']:.1f} %) | "
              f"{figures['mask_cosine']:.5f} | {latency_ms(path, feed, args.runs):.1f} |", flush=True)
    print(f"\nscore groups: {sorted(scores)}")


if __name__ == "__main__":
    main()
