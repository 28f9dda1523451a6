"""FISA checkpoint -> deployable artefacts: ONNX (portable + fused image model, text encoder), a TensorRT
engine where TensorRT exists, else an ONNX Runtime-optimised model; a manifest beside each.

    python export/build_engine.py                       # the embedded default model -> build/
    python export/build_engine.py --checkpoint my.safetensors --precision fp16 --classes 1,150,1203 --out engines/
    python export/build_engine.py --checkpoint my.safetensors --precision int8 --calibration 'photos/*.jpg'

Engines are strongly typed (TensorRT 10.3 - 11.x): for fp16 the script writes <name>.portable.fp16.onnx
with ModelOpt AutoCast (LayerNorm, Softmax and normalisation reductions kept fp32) and builds from it; for
int8/fp8 it writes <name>.portable.<precision>.qdq.onnx (ModelOpt Q/DQ calibrated on --calibration images) and
checks it against fp32 on ONNX Runtime, with or without TensorRT.
Without TensorRT the script still writes every ONNX file, prints the trtexec command that builds the
engine on the target, and writes <name>.portable.ort.onnx so `fisa-rt infer --engine` runs here.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from typing import Dict, List, Optional, Tuple

from fisa_rt.errors import (
    CheckpointError, InputError, MissingDependencyError, refuse_overwrite, run_reporting_errors, warn,
)
from fisa_rt.export.quantization import PRECISIONS as QDQ_PRECISIONS, calibration_files
from fisa_rt.onnxruntime_session import inference_session
from fisa_rt.vocab import vocabulary as vocab


def _profile(text: str, what: str):
    from fisa_rt.export.tensorrt_builder import Profile

    try:
        lo, opt, hi = (int(v) for v in text.split(","))
        return Profile(lo, opt, hi)
    except ValueError:  # Profile's own InputError too, which cannot know the option's name
        raise InputError(
            f"--{what} takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX (e.g. 1,150,1203); got {text!r}"
        ) from None


def _stem(text: str) -> str:
    """--name: a folder in it would put the artefacts outside --out (or in a folder that does not exist)."""
    if text in ("", ".", "..") or os.path.basename(text) != text:
        raise argparse.ArgumentTypeError(f"give a file name stem, without folders (e.g. my-model); got {text!r}")
    return text


def _gib(text: str) -> float:
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan  # refused below, as nan and inf are
    if not 0 < gib < math.inf:
        raise argparse.ArgumentTypeError(f"give a size in GiB above 0 (e.g. 4); got {text!r}")
    return gib


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from fisa_rt.cli import OneLineParser  # a bad flag is one line, as for fisa-rt (not the usage, then the error)

    parser = OneLineParser(
        prog="build_engine.py", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="FISA checkpoint (.safetensors); default: the embedded fisa-tiny model")
    parser.add_argument("--out", default="build", help="output folder (default: build/)")
    parser.add_argument("--name", type=_stem, help="file name stem (default: the checkpoint's)")
    parser.add_argument(
        "--flavour",
        choices=["portable", "fused"],
        default="portable",
        help="which ONNX the engine is built from: portable (TensorRT >= 10.0, JetPack 6) or fused (Triton plugins, "
        "TensorRT >= 10.9); both ONNX files are always written",
    )
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8", "fp8"],
                        help="engine precision (default: fp16 for portable, fp32 for fused; "
                             "fp16/int8/fp8 need NVIDIA ModelOpt)")
    parser.add_argument(
        "--calibration", metavar="DIR|GLOB",
        help="int8/fp8: images to calibrate on, resized as the runtime resizes them (default: the 4 bundled "
             "scenes; give >= 100 of your own, e.g. 'photos/*.jpg')",
    )
    parser.add_argument("--calibration-count", type=int, default=256, metavar="N",
                        help="int8/fp8: calibrate on the first N images in name order (default 256)")
    parser.add_argument(
        "--calibration-vocab", metavar="NAME|FILE",
        help="int8/fp8: vocabulary whose text embeddings calibrate the text input, as infer's --vocab "
             "(coco-panoptic, ade20k-150, synthetic or a file; default: the checkpoint's training vocabulary)",
    )
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
        help="add the semantic label map as a graph output (costs K x S x S work per image; fisa-rt computes it on the "
        "host)",
    )
    parser.add_argument("--no-simplify", action="store_true", help="skip constant folding of the ONNX")
    parser.add_argument("--workspace", type=_gib, default=4.0, help="TensorRT workspace limit in GiB")
    parser.add_argument("--timing-cache", help="persistent TensorRT timing cache file (default: OUT/timing.cache)")
    parser.add_argument("--version-compatible", action="store_true", help="build a version-compatible engine")
    parser.add_argument("--overwrite", action="store_true", help="replace existing artefacts")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> Dict[str, str]:
    """Writes the artefacts; returns kind -> path of what was written. Every option and input is checked
    before the first file is written. The artefacts are written into a hidden folder in ``--out`` and moved in
    together at the end (``atomic_folders``), so a build that fails, with ``--overwrite`` too, leaves the earlier
    set as it was, and one that succeeds replaces it wholly: never new ONNX files beside an engine built from the
    old ones."""
    from fisa_rt.atomic import atomic_folders, output_folder, removed_on_failure
    from fisa_rt.checkpoint import read_checkpoint_info
    from fisa_rt.export import tensorrt_builder
    from fisa_rt.export.manifest import manifest_path
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.vocab.tokenizer import VOCAB_FILE

    if args.precision is None:
        args.precision = "fp32" if args.flavour == "fused" else "fp16"
    if args.flavour == "fused" and args.precision == "fp16":
        raise InputError(
            "--precision fp16 needs the portable flavour: ModelOpt AutoCast decides fp16 by running the graph on ONNX "
            "Runtime, which cannot run the fused graph's TensorRT plugins; use --flavour portable, or --precision fp32"
        )
    options = tensorrt_builder.EngineOptions(
        precision=args.precision, batch=_profile(args.batch, "batch"), classes=_profile(args.classes, "classes"),
        synonyms=_profile(args.synonyms, "synonyms"), workspace_gib=args.workspace,
        timing_cache=args.timing_cache or os.path.join(args.out, "timing.cache"),
        version_compatible=args.version_compatible,
    )
    checkpoint = args.checkpoint or default_checkpoint()
    info = read_checkpoint_info(checkpoint)
    calibration = None
    if args.precision in QDQ_PRECISIONS:
        if args.flavour == "fused":
            raise InputError(
                f"--precision {args.precision} needs the portable flavour: ModelOpt calibrates by running the graph "
                "on ONNX Runtime, which cannot run the fused graph's TensorRT plugins; use --flavour portable"
            )
        calibration = _calibration(args, info)
    name = args.name or os.path.splitext(os.path.basename(checkpoint))[0]
    paths = {
        "portable": os.path.join(args.out, f"{name}.portable.onnx"),
        "fused": os.path.join(args.out, f"{name}.fused.onnx"),
        "text": os.path.join(args.out, f"{name}.text.onnx"),
        "ort": os.path.join(args.out, f"{name}.portable.ort.onnx"),
        "fp16": os.path.join(args.out, f"{name}.portable.fp16.onnx"),
        "engine": os.path.join(args.out, f"{name}.{args.flavour}.{args.precision}.engine"),
    }
    if args.precision in QDQ_PRECISIONS:
        paths["qdq"] = os.path.join(args.out, f"{name}.portable.{args.precision}.qdq.onnx")
    for path in paths.values():
        refuse_overwrite(path, args.overwrite, CheckpointError)
    # the tokenizer is shared by every build in the folder and the timing cache is read by the next: both in place
    tokenizer = os.path.join(args.out, VOCAB_FILE)
    names = [os.path.basename(path) for path in (*paths.values(), *map(manifest_path, paths.values()))]
    earlier = [kind for kind, path in paths.items() if os.path.lexists(path)]
    with output_folder(args.out), removed_on_failure([tokenizer, options.timing_cache]), \
            atomic_folders(args.out, names, args.overwrite) as staging:
        staged = {kind: os.path.join(staging, os.path.basename(path)) for kind, path in paths.items()}
        written = _write(args, checkpoint, info, calibration, staged, tokenizer, options)
    for kind in written:  # only now: until the move, a killed build would have named files that are not there
        print(f"wrote {paths[kind]}")
    for kind in earlier:
        if kind not in written:  # e.g. an engine, rebuilt where TensorRT is missing: it was built from the old ONNX
            print(f"removed {paths[kind]}: the earlier build's, and this build makes none to replace it")
    return {kind: paths[kind] for kind in written}


def _made(staged: str, note: str = "") -> None:
    """Progress: the artefact's name only, as the build moves its files into ``--out`` together at the end."""
    print(f"made {os.path.basename(staged)}{note}")


