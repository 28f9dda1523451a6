"""The int8 recipe (``export/quantization.RECIPE``) on the larger configs: fisa-vit-b16 and fcclip-convnext-l at
their full widths with random weights (SEVE gates opened to 0.5, so the adapters act), at a small input size.

Per config: the portable ONNX, its Q/DQ ONNX calibrated on synthetic train scenes, the Q/DQ node counts and
the op types that read a dequantised tensor, and the parity figures against fp32 on ONNX Runtime CPU on images
never calibrated on (synthetic val scenes + 3 scikit-image photographs; ``export/parity.py``). Random
weights make near-ties common, so label agreement is a floor, not the trained model's figure.

    python scripts/int8-larger-configs.py --out /tmp/int8-large [--size 224] [--calibration-count 16]
"""

import argparse
import dataclasses
import glob
import importlib.util
import os
import time

import numpy as np
import torch


def pictures(files, size):
    from PIL import Image

    from fisa_rt.runtime.images import load_image

    return np.stack([np.asarray(Image.fromarray(load_image(f)).resize((size, size), Image.BILINEAR)) for f in files]
                    ).transpose(0, 3, 1, 2).copy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", nargs="+", default=["fisa-vit-b16", "fcclip-convnext-l"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calibration-count", type=int, default=16)
    parser.add_argument("--classes", type=int, default=32)
    args = parser.parse_args()

    from fisa_rt import create_model
    from fisa_rt.config import get_model_config
    from fisa_rt.data.synthetic import generate
    from fisa_rt.export import onnx_checks, onnx_export, parity, quantization as q

    here = os.path.dirname(__file__)
    spec = importlib.util.spec_from_file_location("sweep", os.path.join(here, "int8-sensitivity.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    os.makedirs(args.out, exist_ok=True)
    generate(os.path.join(args.out, "train"), "train", args.calibration_count, seed=2, overwrite=True)
    calibration_images = pictures(sorted(glob.glob(os.path.join(args.out, "train", "images", "train", "*.png"))),
                                  args.size)
    check_images = sweep.held_out(args.size, os.path.join(args.out, "val"))[-11:]  # 8 val scenes + 3 photographs
    for name in args.configs:
        cfg = get_model_config(name)
        resize = dataclasses.replace(cfg.resize, short=args.size * 3 // 4, max_size=args.size) \
            if cfg.resize.mode == "shortest_edge" else cfg.resize
        cfg = dataclasses.replace(cfg, image_size=args.size, resize=resize)
        torch.manual_seed(0)
        model = create_model(cfg).eval()
        for gate in (p for n, p in model.named_parameters() if n.endswith("gate")):
            gate.data.fill_(0.5)
        portable = os.path.join(args.out, f"{name}.portable.onnx")
        start = time.time()
        onnx_export.export_image_model(model, portable, "portable", overwrite=True)
        onnx_checks.simplify(portable)
        exported = time.time() - start
        inputs = onnx_export.graph_inputs(cfg, model.embed_dim)
        text_shape = [args.classes if isinstance(d, str) and d == "classes" else 4 if isinstance(d, str) else d
                      for d in inputs["text"]]
        text = torch.nn.functional.normalize(torch.randn(*text_shape), dim=-1).numpy()
        seen = np.arange(args.classes) % 2 == 0 if "seen" in inputs else None
        calibration = q.CalibrationSet(calibration_images, text, seen)
        quantized = os.path.join(args.out, f"{name}.portable.int8.qdq.onnx")
        start = time.time()
        record = q.quantize_onnx(portable, quantized, "int8", calibration)
        quantize_s = time.time() - start
        onnx_checks.check_graph(quantized, "portable")
        feed = {"image": check_images, "text": text, **({"seen": seen} if seen is not None else {})}
        figures = parity.check_onnx(portable, quantized, feed)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name} ({params:.0f} M parameters, random weights, {args.size} px, text {text_shape}): export "
              f"{exported:.0f} s, quantisation {quantize_s:.0f} s on {len(calibration_images)} images\n"
              f"  Q/DQ: {record['qdq_nodes']}; int8 op types: {record['quantized_ops']}\n"
              f"  {parity.summary(figures)}; stable queries {100 * figures['stable_queries']:.1f} %\n"
              f"  products of the parts kept high precision ({', '.join(q.RECIPE.scopes_kept)}) reading int8: "
              f"{len(record['kept_products_in_int8'])}", flush=True)


if __name__ == "__main__":
    main()
