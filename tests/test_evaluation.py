import json
import os

import numpy as np
import pytest
from PIL import Image

from fisa_rt.data.panoptic import PanopticDataset, ground_truth_segments
from fisa_rt.data.panoptic_png import ids_to_rgb, rgb_to_ids
from fisa_rt.data.synthetic import generate
from fisa_rt.errors import InputError
from fisa_rt.evaluation import PanopticQuality, SemanticIoU, evaluate, evaluate_files


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


def test_an_iou_of_exactly_one_half_is_no_match():
    """panopticapi matches at IoU > 0.5, strictly: half of a 4-pixel segment is a miss and a false positive."""
    pq = PanopticQuality(1)
    pq.add(np.array([[1, 1, 1, 1]]), {1: 0}, np.array([[5, 5, 0, 0]]), {5: 0})
    assert (pq.stats[0].tp, pq.stats[0].fp, pq.stats[0].fn) == (0, 1, 1)


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
    # averaged over the classes in the ground truth: class 2, only predicted, and class 3, in neither, do not count
    # (class 0: 1.0, class 1: 0.5); counting either gave 50 or nan
    iou = SemanticIoU(4)
    iou.add(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 2]]))
    assert iou.miou([0, 1, 2, 3]) == pytest.approx(75.0)


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


PERSON, CAR = 0, 1


def _score(gt, gt_info, pred, pred_segments, num_classes=2):
    pq = PanopticQuality(num_classes)
    segments, crowd = ground_truth_segments(gt, gt_info, {c: c for c in range(num_classes)})
    pq.add(gt, segments, pred, pred_segments, crowd)
    return pq


def test_prediction_over_a_crowd_region_of_its_class_counts_it_in_the_union():
    gt = np.array([[1, 1, 1, 1, 1, 1, 2, 2]])  # a person (6 px) beside a person crowd (2 px)
    info = [{"id": 1, "category_id": PERSON, "iscrowd": 0}, {"id": 2, "category_id": PERSON, "iscrowd": 1}]
    pq = _score(gt, info, np.full_like(gt, 9), {9: PERSON})
    # panopticapi: union = 8 + 6 - 6 (the crowd is not unlabelled) -> IoU 0.75, not 1.
    assert pq.summary([PERSON])["pq"] == pytest.approx(75.0)


def test_prediction_on_a_crowd_region_of_another_class_is_a_false_positive():
    gt = np.array([[1, 1, 2, 2, 2, 2]])  # a car, then a person crowd
    info = [{"id": 1, "category_id": CAR, "iscrowd": 0}, {"id": 2, "category_id": PERSON, "iscrowd": 1}]
    pq = _score(gt, info, np.array([[5, 5, 6, 6, 6, 6]]), {5: CAR, 6: CAR})
    assert (pq.stats[CAR].tp, pq.stats[CAR].fp) == (1, 1)
    assert pq.summary([CAR])["pq"] == pytest.approx(100 / 1.5)
    # the same prediction as a person lies on its own class's crowd: ignored, not a false positive
    pq = _score(gt, info, np.array([[5, 5, 6, 6, 6, 6]]), {5: CAR, 6: PERSON})
    assert (pq.stats[PERSON].tp, pq.stats[PERSON].fp, pq.stats[PERSON].fn) == (0, 0, 0)


