"""Which int8 recipe holds the embedded model's accuracy: recipe variants, then one block quantised at a time.

Calibration: synthetic *train* scenes (seed 2); checked on data never calibrated on: the synthetic
validation scenes (seed 0, as benchmarks/ and docs/training.md use) and three scikit-image photographs,
against the fp32 portable ONNX on ONNX Runtime CPU, with the synthetic vocabulary. Per configuration: the
minimum per-image class-probability cosine (stable-mask queries, ``export/parity.py``), label agreement
(mean and worst image), mask-logit cosine and the Q/DQ count.

Part 1 quantises the whole model under each recipe variant (what stays high precision, entropy vs max, fp16
vs fp32 for the rest). Part 2 calibrates once with every quantisable node in int8 (fp32 elsewhere) and
then keeps the Q/DQ pairs of one block only (the others bypassed: each consumer reads the tensor the pair
was quantising), so each block's own damage is measured without recalibrating. Part 3 uses that same
calibration to screen module roles: the parts named by ``export/quantization.SCOPES`` kept high precision
(with RECIPE's op types), then RECIPE's parts with one CLIP block back in int8. Recipe figures can hinge on
one image, so part 1 reruns on other calibration sets with ``--calibration-count``/``--calibration-seed``,
``--variants`` naming the rows to run.

    python scripts/int8-sensitivity.py --out /tmp/int8-sweep [--calibration-count 64] [--calibration-seed 2]
        [--part 1 2 3] [--variants "CLIP encoder"]
"""

import argparse
import collections
import glob
import os
import time

import numpy as np


def held_out(size: int, root: str):
    """(N, 3, S, S) uint8: the validation scenes + 3 photographs, resized to the model's square input."""
    import skimage.data
    from PIL import Image

    from fisa_rt.data.synthetic import generate
    from fisa_rt.runtime.images import load_image

    generate(root, "val", 24, seed=0, image_size=size, overwrite=True)
    pictures = [load_image(p) for p in sorted(glob.glob(os.path.join(root, "images", "val", "*.png")))]
    pictures += [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in pictures]
                    ).transpose(0, 3, 1, 2).copy()


# part 3: which scopes stay high precision (the last set, RECIPE's, is the base of the per-block rows)
SCOPE_SETS = [(), ("clip_encoder",), ("clip_encoder", "seve"), ("clip_encoder", "seve", "classifier"),
              ("clip_encoder", "seve", "classifier", "neck"), ("clip_encoder", "classifier")]


def in_int8(kept, initializers):
    """Node -> whether it reads int8 under RECIPE's op types with the ``kept`` scopes in high precision."""
    from fisa_rt.export.quantization import RECIPE, SCOPES, in_scope

    return lambda node: node.op_type not in RECIPE.op_types_to_exclude and not any(
        in_scope(node, SCOPES[name], initializers) for name in kept)


def block_of(name: str) -> str:
    """Node name -> block: backbone/resblocks.3, mask_generator/layers.1, classifier, ..."""
    parts = name.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "model":
        return "other"
    return parts[1] if parts[1] == "classifier" else "/".join(parts[1:3])


