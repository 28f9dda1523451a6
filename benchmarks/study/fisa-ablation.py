"""Which half of a FISA checkpoint moves an accuracy: SEVE (the text-conditioned adapters in the image
encoder) or SIMO's mask-token query projections. Writes two checkpoints beside OUT, each FISA with one half
put back to its state in INIT (the stage-2 checkpoint FISA started from); void embedding and temperature
stay FISA's, as the frozen baseline trains them too. Evaluate them with `fisa-rt eval`:

    python benchmarks/study/fisa-ablation.py runs/study/simo-s0.safetensors runs/study/generator.safetensors \
        runs/study/ablate-s0
    for v in seve-only simo-only; do fisa-rt eval --engine runs/study/ablate-s0.$v.safetensors --data runs/study/data \
        --split val --object-threshold 0.1 --json runs/study/ablate-s0.$v.eval.json; done

With ``--data DATA`` it also evaluates the FISA checkpoint whole, but with SEVE's adapters fed only the
vocabulary it was trained with (the seen classes) while the classifier scores the dataset's whole
vocabulary: OUT.seve-seen-text.eval.json. It tells a text-set shift (SEVE never saw novel class texts)
from a feature change that would hurt novel concepts whatever text SEVE reads.
"""

import argparse
import dataclasses

import torch

from fisa_rt.atomic import write_json
from fisa_rt.checkpoint import load_model, read_checkpoint_info, save_checkpoint
from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.evaluation import evaluate, format_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fisa", help="a `train adapt --trainable simo` checkpoint")
    parser.add_argument("init", help="the checkpoint it was adapted from")
    parser.add_argument("out", help="output prefix: OUT.seve-only.safetensors, OUT.simo-only.safetensors")
    parser.add_argument("--data", help="also evaluate FISA with SEVE reading only the seen classes (val split)")
    parser.add_argument("--object-threshold", type=float, default=0.1, help="panoptic object threshold (the study's)")
    args = parser.parse_args()
    info = read_checkpoint_info(args.fisa)
    start, _ = load_model(args.init)
    initial = start.state_dict()
    for variant, reset in (("seve-only", "classifier.mask_q_proj."), ("simo-only", "backbone.seve.")):
        model, _ = load_model(args.fisa)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name.startswith(reset):  # stage 2 holds both, SEVE's gates at 0 (identity)
                    tensor.copy_(initial[name])
        path = f"{args.out}.{variant}.safetensors"
        save_checkpoint(path, model, vocabulary=info.vocabulary, is_thing=info.is_thing, extra=info.extra,
                        overwrite=True)
        print(f"wrote {path}: {reset}* as in {args.init}")
    if args.data:
        evaluate_with_seen_text(args, info)


def evaluate_with_seen_text(args, info) -> None:
    model, _ = load_model(args.fisa)
    model.cfg.postprocess = dataclasses.replace(model.cfg.postprocess, object_mask_threshold=args.object_threshold)
    with torch.no_grad():
        seen_text = model.encode_vocabulary(info.vocabulary)
    backbone = model.backbone.forward
    # SEVE sees the seen texts in place of the evaluated vocabulary; its padding mask (CUDA-graph buckets) is the
    # evaluated vocabulary's, so it does not apply to them (evaluation pads nothing: it is None here)
    model.backbone.forward = lambda images, text, text_valid=None: backbone(images, seen_text)
    dataset = PanopticDataset(args.data, "val", model.cfg.image_size, augment=False, resize=model.cfg.resize,
                              image_mean=model.cfg.image_mean)
    results = evaluate(model, dataset)
    print(format_report(results))
    write_json(f"{args.out}.seve-seen-text.eval.json", results, indent=2)


if __name__ == "__main__":
    main()
