"""Damaged, foreign or interrupted files: embeddings, the embeddings cache, dataset JSON, training state,
ONNX artefacts; and writes that leave either the whole new file or the old one, never a partial one."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fisa_rt import CheckpointError, InputError
from fisa_rt.atomic import write_json
from fisa_rt.data.panoptic import PanopticDataset
from fisa_rt.errors import FisaWarning
from fisa_rt.export.manifest import write_manifest
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.train.trainer import TrainConfig, _read_state, _restore_state, _save_state
from fisa_rt.vocab import vocabulary as vocab

from helpers import one_line_error, run_cli as run, run_infer

CHECKPOINT = default_checkpoint()


def _npz(path, embeddings, names=("a", "b"), is_thing=None):
    np.savez(
        path,
        embeddings=embeddings,
        names=np.array(names),
        is_thing=np.ones(np.shape(names), bool) if is_thing is None else np.array(is_thing),
        text_encoder=np.array("x"),
    )
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"") and None, "is not an embeddings file"),
        (
            lambda p: p.write_bytes(open(_npz(p.with_name("ok.npz"), np.ones((2, 4), np.float32)), "rb").read()[:60])
            and None,
            "is not an embeddings file",
        ),
        (
            lambda p: np.save(p.with_suffix(".npy"), np.ones((2, 4), np.float32))
            or os.replace(p.with_suffix(".npy"), p),
            "single array",
        ),
        (lambda p: _npz(p, np.ones((1, 4), np.float32), names="a"), "is not an embeddings file"),
        (lambda p: _npz(p, np.full((2, 4), np.nan, np.float32)), "NaN or Inf"),
        (lambda p: _npz(p, np.array([[1, 0], [np.inf, 0]], np.float32)), "NaN or Inf values (row 1)"),
        (lambda p: _npz(p, np.array([[1, 0], [0, 0]], np.float32)), "row 1 is all zeros"),
        (lambda p: _npz(p, np.ones((2, 4), np.int64)), "must be floating point"),
        (lambda p: _npz(p, np.ones((3, 4), np.float32)), "do not match 2 classes"),
        (lambda p: _npz(p, np.ones((2, 4)) * 1e300), "values beyond float32's range (row 0)"),  # inf as float32
        (lambda p: _npz(p, np.ones((2, 4)), is_thing=["False", "x"]), "is_thing of 'a' is 'False'"),  # not true
    ],
)
def test_bad_embeddings_files_are_input_errors(tmp_path, make, message):
    path = tmp_path / "vocab.npz"
    make(path)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vocab.load_embeddings(str(path))


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter.from_engine(CHECKPOINT, backend="torch", cache_dir="")


def test_set_vocabulary_refuses_embeddings_that_would_match_nothing(segmenter):
    D = segmenter.backend.embed_dim
    for embeddings, message in [
        (np.full((2, D), np.nan), "NaN"),
        (np.zeros((2, D), np.float32), "all zeros"),
        (np.ones((2, D), np.int32), "floating point"),
        (np.ones((3, D), np.float32), "do not match 2"),
        (np.ones((2, D)) * 1e300, "beyond float32's range"),
        (np.ones((2, D)) * 1e-300, "all zeros in float32"),
    ]:
        with pytest.raises(InputError, match=message):
            segmenter.set_vocabulary(["a", "b"], embeddings)
    with pytest.raises(InputError, match="classes must be a list of class names or a Vocabulary; got bytes"):
        segmenter.set_vocabulary(b"cat")  # not the classes 99, 97, 116


def test_set_vocabulary_keeps_its_own_copy_and_unit_rows(segmenter):
    image = sample_images()[0]
    names = vocab.Vocabulary(["red star", "blue circle", "wavy wall"])
    segmenter.set_vocabulary(names)
    text, expected = segmenter.text.copy(), segmenter.segment(image)
    found = [s["class"] for s in expected.segments()]
    assert found  # two segments; "nothing" with the rows scaled by 10 before they were normalised
    names.names.append("extra")  # the caller's object, changed afterwards
    names.is_thing[0] = False
    assert segmenter.vocabulary.names == ["red star", "blue circle", "wavy wall"] and segmenter.vocabulary.is_thing[0]
    for scale in (10.0, 1e-30):  # the logits are cosine similarities: a scaled row is the same class
        segmenter.set_vocabulary(["red star", "blue circle", "wavy wall"], text * scale)
        np.testing.assert_allclose(segmenter.text, text, rtol=1e-6)
        result = segmenter.segment(image)
        assert [s["class"] for s in result.segments()] == found
        np.testing.assert_array_equal(result.semantic, expected.semantic)


def test_class_names_cut_by_the_text_encoder_are_named(segmenter):
    long = "a red star " + "very " * 40
    with pytest.warns(UserWarning, match=r"longer than the text encoder's 32 tokens are cut \('a red star very"):
        segmenter.set_vocabulary([long + "big", long + "small", "wavy wall"])


def test_a_damaged_cache_entry_is_re_encoded_and_replaced(segmenter, tmp_path):
    segmenter.cache_dir = str(tmp_path / "cache")
    segmenter.set_vocabulary(["red star", "wavy wall"])
    expected = segmenter.text.copy()
    (entry,) = [tmp_path / "cache" / f for f in os.listdir(tmp_path / "cache")]
    good = entry.read_bytes()
    for damage in (b"", good[: len(good) // 2], "wider", "synonym axis"):
        if isinstance(damage, bytes):
            entry.write_bytes(damage)
        else:  # a whole entry of another shape: every later run failed on it, the width never re-encoded
            rows = np.concatenate([expected, expected[:, :1]], 1) if damage == "wider" else expected[:, None]
            vocab.save_embeddings(str(entry), rows, vocab.Vocabulary(["red star", "wavy wall"]),
                                  segmenter.text_encoder.sha256, overwrite=True)
        segmenter.set_vocabulary(["red star", "wavy wall"])
        np.testing.assert_array_equal(segmenter.text, expected)
        np.testing.assert_array_equal(vocab.load_embeddings(str(entry))[0], expected)  # replaced by a whole entry
    entry.unlink()
    entry.mkdir()  # a directory where the entry belongs: cannot be replaced, so a warning and no cache
    with pytest.warns(UserWarning, match="cannot write the embeddings cache"):
        segmenter.set_vocabulary(["red star", "wavy wall"])
    np.testing.assert_array_equal(segmenter.text, expected)


def test_a_cache_folder_that_is_a_file_costs_one_warning_line(tmp_path):
    home = tmp_path / "cache-home"
    home.write_text("not a folder")
    result = run_infer(
        CHECKPOINT, sample_images()[0], tmp_path / "o", classes="red star, wavy wall", task="semantic", cache=home,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        line
        for line in result.stderr.strip().splitlines()
        if line.startswith("fisa-rt: warning: cannot write the embeddings cache")
    ]
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "edit, message",
    [
        ("{not json", "cannot read"),
        ("[]", "holds a list"),
        ({"images": [{"id": 0}]}, "images[0] has no 'file_name'"),
        ({"categories": None}, "no 'categories' list"),
        ("annotation-image", "image_id 999, which is not in 'images'"),
        ("segment-category", "category_id 777, which is not in 'categories'"),
    ],
)
def test_malformed_dataset_json_is_an_input_error(synthetic_data, tmp_path, edit, message):
    root = tmp_path / "data"
    shutil.copytree(os.path.join(synthetic_data, "annotations"), root / "annotations")
    path = root / "annotations" / "panoptic_val.json"
    data = json.loads(path.read_text())
    if edit == "annotation-image":
        data["annotations"][0]["image_id"] = 999
    elif edit == "segment-category":
        data["annotations"][0]["segments_info"][0]["category_id"] = 777
    elif isinstance(edit, dict):
        data.update(edit)
    path.write_text(edit if isinstance(edit, str) and edit[0] in "{[" else json.dumps(data))
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PanopticDataset(str(root), "val", 64, augment=False)


def test_a_corrupt_or_foreign_training_state_is_refused(tmp_path):
    params = {"w": torch.nn.Parameter(torch.ones(3))}
    optimizer = torch.optim.AdamW(params.values())
    state = str(tmp_path / "out.safetensors.state.safetensors")
    cfg = TrainConfig(stage="clip", data=str(tmp_path), out=str(tmp_path / "out.safetensors"), steps=10)
    open(state, "wb").write(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable training state"):
        _read_state(state, cfg)
    for other in (
        {"w": torch.nn.Parameter(torch.ones(4))},
        {"v": torch.nn.Parameter(torch.ones(3))},
        {"w": torch.nn.Parameter(torch.ones(3)), "extra": torch.nn.Parameter(torch.ones(1))},
    ):
        _save_state(state, 1, other, torch.optim.AdamW(other.values()), [1.0], cfg)
        with pytest.raises(CheckpointError, match="another model, stage or --trainable"):
            _restore_state(state, _read_state(state, cfg)[2], params, optimizer)
    assert torch.equal(params["w"].detach(), torch.ones(3))  # untouched by the refused states
    _save_state(state, 2, params, optimizer, [1.0, 0.5], cfg)
    step, losses, tensors = _read_state(state, cfg)
    _restore_state(state, tensors, params, optimizer)
    assert (step, losses) == (2, [1.0, 0.5])


def test_a_training_state_with_non_finite_values_is_refused(tmp_path):
    params = {"w": torch.nn.Parameter(torch.tensor([1.0, float("nan")]))}
    state = str(tmp_path / "out.safetensors.state.safetensors")
    cfg = TrainConfig(stage="clip", data=str(tmp_path), out=str(tmp_path / "out.safetensors"), steps=10)
    _save_state(state, 1, params, torch.optim.AdamW(params.values()), [1.0], cfg)
    with pytest.raises(CheckpointError, match="cannot resume from .*its tensor 'param/w' holds NaN or infinite values"
                                              r".*pass overwrite=True \(--overwrite\)"):
        _read_state(state, cfg)


def test_train_with_a_corrupt_state_is_one_line(synthetic_data, tmp_path):
    out = tmp_path / "clip.safetensors"
    (tmp_path / "clip.safetensors.state.safetensors").write_bytes(b"garbage")
    one_line_error(
        run("train", "clip", "--data", synthetic_data, "--out", out, "--steps", 1, "--batch-size", 2, "--no-progress"),
        "cannot resume from",
        "--overwrite",
    )


def _onnx_file(path, inputs, kind, **manifest):
    """A tiny ONNX graph (Cast of each input) with a fisa-rt manifest, standing in for an artefact."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", [name], [f"{name}_out"], to=TensorProto.FLOAT) for name, _, _ in inputs],
        "g",
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape) for name, _, shape in inputs],
    )
    # IR 8, as torch writes at opset 17 (onnx's own default, 14 in onnx 1.23, is beyond ONNX Runtime 1.23's 11)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    write_manifest(str(path), {"kind": kind, **manifest})
    return path


