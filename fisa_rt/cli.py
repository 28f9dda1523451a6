"""The `fisa-rt` command: one entry point, one subcommand per job, each a thin call into the library.

User errors (fisa_rt.errors.FisaError) print one line and exit 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

from .atomic import refuse_unwritable, write_json
from .config import MAX_THREADS, TRAINABLE_PRESETS
from .errors import InputError, PartialFailure, refuse_overwrite, run_reporting_errors
from .runtime.images import DEFAULT_MAX_PIXELS

EXAMPLES = {
    "models": "fisa-rt models\n  fisa-rt models --simo",
    "config": (
        "fisa-rt config fisa-vit-b16 > my-model.json   # edit it, then:\n"
        "  fisa-rt train clip --model my-model.json --data data/synthetic --out runs/clip.safetensors"
    ),
    "make-data": "fisa-rt make-data --out data/synthetic --train 3000 --val 300 --seed 0",
    "train": (
        "fisa-rt train clip --data data/synthetic --out runs/clip.safetensors --steps 1200\n"
        "  fisa-rt train generator --data data/synthetic --init runs/clip.safetensors "
        "--out runs/generator.safetensors\n"
        "  fisa-rt train adapt --data data/synthetic --init runs/generator.safetensors --out runs/fisa.safetensors\n"
        "  torchrun --nproc_per_node 2 -m fisa_rt.cli train adapt ...   # DDP, same result as one process"
    ),
    "eval": (
        "fisa-rt eval --engine runs/fisa.safetensors --data runs/data --split val\n"
        "  fisa-rt eval --engine build/fisa-tiny-synthetic.portable.onnx --data runs/data --limit 50"
    ),
    "infer": (
        "fisa-rt infer --engine build --vocab synthetic --out out/   # build/ from `python export/build_engine.py`\n"
        "  fisa-rt infer --engine model.engine --input photos/ --vocab coco-panoptic --task panoptic --out out/\n"
        "  fisa-rt infer --engine model.onnx --input 'shots/*.jpg' --classes 'cat, dog, grass' --task semantic "
        "--out out/\n"
        "  fisa-rt infer --engine model.engine --input street.mp4 --embeddings coco.npz --batch 4 --out out/\n"
        "  fisa-rt infer --server localhost:8001 --protocol grpc --input photos/ --classes 'cat, dog' --out out/"
    ),
    "export-triton": "fisa-rt export-triton --engine build --out triton-repo   # then: docs/serving.md",
    "encode-vocab": "fisa-rt encode-vocab --engine build/fisa-tiny-synthetic.portable.onnx --vocab ade20k-150 "
    "--out ade.npz",
    "bench": "fisa-rt bench --engine build/fisa-tiny-synthetic.portable.onnx --batch 1 --classes 150 --iterations 50",
    "inspect": "fisa-rt inspect build/fisa-tiny-synthetic.portable.onnx",
    "tune": "fisa-rt tune --engine fisa-vit-b16.safetensors --batch 1 --classes 133",
    "demo": "fisa-rt demo --out demo-out\n"
    "  fisa-rt demo --input my.png --classes 'red star, blue circle' --out demo-out",
    "convert": "fisa-rt convert fcclip fcclip_cocopan.pth --out fcclip-convnext-l.safetensors\n"
    "  fisa-rt convert fcclip fcclip_cocopan.pth --clip open_clip_pytorch_model.bin "
    "--out fcclip-convnext-l.safetensors",
}


def _number(kind, low=None, high=None, low_open=False):
    """An argparse type: ``kind`` (int/float) within [low, high] (low excluded if ``low_open``); a bad value
    is a one-line usage error naming the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low}; got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}; got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