def keep_only(model, keep):
    """A copy of a Q/DQ model with the Q/DQ pairs feeding nodes for which ``keep(node)`` is false bypassed."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = model.graph.node
    quantized_by = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    original = {n.output[0]: quantized_by[n.input[0]] for n in nodes
                if n.op_type == "DequantizeLinear" and n.input[0] in quantized_by}
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or keep(node):
            continue
        for i, name in enumerate(node.input):
            node.input[i] = original.get(name, name)
    used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
    while True:  # drop the pairs nothing reads any more
        dead = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            return model
        for n in dead:
            nodes.remove(n)
        used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--calibration-count", type=int, default=64)
    parser.add_argument("--calibration-seed", type=int, default=2)
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", help="part 1: only the variants whose name contains one of these")
    args = parser.parse_args()

    from fisa_rt.checkpoint import load_model
    from fisa_rt.data.synthetic import generate
    from fisa_rt.export import parity, quantization as q
    from fisa_rt.export.build_engine import build, parse_args
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.vocab.vocabulary import named

    os.makedirs(args.out, exist_ok=True)
    portable = os.path.join(args.out, "build", "fisa-tiny-synthetic.portable.onnx")
    if not os.path.isfile(portable):
        build(parse_args(["--out", os.path.dirname(portable), "--precision", "fp32"]))
    model, info = load_model(default_checkpoint())
    vocabulary = named("synthetic")
    text = model.encode_vocabulary(vocabulary.names).numpy()
    generate(os.path.join(args.out, "train"), "train", args.calibration_count, seed=args.calibration_seed,
             image_size=model.cfg.image_size, overwrite=True)
    files = sorted(glob.glob(os.path.join(args.out, "train", "images", "train", "*.png")))[: args.calibration_count]
    calibration = q.calibration_set(portable, files, vocabulary, text, info.vocabulary)
    feed = {"image": held_out(model.cfg.image_size, os.path.join(args.out, "val")), "text": text}
    reference = parity.run_onnx(portable, feed)
    print(f"calibration: {len(files)} synthetic train scenes (seed {args.calibration_seed}); check: "
          f"{len(feed['image'])} held-out images (24 val scenes + 3 photographs), {len(text)} classes", flush=True)
    header = (f"{'configuration':58s} {'QDQ':>4s} {'min prob cos':>12s} {'agree':>7s} {'min agree':>9s} "
              f"{'mask cos':>9s} {'s':>4s}")

    def row(name, path, seconds):
        import onnx

        figures = parity.check_onnx(portable, path, feed, reference)
        qdq = sum(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)
        print(f"{name:58s} {qdq:4d} {figures['min_prob_cosine']:12.4f} {100 * figures['label_agreement']:6.2f}% "
              f"{100 * figures['min_label_agreement']:8.2f}% {figures['mask_cosine']:9.5f} {seconds:4.0f}", flush=True)

    if 1 in args.part:
        base = q.RECIPE
        variants = {
            "shipped before (entropy, fp16 rest)": q.QuantRecipe(calibration_method="entropy", scopes_kept=()),
            "max, fp16 rest": q.QuantRecipe(calibration_method="max", scopes_kept=()),
            "max, fp32 rest": q.QuantRecipe(calibration_method="max", high_precision="fp32", scopes_kept=()),
            "entropy, fp32 rest": q.QuantRecipe(
                calibration_method="entropy", high_precision="fp32", scopes_kept=()),
            "max, fp32 rest, classifier high precision": q.QuantRecipe(
                calibration_method="max", high_precision="fp32", scopes_kept=("classifier",)),
            "max, fp32 rest, mask generator high precision": q.QuantRecipe(
                calibration_method="max", high_precision="fp32", scopes_kept=("mask_generator",)),
            "max, fp32 rest, SEVE adapters high precision": q.QuantRecipe(
                calibration_method="max", high_precision="fp32", scopes_kept=("seve",)),
            "max, fp16 rest, CLIP encoder + classifier high precision": q.QuantRecipe(
                scopes_kept=("clip_encoder", "classifier")),
            "max, fp16 rest, CLIP encoder + classifier + mask embedding high precision": q.QuantRecipe(
                scopes_kept=("clip_encoder", "classifier", "mask_embed")),
            "entropy, fp16 rest, CLIP encoder + classifier high precision": q.QuantRecipe(
                calibration_method="entropy", scopes_kept=("clip_encoder", "classifier")),
            "max, fp16 rest, CLIP encoder + SEVE + classifier high precision": q.QuantRecipe(
                scopes_kept=("clip_encoder", "seve", "classifier")),
            "entropy, fp16 rest, CLIP encoder + SEVE + classifier high precision": q.QuantRecipe(
                calibration_method="entropy", scopes_kept=("clip_encoder", "seve", "classifier")),
            "max, fp16 rest, CLIP encoder + SEVE + classifier + neck high precision": q.QuantRecipe(
                scopes_kept=("clip_encoder", "seve", "classifier", "neck")),
            "max, fp16 rest, CLIP encoder + classifier high precision, no attention Q/DQ": q.QuantRecipe(
                scopes_kept=("clip_encoder", "classifier"), disable_mha_qdq=True),
            "shipped recipe (RECIPE)": base,
        }
        print("\nPart 1: recipe variants (whole model)\n" + header, flush=True)
        for i, (name, recipe) in enumerate(variants.items()):
            if args.variants and not any(v in name for v in args.variants):
                continue
            path = os.path.join(args.out, f"variant{i}.onnx")
            start = time.time()
            q.quantize_onnx(portable, path, "int8", calibration, recipe)
            row(name, path, time.time() - start)
    if {2, 3} & set(args.part):
        import onnx

        path = os.path.join(args.out, "all-int8.onnx")
        start = time.time()
        q.quantize_onnx(portable, path, "int8", calibration,
                        q.QuantRecipe(op_types_to_exclude=(), scopes_kept=(), high_precision="fp32"))
        full = onnx.load(path)
        print(f"\nevery quantisable node in int8 (max calibration, fp32 elsewhere): {time.time() - start:.0f} s")
    if 3 in args.part:
        print("\nPart 3: parts of the model kept high precision by node-name scope (export/quantization.SCOPES), "
              f"{', '.join(q.RECIPE.op_types_to_exclude)} by op type\n" + header)
        single = os.path.join(args.out, "single.onnx")
        onnx.save(keep_only(full, lambda node: False), single)
        row("no node in int8 (what no bypass removes)", single, 0)
        initializers = {i.name for i in full.graph.initializer}
        for kept in SCOPE_SETS:
            onnx.save(keep_only(full, in_int8(kept, initializers)), single)
            row("all in int8" if not kept else " + ".join(kept) + " kept", single, 0)
        clip_blocks = sorted({block_of(n.name) for n in full.graph.node
                              if q.in_scope(n, q.SCOPES["clip_encoder"], initializers)})
        for block in clip_blocks:  # the first row's recipe with one CLIP block back in int8
            onnx.save(keep_only(full, lambda node: in_int8(SCOPE_SETS[-1], initializers)(node) or (
                block_of(node.name) == block and node.op_type not in q.RECIPE.op_types_to_exclude)), single)
            row(f"{' + '.join(SCOPE_SETS[-1])} kept, but {block} in int8", single, 0)
    if 2 in args.part:
        print("\nPart 2: one block quantised at a time (max calibration, nothing excluded, fp32 elsewhere)\n" + header)
        row("every quantisable node", path, 0)
        blocks = collections.Counter(block_of(n.name) for n in full.graph.node
                                     if n.op_type not in ("QuantizeLinear", "DequantizeLinear"))
        for block in blocks:
            single = os.path.join(args.out, "single.onnx")
            onnx.save(keep_only(full, lambda node: block_of(node.name) == block), single)
            if sum(n.op_type == "QuantizeLinear" for n in onnx.load(single).graph.node):
                row(f"only {block}", single, 0)


if __name__ == "__main__":
    main()