def test_inspect_and_infer_on_odd_onnx_files(tmp_path):
    from onnx import TensorProto

    text = _onnx_file(
        tmp_path / "m.text.onnx",
        [("tokens", TensorProto.INT64, ["prompts", 32])],
        "text-encoder",
        model="fisa-tiny",
        templates="vild",
        context_length=32,
        embed_dim=64,
        tokenizer="bpe.txt.gz",
        checkpoint={"file": "m.safetensors"},
    )
    result = run("inspect", text)
    assert (
        result.returncode == 0 and "None" not in result.stdout and "text encoder of model fisa-tiny" in result.stdout
    ), result.stdout
    image = {
        "model": "fisa-tiny",
        "image_size": 128,
        "embed_dim": 64,
        "templates": "vild",
        "context_length": 32,
        "flavour": "portable",
        "backend": "onnx",
    }
    unrelated = _onnx_file(tmp_path / "other.onnx", [("x", TensorProto.FLOAT, [1, 3])], "image-model", **image)
    one_line_error(run("infer", "--engine", unrelated, "--classes", "a", "--out", tmp_path / "o"), "takes inputs ['x']")
    one_line_error(
        run("infer", "--engine", unrelated, "--backend", "tensorrt", "--classes", "a", "--out", tmp_path / "o"),
        "artefact of the onnxruntime backend",
    )
    assert (
        "were written"
        not in run("infer", "--engine", unrelated, "--backend", "tensorrt", "--out", tmp_path / "o").stderr
    )
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(unrelated.read_bytes()[:40])
    shutil.copy(f"{unrelated}.manifest.json", f"{corrupt}.manifest.json")
    one_line_error(run("inspect", corrupt), "is not a readable ONNX file")


