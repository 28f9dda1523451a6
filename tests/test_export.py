"""Export (issue 5): the ONNX files, their hygiene for TensorRT, parity with PyTorch, the TensorRT builder
without TensorRT, manifests."""

import contextlib
import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fisa_rt import CheckpointError, InputError, MissingDependencyError
from fisa_rt.checkpoint import load_model
from fisa_rt.export import onnx_checks, onnx_export, tensorrt_builder
from fisa_rt.export.build_engine import build, main, parse_args
from fisa_rt.export.manifest import read_manifest, sha256_file
from fisa_rt.export.onnx_export import export_image_model, export_text_encoder
from fisa_rt.inference import InferenceWrapper
from fisa_rt.kernels.onnx_ops import NODES
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.images import load_image
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def reference():
    model, info = load_model(default_checkpoint())
    model = model.float().eval()
    model.set_kernels("reference")
    return model, info


def _photos(size: int):
    """Real photographs shipped with scikit-image plus the bundled synthetic scenes, as (B, 3, S, S) uint8."""
    import skimage.data
    from PIL import Image

    pictures = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()] + [
        load_image(p) for p in sample_images()
    ]
    resized = [np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in pictures]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()


def test_build_writes_every_artefact_with_a_manifest(artefacts):
    for kind in ("portable", "fused", "text", "ort"):
        path = artefacts[kind]
        manifest = read_manifest(path)
        assert manifest["sha256"] == sha256_file(path)
    assert "engine" not in artefacts  # no TensorRT on this machine
    image = read_manifest(artefacts["portable"])
    assert image["kind"] == "image-model" and image["flavour"] == "portable" and image["image_size"] == 128
    assert image["text_encoder"]["sha256"] == sha256_file(artefacts["text"])
    assert image["checkpoint"]["sha256"] == sha256_file(default_checkpoint())
    fallback = read_manifest(artefacts["ort"])
    assert fallback["backend"] == "onnxruntime" and fallback["source_onnx"]["sha256"] == sha256_file(
        artefacts["portable"]
    )
    assert os.path.isfile(os.path.join(artefacts["out"], "bpe_simple_vocab_16e6.txt.gz"))


def test_without_tensorrt_the_build_says_what_to_install_and_prints_trtexec(artefacts):
    log = artefacts["log"]
    assert log.count("TensorRT is not installed") == 1 and "pip install tensorrt" in log and "JetPack" in log
    assert (
        "trtexec --onnx=" in log
        and "--minShapes=image:1x3x128x128,text:1x64" in log
        and "--maxShapes=image:8x3x128x128,text:1203x64" in log
    )
    assert "Traceback" not in log


def test_builder_imports_without_tensorrt_and_refuses_with_one_message():
    with pytest.raises(MissingDependencyError, match="pip install tensorrt"):
        tensorrt_builder.build_engine("x.onnx", "x.engine", {}, tensorrt_builder.EngineOptions(), fused=False)
    with pytest.raises(InputError, match="min <= opt <= max"):
        tensorrt_builder.Profile(4, 2, 8)
    with pytest.raises(InputError, match="precision"):
        tensorrt_builder.EngineOptions(precision="int4")


def test_graphs_are_clean_and_use_only_tensorrt_parser_ops(artefacts):
    for kind in ("portable", "text"):
        onnx_checks.check_graph(artefacts[kind], "portable")
        model = onnx.load(artefacts[kind])
        assert model.opset_import[0].version >= 17
        # IR <= 10 (ONNX 1.16): what TensorRT 10.3 (JetPack 6) and setup.py's oldest ONNX Runtime (1.18) read
        assert model.ir_version <= 10
        assert onnx_checks.unsupported_ops(model, allow_plugins=False) == set()
    counts = onnx_checks.op_counts(onnx.load(artefacts["portable"]))
    assert counts.get("LayerNormalization", 0) > 0  # opset 17: one node, not a decomposition


def test_every_output_dimension_is_a_number_or_a_named_dynamic_axis(artefacts):
    """The tracer names a size its shape inference lost (``Einsummask_logits_dim_2``); the export writes the
    number, so Triton's config and `fisa-rt inspect` see (batch, 20, 32, 32), not a free dimension."""
    cfg = read_manifest(artefacts["portable"])["config"]
    queries, side = cfg["mask_generator"]["num_queries"], cfg["image_size"] // 4  # masks at a quarter of the image
    expected = {
        "mask_logits": ["batch", queries, side, side],
        "class_scores": ["batch", queries, "classes_plus_void"],
        "embeddings": ["prompts", read_manifest(artefacts["text"])["embed_dim"]],
    }
    for kind in ("portable", "fused", "text", "ort"):
        for name, dims in output_dims(onnx.load(artefacts[kind], load_external_data=False)).items():
            assert dims == expected[name], (kind, name)


