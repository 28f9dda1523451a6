"""Issue 21 ("Nothing lost, round 2"): each row of the sweep that failed, as a test. Most run in-process
(`fisa_rt.cli.main`, the library) to stay cheap; SIGTERM needs a real process."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from fisa_rt import CheckpointError, InputError
from fisa_rt.atomic import atomic_path, remove_stale_temporaries
from fisa_rt.cli import main
from fisa_rt.data.panoptic import load_panoptic_json
from fisa_rt.errors import PartialFailure
from fisa_rt.export.manifest import read_manifest
from fisa_rt.png import write_png
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime import bench, host_memory
from fisa_rt.vocab import vocabulary as vocab
from fisa_rt.runtime.backends import open_backend
from fisa_rt.atomic import output_folder
from fisa_rt.runtime.folder_run import segment_to_folder
from fisa_rt.runtime.inputs import Source
from fisa_rt.runtime.segmenter import Segmenter

from helpers import EXE

CHECKPOINT = default_checkpoint()
CLASSES = "red star, wavy wall"


def one_line(capsys, code, *phrases):
    """``code`` is exit 2 and stderr one ``fisa-rt: error:`` line holding ``phrases``."""
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("fisa-rt: error:"), (code, err)
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.fixture(scope="module")
def segmenter():
    seg = Segmenter.from_engine(CHECKPOINT, backend="torch", cache_dir="")
    seg.set_vocabulary([n.strip() for n in CLASSES.split(",")])
    return seg


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# --- row 1: SIGTERM, and the temporary files of a killed run --------------------------------------------------


def test_sigterm_mid_folder_is_handled_like_ctrl_c(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        shutil.copy(sample_images()[i % len(sample_images())], photos / f"im{i:02d}.png")
    out = tmp_path / "out"
    command = [str(EXE), "infer", "--engine", CHECKPOINT, "--input", photos, "--classes", CLASSES, "--out", out,
               "--no-cache", "--no-progress", "--task", "semantic"]
    run = subprocess.Popen([str(a) for a in command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(f.endswith("_labels.png") for f in os.listdir(out))):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["fisa-rt: terminated"], stderr
    assert not [f for f in os.listdir(out) if f.startswith(".")], os.listdir(out)


def test_the_next_run_removes_the_temporaries_of_a_dead_one(tmp_path):
    dead = tmp_path / f".im10_overlay.fisa-tmp{_dead_pid()}.png"
    alive = tmp_path / f".im11_overlay.fisa-tmp{os.getpid()}.png"  # a writer at work: kept
    foreign = tmp_path / f".notes.tmp{_dead_pid()}.png"  # not this project's name: kept
    for path in (dead, alive, foreign):
        path.write_bytes(b"partial")
    dead_folder = tmp_path / f".pred.fisa-tmp{_dead_pid()}"  # an eval --predictions run killed mid-way
    dead_folder.mkdir()
    (dead_folder / "val_000000.png").write_bytes(b"partial")
    with output_folder(str(tmp_path)):
        pass
    assert not dead.exists() and alive.exists() and foreign.exists() and not dead_folder.exists()
    assert remove_stale_temporaries(str(tmp_path)) == []


# --- row 2: the no-clobber check and the rename are one step --------------------------------------------------


def test_a_file_written_meanwhile_is_never_replaced(tmp_path):
    target = tmp_path / "x_labels.png"
    with pytest.raises(InputError, match="x_labels.png exists"):
        with atomic_path(str(target), overwrite=False) as tmp:
            open(tmp, "wb").write(b"ours")
            target.write_bytes(b"theirs")  # a concurrent run, between any check and the rename
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["x_labels.png"]
    with atomic_path(str(target), overwrite=True) as tmp:  # --overwrite still replaces
        open(tmp, "wb").write(b"ours")
    assert target.read_bytes() == b"ours"


def test_writers_that_check_first_still_never_replace_a_file_written_after_the_check(tmp_path, monkeypatch):
    """encode-vocab, checkpoints and ONNX exports checked for an existing file, then renamed over whatever was
    there by then: a second `encode-vocab` into the same file replaced the first's silently."""
    import fisa_rt.checkpoint as checkpoint
    from fisa_rt import create_model

    real = np.savez

    def another_writer_meanwhile(f, **fields):
        (tmp_path / "v.npz").write_bytes(b"theirs")
        real(f, **fields)

    monkeypatch.setattr(np, "savez", another_writer_meanwhile)
    vocabulary = vocab.Vocabulary(["a", "b"])
    with pytest.raises(InputError, match="v.npz exists"):
        vocab.save_embeddings(str(tmp_path / "v.npz"), np.eye(2, 4), vocabulary, "sha")
    assert (tmp_path / "v.npz").read_bytes() == b"theirs"
    monkeypatch.undo()

    def another_checkpoint_meanwhile(tensors, tmp, metadata):
        (tmp_path / "m.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(checkpoint, "save_file", another_checkpoint_meanwhile)
    with pytest.raises(InputError, match="m.safetensors exists"):
        checkpoint.save_checkpoint(str(tmp_path / "m.safetensors"), create_model("fisa-tiny"))
    assert (tmp_path / "m.safetensors").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "v.npz"]  # no temporary left