def test_an_image_model_manifest_lacking_runtime_fields_is_one_error(tmp_path):
    from onnx import TensorProto

    from fisa_rt.export.manifest import read_checked_manifest, read_manifest

    model = _onnx_file(
        tmp_path / "m.onnx",
        [("image", TensorProto.UINT8, [1, 3, 128, 128]), ("text", TensorProto.FLOAT, ["classes", 64])],
        "image-model",
        model="fisa-tiny",
        image_size=128,
        backend="onnx",
        flavour="portable",
    )
    with pytest.raises(CheckpointError, match=r"m.onnx.manifest.json lacks embed_dim, templates, context_length; rebu"):
        read_checked_manifest(str(model))
    assert read_manifest(str(model))["image_size"] == 128  # inspect still describes it
    one_line_error(
        run("infer", "--engine", model, "--classes", "a", "--out", tmp_path / "o"),
        "m.onnx.manifest.json lacks embed_dim, templates, context_length",
        "python export/build_engine.py",
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", "abc", "image_size must be a whole number > 0, not 'abc'"),
        ("image_size", 0, "image_size must be a whole number > 0, not 0"),
        ("embed_dim", 64.0, "embed_dim must be a whole number > 0, not 64.0"),
        ("templates", ["vild"], "templates must be the name of a prompt-template set, not \\['vild'\\]"),
        ("context_length", True, "context_length must be a whole number > 0, not True"),
    ],
)
def test_a_hand_edited_manifest_field_is_one_error_naming_it(tmp_path, field, value, message):
    from onnx import TensorProto

    from fisa_rt.export.manifest import read_checked_manifest

    image = {"model": "fisa-tiny", "image_size": 128, "embed_dim": 64, "templates": "vild", "context_length": 32}
    model = _onnx_file(tmp_path / "m.onnx", [("image", TensorProto.UINT8, [1, 3, 128, 128])], "image-model",
                       **{**image, field: value})
    with pytest.raises(CheckpointError, match=f"manifest .*m.onnx.manifest.json: {message}; rebuild"):
        read_checked_manifest(str(model))