def output_dims(model: onnx.ModelProto):
    """output name -> its dimensions, each a number or the name of a dynamic axis."""
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}


def test_fused_graph_has_one_custom_node_per_op_with_plugin_attributes(artefacts):
    model = onnx.load(artefacts["fused"])
    custom = [n for n in model.graph.node if n.domain == "fisa_rt"]
    assert {n.op_type for n in custom} == {"AdapterAttention", "MaskAttention"} and set(NODES) >= {
        n.op_type for n in custom
    }
    cfg = read_manifest(artefacts["fused"])["config"]
    assert sum(n.op_type == "AdapterAttention" for n in custom) == len(cfg["seve"]["layers"])
    assert sum(n.op_type == "MaskAttention" for n in custom) == cfg["classifier"]["num_mask_layers"]
    for node in custom:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["plugin_namespace"] == b"fisa_rt" and attributes["plugin_version"] == b"1"
        if node.op_type == "MaskAttention":
            grid = cfg["image_size"] // cfg["clip"]["custom_config"]["vision_cfg"]["patch_size"]
            assert (attributes["grid_h"], attributes["grid_w"]) == (grid, grid) and attributes["threshold"] == cfg[
                "classifier"
            ]["mask_threshold"]
            assert len(node.input) == 6
    # without the plugins, exactly the custom nodes are what TensorRT could not parse
    assert onnx_checks.unsupported_ops(model, allow_plugins=False) == {f"fisa_rt::{n.op_type}" for n in custom}
    onnx_checks.check_graph(artefacts["fused"], "fused")


def test_onnxruntime_matches_pytorch_on_photographs_and_scenes(artefacts, reference, tmp_path):
    model, info = reference
    images = _photos(model.cfg.image_size)
    text = model.encode_vocabulary(info.vocabulary)
    with torch.no_grad():
        masks, scores, labels = InferenceWrapper(model, semantic=True)(images, text)
    semantic = export_image_model(model, str(tmp_path / "semantic.onnx"), "portable", semantic=True)
    for path in (artefacts["portable"], artefacts["ort"], semantic):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": images.numpy(), "text": text.numpy()})
        assert np.abs(got[0] - masks.numpy()).max() < 1e-4, path  # mask logits, fp32
        assert np.abs(got[1] - scores.numpy()).max() < 1e-5, path  # class probabilities
        if path == semantic:
            assert (got[2] == labels.numpy()).mean() >= 0.999  # in-graph semantic label map


def test_validation_slice_scores_identically_on_onnxruntime_and_pytorch(artefacts, synthetic_data):
    from fisa_rt.data.panoptic import PanopticDataset
    from fisa_rt.evaluation import evaluate, evaluate_segmenter

    model, _ = load_model(default_checkpoint())
    dataset = PanopticDataset(synthetic_data, "val", 128, augment=False)
    torch_results = evaluate(model.float(), dataset, batch_size=4)
    ort_results = evaluate_segmenter(Segmenter.from_engine(artefacts["portable"], cache_dir=""), dataset, batch_size=4)
    for group in torch_results:
        for metric in ("pq", "miou"):
            assert ort_results[group][metric] == pytest.approx(torch_results[group][metric], abs=1e-6), (group, metric)


def test_text_encoder_onnx_with_plain_python_tokenizer_matches_pytorch(artefacts, reference):
    model, _ = reference
    segmenter = Segmenter.from_engine(artefacts["portable"], cache_dir="")
    from fisa_rt.vocab.vocabulary import named

    vocabulary = named("ade20k-150")
    onnx_embeddings = segmenter.text_encoder.encode(vocabulary, cache_dir="")
    torch_embeddings = model.encode_vocabulary(vocabulary.names).numpy()
    assert onnx_embeddings.shape == (150, model.embed_dim)
    assert np.abs(onnx_embeddings - torch_embeddings).max() < 1e-5


