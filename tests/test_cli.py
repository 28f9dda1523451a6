import json
import os
import pathlib
import subprocess

import pytest

from fisa_rt.config import list_models
from fisa_rt.runtime.assets import sample_images
from helpers import EXE, one_line_error, run_cli as run


def test_models_lists_every_config():
    result = run("models")
    assert result.returncode == 0, result.stderr
    for name in ("fisa-tiny", "fisa-vit-b16", "fisa-convnext-l"):
        assert name in result.stdout


def test_models_simo_counts_every_config_without_log_lines():
    """open_clip's "No pretrained weights loaded" came once per open_clip architecture; the counts are unchanged
    by building on the meta device (fisa-vit-b16's, as on real memory)."""
    result = run("models", "--simo")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "trainable 5,713,667 of 169,507,652 parameters (3.371%)" in result.stdout
    assert result.stdout.count("trainable") == len(result.stdout.splitlines()) == len(list_models())


def test_config_prints_valid_json():
    result = run("config", "fisa-tiny")
    assert result.returncode == 0
    assert json.loads(result.stdout)["name"] == "fisa-tiny"


def test_user_error_is_one_line_without_traceback():
    result = run("config", "fisa-huge")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown model config 'fisa-huge'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("verb", [["--debug", "config", "fisa-huge"], ["config", "fisa-huge", "--debug"],
                                  ["infer", "--engine", "{tmp}/none.onnx", "--vocab", "synthetic", "--out", "{tmp}/o",
                                   "--debug"]])
def test_debug_shows_the_traceback(verb, tmp_path):
    """--debug before or after the verb, as build_engine.py takes it anywhere."""
    result = run(*(arg.format(tmp=tmp_path) for arg in verb))
    assert result.returncode == 2 and "Traceback" in result.stderr, result.stderr  # a user error stays one (exit 2)