def test_interrupted_writes_leave_no_partial_file(tmp_path, monkeypatch):
    """SIGINT in the middle of a PNG or JSON write: the old file (or none) stays, and no temporary file."""
    segmenter = Segmenter.from_engine(CHECKPOINT, backend="torch", cache_dir="")
    segmenter.set_vocabulary(["red star", "wavy wall"])
    result = segmenter.segment(sample_images()[0])
    out = tmp_path / "out"
    written = result.save(str(out), "scene")
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    import fisa_rt.png

    real_write = fisa_rt.png.write_png

    def interrupted_write(file, pixels, *args, **kwargs):
        real_write(file, pixels, *args, **kwargs)
        file.truncate(33)  # as far as the write got
        raise KeyboardInterrupt

    monkeypatch.setattr(fisa_rt.png, "write_png", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        result.save(str(out), "scene", overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        result.save(str(out), "fresh")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before and len(written) == 4
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"scene\S* exists; pass overwrite=True \(--overwrite\)"):
        result.save(str(out), "scene")

    def interrupted_dump(data, f, **kwargs):
        f.write('{"partial": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted_dump)
    target = tmp_path / "report.json"
    target.write_text('{"old": 1}')
    with pytest.raises(KeyboardInterrupt):
        write_json(str(target), {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1} and sorted(os.listdir(tmp_path)) == ["out", "report.json"]


def test_results_stay_inside_their_folder_and_legends_stay_narrow(tmp_path):
    segmenter = Segmenter.from_engine(CHECKPOINT, backend="torch", cache_dir="")
    with pytest.warns(FisaWarning, match="longer than the text encoder's 32 tokens are cut"):
        segmenter.set_vocabulary(["x" * 10_000, "wavy wall"])
    result = segmenter.segment(sample_images()[0], task="semantic")
    for stem in ("../escape", "sub/name", "", ".."):
        with pytest.raises(InputError, match="must be a plain name"):
            result.save(str(tmp_path / "out"), stem)
    assert not (tmp_path / "escape_overlay.png").exists()
    assert result.overlay().width < 128 + 400  # 40 characters at most, not 50,000 pixels of legend


def test_ctrl_c_during_infer_leaves_only_whole_files(tmp_path):
    """SIGINT while a folder is being written: exit 130 with one line, and every file there is whole."""
    import signal
    import subprocess
    import time

    from helpers import EXE

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        shutil.copy(sample_images()[i % 4], folder / f"s{i:02d}.png")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            str(EXE),
            "infer",
            "--engine",
            CHECKPOINT,
            "--input",
            str(folder),
            "--classes",
            "red star, wavy wall",
            "--out",
            str(out),
            "--no-progress",
            "--no-cache",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (out.is_dir() and any(f.endswith("_panoptic.png") for f in os.listdir(out))) and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    if process.returncode == 0:  # finished before the signal arrived: then every image was written
        assert sum(name.endswith("_panoptic.png") for name in os.listdir(out)) == 60, stderr
    else:
        assert process.returncode == 130 and stderr.strip().splitlines() == ["fisa-rt: interrupted"], stderr
    for name in os.listdir(out):
        assert not name.startswith("."), name  # no temporary file left
        if name.endswith(".png"):
            Image.open(out / name).load()
        else:
            json.loads((out / name).read_text())


@pytest.mark.parametrize("field, value, graph", [("image_size", 64, 128), ("embed_dim", 32, 64)])
def test_a_manifest_size_the_graph_disagrees_with_is_named_at_open(tmp_path, field, value, graph):
    """A well-formed but edited size (the sweep's image_size 64 beside a 128 px graph) failed inside ONNX Runtime,
    at the first image."""
    from onnx import TensorProto

    from fisa_rt.runtime.backends import open_backend

    image = {"model": "fisa-tiny", "image_size": 128, "embed_dim": 64, "templates": "vild", "context_length": 32}
    model = _onnx_file(tmp_path / "m.onnx", [("image", TensorProto.UINT8, ["batch", 3, 128, 128]),
                                             ("text", TensorProto.FLOAT, ["classes", 64])], "image-model",
                       **{**image, field: value})
    with pytest.raises(CheckpointError, match=f"says {field} {value}, its graph {graph}; rebuild"):
        open_backend(str(model))
    _onnx_file(tmp_path / "ok.onnx", [("image", TensorProto.UINT8, ["batch", 3, 128, 128]),
                                      ("text", TensorProto.FLOAT, ["classes", 64])], "image-model", **image)
    open_backend(str(tmp_path / "ok.onnx"))  # the sizes agree: it opens