# --- rows 3 and 4: a damaged deflate stream in an .npz -----------------------------------------------------------


def _damage_deflate(path):
    """``path`` rewritten as a compressed .npz whose embeddings member has a corrupt deflate stream."""
    with np.load(path) as data:
        fields = {k: data[k] for k in data.files}
    np.savez_compressed(path, **fields)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("embeddings.npy")
    raw = bytearray(open(path, "rb").read())
    header = info.header_offset  # the local header's own name and extra lengths (its extra is not the directory's)
    start = header + 30 + int.from_bytes(raw[header + 26 : header + 28], "little")
    start += int.from_bytes(raw[header + 28 : header + 30], "little")
    raw[start : start + 16] = b"\xff" * 16
    open(path, "wb").write(bytes(raw))


def test_a_cache_entry_with_a_corrupt_deflate_stream_is_encoded_again(segmenter, tmp_path):
    names = vocab.Vocabulary(["red star", "wavy wall"])
    expected = segmenter.text_encoder.encode(names, str(tmp_path))
    (entry,) = tmp_path.iterdir()
    _damage_deflate(entry)
    with pytest.raises(zlib.error):
        np.load(entry)["embeddings"]
    assert np.array_equal(segmenter.text_encoder.encode(names, str(tmp_path)), expected)
    assert np.array_equal(vocab.load_embeddings(str(entry))[0], expected)  # replaced by a sound one


def test_embeddings_with_a_corrupt_deflate_stream_are_one_line(segmenter, tmp_path, capsys):
    path = str(tmp_path / "bad.npz")
    vocab.save_embeddings(path, segmenter.text, segmenter.vocabulary, "x")
    _damage_deflate(path)
    code = main(["infer", "--engine", CHECKPOINT, "--embeddings", path, "--out", str(tmp_path / "o")])
    one_line(capsys, code, "bad.npz is not an embeddings file")


# --- row 5: a manifest that is not an object ---------------------------------------------------------------------


def test_a_manifest_holding_a_list_is_one_line(tmp_path, capsys):
    engine = tmp_path / "x.onnx"
    engine.write_bytes(b"onnx")
    (tmp_path / "x.onnx.manifest.json").write_text("[]")
    with pytest.raises(CheckpointError, match="holds a list, not an object"):
        read_manifest(str(engine))
    one_line(capsys, main(["inspect", str(engine)]), "not a fisa-rt manifest")
    one_line(capsys, main(["infer", "--engine", str(engine), "--out", str(tmp_path / "o")]), "not a fisa-rt manifest")


INSPECT_AND_INFER, INFER = ("inspect", "infer"), ("infer",)