def test_debug_after_the_verb_is_in_its_help_and_no_debug_there_turns_it_off():
    assert "--debug, --no-debug" in run("infer", "--help").stdout
    result = run("--debug", "config", "fisa-huge", "--no-debug")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_closed_pipe_ends_quietly():
    """`fisa-rt models | head -1`: the reader is gone before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([str(EXE), "models"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert result.stderr == "" and result.returncode == 141


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("verb", [["models"], ["config", "fisa-tiny"]])
def test_output_that_cannot_be_written_is_one_line(verb):
    with open("/dev/full", "w") as full:  # every write fails: No space left on device
        result = subprocess.run([str(EXE), *verb], stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr == "fisa-rt: error: cannot write standard output: No space left on device\n"


@pytest.mark.parametrize("verb", ["models", "config", "make-data", "train", "eval", "demo"])
def test_every_verb_has_help_with_an_example(verb):
    result = run(verb, "--help")
    assert result.returncode == 0 and "example:" in result.stdout


def test_make_data_writes_coco_panoptic_and_refuses_to_overwrite(tmp_path):
    out = str(tmp_path / "data")
    result = run("make-data", "--out", out, "--train", "2", "--val", "1", "--image-size", "32")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "annotations" / "panoptic_train.json").exists()
    again = run("make-data", "--out", out, "--train", "2", "--val", "0", "--image-size", "32")
    one_line_error(again, "exists", "--overwrite")
    nothing = run("make-data", "--out", str(tmp_path / "none"), "--train", "0", "--val", "0")
    assert nothing.returncode == 2 and "nothing to make" in nothing.stderr and not (tmp_path / "none").exists()


def test_make_data_writes_the_broad_world_with_a_pretraining_split(tmp_path):
    out = tmp_path / "broad"
    result = run("make-data", "--out", str(out), "--world", "broad", "--pretrain", "2", "--train", "1", "--val", "1",
                 "--image-size", "32")
    assert result.returncode == 0, result.stderr
    pretrain = json.loads((out / "annotations" / "panoptic_pretrain.json").read_text())
    assert len(pretrain["images"]) == 2 and len(pretrain["categories"]) == 72


def test_eval_prints_the_table_and_writes_json(synthetic_data, generator_checkpoint, tmp_path):
    out = tmp_path / "results.json"
    result = run("eval", "--engine", generator_checkpoint, "--data", synthetic_data, "--limit", "4", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "held_out" in result.stdout and "PQ" in result.stdout
    assert set(json.loads(out.read_text())) == {"all", "things", "stuff", "seen", "held_out"}
    again = run("eval", "--engine", generator_checkpoint, "--data", synthetic_data, "--limit", "1", "--json", str(out))
    assert again.returncode == 2 and "exists; pass overwrite=True (--overwrite)" in again.stderr


def test_eval_of_a_split_without_images_is_an_error_not_zero(synthetic_data, generator_checkpoint, tmp_path):
    data = json.loads((pathlib.Path(synthetic_data) / "annotations" / "panoptic_val.json").read_text())
    (tmp_path / "annotations").mkdir()
    empty = {**data, "images": [], "annotations": []}
    (tmp_path / "annotations" / "panoptic_val.json").write_text(json.dumps(empty))
    result = run("eval", "--engine", generator_checkpoint, "--data", str(tmp_path))
    assert result.returncode == 2 and "no images to evaluate" in result.stderr and "PQ" not in result.stdout


def test_eval_refuses_ground_truth_whose_png_and_json_disagree(synthetic_data, generator_checkpoint, tmp_path):
    import shutil

    data = str(tmp_path / "data")
    shutil.copytree(synthetic_data, data)
    path = pathlib.Path(data) / "annotations" / "panoptic_val.json"
    annotations = json.loads(path.read_text())
    dropped = annotations["annotations"][0]["segments_info"].pop()
    path.write_text(json.dumps(annotations))
    result = run("eval", "--engine", generator_checkpoint, "--data", data, "--limit", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"segment ids [{dropped['id']}] are in the PNG but not in the JSON" in result.stderr


def test_demo_writes_overlays_of_the_bundled_scenes(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    overlays = sorted(out.glob("*_overlay.png"))
    assert len(overlays) >= 3
    from PIL import Image

    with Image.open(overlays[0]) as im:
        assert im.width > im.height  # image plus legend strip
    again = run("demo", "--out", str(out))
    assert again.returncode == 2 and "exists; pass overwrite=True (--overwrite)" in again.stderr
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    failed = run("demo", "--out", str(tmp_path / "partial"), "--input", sample_images()[0], str(text))
    # the good image's overlay was left behind by the run that failed
    assert failed.returncode == 2 and "notes.png" in failed.stderr and not (tmp_path / "partial").exists()


@pytest.mark.parametrize("argv,option", [
    (["infer", "--engine", "build", "--input", "", "--classes", "cat", "--out"], "--input"),
    (["infer", "--engine", "build", "--embeddings", "", "--out"], "--embeddings"),
    (["demo", "--classes", "", "--out"], "--classes"),
])
def test_an_empty_argument_is_refused_not_taken_as_not_given(tmp_path, argv, option):
    result = run(*argv, tmp_path / "o")  # an unset shell variable, e.g. --input "$PHOTOS"
    assert result.returncode == 2 and f"argument {option}: is empty" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["--engine", "build", "--model", "fisa"], "--model applies only with --server"),
    (["--engine", "build", "--protocol", "grpc"], "--protocol applies only with --server"),
    (["--server", "localhost:1", "--threads", "2", "--compile"], "--threads, --compile apply only with --engine"),
])
def test_options_of_the_other_mode_are_refused_not_ignored(tmp_path, argv, message):
    result = run("infer", *argv, "--classes", "cat", "--out", tmp_path / "o")
    assert result.returncode == 2 and message in result.stderr and not any(tmp_path.iterdir())


def test_demo_gives_images_of_one_name_their_own_overlays(tmp_path):
    inputs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        inputs.append(tmp_path / folder / "x.png")
        inputs[-1].write_bytes(open(sample_images()[0], "rb").read())
    out = tmp_path / "o"
    result = run("demo", "--input", *map(str, inputs), "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x_png_2_overlay.png", "x_png_overlay.png"]
    (out / "x_png_overlay.png").unlink()
    again = run("demo", "--input", *map(str, inputs), "--out", str(out))  # refused before anything is written
    assert again.returncode == 2 and "x_png_2_overlay.png exists" in again.stderr
    assert not (out / "x_png_overlay.png").exists()


@pytest.mark.parametrize("content,message", [(None, "does not exist"), (b"GIF89a-broken", "cannot read image")])
def test_demo_rejects_missing_and_corrupt_images(tmp_path, content, message):
    image = tmp_path / "input.png"
    if content is not None:
        image.write_bytes(content)
    result = run("demo", "--input", str(image), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
