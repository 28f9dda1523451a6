import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from fisa_rt.data.panoptic_png import rgb_to_ids
from fisa_rt.data.synthetic import GROUPS, HELD_OUT, WORLDS, categories, generate
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
        match, mismatch, errors = filecmp.cmpfiles(
            os.path.join(a, sub), os.path.join(b, sub), os.listdir(os.path.join(a, sub)), shallow=False
        )
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
    with pytest.raises(InputError, match=r"exists; pass overwrite=True \(--overwrite\)"):
        generate(str(tmp_path), "val", 1, seed=0, image_size=32)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_overwrite_replaces_a_split_wholly_and_leaves_the_others(tmp_path):
    """Before, a 2-image --overwrite of a 4-image split left train_000002/3.png beside the new ones."""
    root = str(tmp_path)
    generate(root, "train", 4, seed=0, image_size=32)
    generate(root, "val", 1, seed=0, image_size=32)
    val = {f: open(os.path.join(root, f), "rb").read() for f in _files(root) if "val" in f}
    generate(root, "train", 2, seed=1, image_size=32, overwrite=True)
    train = [f"{kind}/train/train_00000{i}.png" for kind in ("images", "panoptic") for i in (0, 1)]
    assert _files(root) == sorted(["annotations/captions_train.json", "annotations/panoptic_train.json", *train, *val])
    assert all(open(os.path.join(root, f), "rb").read() == data for f, data in val.items())


def _interrupted(monkeypatch, after):
    """render_scene raises KeyboardInterrupt (Ctrl-C) at its call number ``after``."""
    from fisa_rt.data import synthetic

    calls, render = [], synthetic.render_scene

    def render_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == after:
            raise KeyboardInterrupt
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", render_then_interrupt)


def test_an_interrupted_split_leaves_nothing_and_a_rerun_starts_clean(tmp_path, monkeypatch):
    """Before, Ctrl-C left the images written so far and no JSON; a rerun kept them beside its own."""
    fresh, mine = str(tmp_path / "fresh"), tmp_path / "mine"
    (mine / "images").mkdir(parents=True)  # a folder make-data did not make: its files are not the run's
    (mine / "notes.txt").write_text("keep")
    (mine / "images" / "other.png").write_text("keep")
    for root in (fresh, str(mine)):
        _interrupted(monkeypatch, after=3)
        with pytest.raises(KeyboardInterrupt):
            generate(root, "train", 5, seed=0, image_size=32)
        monkeypatch.undo()
    assert not os.path.exists(fresh)
    assert sorted(os.listdir(mine)) == ["images", "notes.txt"]
    assert os.listdir(mine / "images") == ["other.png"] and (mine / "notes.txt").read_text() == "keep"
    generate(str(mine), "train", 2, seed=0, image_size=32)
    assert [f for f in _files(str(mine)) if "train_" in f] == [
        f"{kind}/train/train_00000{i}.png" for kind in ("images", "panoptic") for i in (0, 1)
    ]


def test_an_interrupted_overwrite_leaves_the_earlier_split_as_it_was(tmp_path, monkeypatch):
    root = str(tmp_path)
    generate(root, "train", 3, seed=0, image_size=32)
    before = {f: open(os.path.join(root, f), "rb").read() for f in _files(root)}
    _interrupted(monkeypatch, after=2)
    with pytest.raises(KeyboardInterrupt):
        generate(root, "train", 2, seed=1, image_size=32, overwrite=True)
    assert {f: open(os.path.join(root, f), "rb").read() for f in _files(root)} == before
    assert not [f for f in os.listdir(root) if f.startswith(".")]


@pytest.fixture(scope="module")
def broad_data(tmp_path_factory):
    """The broad world: 30 pre-training, 20 training and 24 validation scenes of 64 px."""
    root = str(tmp_path_factory.mktemp("broad"))
    for split, count in (("pretrain", 30), ("train", 20), ("val", 24)):
        generate(root, split, count, seed=2, image_size=64, world="broad")
    return root


def _captions(root, split):
    with open(os.path.join(root, "annotations", f"captions_{split}.json")) as f:
        return [a["caption"] for a in json.load(f)["annotations"]]


def _words(texts):
    return {w.strip(".,") for t in texts for w in t.split()}


def test_default_world_is_the_32_class_set():
    cats = categories()
    assert len(cats) == 32 and categories("default") == cats
    assert {c.name for c in cats if c.held_out} == set(HELD_OUT)
    assert {c.group for c in cats} == {"seen", "novel_composition"}


@pytest.mark.parametrize("world", ["default", "broad"])
def test_same_seed_writes_identical_files_in_every_world(tmp_path, world):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for root in (a, b):
        generate(root, "val", 6, seed=5, image_size=48, world=world)
    for sub in ("images/val", "panoptic/val", "annotations"):
        names = os.listdir(os.path.join(a, sub))
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, sub), os.path.join(b, sub), names, shallow=False)
        assert match and not mismatch and not errors
    generate(str(tmp_path / "c"), "val", 6, seed=6, image_size=48, world=world)
    assert _annotations(a, "val") != _annotations(str(tmp_path / "c"), "val")


def test_pretraining_covers_every_concept_of_the_broad_world(broad_data):
    world = WORLDS["broad"]
    words = _words(_captions(broad_data, "pretrain"))
    concepts = set(world.colours) | set(world.shapes) | set(world.patterns) | set(world.places)
    assert concepts <= words, concepts - words
    assert set(world.novel_words) < concepts and len(world.novel_words) == 8
    assert {"small", "large"} & words  # attribute words beside the class names
    groups = {c.id: c.group for c in categories("broad")}
    pretrain = _annotations(broad_data, "pretrain")["annotations"]
    shown = {groups[s["category_id"]] for a in pretrain for s in a["segments_info"]}
    assert shown == {"seen", "novel_concept"}  # novel compositions stay novel to CLIP too


def test_novel_concepts_never_reach_segmentation_training(broad_data):
    novel = set(WORLDS["broad"].novel_words)
    train = _annotations(broad_data, "train")
    assert not novel & _words(c["name"] for c in train["categories"])
    assert not novel & _words(_captions(broad_data, "train"))
    groups = {c.id: c.group for c in categories("broad")}
    assert {groups[s["category_id"]] for a in train["annotations"] for s in a["segments_info"]} == {"seen"}
    assert not any(name in c for c in _captions(broad_data, "train") for name in HELD_OUT)


def test_broad_validation_holds_every_group(broad_data):
    val = _annotations(broad_data, "val")
    groups = {c["id"]: c["group"] for c in val["categories"]}
    assert {groups[s["category_id"]] for a in val["annotations"] for s in a["segments_info"]} == set(GROUPS)
    for c in val["categories"]:
        assert c["held_out"] == (c["group"] != "seen")
    names = {c["name"] for c in val["categories"] if c["group"] == "novel_concept"}
    assert "pink circle" in names and "red ring" in names and "zigzag wall" in names and "striped sky" in names


def test_unknown_world_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="broad"):
        generate(str(tmp_path), "val", 1, seed=0, world="wide")