def test_the_text_encoder_runs_each_batch_only_as_wide_as_its_longest_prompt(artefacts, reference, tmp_path,
                                                                              monkeypatch):
    model, _ = reference
    dims = onnx.load(artefacts["text"]).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["prompts", "width"]
    prompts = ["a cat.", "a photo of a large wooden dining table in a sunny kitchen."]
    full = np.asarray(model.tokenizer(prompts))
    with torch.no_grad():
        expected = model.text.clip.encode_text(torch.from_numpy(full), normalize=True).numpy()  # all 32 positions
    encoder = Segmenter.from_engine(artefacts["portable"], cache_dir="").text_encoder
    tokens = encoder.tokenize(prompts)
    assert tokens.shape[1] == (full != 0).sum(1).max() < full.shape[1]
    np.testing.assert_allclose(encoder._encode(tokens), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(encoder._encode(full), expected, rtol=0, atol=1e-6)  # the width is not traced in
    widths, run = [], encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda tokens: widths.append(tokens.shape[1]) or run(tokens))
    encoder.encode(Vocabulary(["cat", "dog"]), cache_dir="")
    assert widths and max(widths) < full.shape[1]

    # a text encoder exported before the width was a graph input, or of attention layers the export cannot trace
    # at any width, is fed the whole context
    fixed = tmp_path / "fixed"
    shutil.copytree(artefacts["out"], fixed)
    text, portable = (str(fixed / os.path.basename(artefacts[k])) for k in ("text", "portable"))
    monkeypatch.setattr(onnx_export, "_width_free_attention", lambda text: contextlib.nullcontext(False))
    export_text_encoder(model, text, overwrite=True)
    manifest_file = f"{portable}.manifest.json"
    with open(manifest_file) as f:
        manifest = json.load(f)
    manifest["text_encoder"]["sha256"] = sha256_file(text)
    with open(manifest_file, "w") as f:
        json.dump(manifest, f)
    encoder = Segmenter.from_engine(portable, cache_dir="").text_encoder
    assert not encoder.any_width and encoder.tokenize(prompts).shape == full.shape
    np.testing.assert_allclose(encoder._encode(full), expected, rtol=0, atol=1e-6)  # no width cut traced in


