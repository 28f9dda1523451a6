import json
import os

import numpy as np
import pytest
from PIL import Image

from fisa_rt.data.synthetic import generate, ids_to_rgb, rgb_to_ids
from fisa_rt.evaluation import PanopticQuality, SemanticIoU, evaluate_files


def test_perfect_prediction_scores_100():
    ids = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pq = PanopticQuality(3)
    pq.add(ids, {1: 0, 2: 1}, ids * 7, {7: 0, 14: 1})
    assert pq.summary([0, 1]) == {"pq": 100.0, "sq": 100.0, "rq": 100.0, "n": 2}


def test_known_answer_with_miss_false_positive_and_void():
    gt = np.array([[1, 1, 1, 1], [2, 2, 0, 0]])  # segment 1 class 0 (4 px), segment 2 class 1 (2 px), 2 void px
    pred = np.array([[5, 5, 5, 0], [6, 6, 6, 6]])  # 5: class 0 IoU 3/4; 6: class 1 covers gt 2 + the void
    pq = PanopticQuality(2)
    pq.add(gt, {1: 0, 2: 1}, pred, {5: 0, 6: 1})
    # class 0: TP with IoU 0.75. class 1: union = 4 + 2 - 2 - 2 (pred on void) = 2 -> IoU 1.0.
    s0, s1 = pq.stats
    assert (s0.tp, s0.fp, s0.fn) == (1, 0, 0) and s0.iou == pytest.approx(0.75)
    assert (s1.tp, s1.fp, s1.fn) == (1, 0, 0) and s1.iou == pytest.approx(1.0)
    pq.add(gt, {1: 0, 2: 1}, np.zeros_like(gt), {})  # a second image with nothing predicted
    assert pq.summary([0])["rq"] == pytest.approx(100 * 1 / (1 + 0.5))


def test_prediction_mostly_on_void_is_not_a_false_positive():
    gt = np.array([[1, 0, 0, 0]])
    pq = PanopticQuality(1)
    pq.add(gt, {1: 0}, np.array([[0, 3, 3, 3]]), {3: 0})
    assert (pq.stats[0].tp, pq.stats[0].fp, pq.stats[0].fn) == (0, 0, 1)


def test_miou_known_answer():
    iou = SemanticIoU(2)
    iou.add(np.array([[0, 0, 1, 255]]), np.array([[0, 1, 1, 0]]))
    # class 0: 1 / (2 + 1 - 1) = 0.5; class 1: 1 / (1 + 2 - 1) = 0.5
    assert iou.miou([0, 1]) == pytest.approx(50.0)


def _perturbed_predictions(root, pred_dir, rng):
    """Predictions made from the ground truth by dropping, eroding, relabelling and adding segments."""
    with open(os.path.join(root, "annotations", "panoptic_val.json")) as f:
        gt = json.load(f)
    os.makedirs(pred_dir)
    category_ids = [c["id"] for c in gt["categories"]]
    annotations = []
    for ann in gt["annotations"]:
        ids = rgb_to_ids(np.asarray(Image.open(os.path.join(root, "panoptic", "val", ann["file_name"]))))
        pred = np.zeros_like(ids)
        segments = []
        for s in ann["segments_info"]:
            r = rng.random()
            if r < 0.15:
                continue  # missed
            mask = ids == s["id"]
            if r < 0.4:
                mask = mask & (rng.random(mask.shape) < 0.6)  # eroded: lower IoU
            category = s["category_id"] if rng.random() > 0.2 else int(rng.choice(category_ids))
            if mask.any():
                pred[mask] = s["id"]
                segments.append({"id": s["id"], "category_id": category, "iscrowd": 0, "area": int(mask.sum())})
        extra = 1000
        pred[:5, :5] = extra  # a spurious segment
        segments = [s for s in segments if (pred == s["id"]).any()]
        segments.append({"id": extra, "category_id": category_ids[0], "iscrowd": 0, "area": 25})
        Image.fromarray(ids_to_rgb(pred)).save(os.path.join(pred_dir, ann["file_name"]))
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments})
    with open(os.path.join(pred_dir, "predictions.json"), "w") as f:
        json.dump({"annotations": annotations}, f)


def test_matches_panopticapi_as_shipped_by_cityscapesscripts(tmp_path):
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    root = str(tmp_path / "data")
    gt_json = generate(root, "val", 12, seed=3, image_size=64)
    pred_dir = str(tmp_path / "pred")
    _perturbed_predictions(root, pred_dir, np.random.default_rng(0))
    gt_dir = os.path.join(root, "panoptic", "val")
    pred_json = os.path.join(pred_dir, "predictions.json")
    ours = evaluate_files(gt_json, gt_dir, pred_json, pred_dir)
    theirs = evaluator.evaluatePanoptic(gt_json, gt_dir, pred_json, pred_dir, str(tmp_path / "results.json"))
    for ours_name, their_name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        for key in ("pq", "sq", "rq"):
            assert ours[ours_name][key] == pytest.approx(100 * theirs[their_name][key], abs=1e-6), (ours_name, key)
        assert ours[ours_name]["n"] == theirs[their_name]["n"]
    assert 20 < ours["all"]["pq"] < 95  # the perturbations leave a non-trivial score