POSITIVE, COUNT = _number(int, 1), _number(int, 0)
# the largest vocabulary in use (ImageNet-21k); a made-up K of millions only runs the machine out of memory
BENCH_CLASSES = _number(int, 1, 21841)
THREADS = _number(int, 1, MAX_THREADS)
# model instances of one Triton server: each holds a whole model, so a count past this only exhausts memory
INSTANCES = _number(int, 1, 256)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other user error, exit 2:
    ``fisa-rt: error: argument --batch: must be >= 1; got 0 (see fisa-rt infer --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:  # an empty value (an unset shell variable) would act as "not given"
            value = getattr(namespace, action.dest, None)
            if value == "" or (isinstance(value, list) and "" in value):
                self.error(f"argument {'/'.join(action.option_strings) or action.dest}: is empty")
        return namespace, extras


def _models(args: argparse.Namespace) -> None:
    from .config import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        line = f"{name:22s} clip={cfg.clip.model_name:22s} head={cfg.classifier.head:15s} image={cfg.image_size}"
        if args.simo:
            import torch

            from .model import create_model

            with torch.device("meta"):  # only counted: 26 s and 1.5 GB for the six configs on real memory
                line += f"  {create_model(cfg).apply_simo()}"
        print(line)


def _config(args: argparse.Namespace) -> None:
    from .config import get_model_config

    print(get_model_config(args.name).to_json())


def _make_data(args: argparse.Namespace) -> None:
    from .data.synthetic import generate

    if not (args.pretrain or args.train or args.val):  # exit 0 having written nothing read as success
        raise InputError("nothing to make: --pretrain, --train and --val are all 0")
    for split, count in (("pretrain", args.pretrain), ("train", args.train), ("val", args.val)):
        if count:
            path = generate(args.out, split, count, args.seed, args.image_size, args.overwrite, world=args.world)
            print(f"wrote {count} {split} scenes: {path}")


def _train(args: argparse.Namespace) -> None:
    from .train.trainer import TrainConfig, train

    cfg = TrainConfig(
        stage=args.stage, data=args.data, out=args.out, model=args.model, init=args.init, trainable=args.trainable,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        seed=args.seed, region_captions=args.region_captions, split=args.split, snapshots=tuple(args.snapshots),
        save_every=args.save_every, amp=args.amp, overwrite=args.overwrite, progress=args.progress,
        seve_layers=None if args.seve_layers is None else tuple(args.seve_layers),
        feature_distill=args.feature_distill, seve_gate_lr=args.seve_gate_lr, weight_ensemble=args.weight_ensemble,
    )
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        first, last = result.losses[0] if result.losses else float("nan"), (
            result.losses[-1] if result.losses else float("nan")
        )
        resumed = f" (resumed at step {result.resumed_at})" if result.resumed_at else ""
        print(
            f"wrote {result.out}: {result.steps} steps{resumed}, loss {first:.3f} -> {last:.3f}, "
            f"{result.seconds_per_step * 1000:.0f} ms/step, trainable {result.trainable:,} of {result.total:,}"
        )


def _eval(args: argparse.Namespace) -> None:
    from .data.panoptic import PanopticDataset
    from .evaluation import evaluate, evaluate_segmenter, format_report
    from .runtime.backends import backend_for, resolve_artefact

    if args.json:  # before the run, not after minutes of it
        refuse_unwritable(args.json, args.overwrite, reads={"--engine": args.engine}, within={"--data": args.data})
    args.engine = resolve_artefact(args.engine, args.backend)
    if backend_for(args.engine, args.backend) == "torch":
        from .checkpoint import load_model

        model, _ = load_model(args.engine)
        if args.object_threshold is not None:
            model.cfg.postprocess = dataclasses.replace(
                model.cfg.postprocess, object_mask_threshold=args.object_threshold
            )
        dataset = PanopticDataset(args.data, args.split, model.cfg.image_size, augment=False, resize=model.cfg.resize,
                                  image_mean=model.cfg.image_mean)
        results = evaluate(model, dataset, batch_size=args.batch_size, limit=args.limit,
                           predictions_dir=args.predictions, overwrite=args.overwrite)
    else:
        from .runtime.segmenter import Segmenter

        segmenter = Segmenter.from_engine(args.engine, args.backend)
        if args.object_threshold is not None:
            segmenter.postprocess = dataclasses.replace(
                segmenter.postprocess, object_mask_threshold=args.object_threshold
            )
        dataset = PanopticDataset(args.data, args.split, segmenter.backend.image_size, augment=False,
                                  resize=segmenter.resize, image_mean=segmenter.image_mean)
        results = evaluate_segmenter(segmenter, dataset, batch_size=args.batch_size, limit=args.limit,
                                     predictions_dir=args.predictions, overwrite=args.overwrite)
    print(format_report(results))
    if args.json:
        write_json(args.json, results, indent=2)


def _read_vocabulary(args: argparse.Namespace):
    """--embeddings, --classes or --vocab, read and checked before the engine is loaded, so a bad one is
    refused at once: (vocabulary or None for the engine's default, embeddings or None, encoder sha256)."""
    from .vocab import vocabulary as vocab

    if args.embeddings:
        if args.classes or args.vocab:
            raise InputError("--embeddings already holds the vocabulary: drop --classes/--vocab")
        embeddings, vocabulary, sha = vocab.load_embeddings(args.embeddings)
        return vocabulary, embeddings, sha
    if args.classes is None and args.vocab is None:
        return None, None, None
    return vocab.resolve(args.classes, args.vocab), None, None


def _set_vocabulary(segmenter, args: argparse.Namespace, request) -> None:
    from .vocab import vocabulary as vocab

    vocabulary, embeddings, sha = request
    if embeddings is not None:
        if sha != segmenter.text_encoder.sha256:
            raise InputError(
                f"{args.embeddings} was encoded by another text encoder than {args.engine}'s; "
                f"run `fisa-rt encode-vocab --engine {args.engine} ...` again"
            )
        segmenter.set_vocabulary(vocabulary, embeddings)
    else:
        segmenter.set_vocabulary(vocabulary or vocab.resolve(default=segmenter.default_vocabulary))


def _infer(args: argparse.Namespace) -> None:
    from .atomic import output_folder
    from .runtime.assets import sample_images
    from .runtime.folder_run import refuse_existing_outputs, segment_to_folder
    from .runtime.host_memory import refuse_beyond_memory
    from .runtime.inputs import Source
    from .runtime.segmenter import Segmenter

    source = Source(args.input or os.path.dirname(sample_images()[0]), max_pixels=args.max_pixels)
    if (args.engine is None) == (args.server is None):
        raise InputError("give one of --engine (run here) or --server HOST:PORT (a Triton server, docs/serving.md)")
    local = {"--threads": args.threads, "--backend": args.backend, "--compile": args.compile,
             "--cuda-graphs": args.cuda_graphs, "--no-cache": args.no_cache}
    unused = ([flag for flag, value in local.items() if value] if args.server else
              [flag for flag, value in (("--model", args.model), ("--protocol", args.protocol)) if value])
    if unused:  # refused, not ignored: each would otherwise look applied
        verb = "applies" if len(unused) == 1 else "apply"
        raise InputError(f"{', '.join(unused)} {verb} only with --{'engine' if args.server else 'server'}")
    total = len(source)

    def show(name, result):
        if total == 1 or not args.progress:
            print(f"{os.path.join(args.out, name)}_overlay.png: {result.summary()}")

    with output_folder(args.out):  # a bad vocabulary or engine below leaves no empty folder
        refuse_existing_outputs(args.out, source, args.overwrite)  # before the engine loads
        request = _read_vocabulary(args)
        if args.server:
            segmenter = Segmenter.from_server(args.server, model=args.model or "fisa_python", protocol=args.protocol)
            segmenter.check_ready()  # before any progress is drawn
        else:
            segmenter = Segmenter.from_engine(args.engine, args.backend, cache_dir="" if args.no_cache else None,
                                              threads=args.threads, cuda_graphs=args.cuda_graphs,
                                              compile=args.compile)
        _set_vocabulary(segmenter, args, request)
        if not args.server:  # a server holds its own memory, and refuses what does not fit
            refuse_beyond_memory(segmenter.backend, min(args.batch, total or args.batch), len(segmenter.text))
        try:
            segment_to_folder(segmenter, source, args.out, args.task, args.batch, args.overwrite, args.fail_fast,
                              args.progress, on_result=show)
        except PartialFailure:  # the timings of what was written, then the failure line
            _print_timings(segmenter)
            raise
        _print_timings(segmenter)


def _print_timings(segmenter) -> None:
    print(f"{segmenter.backend.name} on {segmenter.backend.device}: {segmenter.timings.summary()}")


def _export_triton(args: argparse.Namespace) -> None:
    from .serving.repository import PythonModelOptions, export_repository

    if args.numpy1 and not os.path.isdir(args.numpy1):  # written into the repository: the server would not start
        raise InputError(f"--numpy1 {args.numpy1} is not a folder (give the folder `pip install --target` made)")
    options = PythonModelOptions(
        instances=args.instances, threads=args.threads, max_batch_size=args.max_batch_size, device=args.device,
        kind="KIND_GPU" if args.device == "cuda" else "KIND_CPU", max_pixels=args.max_pixels,
        max_classes=args.max_classes, prepend_dirs=[os.path.abspath(args.numpy1)] if args.numpy1 else None,
    )
    for line in export_repository(args.engine, args.out, args.backend, options, args.overwrite):
        print(line)


def _encode_vocab(args: argparse.Namespace) -> None:
    from .runtime.segmenter import Segmenter
    from .vocab import vocabulary as vocab

    # a folder, a missing folder, the engine itself: before the engine loads
    refuse_unwritable(args.out, args.overwrite, reads={"--engine": args.engine})
    segmenter = Segmenter.from_engine(args.engine, args.backend)
    vocabulary = vocab.resolve(args.classes, args.vocab, segmenter.default_vocabulary)
    # through the on-disk cache, so a later `infer` with the same classes reuses these embeddings
    embeddings = segmenter.text_encoder.encode(vocabulary)
    vocab.save_embeddings(args.out, embeddings, vocabulary, segmenter.text_encoder.sha256, overwrite=args.overwrite)
    rows = f" x {embeddings.shape[1]} synonyms" if embeddings.ndim == 3 else ""
    print(f"wrote {args.out}: {embeddings.shape[0]} classes{rows} x {embeddings.shape[-1]} dims")


def _bench(args: argparse.Namespace) -> None:
    from .runtime.bench import benchmark

    if args.json:  # before the run, not after minutes of it
        refuse_unwritable(args.json, args.overwrite, reads={"--engine": args.engine})
    report = benchmark(args.engine, args.backend, args.batch, args.classes, args.warmup, args.iterations,
                       args.cuda_graphs, args.compile)
    print(report.format())
    if report.backend == "torch":
        from .kernels.dispatch import describe_choices

        print("\n".join(describe_choices()))
    if args.json:
        write_json(args.json, report.to_dict(), indent=2)


def _inspect(args: argparse.Namespace) -> None:
    from .runtime.inspect import describe

    for line in describe(args.path):
        print(line)


def _tune(args: argparse.Namespace) -> None:
    from .runtime.tune import tune

    print("\n".join(tune(args.engine, args.batch, args.classes, args.force)))


def _demo(args: argparse.Namespace) -> None:
    """The checkpoint path of `infer`, with the synthetic set's 32 classes as the default vocabulary."""
    from .atomic import output_folder, removed_on_failure, save_image
    from .runtime.assets import default_checkpoint, sample_images
    from .runtime.images import load_image
    from .runtime.inputs import output_names
    from .runtime.segmenter import Segmenter
    from .vocab import vocabulary as vocab

    if args.engine and not args.engine.lower().endswith(".safetensors"):
        raise InputError(f"demo runs a FISA checkpoint (.safetensors); for {args.engine} use "
                         f"`fisa-rt infer --engine {args.engine}`")
    paths = args.input or sample_images()
    targets = [os.path.join(args.out, name + "_overlay.png") for name in output_names(paths)]
    for target in targets:  # all refused before any is written
        refuse_overwrite(target, args.overwrite)
    segmenter = Segmenter.from_engine(args.engine or default_checkpoint(), backend="torch")
    segmenter.set_vocabulary(vocab.from_classes(args.classes) if args.classes else vocab.named("synthetic"))
    # a bad input after a good one left the good one's overlay: a failed run leaves none of its files
    with output_folder(args.out), removed_on_failure(targets):
        for path, target in zip(paths, targets):
            result = segmenter.segment(load_image(path))
            save_image(result.overlay(), target, overwrite=args.overwrite)
            print(f"{target}: {result.summary()}")


def _convert(args: argparse.Namespace) -> None:
    from .fcclip import convert_fcclip

    print(convert_fcclip(args.checkpoint, args.out, clip=args.clip, overwrite=args.overwrite))


def build_parser() -> argparse.ArgumentParser:
    # --debug before or after the verb; unset, it is absent from the namespace (SUPPRESS), so a verb's parser,
    # whose namespace argparse copies over the main one, cannot undo `fisa-rt --debug VERB`
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
    parser = OneLineParser(prog="fisa-rt", description="FISA open-vocabulary segmentation.", parents=[debug])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, func) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[debug],
        )
        sub.set_defaults(func=func)
        return sub

    models = verb("models", "list the shipped model configs", _models)
    models.add_argument("--simo", action=argparse.BooleanOptionalAction, default=False,
                        help="also build each model (random weights) and report its SIMO trainable parameters")
    config = verb("config", "print a shipped model config as JSON", _config)
    config.add_argument("name", help="config name (see `fisa-rt models`)")

    data = verb("make-data", "write the synthetic open-vocabulary panoptic dataset (COCO-panoptic format)", _make_data)
    data.add_argument("--out", required=True, help="dataset root to write")
    data.add_argument("--train", type=COUNT, default=3000,
                      help="number of training scenes (seen classes only; default %(default)s)")
    data.add_argument("--val", type=COUNT, default=300,
                      help="number of validation scenes (seen and held-out classes; default %(default)s)")
    data.add_argument("--seed", type=COUNT, default=0, help="generator seed; the same seed writes the same files")
    # 4096 px: a 4K frame's side; the generator holds each scene in memory (112 GiB at 100000 px)
    data.add_argument("--image-size", type=_number(int, 16, 4096), default=128,
                      help="side of the square scenes in pixels (16 to 4096; default %(default)s)")
    data.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing splits"
    )
    data.add_argument("--world", choices=["default", "broad"], default="default",
                      help="broad: pre-training sees concepts segmentation never does (novel-concept classes in val)")
    data.add_argument("--pretrain", type=COUNT, default=0,
                      help="number of pre-training scenes (every class but the novel compositions), "
                           "for `train clip --split pretrain`")

    tr = verb("train", "train one stage: clip (contrastive), generator (masks), adapt (FISA / baselines)", _train)
    tr.add_argument("stage", choices=["clip", "generator", "adapt"], help="which stage to train")
    tr.add_argument("--data", required=True, help="dataset root in COCO-panoptic layout (see make-data)")
    tr.add_argument(
        "--out", required=True, help="output weights (.safetensors); training state is kept beside it and resumed"
    )
    tr.add_argument("--model", help="model config name or .json file (default: fisa-tiny; adapt: the --init "
                    "checkpoint's own config)")
    tr.add_argument("--init", help="generator: CLIP weights from the clip stage; adapt: the generator stage's "
                                   "checkpoint or a converted one (fisa-rt convert), loaded into --model with new "
                                   "SEVE adapters")
    tr.add_argument("--trainable", default="simo-only", choices=TRAINABLE_PRESETS,
                    help="adapt: simo-only (default) = FISA's SIMO set without the SEVE adapters, which beat FISA "
                         "on novel concepts (docs/training.md); simo = FISA with SEVE; frozen = frozen-CLIP "
                         "baseline (void embedding + temperature only); full = full fine-tuning baseline")
    tr.add_argument("--steps", type=POSITIVE, default=1000, help="optimizer steps (default %(default)s)")
    tr.add_argument("--batch-size", type=POSITIVE, default=16,
                    help="global batch, split over torchrun processes (default %(default)s)")
    tr.add_argument("--lr", type=_number(float, 0, low_open=True), default=1e-3,
                    help="peak AdamW learning rate (linear warm-up, cosine decay; default %(default)s)")
    tr.add_argument("--weight-decay", type=_number(float, 0), default=0.05,
                    help="AdamW weight decay (default %(default)s)")
    tr.add_argument("--warmup", type=COUNT, default=50, help="warm-up steps (default %(default)s)")
    tr.add_argument("--seed", type=COUNT, default=0, help="seed of initialisation, data order and augmentation")
    tr.add_argument("--region-captions", type=_number(float, 0, 1), default=0.0,
                    help="clip stage: fraction of pairs that are one segment's crop with its class prompt (0-1)")
    tr.add_argument("--split", default="train", help="split to train on (the broad world's clip stage: pretrain)")
    tr.add_argument("--snapshots", type=POSITIVE, nargs="*", default=[],
                    help="also write the weights after these steps beside --out, the step before its suffix "
                         "(runs/fisa.safetensors: runs/fisa.step100.safetensors; an adaptation-length curve)")
    tr.add_argument("--seve-layers", type=COUNT, nargs="+",
                    help="adapt --trainable simo: move the SEVE adapters to these blocks/stages (0-based; the "
                         "--init checkpoint's adapters must be untrained)")
    tr.add_argument("--feature-distill", type=_number(float, 0), default=0.0,
                    help="adapt --trainable simo: weight of a term keeping the adapted image features close to the "
                         "pre-trained encoder's (cosine; 0 = off)")
    tr.add_argument("--seve-gate-lr", type=_number(float, 0), default=1.0,
                    help="adapt --trainable simo: the SEVE gates' learning rate as a multiple of --lr")
    tr.add_argument("--weight-ensemble", type=_number(float, 0, 1, low_open=True), metavar="ALPHA",
                    help="adapt: write init + ALPHA * (trained - init) for every trained weight but the temperature "
                         "and void embedding (WiSE-FT; default 0.5, 1 = the trained weights)")
    tr.add_argument("--save-every", type=POSITIVE, default=200,
                    help="steps between resumable training-state saves (default %(default)s)")
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on CUDA")
    tr.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="train over an existing output"
    )
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")

    ev = verb("eval", "PQ/SQ/RQ and mIoU (seen / held-out) of any engine on a COCO-panoptic split", _eval)
    ev.add_argument(
        "--engine", required=True, help="checkpoint (.safetensors), ONNX (.onnx) or TensorRT engine (.engine/.plan)"
    )
    ev.add_argument(
        "--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the backend chosen from the file"
    )
    ev.add_argument("--data", required=True, help="dataset root in COCO-panoptic layout")
    ev.add_argument("--split", default="val", help="split to evaluate (default: val)")
    ev.add_argument("--batch-size", type=POSITIVE, default=8, help="images per forward pass (default %(default)s)")
    ev.add_argument("--limit", type=POSITIVE, help="evaluate only the first N images")
    ev.add_argument(
        "--object-threshold",
        type=_number(float, 0, 1),
        help="panoptic: keep proposals whose class probability exceeds this (default: the model's; "
        "calibrate it on training images)",
    )
    ev.add_argument(
        "--predictions", help="also write COCO-panoptic predictions (PNG + predictions.json) to this folder"
    )
    ev.add_argument("--json", help="write the results table as JSON to this file")
    ev.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                    help="replace an existing --json file and --predictions folder")

    def speed_options(sub):
        sub.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                         help="PyTorch backend: replay the model as CUDA graphs, one per batch, canvas and "
                         "vocabulary-size bucket (default: on CUDA; --no-cuda-graphs runs it eagerly)")
        sub.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                         help="PyTorch backend: torch.compile the model (max-autotune-no-cudagraphs; compiles on "
                         "the first image of each shape, cached under ~/.cache/fisa-rt/inductor)")

    def vocabulary_options(sub):
        sub.add_argument("--classes", help='comma-separated class names, things unless marked :stuff, '
                         'e.g. "cat, dog, grass:stuff"')
        sub.add_argument(
            "--vocab", help="a shipped vocabulary (coco-panoptic, ade20k-150, synthetic) or a .txt/.json file"
        )

    inf = verb("infer", "segment images, folders, globs, videos or a camera with any engine", _infer)
    inf.add_argument(
        "--engine",
        help=".engine/.plan (TensorRT), .onnx (ONNX Runtime), .safetensors (PyTorch), "
        "or a build_engine.py folder (its best artefact here)",
    )
    inf.add_argument("--server",
                     help="HOST:PORT of a Triton server serving fisa-rt (instead of --engine; docs/serving.md)")
    inf.add_argument("--protocol", choices=["http", "grpc"], help="with --server (default: http)")
    inf.add_argument("--model", help="with --server: the served model (default: fisa_python)")
    inf.add_argument("--threads", type=THREADS,
                     help="CPU threads for torch and ONNX Runtime (default: the available cores)")
    inf.add_argument(
        "--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the backend chosen from the file"
    )
    inf.add_argument(
        "--input", help="image, folder, glob, video file or camera index (default: the bundled sample scenes)"
    )
    vocabulary_options(inf)
    inf.add_argument("--embeddings", help="precomputed vocabulary embeddings from `fisa-rt encode-vocab`")
    inf.add_argument(
        "--task",
        choices=["semantic", "panoptic", "instance"],
        default="panoptic",
        help="what to segment (default: panoptic)",
    )
    inf.add_argument(
        "--out",
        required=True,
        help="output folder: overlay PNG, label PNG, COCO panoptic PNG+JSON or instance RLE JSON",
    )
    inf.add_argument("--batch", type=POSITIVE, default=1, help="images per engine call")
    speed_options(inf)
    inf.add_argument("--no-cache", action="store_true", help="do not read or write the vocabulary embedding cache")
    inf.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar for folders and videos"
    )
    inf.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing outputs"
    )
    inf.add_argument("--fail-fast", action=argparse.BooleanOptionalAction, default=False,
                     help="stop at the first bad input (default: skip it with one line, go on, exit 1 at the end)")
    inf.add_argument("--max-pixels", type=COUNT, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse larger images, e.g. decompression bombs (default {DEFAULT_MAX_PIXELS:,}; 0: none)")

    tri = verb("export-triton", "write a Triton Inference Server model repository for an artefact", _export_triton)
    tri.add_argument("--engine", required=True, help="any artefact: .safetensors, .onnx, .engine/.plan")
    tri.add_argument("--out", required=True, help="the model repository folder to write")
    tri.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"],
                     help="override the backend of fisa_python")
    tri.add_argument("--instances", type=INSTANCES, default=1, help="fisa_python instances (default 1)")
    tri.add_argument("--threads", type=THREADS, help="CPU threads per instance (default: the cores / instances)")
    tri.add_argument("--max-batch-size", type=POSITIVE, default=8, help="dynamic batching's largest batch (default 8)")
    tri.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="fisa_python's device (default cpu)")
    tri.add_argument("--max-pixels", type=COUNT, default=DEFAULT_MAX_PIXELS,
                     help=f"refuse larger images (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    tri.add_argument("--max-classes", type=POSITIVE, default=2048, help="refuse larger vocabularies (default 2048)")
    tri.add_argument("--numpy1", help="a numpy<2 folder the Python stub imports first (nvidia-pytriton 0.7.0's stub)")
    tri.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="replace an existing model of the same name")

    enc = verb(
        "encode-vocab", "encode a vocabulary once into an embeddings file that infer --embeddings takes", _encode_vocab
    )
    enc.add_argument("--engine", required=True, help="the artefact whose text encoder to use (any backend)")
    enc.add_argument(
        "--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the backend chosen from the file"
    )
    vocabulary_options(enc)
    enc.add_argument("--out", required=True, help="embeddings file to write (.npz)")
    enc.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace an existing file"
    )

    be = verb("bench", "latency percentiles and throughput of an engine (model and host<->device copies apart)", _bench)
    be.add_argument("--engine", required=True, help="any engine")
    be.add_argument(
        "--backend", choices=["torch", "onnxruntime", "tensorrt"], help="override the backend chosen from the file"
    )
    be.add_argument("--batch", type=POSITIVE, default=1, help="images per call (default %(default)s)")
    be.add_argument("--classes", type=BENCH_CLASSES, default=150,
                    help="vocabulary size K (random unit embeddings; at most ImageNet-21k's 21841; "
                    "default %(default)s)")
    be.add_argument("--warmup", type=COUNT, default=5, help="untimed calls first (default %(default)s)")
    be.add_argument("--iterations", type=POSITIVE, default=30, help="timed calls (default %(default)s)")
    speed_options(be)
    be.add_argument("--json", help="also write the report as JSON")
    be.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace an existing --json file"
    )

    ins = verb(
        "inspect",
        "show an artefact's manifest, inputs/outputs and precision; warn on TensorRT or GPU mismatch",
        _inspect,
    )
    ins.add_argument("path", help="engine, ONNX, checkpoint or a build_engine.py folder (its best artefact)")

    tune = verb(
        "tune",
        "time each fused op's implementations (Triton kernel, SDPA, eager) on this GPU under CUDA graphs (no GPU: "
        "SDPA and eager on this CPU) and cache the fastest per op and shape for kernels 'auto' (otherwise measured "
        "at first use)",
        _tune,
    )
    tune.add_argument("--engine", required=True, help="FISA checkpoint (.safetensors): its shapes are measured")
    tune.add_argument("--batch", type=POSITIVE, default=1,
                      help="images per forward pass to measure (default %(default)s)")
    tune.add_argument("--classes", type=BENCH_CLASSES, default=133,
                      help="vocabulary size to measure (at most 21841; default %(default)s)")
    tune.add_argument("--force", action=argparse.BooleanOptionalAction, default=False,
                      help="forget this machine's cached choices and measure again")

    demo = verb("demo", "segment the bundled sample scenes (or your images) and write overlay PNGs", _demo)
    demo.add_argument("--engine", help="FISA checkpoint (default: the embedded fisa-tiny model)")
    demo.add_argument("--input", nargs="+", help="image files (default: the bundled sample scenes)")
    demo.add_argument("--classes", help="comma-separated class names (default: the synthetic set's 32 classes)")
    demo.add_argument("--out", required=True, help="folder for the overlay PNGs")
    demo.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing overlays"
    )

    conv = verb("convert", "turn a released checkpoint of another project into a fisa-rt checkpoint", _convert)
    conv.add_argument("source", choices=["fcclip"],
                      help="fcclip: FC-CLIP's detectron2 .pth (ConvNeXt-L, COCO panoptic)")
    conv.add_argument("checkpoint", help="the released checkpoint file (read with torch.load(weights_only=True))")
    conv.add_argument("--out", required=True, help="fisa-rt checkpoint to write (.safetensors)")
    conv.add_argument("--clip", help="local open_clip convnext_large_d_320 weights for the text tower the release "
                                     "leaves out (default: open_clip's laion2b_s29b_b131k_ft_soup, downloaded once)")
    conv.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                      help="replace an existing --out")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting_errors(lambda: args.func(args), getattr(args, "debug", False), "fisa-rt")


if __name__ == "__main__":
    sys.exit(main())