def _shown(args: argparse.Namespace, path: str) -> str:
    """Where a staged artefact will be once the build is moved in: the path messages name."""
    return os.path.join(args.out, os.path.basename(path))


def _calibration(args: argparse.Namespace, info) -> Tuple[List[str], vocab.Vocabulary]:
    """The int8/fp8 calibration images and vocabulary, each image decoded once here so that a corrupt one
    fails before the export, not after it."""
    from fisa_rt.runtime.images import load_image

    files = calibration_files(args.calibration, args.calibration_count)
    for file in files:
        load_image(file)
    trained = vocab.Vocabulary(list(info.vocabulary), list(info.is_thing))
    return files, vocab.resolve(vocab=args.calibration_vocab, default=trained, option="--calibration-vocab")


def _write(args: argparse.Namespace, checkpoint: str, info, calibration, paths: Dict[str, str], tokenizer: str,
           options) -> Dict[str, str]:
    """The build's writing half, once ``build`` has checked everything it could beforehand: into ``paths``
    (staged); progress names each artefact's file (``_made``), the trtexec command where it will be (``_shown``)."""
    from fisa_rt.checkpoint import load_model
    from fisa_rt.export import onnx_checks, onnx_export, tensorrt_builder
    from fisa_rt.export.manifest import sha256_file, write_manifest
    from fisa_rt.vocab.tokenizer import VOCAB_FILE, find_vocab_file

    model, _ = load_model(checkpoint)
    written: Dict[str, str] = {}

    text_path = onnx_export.export_text_encoder(model, paths["text"])  # a new file in the staging folder
    onnx_checks.check_graph(text_path, "portable")
    shutil.copyfile(find_vocab_file(), tokenizer)
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
            model, paths[flavour], flavour, args.input_dtype, semantic=args.semantic
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
        _made(paths[flavour])
    _made(text_path)

    source, engine, no_fp16 = written[args.flavour], paths["engine"], None
    if args.precision == "fp16":
        inputs_of_conversion = calibration_inputs(model, info)
    elif args.precision != "fp32":
        inputs_of_conversion = model.encode_vocabulary(calibration[1].names).numpy()  # the text it calibrates on
    del model  # its memory goes to AutoCast's run or the quantizer, then to TensorRT (fisa-vit-b16: 0.6 GB)
    if args.precision != "fp32":
        try:
            if args.precision == "fp16":
                source = fp16_onnx(written, paths["fp16"], inputs_of_conversion, image)
            else:
                source = qdq_onnx(args, *calibration, inputs_of_conversion, written, paths["qdq"], info, image)
        except MissingDependencyError as exc:
            no_fp16 = exc  # no engine either: from the fp32 ONNX it would be fp32, whatever its name says
            print(f"no {args.precision} ONNX: {exc}")
            engine = engine.replace(f".{args.precision}.engine", ".fp32.engine")
    fused = args.flavour == "fused"
    command = tensorrt_builder.trtexec_command(_shown(args, source), _shown(args, engine), inputs, options,
                                               plugins=fused)
    note = f" (fp32: {args.precision} needs ModelOpt)" if no_fp16 else ""
    print(f"TensorRT (trtexec) equivalent{note}:\n  {command}")
    try:
        if no_fp16:
            tensorrt_builder.import_tensorrt()  # TensorRT missing is the first thing to say
            raise no_fp16
        trt_fields = tensorrt_builder.build_engine(source, paths["engine"], inputs, options, fused=fused)
        write_manifest(
            paths["engine"],
            {**image, "backend": "tensorrt", "flavour": args.flavour, **source_of(source), **trt_fields},
        )
        written["engine"] = paths["engine"]
        _made(paths["engine"])
    except MissingDependencyError as exc:
        print(f"no TensorRT engine: {exc}")
        written["ort"] = ort_optimised(written["portable"], paths["ort"])
        write_manifest(
            written["ort"], {**image, "backend": "onnxruntime", "flavour": "portable", **source_of(written["portable"])}
        )
        _made(written["ort"], " (ONNX Runtime-optimised fallback)")
    return written


