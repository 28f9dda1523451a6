"""How much the fixed square canvas changes an FC-CLIP-like model's outputs against FC-CLIP's own padding
(resize.pad "divisible": each image padded only to a multiple of 32, detectron2's ImageList.from_tensors).

fcclip-convnext-l's architecture at reduced widths (ConvNeXt-atto CLIP, 2 encoder + 3 decoder layers, 50
queries), random weights, FC-CLIP's resize rule scaled by 1/4 (short side 200, long side at most 333, so the
square canvas is 352, as 1344 is for 800/1333). Each image is segmented twice by the PyTorch backend: on its
divisible canvas and on the 352 x 352 square (the canvas exported graphs take). Reported per image: the
canvas sizes; the share of pixels whose strongest proposal (argmax over queries of the mask logits, the
class-agnostic partition panoptic merging starts from) is the same; the share of queries whose top class is
the same; the largest difference in class probability (over queries and classes); the largest and mean
difference in mask probability (sigmoid of the mask logits at the image's size). Semantic labels are not
compared: with random weights one class wins every pixel, so their agreement is all or nothing.

The last two columns are a noise floor: the same divisible canvas with the padding rounded to a uint8
colour (at most 0.0075 from FC-CLIP's 0 once normalised). Random weights are so sensitive that this tiny
change moves outputs about as much as the canvas does, so these figures show that the padding matters, not
how much PQ moves with the real weights.

    python benchmarks/padding-fidelity.py [--images 6] [--classes 20] [--seed 0]
"""

import argparse
import dataclasses
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.config import get_model_config
from fisa_rt.model import create_model
from fisa_rt.postprocess import restore_mask_logits
from fisa_rt.runtime.segmenter import Segmenter

# (height, width) of the test photos: COCO's common sizes and a few other aspect ratios
SIZES = [(480, 640), (427, 640), (640, 480), (375, 500), (720, 1280), (500, 500), (333, 1000), (612, 612)]


def reduced_fcclip():
    base, tiny = get_model_config("fcclip-convnext-l"), get_model_config("fisa-tiny-convnext")
    generator = dataclasses.replace(
        base.mask_generator, hidden_dim=64, num_queries=50, dec_layers=3, enc_layers=2, num_heads=4,
        dim_feedforward=128, mask_dim=64, deformable_ffn=128,
    )
    resize = dataclasses.replace(base.resize, short=200, max_size=333)
    return dataclasses.replace(base, name="fcclip-reduced", image_size=resize.canvas(), clip=tiny.clip,
                               mask_generator=generator, resize=resize)


def outputs(segmenter, image):
    """Raw outputs of one image: class probabilities (Q, K+1), mask probabilities at the image's size
    (Q, H, W), and the canvas (H, W) the model saw."""
    raw = {}
    run = segmenter.backend.run
    segmenter.backend.run = lambda images, *args: raw.setdefault("out", run(images, *args))
    try:
        segmenter.segment(image, "semantic")
    finally:
        segmenter.backend.run = run
    out = raw["out"]
    canvas = tuple(4 * n for n in out.mask_logits.shape[-2:])
    content = segmenter._canvas(image)[1]
    masks = restore_mask_logits(out.mask_logits[0].float(), canvas, content, image.shape[:2]).sigmoid()
    return out.class_scores[0].float(), masks, canvas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="how many test images (default 6), e.g. --images 8")
    parser.add_argument("--classes", type=int, default=20, help="vocabulary size (random embeddings), e.g. 133")
    parser.add_argument("--seed", type=int, default=0, help="weights and pixels seed, e.g. --seed 1")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = create_model(reduced_fcclip()).eval()
    with torch.no_grad():  # random, but proposals that are not all alike
        for p in model.mask_generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fcclip-reduced.safetensors")
        save_checkpoint(path, model, vocabulary=["person", "wall"], is_thing=[True, False])
        segmenter = Segmenter.from_engine(path, device="cpu", cache_dir="")
    text = F.normalize(torch.randn(args.classes, segmenter.backend.embed_dim), dim=-1).numpy()
    segmenter.set_vocabulary([f"class {k}" for k in range(args.classes)], text)
    print(f"{'image':>10s} {'divisible':>9s} {'square':>7s} {'pixels agree':>12s} {'top class agrees':>16s} "
          f"{'max |dp| class':>14s} {'max |dp| mask':>13s} {'mean |dp| mask':>14s} | uint8 pad: "
          f"{'pixels agree':>12s} {'mean |dp| mask':>14s}")
    agreements = []
    for height, width in SIZES[: args.images]:
        # a smooth random picture (noise upsampled), so neighbouring pixels correlate as in photos
        coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, height // 16, width // 16)).astype(np.float32))
        image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        image = image.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()
        segmenter.backend.variable_canvas = True
        scores_d, masks_d, canvas_d = outputs(segmenter, image)
        exact_mean = segmenter.image_mean
        segmenter.image_mean = tuple(c / 255 for c in segmenter.pad_colour)  # the pad colour rounded to uint8
        _, masks_r, _ = outputs(segmenter, image)
        segmenter.image_mean = exact_mean
        segmenter.backend.variable_canvas = False
        scores_s, masks_s, canvas_s = outputs(segmenter, image)
        floor = (masks_d.argmax(0) == masks_r.argmax(0)).float().mean().item()
        agree = (masks_d.argmax(0) == masks_s.argmax(0)).float().mean().item()
        top = (scores_d[:, :-1].argmax(-1) == scores_s[:, :-1].argmax(-1)).float().mean().item()
        agreements.append((agree, top, floor))
        print(f"{height:4d}x{width:<5d} {canvas_d[0]:4d}x{canvas_d[1]:<4d} {canvas_s[0]:3d}x{canvas_s[1]:<3d} "
              f"{100 * agree:11.1f}% {100 * top:15.1f}% {(scores_d - scores_s).abs().max().item():14.3f} "
              f"{(masks_d - masks_s).abs().max().item():13.3f} {(masks_d - masks_s).abs().mean().item():14.4f} | "
              f"{'':11s}{100 * floor:11.1f}% {(masks_d - masks_r).abs().mean().item():14.4f}")
    pixels, tops, floor = np.mean(agreements, axis=0)
    print(f"mean over {len(agreements)} images: square vs divisible canvas: pixels agree {100 * pixels:.1f}%, "
          f"top class agrees {100 * tops:.1f}%; uint8-rounded padding: pixels agree {100 * floor:.1f}%")


if __name__ == "__main__":
    main()
