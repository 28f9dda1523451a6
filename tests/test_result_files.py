"""What `SegmentationResult.save` writes holds the result (the other tests checked that the files exist and the label
range): labels as 16 bits past 255 classes, the panoptic PNG's ids and segments_info's categories as the result's,
each category's isthing, and each instance mask as COCO's column-major RLE."""

import json

import numpy as np
import torch
from PIL import Image

from fisa_rt.data.panoptic_png import rgb_to_ids
from fisa_rt.postprocess import InstanceResult, PanopticResult, Segment
from fisa_rt.runtime.results import SegmentationResult, rle_decode


def _result(instances=False):
    H, W, K = 6, 5, 300  # more than 255 classes; segment ids past one byte
    semantic = (np.arange(H * W).reshape(H, W) * 37) % K
    semantic[0, 0] = 299
    names = [f"c{k}" for k in range(K)]
    is_thing = [k % 3 == 0 for k in range(K)]
    seg_map = np.zeros((H, W), np.int32)
    seg_map[:2], seg_map[2:4], seg_map[4:] = 7, 300, 70000
    segments = [Segment(7, 3, True, 0.9, 10), Segment(300, 298, False, 0.8, 10), Segment(70000, 297, True, 0.7, 10)]
    if instances:
        masks = torch.zeros(2, H, W, dtype=torch.bool)
        masks[0, 1:3, 2:] = True
        masks[1, 0, 0] = True
        inst = InstanceResult(masks, torch.tensor([298, 3]), torch.tensor([0.9, 0.5]))
        return SegmentationResult(np.zeros((H, W, 3), np.uint8), names, is_thing, semantic, None, inst)
    return SegmentationResult(np.zeros((H, W, 3), np.uint8), names, is_thing, semantic,
                              PanopticResult(torch.from_numpy(seg_map), segments))


def test_saved_files_hold_the_result(tmp_path):
    r = _result()
    r.save(str(tmp_path), "x")
    labels = np.asarray(Image.open(tmp_path / "x_labels.png"))
    assert labels.dtype == np.uint16 and np.array_equal(labels, r.semantic)
    ids = rgb_to_ids(np.asarray(Image.open(tmp_path / "x_panoptic.png")))
    assert np.array_equal(ids, r.panoptic.segment_map.numpy())
    doc = json.loads((tmp_path / "x_panoptic.json").read_text())
    assert {s["id"]: s["category_id"] for s in doc["segments_info"]} == {7: 3, 300: 298, 70000: 297}
    assert [c["isthing"] for c in doc["categories"]] == [int(t) for t in r.is_thing]
    assert [c["id"] for c in doc["categories"]] == list(range(300))
    assert all(s["isthing"] == r.is_thing[s["category_id"]] for s in doc["segments_info"])


def test_instances_json_holds_each_mask_and_label(tmp_path):
    r = _result(instances=True)
    r.save(str(tmp_path), "x")
    inst = json.loads((tmp_path / "x_instances.json").read_text())
    assert [i["category_id"] for i in inst] == [298, 3]
    for i, item in enumerate(inst):
        assert np.array_equal(rle_decode(item["segmentation"]), r.instances.masks[i].numpy())
        counts = item["segmentation"]["counts"]  # COCO: column-major runs, first a run of zeros
        flat = r.instances.masks[i].numpy().ravel(order="F")
        assert np.array_equal(np.repeat(np.arange(len(counts)) % 2, counts).astype(bool), flat)