def fp16_onnx(written: Dict[str, str], path: str, calibration: Dict, image: Dict) -> str:
    """The fp16 ONNX a strongly typed fp16 engine is built from, AutoCast calibrated on ``calibration``
    (:func:`calibration_inputs`); MissingDependencyError (one line saying how to get ModelOpt) where ModelOpt is
    missing: the other ONNX files and the fallback are written anyway."""
    from fisa_rt.export.manifest import sha256_file, write_manifest
    from fisa_rt.export.mixed_precision import convert_fp16

    record = convert_fp16(written["portable"], path, calibration)
    source = {"file": os.path.basename(written["portable"]), "sha256": sha256_file(written["portable"])}
    write_manifest(path, {**image, "backend": "onnx", "flavour": "portable", "precision": "fp16", "opset": _opset(path),
                          "source_onnx": source, "mixed_precision": record})
    written["fp16"] = path
    _made(path, f" (ModelOpt AutoCast fp16; {len(record['fp32_nodes'])} of {record['nodes']} nodes kept fp32)")
    _modelopt_said(record)
    return path


def qdq_onnx(args: argparse.Namespace, files: List[str], vocabulary: vocab.Vocabulary, text: "object",
             written: Dict[str, str], path: str, info, image: Dict) -> str:
    """The int8/fp8 Q/DQ ONNX (ModelOpt, calibrated on ``files`` and ``vocabulary``, whose embeddings ``text``
    holds), checked on ONNX Runtime against the fp32 portable ONNX on the bundled scenes it was not calibrated on;
    MissingDependencyError without ModelOpt."""
    from fisa_rt.export import onnx_checks, quantization
    from fisa_rt.export.manifest import sha256_file, write_manifest

    calibration = quantization.calibration_set(written["portable"], files, vocabulary, text, info.vocabulary)
    calibration.vocabulary = args.calibration_vocab or "training vocabulary"
    record = quantization.quantize_onnx(written["portable"], path, args.precision, calibration)
    onnx_checks.check_graph(path, "portable")
    _made(path, f" (ModelOpt {args.precision} Q/DQ: {record['qdq_nodes']['QuantizeLinear']} QuantizeLinear nodes, "
          f"calibrated on {len(files)} images)")
    _modelopt_said(record)
    record["parity"] = _qdq_parity(written["portable"], path, files, calibration)
    source = {"file": os.path.basename(written["portable"]), "sha256": sha256_file(written["portable"])}
    write_manifest(path, {**image, "backend": "onnx", "flavour": "portable", "precision": args.precision,
                          "opset": _opset(path), "source_onnx": source, "quantization": record})
    written["qdq"] = path
    return path


