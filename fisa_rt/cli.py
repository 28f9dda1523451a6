"""The `fisa-rt` command: one entry point, one subcommand per job, each a thin call into the library.

User errors (fisa_rt.errors.FisaError) print one line and exit 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .errors import FisaError

EXAMPLES = {
    "models": "fisa-rt models\n  fisa-rt models --simo",
    "config": "fisa-rt config fisa-vit-b16 > my-model.json",
    "make-data": "fisa-rt make-data --out data/synthetic --train 3000 --val 300 --seed 0",
    "train": (
        "fisa-rt train clip --data data/synthetic --out runs/clip.safetensors --steps 1200\n"
        "  fisa-rt train generator --data data/synthetic --init runs/clip.safetensors --out runs/generator.safetensors\n"
        "  fisa-rt train adapt --data data/synthetic --init runs/generator.safetensors --out runs/fisa.safetensors\n"
        "  torchrun --nproc_per_node 2 -m fisa_rt.cli train adapt ...   # DDP, same result as one process"
    ),
    "eval": "fisa-rt eval --engine runs/fisa.safetensors --data runs/data --split val",
    "demo": "fisa-rt demo --out demo-out\n  fisa-rt demo --input my.png --classes 'red star, blue circle' --out demo-out",
}


def _models(args: argparse.Namespace) -> None:
    from .config import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        line = f"{name:22s} clip={cfg.clip.model_name:22s} head={cfg.classifier.head:15s} image={cfg.image_size}"
        if args.simo:
            from .model import create_model

            line += f"  {create_model(cfg).apply_simo()}"
        print(line)


def _config(args: argparse.Namespace) -> None:
    from .config import get_model_config

    print(get_model_config(args.name).to_json())


def _make_data(args: argparse.Namespace) -> None:
    from .data.synthetic import generate

    for split, count in (("train", args.train), ("val", args.val)):
        if count:
            path = generate(args.out, split, count, seed=args.seed, image_size=args.image_size, overwrite=args.overwrite)
            print(f"wrote {count} {split} scenes: {path}")


def _train(args: argparse.Namespace) -> None:
    from .train.trainer import TrainConfig, train

    cfg = TrainConfig(
        stage=args.stage, data=args.data, out=args.out, model=args.model, init=args.init, trainable=args.trainable,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        seed=args.seed, region_captions=args.region_captions, save_every=args.save_every, amp=args.amp, overwrite=args.overwrite, progress=args.progress,
    )
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        first, last = result.losses[0] if result.losses else float("nan"), result.losses[-1] if result.losses else float("nan")
        print(
            f"wrote {result.out}: {result.steps} steps, loss {first:.3f} -> {last:.3f}, "
            f"{result.seconds_per_step * 1000:.0f} ms/step, trainable {result.trainable:,} of {result.total:,}"
        )


def _eval(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .data.panoptic import PanopticDataset
    from .evaluation import evaluate, format_report

    model, _ = load_model(args.engine)
    dataset = PanopticDataset(args.data, args.split, model.cfg.image_size, augment=False)
    results = evaluate(model, dataset, batch_size=args.batch_size, limit=args.limit, predictions_dir=args.predictions)
    print(format_report(results))
    if args.json:
        _refuse_overwrite(args.json, args.overwrite)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def _refuse_overwrite(path: str, overwrite: bool) -> None:
    from .errors import InputError

    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path} exists; pass --overwrite to replace it")


def _demo(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .data.synthetic import categories
    from .errors import InputError
    from .predictor import Predictor, default_checkpoint, load_image, sample_images
    from .visualize import overlay

    model, _ = load_model(args.engine or default_checkpoint())
    if args.classes:
        names = [n.strip() for n in args.classes.split(",") if n.strip()]
        if not names:
            raise InputError("--classes holds no class name")
        predictor = Predictor(model, names)
    else:
        cats = categories()
        predictor = Predictor(model, [c.name for c in cats], [c.isthing for c in cats])
    inputs = args.input or sample_images()
    os.makedirs(args.out, exist_ok=True)
    for path in inputs:
        target = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + "_overlay.png")
        _refuse_overwrite(target, args.overwrite)
        image = load_image(path)
        panoptic = predictor(image).panoptic
        picture = overlay(image, panoptic.segment_map.cpu().numpy(), {s.id: s.category_id for s in panoptic.segments}, predictor.class_names)
        picture.save(target)
        found = ", ".join(f"{predictor.class_names[s.category_id]} ({s.score:.2f})" for s in panoptic.segments) or "nothing"
        print(f"{target}: {found}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fisa-rt", description="FISA open-vocabulary segmentation.")
    parser.add_argument("--debug", action=argparse.BooleanOptionalAction, default=False, help="show tracebacks of errors")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, func) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name, help=help_text, description=help_text, epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
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
    data.add_argument("--train", type=int, default=3000, help="number of training scenes (seen classes only)")
    data.add_argument("--val", type=int, default=300, help="number of validation scenes (seen and held-out classes)")
    data.add_argument("--seed", type=int, default=0, help="generator seed; the same seed writes the same files")
    data.add_argument("--image-size", type=int, default=128, help="side of the square scenes in pixels")
    data.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing splits")

    tr = verb("train", "train one stage: clip (contrastive), generator (masks), adapt (FISA / baselines)", _train)
    tr.add_argument("stage", choices=["clip", "generator", "adapt"], help="which stage to train")
    tr.add_argument("--data", required=True, help="dataset root in COCO-panoptic layout (see make-data)")
    tr.add_argument("--out", required=True, help="output weights (.safetensors); training state is kept beside it and resumed")
    tr.add_argument("--model", default="fisa-tiny", help="model config name (default: fisa-tiny)")
    tr.add_argument("--init", help="generator: CLIP weights from the clip stage; adapt: the generator stage's checkpoint")
    tr.add_argument("--trainable", default="simo", choices=["simo", "frozen", "full"],
                    help="adapt: simo = FISA; frozen = frozen-CLIP baseline (void embedding + temperature only); "
                         "full = full fine-tuning baseline")
    tr.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    tr.add_argument("--batch-size", type=int, default=16, help="global batch, split over torchrun processes")
    tr.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (linear warm-up, cosine decay)")
    tr.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    tr.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    tr.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    tr.add_argument("--region-captions", type=float, default=0.0,
                    help="clip stage: fraction of pairs that are one segment's crop with its class prompt (0-1)")
    tr.add_argument("--save-every", type=int, default=200, help="steps between resumable training-state saves")
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast on CUDA")
    tr.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="train over an existing output")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")

    ev = verb("eval", "PQ / SQ / RQ and mIoU of a model on a COCO-panoptic split, seen and held-out classes", _eval)
    ev.add_argument("--engine", required=True, help="FISA checkpoint (.safetensors)")
    ev.add_argument("--data", required=True, help="dataset root in COCO-panoptic layout")
    ev.add_argument("--split", default="val", help="split to evaluate (default: val)")
    ev.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ev.add_argument("--limit", type=int, help="evaluate only the first N images")
    ev.add_argument("--predictions", help="also write COCO-panoptic predictions (PNG + predictions.json) to this folder")
    ev.add_argument("--json", help="write the results table as JSON to this file")
    ev.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace an existing --json file")

    demo = verb("demo", "segment the bundled sample scenes (or your images) and write overlay PNGs", _demo)
    demo.add_argument("--engine", help="FISA checkpoint (default: the embedded fisa-tiny model)")
    demo.add_argument("--input", nargs="+", help="image files (default: the bundled sample scenes)")
    demo.add_argument("--classes", help="comma-separated class names (default: the synthetic set's 32 classes)")
    demo.add_argument("--out", required=True, help="folder for the overlay PNGs")
    demo.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False, help="replace existing overlays")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FisaError as exc:
        if args.debug:
            raise
        print(f"fisa-rt: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