def test_build_refuses_to_overwrite_and_the_script_exits_with_one_line(artefacts, capsys):
    with pytest.raises(CheckpointError, match="exists"):
        build(parse_args(["--out", artefacts["out"]]))
    assert main(["--out", artefacts["out"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "Traceback" not in err


def test_an_artefact_with_a_copied_or_stale_manifest_is_refused_at_open(artefacts, tmp_path):
    from fisa_rt.runtime.backends import open_backend

    copy = tmp_path / "model.onnx"
    shutil.copyfile(artefacts["portable"], copy)
    shutil.copyfile(artefacts["portable"] + ".manifest.json", str(copy) + ".manifest.json")
    open_backend(str(copy))  # an exact copy with its manifest opens
    shutil.copyfile(artefacts["fused"] + ".manifest.json", str(copy) + ".manifest.json")  # another file's manifest
    with pytest.raises(
        CheckpointError, match=r"does not match its manifest .*rebuild both with `python export/build_engine.py`"
    ):
        open_backend(str(copy))
    with pytest.raises(CheckpointError) as error:
        Segmenter.from_engine(str(copy))
    assert str(error.value).count("\n") == 0


def test_manifest_checks(tmp_path):
    with pytest.raises(CheckpointError, match="no manifest"):
        read_manifest(str(tmp_path / "x.onnx"))
    (tmp_path / "y.onnx.manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a fisa-rt manifest"):
        read_manifest(str(tmp_path / "y.onnx"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "a/b"], "argument --name: give a file name stem"),
        (["--name", ".."], "argument --name: give a file name stem"),
        (["--workspace", "nan"], "argument --workspace: give a size in GiB above 0"),
        (["--workspace", "inf"], "argument --workspace: give a size in GiB above 0"),
        (["--workspace", "-1"], "argument --workspace: give a size in GiB above 0"),
        (["--checkpoint", ""], "argument --checkpoint: is empty"),  # built the embedded model instead
    ],
)
def test_a_bad_name_or_workspace_is_refused_by_the_argument_parser(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "b"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and not (tmp_path / "b").exists()
    # one line, as fisa-rt's own (the usage was printed first)
    assert err.count("\n") == 1 and err.startswith("build_engine.py: error:") and "usage:" not in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{tmp}/file"], "output folder {tmp}/file is a file, not a folder"),
        (["--out", "{tmp}/file/b"], "cannot create output folder {tmp}/file/b: Not a directory"),
        (["--batch", "0,0,0"], "--batch takes MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX"),
        (["--precision", "int8", "--calibration", "{tmp}/photos"], "cannot read image {tmp}/photos/b.png"),
        (["--precision", "int8", "--calibration-vocab", "none"], "--calibration-vocab none: no such file"),
    ],
)
def test_bad_options_and_inputs_fail_in_one_line_before_the_export(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("kept")
    (tmp_path / "photos").mkdir()
    shutil.copyfile(sample_images()[0], tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "b.png").write_bytes((tmp_path / "photos" / "a.png").read_bytes()[:300])  # truncated
    argv = [a.format(tmp=tmp_path) for a in argv]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["--out", str(tmp_path / "b"), *argv]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.count("error:") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and (tmp_path / "file").read_text() == "kept"


@pytest.mark.parametrize("failure", [InputError("the ONNX export failed"), KeyboardInterrupt()])
def test_a_build_that_fails_midway_removes_what_it_wrote_and_keeps_what_was_there(tmp_path, monkeypatch, failure):
    """The text encoder, its manifest and the tokenizer are written before the image export fails here: those
    the build created go, with the folder it created, so no partial build refuses a rerun; files that were
    there before stay."""
    from fisa_rt.export import onnx_export
    from fisa_rt.vocab.tokenizer import VOCAB_FILE, find_vocab_file

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(onnx_export, "export_image_model", fail)
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    shutil.copyfile(find_vocab_file(), kept / VOCAB_FILE)
    for out in (kept, tmp_path / "new"):
        assert main(["--out", str(out)]) == (2 if isinstance(failure, InputError) else 130)
    assert sorted(os.listdir(tmp_path)) == ["kept"]  # the folder the build created is gone
    assert sorted(os.listdir(kept)) == sorted(["notes.txt", VOCAB_FILE])
    assert (kept / "notes.txt").read_text() == "mine"


def test_an_overwrite_that_fails_at_the_last_step_keeps_the_earlier_build_whole(artefacts, tmp_path, monkeypatch,
                                                                                 capsys):
    """Every ONNX file is rewritten before the fallback fails here: none of them may replace the earlier
    build's, or its engine/fallback would sit beside ONNX files it was not built from; and no line may say that
    one was written."""
    from fisa_rt.export import build_engine

    out = tmp_path / "build"
    shutil.copytree(artefacts["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def fail(onnx_path, out_path):
        written.extend(sorted(os.listdir(os.path.dirname(onnx_path))))
        raise InputError("cannot write it: No space left on device")

    monkeypatch.setattr(build_engine, "ort_optimised", fail)
    assert main(["--out", str(out), "--overwrite"]) == 2
    assert any(name.endswith(".portable.onnx") for name in written)  # the failure came after the ONNX export
    log = capsys.readouterr().out
    assert f"made {os.path.basename(artefacts['portable'])}\n" in log and "wrote" not in log, log
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder left either


def test_an_overwrite_replaces_the_build_and_names_the_final_paths(artefacts, tmp_path, capsys):
    out = tmp_path / "build"
    shutil.copytree(artefacts["out"], out)
    manifest = out / os.path.basename(artefacts["portable"] + ".manifest.json")
    manifest.write_text(manifest.read_text().replace('"created": "', '"created": "old '))
    assert main(["--out", str(out), "--overwrite"]) == 0
    log = capsys.readouterr().out
    assert f"wrote {out / os.path.basename(artefacts['portable'])}\n" in log and "fisa-tmp" not in log
    assert "old " not in manifest.read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(os.listdir(artefacts["out"]))


def test_an_overwrite_removes_the_earlier_artefacts_this_build_cannot_make(artefacts, tmp_path, capsys):
    """An engine built (elsewhere) from the earlier ONNX files would otherwise stay beside the new ones and be
    the folder's first choice wherever TensorRT runs."""
    out = tmp_path / "build"
    shutil.copytree(artefacts["out"], out)
    stem = os.path.basename(artefacts["portable"])[: -len(".portable.onnx")]
    engine = out / f"{stem}.portable.fp16.engine"
    engine.write_bytes(b"an engine of the earlier build")
    (out / f"{engine.name}.manifest.json").write_text("{}")
    other = out / f"{stem}.portable.fp32.engine"  # another precision: not this build's to replace
    other.write_bytes(b"kept")
    assert main(["--out", str(out), "--overwrite"]) == 0
    assert f"removed {engine}: the earlier build's" in capsys.readouterr().out
    assert not engine.exists() and not (out / f"{engine.name}.manifest.json").exists() and other.read_bytes() == b"kept"
