"""Zero-shot accuracy of a stage-1 CLIP on single-segment crops of the validation split.

The check to run before stage 2: if a CLIP cannot name one object in a crop, no mask classifier built on
it can name a masked region. Usage:

    python benchmarks/study/clip-crop-accuracy.py runs/clip.safetensors runs/data [--model fisa-tiny] [--limit 300]
"""

import argparse
import dataclasses

import numpy as np
import torch

from fisa_rt.clip import create_clip, create_tokenizer, input_size
from fisa_rt.config import get_model_config
from fisa_rt.data.panoptic import CaptionDataset
from fisa_rt.preprocess import normalize_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="the stage-1 CLIP weights (fisa-rt train clip --out)")
    parser.add_argument("data", help="dataset root (fisa-rt make-data --out)")
    parser.add_argument("--model", default="fisa-tiny", help="model config whose CLIP the weights are for")
    parser.add_argument("--limit", type=int, default=300,
                        help="at most this many images (each gives one crop per segment)")
    parser.add_argument("--split", default="val", help="dataset split the crops come from")
    args = parser.parse_args()
    cfg = get_model_config(args.model)
    clip = create_clip(dataclasses.replace(cfg.clip, pretrained=args.weights), load_pretrained=True).eval()
    tokenizer = create_tokenizer(cfg.clip)
    crops = CaptionDataset(args.data, args.split, input_size(clip), region_fraction=1.0)
    crops.panoptic.augment = False
    names = crops.panoptic.class_names
    groups = crops.panoptic.groups
    with torch.no_grad():
        text = torch.nn.functional.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        hits = {}
        for index in range(min(args.limit, len(crops))):
            sample = crops.panoptic[index]
            rng = np.random.default_rng(index)
            for k in range(len(sample.labels)):
                image, caption = crops.region(sample, rng, k)
                label = names.index(caption[len("a photo of a "):-1])
                feature = clip.encode_image(normalize_images(image[None], cfg.image_mean, cfg.image_std))
                predicted = int((torch.nn.functional.normalize(feature, dim=-1) @ text.T).argmax())
                hits.setdefault(groups[label], []).append(predicted == label)
    for group, hit in sorted(hits.items()):
        print(f"{group}: {100 * np.mean(hit):.1f}% top-1 of {len(hit)} crops ({len(names)}-way)")


if __name__ == "__main__":
    main()