@pytest.mark.parametrize("edit, message, verbs", [
    (lambda m: m.__setitem__("text_encoder", "enc.onnx"), "text_encoder must be an object, not 'enc.onnx'",
     INSPECT_AND_INFER),
    (lambda m: m["text_encoder"].pop("sha256"), "text_encoder.sha256 must be a string, not None", INSPECT_AND_INFER),
    (lambda m: m.__setitem__("config", {"text": "max"}), "config.text must be an object, not 'max'",
     INSPECT_AND_INFER),
    (lambda m: m.__setitem__("checkpoint", "a.safetensors"), "checkpoint must be an object, not 'a.safetensors'",
     INSPECT_AND_INFER),
    (lambda m: m.__setitem__("sha256", 5), "sha256 must be a string, not 5", INSPECT_AND_INFER),
    (lambda m: m.__setitem__("tensorrt", {"plugin_ptx": []}), "tensorrt.plugin_ptx must be an object, not []",
     INSPECT_AND_INFER),
    # read when the Segmenter is made, not by inspect
    (lambda m: m["config"]["postprocess"].__setitem__("overlap", 1), "unknown keys ['overlap'] in config section",
     INFER),
    (lambda m: m["config"]["resize"].__setitem__("pad", 3), "resize.pad must be a string, got 3", INFER),
    (lambda m: m.__setitem__("input_dtype", "float32"), "says input_dtype float32, its graph takes uint8", INFER),
    (lambda m: m["training_vocabulary"]["is_thing"].append(True), "training_vocabulary: vocabulary has", INFER),
])
def test_a_manifest_field_of_the_wrong_type_is_one_line(artefacts, tmp_path, capsys, edit, message, verbs):
    """Fields edited by hand failed inside infer or inspect with a TypeError, KeyError or AttributeError."""
    for name in ("ort", "text"):
        shutil.copy(artefacts[name], tmp_path)
        shutil.copy(artefacts[name] + ".manifest.json", tmp_path)
    engine = str(tmp_path / os.path.basename(artefacts["ort"]))
    manifest = json.loads(open(engine + ".manifest.json").read())
    edit(manifest)
    open(engine + ".manifest.json", "w").write(json.dumps(manifest))
    if "inspect" in verbs:
        one_line(capsys, main(["inspect", engine]), message)
    one_line(capsys, main(["infer", "--engine", engine, "--classes", CLASSES, "--out", str(tmp_path / "o")]), message)
    assert not (tmp_path / "o").exists()


# --- rows 6 and 14: malformed annotations, and paths that leave the dataset -----------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].__setitem__("segments_info", None), "annotations[0] has 'segments_info' NoneType"),
    (lambda d: d["annotations"][1].__setitem__("file_name", 123), "annotations[1] has file_name 123"),
    (lambda d: d["images"][2].__setitem__("file_name", "../../outside.png"), "images[2] has file_name '../../outside"),
    (lambda d: d["images"][0].__setitem__("file_name", "/etc/hostname"), "leads outside the dataset's folder"),
    (lambda d: d["annotations"][0].__setitem__("file_name", "a/../../x.png"), "leads outside the dataset's folder"),
])
def test_malformed_or_escaping_annotations_are_one_error(synthetic_data, tmp_path, edit, message):
    data = json.loads(open(os.path.join(synthetic_data, "annotations", "panoptic_val.json")).read())
    edit(data)
    path = tmp_path / "panoptic_val.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=str(path).replace(".", r"\.")) as caught:
        load_panoptic_json(str(path))
    assert message in str(caught.value)


# --- row 9: the Python API ----------------------------------------------------------------------------------------


def test_any_strided_array_is_accepted_and_a_file_as_folder_is_an_input_error(segmenter, tmp_path):
    image = load_image(sample_images()[0])
    flipped = segmenter.segment(image[:, ::-1, ::-1])
    assert np.array_equal(flipped.semantic, segmenter.segment(np.ascontiguousarray(image[:, ::-1, ::-1])).semantic)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        flipped.save(str(blocker), "x")
    with pytest.raises(InputError, match="cannot create output folder"):
        flipped.save(str(blocker / "below"), "x")


