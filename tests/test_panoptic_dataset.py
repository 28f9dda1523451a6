import json
import os

import pytest
import torch

from fisa_rt import InputError
from fisa_rt.data.panoptic import CaptionDataset, PanopticDataset, collate


def test_eval_samples_reproduce_the_ground_truth(synthetic_data):
    dataset = PanopticDataset(synthetic_data, "val", 64, augment=False)
    sample = dataset[0]
    _, ids, ann = dataset.read(0)
    assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.uint8
    assert sample.size == (64, 64) and sample.valid.all()
    for mask, label, segment in zip(sample.masks, sample.labels, ann["segments_info"]):
        assert torch.equal(mask, torch.from_numpy(ids == segment["id"]))
        assert dataset.categories[int(label)]["id"] == segment["category_id"]


def test_augmentation_is_keyed_by_index_and_epoch(synthetic_data):
    dataset = PanopticDataset(synthetic_data, "train", 64, augment=True, seed=3)
    a, b, c = dataset[(2, 0)], dataset[(2, 0)], dataset[(2, 1)]
    assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.image, c.image)


def test_masks_are_disjoint_and_padding_is_void(synthetic_data):
    dataset = PanopticDataset(synthetic_data, "train", 96, augment=False)  # 64 px scenes upscaled, square: no pad
    sample = dataset[1]
    assert sample.masks.sum(0).max() <= 1
    small = PanopticDataset(synthetic_data, "train", 64, augment=True, seed=0, scale_range=(0.5, 0.6))[(1, 0)]
    h, w = small.size
    assert h < 64 and not small.valid[h:].any() and not small.masks[:, h:].any()
    batch = collate([dataset[0], dataset[1]])
    assert batch.images.shape == (2, 3, 96, 96) and len(batch.masks) == 2


def test_captions_pair_with_images(synthetic_data):
    captions = CaptionDataset(synthetic_data, "train", 64)
    image, caption = captions[(0, 0)]
    assert image.shape == (3, 64, 64) and isinstance(caption, str) and caption


def test_missing_and_corrupt_files_are_input_errors(synthetic_data, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        PanopticDataset(str(tmp_path), "train", 64, augment=False)
    root = tmp_path / "copy"
    os.makedirs(root / "annotations")
    os.makedirs(root / "images" / "val")
    os.makedirs(root / "panoptic" / "val")
    with open(os.path.join(synthetic_data, "annotations", "panoptic_val.json")) as f:
        data = json.load(f)
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    (root / "images" / "val" / data["images"][0]["file_name"]).write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read sample 0"):
        PanopticDataset(str(root), "val", 64, augment=False)[0]


def test_region_captions_crop_one_segment_and_name_its_class(synthetic_data):
    regions = CaptionDataset(synthetic_data, "train", 64, region_fraction=1.0)
    names = set(regions.panoptic.class_names)
    for key in [(0, 0), (1, 0), (2, 3)]:
        image, caption = regions[key]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert caption.startswith("a photo of a ") and caption[len("a photo of a "):-1] in names
    scenes = CaptionDataset(synthetic_data, "train", 64, region_fraction=0.0)
    assert scenes[(0, 0)][1] == scenes.captions[scenes.panoptic.records[0][1]["image_id"]]
    assert regions[(1, 0)][1] == regions[(1, 0)][1]  # keyed randomness: reproducible
