"""Bad inputs on every verb, through the real `fisa-rt` console script: one line and exit code 2 for a user
error, a folder that goes on past one bad file, nothing written outside its folder or over existing files."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fisa_rt.runtime.assets import default_checkpoint, sample_images

from helpers import one_line_error, run_cli as run, run_infer
from test_image_inputs import png

CHECKPOINT = default_checkpoint()
CLASSES = "red star, wavy wall"  # two classes: the text tower runs in no time


def test_a_folder_goes_on_past_bad_files_and_names_each(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    scene = sample_images()[0]
    shutil.copy(scene, folder / "a.png")
    shutil.copy(scene, folder / "x.png")
    Image.open(scene).convert("RGB").save(folder / "x.jpg")  # same stem as x.png
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    png(folder / "bomb.png", 20000, 20000, 1, 0, b"\x00" * 2501)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (128, 64), (0, 90, 200)).save(folder / "phone.png", exif=exif)
    out = tmp_path / "out"
    result = run_infer(
        CHECKPOINT, folder, out, "--no-progress", "--no-cache", classes=CLASSES, task="semantic",
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 3, result.stderr
    assert lines[0].startswith("fisa-rt: skipped: image") and "bomb.png" in lines[0] and "--max-pixels" in lines[0]
    assert lines[1].startswith("fisa-rt: skipped: cannot read image") and "broken.png" in lines[1]
    assert lines[2].startswith("fisa-rt: error: 2 of 6 inputs failed")
    written = sorted(f[: -len("_labels.png")] for f in os.listdir(out) if f.endswith("_labels.png"))
    assert written == ["a", "phone", "x_jpg", "x_png"]
    assert np.asarray(Image.open(out / "phone_labels.png")).shape == (128, 64)  # upright, as EXIF says
    # a rerun is refused at once, before the engine loads, naming what exists
    one_line_error(
        run_infer(CHECKPOINT, folder, out, classes=CLASSES),
        "exists (and",
        "--overwrite",
    )
    # --fail-fast: the first bad file ends the run (in sorted order, bomb.png comes after a.png)
    result = run_infer(
        CHECKPOINT, folder, tmp_path / "ff", "--no-cache", "--no-progress", "--fail-fast", classes=CLASSES,
        task="semantic",
    )
    one_line_error(result, "bomb.png", "more than the limit")
    assert sorted(os.listdir(tmp_path / "ff")) == ["a_labels.png", "a_overlay.png"]
    one_line_error(
        run_infer(CHECKPOINT, sample_images()[0], tmp_path / "mp", "--max-pixels", 1000),
        "more than the limit of 1,000",
    )


INFER = ["infer", "--engine", "{checkpoint}", "--classes", CLASSES, "--out", "{tmp}/out"]
TRAIN = ["train", "adapt", "--data", "{data}", "--init", "{checkpoint}", "--out", "{tmp}/o.safetensors", "--steps", "1"]
EVAL = ["eval", "--engine", "{checkpoint}", "--data", "{data}"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (INFER + ["--batch", "0"], "argument --batch: must be >= 1; got 0"),
        (INFER + ["--batch", "-1"], "argument --batch: must be >= 1; got -1"),
        (INFER + ["--max-pixels", "many"], "argument --max-pixels: expected an integer"),
        (["bench", "--engine", "{checkpoint}", "--iterations", "0"], "argument --iterations: must be >= 1"),
        (["bench", "--engine", "{checkpoint}", "--classes", "-1"], "argument --classes: must be >= 1"),
        (["bench", "--engine", "{checkpoint}", "--batch", "0"], "argument --batch: must be >= 1"),
        (TRAIN + ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
        (TRAIN + ["--lr", "-1"], "argument --lr: must be > 0"),
        (TRAIN + ["--lr", "nan"], "argument --lr: expected a finite number"),
        (TRAIN + ["--region-captions", "2"], "argument --region-captions: must be <= 1"),
        (TRAIN + ["--save-every", "0"], "argument --save-every: must be >= 1"),
        (EVAL + ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
        (EVAL + ["--limit", "0"], "argument --limit: must be >= 1"),
        (EVAL + ["--object-threshold", "1.5"], "argument --object-threshold: must be <= 1"),
        (["make-data", "--out", "{tmp}/d", "--train", "-5"], "argument --train: must be >= 0; got -5"),
        (
            ["make-data", "--out", "{tmp}/d", "--train", "1", "--image-size", "0"],
            "argument --image-size: must be >= 16",
        ),
        (
            ["make-data", "--out", "{tmp}/d", "--train", "1", "--image-size", "100000"],
            "argument --image-size: must be <= 4096",
        ),
        (["make-data", "--out", "{tmp}/d", "--train", "1", "--seed", "-1"], "argument --seed: must be >= 0"),
        (["bench", "--engine", "{checkpoint}", "--classes", "2000000"], "argument --classes: must be <= 21841"),
        (["infer", "--engine", "{checkpoint}", "--out", "{tmp}/o", "--threads", "100000"],
         "argument --threads: must be <= 1024"),
        (["infer", "--engine", "{checkpoint}"], "the following arguments are required: --out"),
    ],
)
def test_every_numeric_option_is_validated_in_one_line(argv, message, synthetic_data, tmp_path):
    """Refused while parsing: before this, each ran into a traceback, a hang or "wrote -5 train scenes"."""
    fields = {"checkpoint": CHECKPOINT, "data": synthetic_data, "tmp": tmp_path}
    result = run(*[arg.format(**fields) for arg in argv])
    one_line_error(result, message, f"(see fisa-rt {argv[0]} --help)")
    assert os.listdir(tmp_path) == []


def test_make_data_refuses_existing_data_and_unusable_folders(tmp_path):
    out = tmp_path / "data"
    assert run("make-data", "--out", out, "--train", 1, "--val", 0, "--image-size", 32).returncode == 0
    one_line_error(
        run("make-data", "--out", out, "--train", 1, "--val", 0, "--image-size", 32),
        "panoptic_train.json exists",
        "pass overwrite=True (--overwrite)",
    )
    assert run("make-data", "--out", out, "--train", 1, "--val", 0, "--image-size", 32, "--overwrite").returncode == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(
        run("make-data", "--out", blocker, "--train", 1, "--val", 0),
        "output folder",
        "is a file, not a folder",
    )


def _dataset_copy(synthetic_data, root, edit):
    """The synthetic val split under ``root`` with its annotation JSON passed through ``edit``."""
    shutil.copytree(synthetic_data, root)
    path = root / "annotations" / "panoptic_val.json"
    data = json.loads(path.read_text())
    path.write_text(edit(data) if callable(edit) else edit)
    return root


def test_eval_predictions_stay_in_their_folder_and_respect_overwrite(synthetic_data, tmp_path):
    def escaping(name):
        def edit(data):
            data["annotations"][0]["file_name"] = name
            return json.dumps(data)

        return edit

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    data = _dataset_copy(synthetic_data, tmp_path / "d", escaping("../victim.png"))
    result = run("eval", "--engine", CHECKPOINT, "--data", data, "--limit", 1, "--predictions", tmp_path / "d" / "pred")
    one_line_error(result, "'../victim.png', which leads outside the dataset's folder")
    assert victim.read_bytes() == b"keep me"
    predictions = tmp_path / "pred"
    predictions.mkdir()  # an earlier run's predictions
    (predictions / "predictions.json").write_text("{}")
    (predictions / "old.png").write_text("x")
    evaluate = ("eval", "--engine", CHECKPOINT, "--data", synthetic_data, "--predictions", predictions)
    one_line_error(run(*evaluate, "--limit", 1), "is not empty", "--overwrite")
    table = tmp_path / "table.json"
    table.write_text("{}")
    result = run(*evaluate, "--limit", 1, "--json", table)
    one_line_error(result, "table.json exists")
    assert result.stdout == ""  # refused before evaluating, not after
    result = run(*evaluate, "--limit", 2, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert len(json.loads((predictions / "predictions.json").read_text())["annotations"]) == 2


def test_malformed_dataset_json_is_one_line(synthetic_data, tmp_path):
    """One case through the CLI; tests/test_bad_files.py has the others through the loader."""

    def edit(data):
        data["annotations"][0]["segments_info"][0]["category_id"] = 777
        return json.dumps(data)

    data = _dataset_copy(synthetic_data, tmp_path / "data", edit)
    one_line_error(
        run("eval", "--engine", CHECKPOINT, "--data", data, "--limit", 1),
        "category_id 777, which is not in 'categories'",
    )


def test_bench_refuses_an_existing_json_before_running(tmp_path):
    existing = tmp_path / "bench.json"
    existing.write_text("{}")
    result = run("bench", "--engine", CHECKPOINT, "--iterations", 1, "--json", existing)
    one_line_error(result, "bench.json exists", "--overwrite")
    assert result.stdout == "" and existing.read_text() == "{}"


def test_bad_embeddings_files_are_one_line(tmp_path):
    """Two cases through the CLI; tests/test_bad_files.py has the others through the loader."""
    (tmp_path / "empty.npz").write_bytes(b"")
    one_line_error(
        run("infer", "--engine", CHECKPOINT, "--embeddings", tmp_path / "empty.npz", "--out", tmp_path / "o"),
        "empty.npz is not an embeddings file",
    )
    np.savez(
        tmp_path / "nan.npz",
        embeddings=np.full((2, 64), np.nan, np.float32),
        names=np.array(["a", "b"]),
        is_thing=np.ones(2, bool),
        text_encoder=np.array("x"),
    )
    one_line_error(
        run("infer", "--engine", CHECKPOINT, "--embeddings", tmp_path / "nan.npz", "--out", tmp_path / "o"),
        "NaN or Inf",
    )


def test_small_ones(tmp_path):
    result = run_infer(
        CHECKPOINT, sample_images()[0], tmp_path / "o", "--no-cache", classes="red star, red star, wavy wall",
    )
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [
        "fisa-rt: warning: class names repeat ('red star'): their pixels split between the copies"
    ], result.stderr
    one_line_error(
        run("infer", "--engine", CHECKPOINT, "--vocab", "coco", "--out", tmp_path / "o2"),
        "--vocab coco: no such file, and not a shipped vocabulary (coco-panoptic, ade20k-150, synthetic)",
    )
    (tmp_path / "notes.txt.gz").write_bytes(b"")
    result = run("inspect", tmp_path / "notes.txt.gz")
    one_line_error(result, "cannot tell what")
    assert "--backend" not in result.stderr  # inspect has no such option


def test_a_bad_video_prints_one_line_not_ffmpeg_logs(tmp_path):
    pytest.importorskip("cv2")
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    one_line_error(
        run_infer(CHECKPOINT, video, tmp_path / "o", classes=CLASSES),
        "broken.mp4",
    )