def _modelopt_said(record: Dict) -> None:
    """ModelOpt's warnings, each once, as this script's own (the manifest keeps them too)."""
    for message in record["modelopt_log"]:
        warn(f"ModelOpt: {message}")


def _qdq_parity(portable: str, quantized: str, calibrated_on, calibration) -> Dict:
    """Parity figures of the Q/DQ ONNX on ONNX Runtime (``export/parity.py``), printed in one line; a warning
    below the benchmark suite's int8 thresholds; an empty record where ONNX Runtime cannot run the graph."""
    from fisa_rt.export import parity, quantization
    from fisa_rt.runtime.assets import sample_images
    from fisa_rt.runtime.segmenter import Segmenter

    used = {os.path.abspath(f) for f in calibrated_on}
    scenes = [p for p in sample_images() if os.path.abspath(p) not in used]
    unseen = bool(scenes)
    segmenter = Segmenter.from_engine(portable, backend="onnxruntime", device="cpu", cache_dir="")
    feed = {"image": quantization.runtime_images(segmenter, scenes or sample_images()), "text": calibration.text}
    if calibration.seen is not None:
        feed["seen"] = calibration.seen
    try:
        figures = parity.check_onnx(portable, quantized, feed)
    except Exception as exc:  # ONNX Runtime's errors have no common public base (e.g. fp8 kernels it lacks)
        print(f"not checked on ONNX Runtime: it cannot run this Q/DQ graph on the CPU ({str(exc).splitlines()[0]})")
        return {}
    figures["calibrated_on_these_images"] = not unseen
    print(f"ONNX Runtime check against fp32 on the bundled scenes{'' if unseen else ' (calibrated on them)'}: "
          f"{parity.summary(figures)}")
    if figures["min_prob_cosine"] < 0.99 or figures["label_agreement"] < 0.97:
        warn("the Q/DQ graph is below the int8 thresholds (cosine >= 0.99, label agreement >= 97 %): calibrate on "
             "more images like yours (--calibration), or see docs/deploy.md, int8")
    return figures


