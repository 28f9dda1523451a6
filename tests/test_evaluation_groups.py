"""Evaluation split by class group: seen, novel compositions, novel concepts (the broad synthetic world)."""

import numpy as np
import pytest

from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.data.synthetic import generate
from fisa_rt.evaluation import PanopticQuality, SemanticIoU, evaluate, format_report, report


def test_each_held_out_group_is_scored_on_its_own_classes():
    # Three classes, one per group; class 0 predicted right, 1 and 2 swapped.
    gt = np.array([[1, 1, 2, 2, 3, 3]])
    pq, iou = PanopticQuality(3), SemanticIoU(3)
    pq.add(gt, {1: 0, 2: 1, 3: 2}, gt, {1: 0, 2: 2, 3: 1})
    iou.add(np.array([[0, 0, 1, 1, 2, 2]]), np.array([[0, 0, 2, 2, 1, 1]]))
    groups = ["seen", "novel_composition", "novel_concept"]
    result = report(pq, iou, [True] * 3, [False, True, True], groups)
    assert list(result) == ["all", "things", "stuff", "seen", "held_out", "novel_composition", "novel_concept"]
    assert result["seen"]["pq"] == pytest.approx(100.0) and result["seen"]["miou"] == pytest.approx(100.0)
    for name in ("novel_composition", "novel_concept"):
        assert result[name]["pq"] == 0.0 and result[name]["miou"] == 0.0 and result[name]["n"] == 1
    assert result["held_out"]["n"] == 2
    assert "novel_concept" in format_report(result)


def test_one_held_out_group_adds_no_rows():
    pq, iou = PanopticQuality(2), SemanticIoU(2)
    plain = ["all", "things", "stuff", "seen", "held_out"]
    assert list(report(pq, iou, [True, False], [False, True])) == plain
    assert list(report(pq, iou, [True, False], [False, True], ["seen", "novel_composition"])) == plain


def test_dataset_groups_fall_back_to_held_out_flags(synthetic_data):
    dataset = PanopticDataset(synthetic_data, "val", 64, augment=False)
    assert dataset.groups == ["novel_composition" if h else "seen" for h in dataset.held_out]


def test_eval_reports_the_three_groups_on_the_broad_world(tiny_vit, tmp_path):
    generate(str(tmp_path), "val", 6, seed=4, image_size=64, world="broad")
    dataset = PanopticDataset(str(tmp_path), "val", tiny_vit.cfg.image_size, augment=False)
    result = evaluate(tiny_vit, dataset, batch_size=6)
    for name in ("seen", "novel_composition", "novel_concept"):
        assert result[name]["n"] > 0
    assert result["held_out"]["n"] == result["novel_composition"]["n"] + result["novel_concept"]["n"]