def _random_panoptic(rng, size, segments, category_ids, crowd_rate):
    """Segment ids painted as random overlapping rectangles, some crowd, some void; JSON areas exact."""
    ids = np.zeros(size, np.int64)
    classes = {}
    for segment in range(1, segments + 1):
        y, x = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
        ids[y : y + rng.integers(2, size[0] // 2), x : x + rng.integers(2, size[1] // 2)] = segment
        classes[segment] = int(rng.choice(category_ids))
    for _ in range(2):  # void
        y, x = rng.integers(0, size[0]), rng.integers(0, size[1])
        ids[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = 0
    present, areas = np.unique(ids, return_counts=True)
    info = [
        {"id": int(s), "category_id": classes[s], "iscrowd": int(rng.random() < crowd_rate), "area": int(a)}
        for s, a in zip(present, areas)
        if s
    ]
    return ids, info


def _prediction_from(rng, gt, gt_info, category_ids):
    """Ground-truth segments kept, merged with a neighbour, relabelled to another class or dropped, plus
    random extra segments: many predictions overlap crowd regions of their own class and of others."""
    pred = np.zeros_like(gt)
    classes = {}
    for s in gt_info:
        r = rng.random()
        if r < 0.1:
            continue
        target = int(rng.integers(1, 6)) if r < 0.35 else 100 + s["id"]  # ids 1-5 merge several segments
        category = s["category_id"] if rng.random() < 0.75 else int(rng.choice(category_ids))
        pred[gt == s["id"]] = target
        classes.setdefault(target, category)
    for extra in range(200, 200 + int(rng.integers(0, 4))):
        y, x = rng.integers(0, gt.shape[0] - 2), rng.integers(0, gt.shape[1] - 2)
        pred[y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = extra
        classes[extra] = int(rng.choice(category_ids))
    present = [int(p) for p in np.unique(pred) if p]
    return pred, [{"id": p, "category_id": classes[p], "iscrowd": 0} for p in present]


@pytest.mark.parametrize("seed,crowd_rate", [(0, 0.2), (1, 0.35), (2, 0.5)])
def test_crowd_and_void_match_panopticapi_as_shipped_by_cityscapesscripts(tmp_path, seed, crowd_rate):
    """cityscapesscripts' pq_compute_single_core is panopticapi's (cocodataset/panopticapi
    panopticapi/evaluation.py, 1ad5afa) line for line, crowd handling included."""
    evaluator = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    rng = np.random.default_rng(seed)
    categories = [{"id": 10 + c, "name": f"c{c}", "isthing": int(c < 3)} for c in range(5)]
    category_ids = [c["id"] for c in categories]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gt_anns, pred_anns = [], []
    for image in range(25):
        size = (int(rng.integers(16, 40)), int(rng.integers(16, 40)))
        gt, gt_info = _random_panoptic(rng, size, int(rng.integers(3, 9)), category_ids, crowd_rate)
        pred, pred_info = _prediction_from(rng, gt, gt_info, category_ids)
        name = f"{image}.png"
        Image.fromarray(ids_to_rgb(gt)).save(gt_dir / name)
        Image.fromarray(ids_to_rgb(pred)).save(pred_dir / name)
        gt_anns.append({"image_id": image, "file_name": name, "segments_info": gt_info})
        pred_anns.append({"image_id": image, "file_name": name, "segments_info": pred_info})
    assert sum(s["iscrowd"] for a in gt_anns for s in a["segments_info"]) >= 10
    gt_json, pred_json = str(tmp_path / "gt.json"), str(tmp_path / "pred.json")
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": gt_anns, "categories": categories}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_anns}))
    ours = evaluate_files(gt_json, str(gt_dir), pred_json, str(pred_dir))
    theirs = evaluator.evaluatePanoptic(gt_json, str(gt_dir), pred_json, str(pred_dir), str(tmp_path / "r.json"))
    for ours_name, their_name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        for key in ("pq", "sq", "rq"):
            assert ours[ours_name][key] == pytest.approx(100 * theirs[their_name][key], abs=1e-6), (ours_name, key)
        assert ours[ours_name]["n"] == theirs[their_name]["n"]


def _write_pair(tmp_path, gt, gt_info, pred, pred_info, pred_image_id=0):
    for folder, ids in (("gt", gt), ("pred", pred)):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(ids_to_rgb(ids)).save(tmp_path / folder / "a.png")
    categories = [{"id": 1, "name": "person", "isthing": 1}]
    annotations = [] if gt_info is None else [{"image_id": 0, "file_name": "a.png", "segments_info": gt_info}]
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": annotations, "categories": categories}))
    prediction = {"image_id": pred_image_id, "file_name": "a.png", "segments_info": pred_info}
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [prediction]}))
    return str(tmp_path / "gt.json"), str(tmp_path / "gt"), str(tmp_path / "pred.json"), str(tmp_path / "pred")


@pytest.mark.parametrize(
    "gt_info,pred_info,pred_image_id,message",
    [
        ([{"id": 1, "category_id": 1, "iscrowd": 0}], [], 0, r"segment ids \[3\] are in the PNG but not in the JSON"),
        ([{"id": 1, "category_id": 1, "iscrowd": 0}], [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 1}], 0,
         r"segment ids \[4\] are in the JSON but not in the PNG"),
        ([], [{"id": 3, "category_id": 1}], 0, r"a.png: segment ids \[1\] are in the PNG but not in the JSON"),
        ([{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0}],
         [{"id": 3, "category_id": 1}], 0, r"a.png: segment ids \[2\] are in the JSON but not in the PNG"),
        ([{"id": 1, "category_id": 1, "iscrowd": 0}], [{"id": 3, "category_id": 7}], 0, "unknown category_id 7"),
        ([{"id": 1, "category_id": 1, "iscrowd": 0}], [{"id": 3, "category_id": 1}], 5, "no prediction for image 0"),
        (None, [], 0, "lists no images to evaluate"),
    ],
)
def test_inconsistent_files_are_refused(tmp_path, gt_info, pred_info, pred_image_id, message):
    gt = np.array([[1, 1, 0, 0]])
    files = _write_pair(tmp_path, gt, gt_info, np.array([[3, 3, 3, 0]]), pred_info, pred_image_id)
    with pytest.raises(InputError, match=message):
        evaluate_files(*files)


def test_semantic_labels_outside_the_vocabulary_are_refused():
    iou = SemanticIoU(2)
    with pytest.raises(InputError, match="predicted labels span"):
        iou.add(np.array([[0, 1]]), np.array([[0, 2]]))
    with pytest.raises(InputError, match="ground-truth labels span"):
        iou.add(np.array([[0, 5]]), np.array([[0, 1]]))
    iou.add(np.array([[0, 255]]), np.array([[0, 1]]))  # IGNORE is not a label
    assert iou.confusion.sum() == 1


def test_a_dataset_without_categories_is_named_as_the_problem(tmp_path, tiny_vit):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "panoptic_val.json").write_text(json.dumps(
        {"images": [{"id": 0, "file_name": "a.png"}],
         "annotations": [{"image_id": 0, "file_name": "a.png", "segments_info": []}], "categories": []}
    ))
    dataset = PanopticDataset(str(tmp_path), "val", tiny_vit.cfg.image_size, augment=False)
    with pytest.raises(InputError, match="the dataset has no categories: .*panoptic_val.json"):
        evaluate(tiny_vit, dataset)