def _opset(path: str) -> int:
    import onnx

    opsets = onnx.load(path, load_external_data=False).opset_import
    return next(o.version for o in opsets if o.domain in ("", "ai.onnx"))


# ModelOpt's reference run makes every tensor of the graph an output and holds them all, so its memory is the whole
# graph's activations times the scenes: fisa-vit-b16 (640 px) peaked at 15.7 GB on one scene and was killed past
# 20 GB on the four. fisa-rt's run (export/autocast_reference.py) does not grow with the scenes, but replaces
# ModelOpt's only where ModelOpt's names allow, and its time still does. 512 x 512 pixels keeps fisa-tiny's four.
CALIBRATION_PIXELS = 512 * 512


def calibration_scenes(image_size: int) -> List[str]:
    """The bundled scenes AutoCast calibrates on at this canvas: as many as fit CALIBRATION_PIXELS, at least one."""
    from fisa_rt.runtime.assets import sample_images

    scenes = sample_images()
    return scenes[: max(1, CALIBRATION_PIXELS // (image_size * image_size))]


def calibration_inputs(model, info) -> Dict[str, "object"]:
    """AutoCast's fp16 calibration batch: the bundled scenes at the engine's size with the training vocabulary
    (it only looks for values beyond fp16's safe range; int8/fp8 calibrate on --calibration instead)."""
    import numpy as np
    from PIL import Image

    from fisa_rt.export import onnx_export
    from fisa_rt.runtime.images import load_image

    S = model.cfg.image_size
    images = np.stack(
        [np.asarray(Image.fromarray(load_image(p)).resize((S, S), Image.BILINEAR)) for p in calibration_scenes(S)]
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
    inference_session(onnx_path, options)
    return out_path


# a build's memory is the model's, not a batch's: measured figures are in docs/deploy.md
BUILD_MEMORY = ("free memory or build on a larger machine (an fp16 build of fisa-vit-b16 peaks at 5.6 GB; "
                "docs/deploy.md), then copy the files over")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_reporting_errors(lambda: build(args), args.debug, "build_engine.py", BUILD_MEMORY)


if __name__ == "__main__":
    sys.exit(main())