def test_save_names_a_bad_format_or_argument_and_writes_nothing(segmenter, tmp_path):
    result = segmenter.segment(sample_images()[0])  # panoptic: no instances
    out = tmp_path / "out"
    for formats, message in [
        (["bogus"], "unknown output format 'bogus'; the formats are overlay, labels, panoptic, instances"),
        ("labels,overlay", "formats must be a non-empty list of output formats"),
        ([], "formats must be a non-empty list"),
        (["overlay", "instances"], "output format 'instances' needs a result of task 'instance'; this one holds "
                                   "overlay, labels, panoptic"),
    ]:
        with pytest.raises(InputError, match=message):
            result.save(str(out), "x", formats=formats)
    for folder, stem, message in [
        (str(out), None, "stem must be a path; got NoneType"),
        (str(out), 5, "stem must be a path; got int"),
        (None, "x", "folder must be a path; got NoneType"),
        (str(out), "a\x00b", "stem 'a\\x00b' holds a NUL character"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            result.save(folder, stem)
    assert not out.exists()
    assert result.save(str(out), "x", formats=("labels", "panoptic")) == [
        str(out / "x_labels.png"), str(out / "x_panoptic.png"), str(out / "x_panoptic.json")]
    semantic = segmenter.segment(sample_images()[0], task="semantic")
    assert len(semantic.save(str(out), "s")) == 2  # by default, what the result holds


# --- rows 11, 16 and 17 (empty folder), and issue 20: the folder loop in the library ---------------------------


def test_the_library_folder_loop_skips_counts_writing_and_fails_as_the_cli_does(segmenter, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"\x89PNG broken")
    (photos / "b.jpg").write_bytes(b"")
    lines = []
    with pytest.raises(PartialFailure) as caught:
        segment_to_folder(segmenter, str(photos), str(tmp_path / "none"), task="semantic", log=lines.append)
    assert caught.value.exit_code == 2 and "2 of 2 inputs failed" in str(caught.value)
    assert "nothing was written" in str(caught.value) and "others" not in str(caught.value)
    assert len(lines) == 2 and not (tmp_path / "none").exists()  # no empty folder left
    shutil.copy(sample_images()[0], photos / "c.png")
    written = []
    with pytest.raises(PartialFailure) as caught:
        segment_to_folder(segmenter, str(photos), str(tmp_path / "out"), task="semantic", batch=2,
                          on_result=lambda name, result: written.append(name), log=lines.append)
    assert caught.value.exit_code == 1 and "the others are in" in str(caught.value) and written == ["c"]
    assert segmenter.timings.write > 0 and "write" in segmenter.timings.summary()
    with pytest.raises(InputError, match=r"exists.*; pass overwrite=True \(--overwrite\)"):  # refused before any work
        segment_to_folder(segmenter, str(photos / "c.png"), str(tmp_path / "out"))


def test_a_run_never_replaces_its_own_inputs(segmenter, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(sample_images()[0], photos / "a.png")
    shutil.copy(sample_images()[1], photos / "a_overlay.png")  # the user's photo, named as a.png's overlay
    before = _files(photos)
    os.symlink(photos, tmp_path / "link")
    for source, out in [(photos, photos), (photos / "*.png", photos), (photos, tmp_path / "link")]:
        with pytest.raises(InputError, match=f"output {out / 'a_overlay.png'} would replace an input of this run"):
            segment_to_folder(segmenter, str(source), str(out), overwrite=True)
    code = main(["infer", "--engine", CHECKPOINT, "--input", str(photos), "--classes", CLASSES, "--out",
                 str(photos), "--overwrite", "--no-cache"])
    one_line(capsys, code, "a_overlay.png would replace an input of this run")
    assert _files(photos) == before
    (photos / "a_overlay.png").unlink()
    assert segment_to_folder(segmenter, str(photos), str(photos), task="semantic").written == ["a"]
    assert segment_to_folder(segmenter, str(photos / "a.png"), str(photos), task="semantic",
                             overwrite=True).written == ["a"]


def test_the_library_folder_loop_names_a_bad_argument(segmenter, tmp_path):
    scene = sample_images()[0]
    for arguments, message in [
        ((segmenter, None, str(tmp_path / "o")), "source must be a path; got NoneType"),
        ((segmenter, 0, str(tmp_path / "o")), "source must be a path; got int"),
        ((segmenter, [scene], str(tmp_path / "o")), "source must be a path; got list"),
        ((segmenter, scene, None), "out must be a path; got NoneType"),
        ((None, scene, str(tmp_path / "o")), "segmenter must be a Segmenter"),
    ]:
        with pytest.raises(InputError, match=message):
            segment_to_folder(*arguments)
    assert os.listdir(tmp_path) == []


def test_the_cli_exits_2_when_every_input_fails(tmp_path, capsys):
    photos = tmp_path / "allbad"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        (photos / name).write_bytes(b"no image")
    code = main(["infer", "--engine", CHECKPOINT, "--input", str(photos), "--classes", CLASSES, "--out",
                 str(tmp_path / "o"), "--no-cache", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("2 of 2 inputs failed (each named above); nothing was written"), err
    assert not (tmp_path / "o").exists()


# --- row 12: --json that cannot be written, refused before the run ------------------------------------------------


def test_an_unwritable_json_is_refused_before_running(synthetic_data, tmp_path, capsys):
    code = main(["eval", "--engine", CHECKPOINT, "--data", synthetic_data, "--json", str(tmp_path / "no" / "r.json")])
    one_line(capsys, code, "its folder", "does not exist")
    code = main(["bench", "--engine", CHECKPOINT, "--json", str(tmp_path / "nodir" / "b.json")])
    assert capsys.readouterr().out == ""  # refused, not run
    assert code == 2


# --- row 13: eval never writes predictions into the dataset -------------------------------------------------------


def test_eval_refuses_predictions_inside_the_dataset(synthetic_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    ground_truth = data / "panoptic" / "val"
    before = {p.name: p.read_bytes() for p in ground_truth.iterdir()}
    for predictions in (ground_truth, data / "elsewhere"):
        code = main(["eval", "--engine", CHECKPOINT, "--data", str(data), "--limit", "2", "--predictions",
                     str(predictions), "--overwrite"])
        one_line(capsys, code, "is inside the dataset", "could replace its ground truth")
    assert {p.name: p.read_bytes() for p in ground_truth.iterdir()} == before


def test_no_output_may_be_a_file_the_run_reads_even_with_overwrite(synthetic_data, tmp_path, capsys):
    """A flag sweep replaced the embedded checkpoint with eval's JSON (`--json` = `--engine`, `--overwrite`), and
    the same for the dataset's annotations, encode-vocab's output and a training run's --init."""
    checkpoint = tmp_path / "c.safetensors"
    shutil.copy(CHECKPOINT, checkpoint)
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    annotations = data / "annotations" / "panoptic_val.json"
    before = checkpoint.read_bytes(), annotations.read_bytes()
    runs = [
        (["eval", "--engine", checkpoint, "--data", data, "--json", checkpoint], "it is --engine"),
        (["eval", "--engine", checkpoint, "--data", data, "--json", annotations], "it is inside --data"),
        (["encode-vocab", "--engine", checkpoint, "--vocab", "synthetic", "--out", checkpoint], "it is --engine"),
        (["bench", "--engine", checkpoint, "--json", checkpoint], "it is --engine"),
        (["train", "adapt", "--data", data, "--init", checkpoint, "--out", checkpoint, "--steps", "1"],
         "it is --init"),
    ]
    for argv, message in runs:
        one_line(capsys, main([str(a) for a in argv] + ["--overwrite"]), message, "which this run reads")
    assert (checkpoint.read_bytes(), annotations.read_bytes()) == before


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_failed_eval_leaves_no_partial_predictions(synthetic_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    (data / "images" / "val" / "val_000001.png").write_bytes(b"")  # sample 1 cannot be read
    runs = tmp_path / "runs"
    runs.mkdir()
    evaluate = ["eval", "--engine", CHECKPOINT, "--data", str(data), "--batch-size", "1", "--predictions",
                str(runs / "pred")]
    one_line(capsys, main(evaluate), "cannot read sample 1")
    assert os.listdir(runs) == []  # neither sample 0's PNG nor an empty folder
    assert main(evaluate + ["--limit", "1"]) == 0
    earlier = _files(runs / "pred")
    one_line(capsys, main(evaluate + ["--overwrite"]), "cannot read sample 1")
    assert os.listdir(runs) == ["pred"] and _files(runs / "pred") == earlier  # as the earlier run left it


def test_eval_overwrite_replaces_the_predictions_folder_wholly(synthetic_data, tmp_path, capsys):
    predictions = tmp_path / "pred"
    evaluate = ["eval", "--engine", CHECKPOINT, "--data", synthetic_data, "--predictions", str(predictions)]
    assert main(evaluate + ["--limit", "3"]) == 0
    assert main(evaluate + ["--limit", "1", "--overwrite"]) == 0
    written = json.loads((predictions / "predictions.json").read_text())["annotations"]
    assert sorted(os.listdir(predictions)) == ["predictions.json", written[0]["file_name"]]
    assert sorted(os.listdir(tmp_path)) == ["pred"]  # nor a temporary or set-aside folder beside it
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    code = main(["eval", "--engine", CHECKPOINT, "--data", synthetic_data, "--predictions", str(notes), "--limit",
                 "1", "--overwrite"])
    one_line(capsys, code, "holds no predictions.json", "choose a new or empty folder")
    assert _files(notes) == {"keep.txt": b"mine"}


# --- row 15: memory ------------------------------------------------------------------------------------------------


def test_bench_refuses_a_batch_or_vocabulary_beyond_memory(monkeypatch):
    monkeypatch.setattr(host_memory, "available_memory", lambda: 2 << 30)
    with pytest.raises(InputError, match=r"--batch 100000 with 150 classes needs at least [0-9.]+ GiB"):
        bench.benchmark(CHECKPOINT, "torch", 100000, 150, 0, 1)
    with pytest.raises(InputError, match="with 10000000 classes needs at least"):
        bench.benchmark(CHECKPOINT, "torch", 1, 10_000_000, 0, 1)


def test_infer_refuses_a_batch_beyond_memory_for_the_images_it_has(monkeypatch, tmp_path, capsys):
    # the bound of the 4 sample scenes at once, fisa-tiny on the CPU with the synthetic set's 32 classes
    four = host_memory.host_bytes(4, 32, 128, 64, 20, True)
    monkeypatch.setattr(host_memory, "available_memory", lambda: four - 1)
    out = tmp_path / "out"
    code = main(["infer", "--engine", CHECKPOINT, "--vocab", "synthetic", "--out", str(out), "--batch", "64"])
    one_line(capsys, code, "--batch 4 with 32 classes needs at least", "use a smaller --batch or fewer classes")
    assert not out.exists()
    monkeypatch.setattr(host_memory, "available_memory", lambda: four)
    assert main(["infer", "--engine", CHECKPOINT, "--vocab", "synthetic", "--out", str(out), "--batch", "64",
                 "--no-progress"]) == 0


# --- row 17: messages that say what is wrong -----------------------------------------------------------------------


def test_messages_say_what_is_wrong(tmp_path, capsys):
    gifs = tmp_path / "gifs"
    gifs.mkdir()
    Image.open(sample_images()[0]).convert("P").save(gifs / "a.gif")
    assert Source(str(gifs)).names == ["a"]
    (tmp_path / "x.png").mkdir()
    with pytest.raises(InputError, match="x.png is a folder, not a file"):
        load_image(str(tmp_path / "x.png"))
    os.symlink("loop.png", tmp_path / "loop.png")
    with pytest.raises(InputError, match="loop.png is a symbolic link that loops or leads nowhere"):
        load_image(str(tmp_path / "loop.png"))
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="pipe.png is not a regular file"):
        load_image(str(tmp_path / "pipe.png"))
    from fisa_rt.fcclip import _load_tensors
    from fisa_rt.runtime.inspect import describe

    with pytest.raises(InputError, match="artefact .*pipe.png is not a regular file"):
        describe(str(tmp_path / "pipe.png"))
    with pytest.raises(CheckpointError, match="checkpoint .* is a folder, not a file"):
        _load_tensors(str(tmp_path), "checkpoint")
    with pytest.raises(InputError, match="vocabulary file .* is a folder"):
        vocab.resolve(vocab=str(gifs))
    with pytest.raises(InputError, match="engine nope does not exist"):
        open_backend("nope")
    lists = tmp_path / "v.json"
    lists.write_text('[["cat"], ["dog"]]')
    with pytest.raises(InputError, match="v.json is not a vocabulary file: expected an object"):
        vocab.resolve(vocab=str(lists))
    out = tmp_path / "never" / "made" / "here"
    one_line(capsys, main(["infer", "--engine", CHECKPOINT, "--vocab", str(lists), "--out", str(out)]), "v.json")
    assert not (tmp_path / "never").exists()  # a failed run leaves no empty folder, nor the parents it made
    for overwrite in ([], ["--overwrite"]):  # not "pass --overwrite", which then failed after the encoding
        code = main(["encode-vocab", "--engine", CHECKPOINT, "--classes", "a", "--out", str(tmp_path), *overwrite])
        one_line(capsys, code, "is a folder")


# --- output writing: lossless, and the PNGs any decoder reads ------------------------------------------------------


@pytest.mark.parametrize("shape, dtype", [((1, 1, 3), np.uint8), ((301, 257, 3), np.uint8), ((97, 1203), np.uint16),
                                          ((5, 7), np.uint8), ((2, 2), np.uint16)])
def test_written_pngs_decode_to_the_same_pixels(monkeypatch, shape, dtype):
    import fisa_rt.png

    monkeypatch.setattr(fisa_rt.png, "BAND_BYTES", 4096)  # many bands, to check how they join
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    pixels[: shape[0] // 2] //= 7  # runs that compress
    buffer = io.BytesIO()
    write_png(buffer, pixels)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    assert decoded.dtype == dtype and np.array_equal(decoded, pixels)
    data = buffer.getvalue()
    length = int.from_bytes(data[33:37], "big")
    crc = int.from_bytes(data[41 + length : 45 + length], "big")
    assert data[37:41] == b"IDAT" and zlib.crc32(data[37 : 41 + length]) == crc
    zlib.decompress(data[41 : 41 + length])  # checks the stream's Adler-32
