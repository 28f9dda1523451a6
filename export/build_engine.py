"""FISA checkpoint -> deployable artefacts: ONNX (portable + fused image model, text encoder), a TensorRT
engine where TensorRT exists, else an ONNX Runtime-optimised model; a manifest beside each.

    python export/build_engine.py                       # the embedded default model -> build/
    python export/build_engine.py --checkpoint my.safetensors --precision fp16 --classes 1,150,1203 --out engines/

Engines are strongly typed (TensorRT 10.3 - 11.x): for fp16 the script writes <name>.portable.fp16.onnx
with ModelOpt AutoCast (LayerNorm, Softmax and normalisation reductions kept fp32) and builds from it.
Without TensorRT the script still writes every ONNX file, prints the trtexec command that builds the
engine on the target, and writes <name>.portable.ort.onnx so `fisa-rt infer --engine` runs here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

from fisa_rt.errors import CheckpointError, InputError, MissingDependencyError, refuse_overwrite, run_reporting_errors


def _profile(text: str, what: str):
    from fisa_rt.export.tensorrt_builder import Profile
    from fisa_rt.errors import InputError

    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--{what} takes MIN,OPT,MAX (e.g. 1,150,1203); got {text!r}") from None
    return Profile(lo, opt, hi)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_engine.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="FISA checkpoint (.safetensors); default: the embedded fisa-tiny model")
    parser.add_argument("--out", default="build", help="output folder (default: build/)")
    parser.add_argument("--name", help="file name stem (default: the checkpoint's)")
    parser.add_argument(
        "--flavour",
        choices=["portable", "fused"],
        default="portable",
        help="which ONNX the engine is built from: portable (TensorRT >= 10.0, JetPack 6) or fused (Triton plugins, TensorRT >= 10.9); both ONNX files are always written",
    )
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8", "fp8"],
                        help="engine precision (default: fp16 for portable, fp32 for fused; "
                             "fp16/int8/fp8 need NVIDIA ModelOpt)")
    parser.add_argument("--batch", default="1,1,8", help="batch profile MIN,OPT,MAX (default 1,1,8)")
    parser.add_argument(
        "--classes", default="1,150,1203", help="vocabulary-size profile MIN,OPT,MAX (default 1,150,1203)"
    )
    parser.add_argument(
        "--synonyms", default="1,17,32",
        help="synonym rows per class MIN,OPT,MAX, for models with text.synonyms max (default 1,17,32)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=["uint8", "float32"],
        default="uint8",
        help="image input type (normalisation is in the graph)",
    )
    parser.add_argument(
        "--semantic",
        action="store_true",
        help="add the semantic label map as a graph output (costs K x S x S work per image; fisa-rt computes it on the host)",
    )
    parser.add_argument("--no-simplify", action="store_true", help="skip constant folding of the ONNX")
    parser.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace limit in GiB")
    parser.add_argument("--timing-cache", help="persistent TensorRT timing cache file (default: OUT/timing.cache)")
    parser.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    parser.add_argument("--overwrite", action="store_true", help="replace existing artefacts")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Dict[str, str]:
    """Writes the artefacts; returns kind -> path of what was written."""
    from fisa_rt.checkpoint import load_model, read_checkpoint_info
    from fisa_rt.export import onnx_checks, onnx_export, tensorrt_builder
    from fisa_rt.export.manifest import sha256_file, write_manifest
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.vocab.tokenizer import VOCAB_FILE, find_vocab_file

    if args.precision is None:
        args.precision = "fp32" if args.flavour == "fused" else "fp16"
    if args.flavour == "fused" and args.precision == "fp16":
        raise InputError(
            "--precision fp16 needs the portable flavour: ModelOpt AutoCast decides fp16 by running the graph on ONNX "
            "Runtime, which cannot run the fused graph's TensorRT plugins; use --flavour portable, or --precision fp32"
        )
    checkpoint = args.checkpoint or default_checkpoint()
    info = read_checkpoint_info(checkpoint)
    model, _ = load_model(checkpoint)
    name = args.name or os.path.splitext(os.path.basename(checkpoint))[0]
    options = tensorrt_builder.EngineOptions(
        precision=args.precision, batch=_profile(args.batch, "batch"), classes=_profile(args.classes, "classes"),
        synonyms=_profile(args.synonyms, "synonyms"), workspace_gib=args.workspace,
        timing_cache=args.timing_cache or os.path.join(args.out, "timing.cache"),
        version_compatible=args.version_compatible,
    )
    paths = {
        "portable": os.path.join(args.out, f"{name}.portable.onnx"),
        "fused": os.path.join(args.out, f"{name}.fused.onnx"),
        "text": os.path.join(args.out, f"{name}.text.onnx"),
        "ort": os.path.join(args.out, f"{name}.portable.ort.onnx"),
        "fp16": os.path.join(args.out, f"{name}.portable.fp16.onnx"),
        "engine": os.path.join(args.out, f"{name}.{args.flavour}.{args.precision}.engine"),
    }
    for path in paths.values():
        refuse_overwrite(path, args.overwrite, CheckpointError)
    os.makedirs(args.out, exist_ok=True)
    written: Dict[str, str] = {}

    text_path = onnx_export.export_text_encoder(model, paths["text"], overwrite=args.overwrite)
    onnx_checks.check_graph(text_path, "portable")
    shutil.copyfile(find_vocab_file(), os.path.join(args.out, VOCAB_FILE))
    cfg = model.cfg
    common = {
        "model": cfg.name,
        "checkpoint": {"file": os.path.basename(checkpoint), "sha256": sha256_file(checkpoint)},
        "config": cfg.to_dict(),
        "training_vocabulary": {"names": info.vocabulary, "is_thing": info.is_thing},
        "embed_dim": model.embed_dim,
        "templates": cfg.text.templates,
        "synonyms": cfg.text.synonyms,
        "context_length": onnx_export.context_length(model),
    }
    write_manifest(text_path, {**common, "kind": "text-encoder", "tokenizer": VOCAB_FILE, "opset": onnx_export.OPSET})
    written["text"] = text_path
    inputs = onnx_export.graph_inputs(cfg, model.embed_dim)
    image = {
        **common,
        "kind": "image-model",
        "image_size": cfg.image_size,
        "input_dtype": args.input_dtype,
        "semantic": args.semantic,
        "num_queries": cfg.mask_generator.num_queries,
        "inputs": inputs,
        "text_encoder": {"file": os.path.basename(text_path), "sha256": sha256_file(text_path)},
    }

    def source_of(path: str) -> Dict:
        return {"source_onnx": {"file": os.path.basename(path), "sha256": sha256_file(path)}}

    for flavour in ("portable", "fused"):
        onnx_export.export_image_model(
            model, paths[flavour], flavour, args.input_dtype, semantic=args.semantic, overwrite=args.overwrite
        )
        if not args.no_simplify:
            onnx_checks.simplify(paths[flavour])
        graph = onnx_checks.check_graph(paths[flavour], flavour)
        write_manifest(
            paths[flavour],
            {
                **image,
                "backend": "onnx",
                "flavour": flavour,
                "opset": onnx_export.OPSET,
                "ops": onnx_checks.op_counts(graph),
            },
        )
        written[flavour] = paths[flavour]
        print(f"wrote {paths[flavour]}")
    print(f"wrote {text_path}")

    source, engine, no_fp16 = written[args.flavour], paths["engine"], None
    if args.precision == "fp16":
        try:
            source = fp16_onnx(written, paths["fp16"], model, info, image)
        except MissingDependencyError as exc:
            no_fp16 = exc  # no engine either: from the fp32 ONNX it would be fp32, whatever its name says
            print(f"no fp16 ONNX: {exc}")
            engine = engine.replace(".fp16.engine", ".fp32.engine")
    fused = args.flavour == "fused"
    command = tensorrt_builder.trtexec_command(source, engine, inputs, options, plugins=fused)
    print(f"TensorRT (trtexec) equivalent{' (fp32: fp16 needs the fp16 ONNX)' if no_fp16 else ''}:\n  {command}")
    try:
        if no_fp16:
            tensorrt_builder.import_tensorrt()  # TensorRT missing is the first thing to say
            raise no_fp16
        if args.precision in ("int8", "fp8"):
            tensorrt_builder.import_tensorrt()  # say what is missing before spending time on calibration
            quantized = os.path.join(args.out, f"{name}.{args.flavour}.{args.precision}.qdq.onnx")
            source = tensorrt_builder.quantize_onnx(source, quantized, args.precision, calibration_inputs(model, info))
            print(f"wrote {quantized} (ModelOpt {args.precision} Q/DQ)")
        trt_fields = tensorrt_builder.build_engine(source, paths["engine"], inputs, options, fused=fused)
        write_manifest(
            paths["engine"],
            {**image, "backend": "tensorrt", "flavour": args.flavour, **source_of(source), **trt_fields},
        )
        written["engine"] = paths["engine"]
        print(f"wrote {paths['engine']}")
    except MissingDependencyError as exc:
        print(f"no TensorRT engine: {exc}")
        written["ort"] = ort_optimised(written["portable"], paths["ort"])
        write_manifest(
            written["ort"], {**image, "backend": "onnxruntime", "flavour": "portable", **source_of(written["portable"])}
        )
        print(f"wrote {written['ort']} (ONNX Runtime-optimised fallback)")
    return written


def fp16_onnx(written: Dict[str, str], path: str, model, info, image: Dict) -> str:
    """The fp16 ONNX a strongly typed fp16 engine is built from; MissingDependencyError (one line saying
    how to get ModelOpt) where ModelOpt is missing: the other ONNX files and the fallback are written anyway."""
    from fisa_rt.export.manifest import sha256_file, write_manifest
    from fisa_rt.export.mixed_precision import convert_fp16

    record = convert_fp16(written["portable"], path, calibration_inputs(model, info))
    source = {"file": os.path.basename(written["portable"]), "sha256": sha256_file(written["portable"])}
    write_manifest(path, {**image, "backend": "onnx", "flavour": "portable", "precision": "fp16", "opset": _opset(path),
                          "source_onnx": source, "mixed_precision": record})
    written["fp16"] = path
    print(f"wrote {path} (ModelOpt AutoCast fp16; {len(record['fp32_nodes'])} of {record['nodes']} nodes kept fp32)")
    return path


def _opset(path: str) -> int:
    import onnx

    opsets = onnx.load(path, load_external_data=False).opset_import
    return next(o.version for o in opsets if o.domain in ("", "ai.onnx"))


def calibration_inputs(model, info) -> Dict[str, "object"]:
    """int8/fp8 calibration batch: the bundled scenes at the engine's size with the training vocabulary.
    A real deployment should calibrate on its own images (a few hundred): pass them through ModelOpt."""
    import numpy as np
    from PIL import Image

    from fisa_rt.export import onnx_export
    from fisa_rt.runtime.assets import sample_images
    from fisa_rt.runtime.images import load_image

    S = model.cfg.image_size
    images = np.stack(
        [np.asarray(Image.fromarray(load_image(p)).resize((S, S), Image.BILINEAR)) for p in sample_images()]
    )
    feed = {"image": images.transpose(0, 3, 1, 2).copy(), "text": model.encode_vocabulary(info.vocabulary).numpy()}
    if "seen" in onnx_export.graph_inputs(model.cfg, model.embed_dim):  # the classes it was trained on: all seen
        feed["seen"] = np.ones(len(info.vocabulary), bool)
    return feed


def ort_optimised(onnx_path: str, out_path: str) -> str:
    """ONNX Runtime's extended graph optimisations (fusions for attention, LayerNorm, GELU), saved so
    they are not redone at every session start. Extended, not all: layout optimisations are specific to
    the machine that ran them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = out_path
    ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return out_path


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(lambda: build(args), args.debug, "build_engine.py")


if __name__ == "__main__":
    sys.exit(main())
