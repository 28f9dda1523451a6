import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from fisa_rt.data.synthetic import HELD_OUT, categories, generate, rgb_to_ids
from fisa_rt.errors import InputError


def _annotations(root, split):
    with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
        return json.load(f)


def test_same_seed_writes_identical_files(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    generate(a, "train", 5, seed=7, image_size=64)
    generate(b, "train", 5, seed=7, image_size=64)
    comparison = filecmp.dircmp(a, b)
    for sub in ("images/train", "panoptic/train", "annotations"):
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, sub), os.path.join(b, sub), os.listdir(os.path.join(a, sub)), shallow=False)
        assert not mismatch and not errors and match
    assert not comparison.left_only and not comparison.right_only


def test_held_out_classes_never_appear_in_training(synthetic_data):
    held = {c.id for c in categories() if c.held_out}
    assert len(held) == len(HELD_OUT)
    train = _annotations(synthetic_data, "train")
    assert not {s["category_id"] for a in train["annotations"] for s in a["segments_info"]} & held
    with open(os.path.join(synthetic_data, "annotations", "captions_train.json")) as f:
        captions = [a["caption"] for a in json.load(f)["annotations"]]
    assert not any(name in c for c in captions for name in HELD_OUT)
    val = _annotations(synthetic_data, "val")
    assert {s["category_id"] for a in val["annotations"] for s in a["segments_info"]} & held


def test_panoptic_pngs_agree_with_segments_info(synthetic_data):
    data = _annotations(synthetic_data, "train")
    names = {c["id"]: c for c in data["categories"]}
    for ann in data["annotations"][:6]:
        ids = rgb_to_ids(np.asarray(Image.open(os.path.join(synthetic_data, "panoptic", "train", ann["file_name"]))))
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
        for s in ann["segments_info"]:
            mask = ids == s["id"]
            assert s["area"] == mask.sum()
            rows, cols = np.nonzero(mask)
            assert s["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        kinds = [names[s["category_id"]]["isthing"] for s in ann["segments_info"]]
        assert kinds.count(0) >= 1 and kinds.count(1) >= 1  # stuff and things in every scene


def test_existing_split_is_not_overwritten(tmp_path):
    generate(str(tmp_path), "val", 1, seed=0, image_size=32)
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        generate(str(tmp_path), "val", 1, seed=0, image_size=32)
