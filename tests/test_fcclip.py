"""FC-CLIP checkpoint conversion: the full-size key table (no tensors allocated), a synthetic FC-CLIP
checkpoint at reduced widths round-tripped through the converter, and refusals of damaged or foreign
files. Nothing downloads: the text tower comes from a local --clip file."""

import dataclasses
import os

import pytest
import torch

from fisa_rt import create_model, get_model_config
from fisa_rt.checkpoint import load_model, read_checkpoint_info
from fisa_rt.cli import main
from fisa_rt.errors import CheckpointError
from fisa_rt.fcclip import RESHAPED, convert_fcclip
from fisa_rt.weight_names import FCCLIP

from fcclip_layout import clip_layout, full_layout, head_layout, is_text_tower
from helpers import random_text


def meta_shapes(config):
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in create_model(config).state_dict().items()}


def test_full_size_key_table_matches_fcclip_convnext_l():
    """Every tensor of FC-CLIP's ConvNeXt-L COCO model maps to one of fcclip-convnext-l's with the
    same shape, and nothing of ours is left unfilled (meta device: no memory)."""
    theirs = {k: v for k, v in full_layout().items() if not k.startswith("criterion.")}
    ours = meta_shapes("fcclip-convnext-l")
    mapped = {}
    for name, shape in theirs.items():
        target = FCCLIP.our_name(name)
        assert target is not None, f"no rule for FC-CLIP tensor {name}"
        assert target not in mapped, f"{name} and {mapped.get(target)} both map to {target}"
        mapped[target] = name
        if target in RESHAPED:
            assert torch.Size(shape).numel() == torch.Size(ours[target]).numel(), name
        else:
            assert ours.get(target) == shape, f"{name} {shape} -> {target} {ours.get(target)}"
    assert set(mapped) == set(ours)
    assert len(ours) == len(theirs) == 845
    # The FISA config adds only SEVE adapters (loaded as new parameters by `train adapt --init`).
    fisa = meta_shapes("fisa-fcclip-convnext-l")
    assert {k for k in fisa if k not in ours} and all(k.startswith("backbone.seve.") for k in fisa if k not in ours)


@pytest.fixture(scope="module")
def reduced():
    """An fcclip-convnext-l at reduced widths (ConvNeXt-atto CLIP) and its FC-CLIP checkpoint + CLIP file."""
    cfg = get_model_config("fcclip-convnext-l")
    tiny = get_model_config("fisa-tiny-convnext")
    generator = dataclasses.replace(
        cfg.mask_generator, hidden_dim=64, num_queries=12, dec_layers=3, enc_layers=2, num_heads=4, dim_feedforward=96,
        mask_dim=64, deformable_ffn=80,
    )
    resize = dataclasses.replace(cfg.resize, short=96, max_size=128)  # FC-CLIP's rule, scaled to a 128 canvas
    cfg = dataclasses.replace(cfg, name="fcclip-reduced", image_size=128, clip=tiny.clip, mask_generator=generator,
                              resize=resize)
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    with torch.no_grad():
        for p in model.mask_generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return cfg, model


def fcclip_checkpoint(model, folder, with_text: bool = False):
    """Our model's weights under FC-CLIP's names, as its release stores them (detectron2 dict)."""
    theirs, unmapped = FCCLIP.to_theirs(model.state_dict())
    assert not unmapped
    theirs["void_embedding.weight"] = theirs["void_embedding.weight"].reshape(1, -1)
    theirs["criterion.empty_weight"] = torch.ones(134)
    if not with_text:
        theirs = {k: v for k, v in theirs.items() if not is_text_tower(k)}
    path = os.path.join(folder, "fcclip.pth")
    torch.save({"model": theirs, "iteration": 368749}, path)
    return path, theirs


def clip_file(model, folder):
    """The CLIP weights (text and visual) as an open_clip state-dict file, for --clip."""
    state = {k[len("text.clip."):]: v for k, v in model.state_dict().items() if k.startswith("text.clip.")}
    prefix = "backbone.visual."
    state.update({f"visual.{k[len(prefix):]}": v for k, v in model.state_dict().items() if k.startswith(prefix)})
    path = os.path.join(folder, "clip.pt")
    torch.save(state, path)
    return path


def test_synthetic_checkpoint_has_fcclip_layout(reduced, tmp_path):
    cfg, model = reduced
    _, theirs = fcclip_checkpoint(model, str(tmp_path), with_text=True)
    trunk = [c for c in model.backbone.feature_channels.values()]
    expected = {
        **clip_layout(cfg.clip),
        **head_layout(in_channels=trunk, dim=64, mask_dim=64, embed_dim=model.embed_dim, queries=12, dec_layers=3,
                      enc_layers=2, heads=4, enc_ffn=80, dec_ffn=96),
    }
    assert {k: tuple(v.shape) for k, v in theirs.items()} == expected


def test_converter_round_trips_a_synthetic_checkpoint(reduced, tmp_path):
    cfg, model = reduced
    source, theirs = fcclip_checkpoint(model, str(tmp_path))
    out = str(tmp_path / "converted.safetensors")
    report = convert_fcclip(source, out, clip=clip_file(model, str(tmp_path)), config=cfg)
    text = [k for k in model.state_dict() if k.startswith("text.clip.")]
    assert report.from_clip == len(text) > 0
    assert report.from_checkpoint == len(model.state_dict()) - len(text) == len(theirs) - 1
    assert report.ignored == ["criterion.empty_weight"]
    info = read_checkpoint_info(out)
    assert info.config == cfg and len(info.vocabulary) == 133 and sum(info.is_thing) == 80
    converted, _ = load_model(out)
    images, classes = torch.randn(2, 3, 128, 128), random_text(7, model.embed_dim)
    with torch.no_grad():
        want, got = model(images, classes), converted(images, classes)
    torch.testing.assert_close(got.mask_logits, want.mask_logits, atol=0, rtol=0)
    torch.testing.assert_close(got.class_logits, want.class_logits, atol=0, rtol=0)


def test_adapt_init_loads_converted_checkpoint_into_a_fisa_config(reduced, tmp_path):
    """`train adapt --init converted.safetensors --model <FISA config>`: new SEVE adapters, the rest loaded,
    outputs unchanged while the adapters' gates are 0."""
    cfg, model = reduced
    source, _ = fcclip_checkpoint(model, str(tmp_path))
    out = str(tmp_path / "converted.safetensors")
    convert_fcclip(source, out, clip=clip_file(model, str(tmp_path)), config=cfg)
    seve = dataclasses.replace(cfg.seve, layers=[1, 2], num_heads=4)
    fisa_cfg = dataclasses.replace(cfg, name="fisa-fcclip-reduced", seve=seve)
    fisa, info = load_model(out, config=fisa_cfg)
    assert info.config.name == "fisa-fcclip-reduced" and len(fisa.backbone.seve) == 2
    images, classes = torch.randn(1, 3, 128, 128), random_text(5, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(fisa(images, classes).class_logits, model(images, classes).class_logits)


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop("sem_seg_head.predictor.query_feat.weight"), "1 missing .*mask_generator.query_feat.weight"),
    (lambda t: t.__setitem__("sem_seg_head.predictor.extra_head.weight", torch.zeros(3)), "1 unexpected .*extra_head"),
    (lambda t: t.__setitem__("sem_seg_head.predictor.query_feat.weight", torch.zeros(5, 64)),
     "1 mis-shaped .*query_feat"),
    (lambda t: t.pop("backbone.clip_model.visual.trunk.stem.0.weight"), "1 missing .*trunk.stem.0.weight"),
])
def test_converter_refuses_damaged_checkpoint(reduced, tmp_path, damage, message):
    cfg, model = reduced
    _, theirs = fcclip_checkpoint(model, str(tmp_path))
    damage(theirs)
    torch.save({"model": theirs}, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=f"not an FC-CLIP fcclip-convnext-l checkpoint: ({message})"):
        convert_fcclip(str(tmp_path / "damaged.pth"), str(tmp_path / "out.safetensors"), config=cfg)
    assert not (tmp_path / "out.safetensors").exists()


def test_converter_refuses_an_output_it_reads_or_cannot_write_before_loading(tmp_path, monkeypatch):
    """--out onto the released checkpoint (or --clip) replaced it, even though the conversion read it; a
    missing folder surfaced only after loading the whole checkpoint."""
    from fisa_rt import fcclip

    def loads(path):
        raise AssertionError("the checkpoint was read before --out was checked")

    monkeypatch.setattr(fcclip, "read_detectron2_state", loads)
    source, clip = tmp_path / "fcclip.pth", tmp_path / "clip.pt"
    source.write_bytes(b"released")
    clip.write_bytes(b"clip")
    for out, message in [
        (source, "it is the checkpoint .*, which this run reads"),
        (clip, "it is --clip .*, which this run reads"),
        (tmp_path / "missing" / "o.safetensors", "its folder .*missing does not exist"),
        (tmp_path, "it is a folder"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            convert_fcclip(str(source), str(out), clip=str(clip), overwrite=True)
    assert source.read_bytes() == b"released" and clip.read_bytes() == b"clip"


class NotATensor:
    pass


@pytest.mark.parametrize("content, message", [
    ({"model": {"backbone.body.conv1.weight": torch.zeros(3)}}, "not an FC-CLIP .*1 unexpected .*backbone.body.conv1"),
    ({"model": NotATensor()}, "not a plain-tensor PyTorch checkpoint"),
    ({"optimizer": 1}, "holds no state dict|not an FC-CLIP"),
    (b"not a checkpoint", "not a plain-tensor PyTorch checkpoint"),
])
def test_cli_refuses_foreign_file_with_one_line(reduced, tmp_path, capsys, content, message):
    path = tmp_path / "foreign.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert main(["convert", "fcclip", str(path), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err


@pytest.fixture(scope="module")
def converted(reduced, tmp_path_factory):
    cfg, model = reduced
    folder = str(tmp_path_factory.mktemp("fcclip"))
    source, _ = fcclip_checkpoint(model, folder)
    out = os.path.join(folder, "fcclip-reduced.safetensors")
    convert_fcclip(source, out, clip=clip_file(model, folder), config=cfg)
    return out


@pytest.mark.filterwarnings("ignore:ModelOpt")  # the fp16 conversion's own log (tests/test_mixed_precision.py)
def test_build_engine_exports_converted_checkpoint_with_portable_parity(converted, tmp_path, capfd):
    """build_engine.py takes the converted checkpoint; the portable ONNX carries the deformable
    attention as standard GridSample nodes and matches PyTorch on ONNX Runtime (reduced widths, 128 px)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from fisa_rt.export import onnx_checks
    from fisa_rt.export.build_engine import build, parse_args
    from fisa_rt.inference import InferenceWrapper

    artefacts = build(parse_args(["--checkpoint", converted, "--out", str(tmp_path), "--no-simplify"]))
    assert "] Warning: " not in capfd.readouterr().err  # the exporter's C++ warnings: none (no fused op here)
    graph = onnx.load(artefacts["portable"])
    ops = onnx_checks.op_counts(graph)
    # 2 encoder layers x 3 levels of deformable sampling; nothing outside TensorRT's parser ops.
    assert ops.get("GridSample") == 6
    assert not onnx_checks.unsupported_ops(graph, allow_plugins=False)
    model, info = load_model(converted)
    model.set_kernels("reference")
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    # FC-CLIP's text: 9 classes x 3 synonym rows, and the ensemble's seen flags, as graph inputs
    text = random_text(27, model.embed_dim).view(9, 3, -1)
    seen = torch.tensor([True, False, False, True, False, True, False, False, True])
    with torch.no_grad():
        masks, scores = InferenceWrapper(model, semantic=False)(images, text, seen)
    session = ort.InferenceSession(artefacts["portable"], providers=["CPUExecutionProvider"])
    feed = {"image": images.numpy(), "text": text.numpy(), "seen": seen.numpy()}
    got_masks, got_scores = session.run(None, feed)
    assert np.abs(got_masks - masks.numpy()).max() < 1e-4  # mask logits, fp32
    assert np.abs(got_scores - scores.numpy()).max() < 1e-5  # class probabilities


def test_mask_pool_is_fcclip_mask_pooling():
    """FC-CLIP's MaskPooling: the mean of the features where the mask logit is > 0; an empty mask gives 0."""
    from fisa_rt.mask_generator import mask_pool

    features = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    logits = torch.full((1, 2, 3, 4), -1.0)
    logits[0, 0, 1, 1:3] = 0.5  # two pixels: features[:, 1, 1] and [:, 1, 2]
    logits[0, 0, 2, 3] = 0.0  # not > 0: left out
    pooled = mask_pool(features, logits)
    torch.testing.assert_close(pooled[0, 0], features[0, :, 1, 1:3].mean(-1))
    torch.testing.assert_close(pooled[0, 1], torch.zeros(2))


def test_bad_clip_files_and_no_clip_offline_are_one_checkpoint_error(reduced, tmp_path, monkeypatch):
    """Issue 21, row 7: before, IndexError, UnpicklingError and a 112-line download error after a minute."""
    import pickle

    import fisa_rt.fcclip as fcclip

    cfg, model = reduced
    checkpoint, _ = fcclip_checkpoint(model, str(tmp_path))
    clips = {"random.pt": {"a": torch.randn(3, 3)}, "shapes.pt": {"token_embedding.weight": torch.randn(2, 2)}}
    for name, state in clips.items():
        torch.save(state, tmp_path / name)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"x": [1, 2]}, f)
    for name, message in [("random.pt", "has no tensor"), ("shapes.pt", "shapes.pt has no tensor .* of shape"),
                          ("plain.pkl", "is not a plain-tensor PyTorch checkpoint (Unsupported operand"),
                          ("missing.pt", "does not exist")]:
        with pytest.raises(CheckpointError, match=message.replace(" (", r" \(")):
            convert_fcclip(checkpoint, str(tmp_path / "out.safetensors"), clip=str(tmp_path / name), config=cfg)
    assert not (tmp_path / "out.safetensors").exists()

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: offline())
    monkeypatch.setattr("socket.create_connection", offline)
    with pytest.raises(CheckpointError, match=r"cannot be reached: pass clip= \(--clip\)"):
        fcclip._open_clip_weights(get_model_config("fcclip-convnext-l"))


def test_convert_prints_one_line_and_never_suggests_unpickling(tmp_path, capsys):
    """Issue 21, row 8: no torch warnings, no open_clip log line, no advice to load with weights_only=False."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model": Evil()}, tmp_path / "evil_zip.pth")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"model": {}}, f, protocol=4)  # torch warns about the protocol
    torch.save({"model": {"sem_seg_head.predictor.query_feat.weight": torch.zeros(3)}}, tmp_path / "shape.pth")
    (tmp_path / "text.pth").write_text("hello\nworld\n")  # torch's reason was a bare "(101)": a KeyError of a byte
    for name in ("evil_zip.pth", "plain.pkl", "shape.pth", "text.pth"):
        assert main(["convert", "fcclip", str(tmp_path / name), "--out", str(tmp_path / "o.safetensors")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "weights_only" not in err and "WARNING" not in err, err
    assert "text.pth is not a plain-tensor PyTorch checkpoint (it is neither a torch.save zip archive nor a pickle)" \
        in err


def test_clip_temperature_is_capped_at_100_as_fcclip_caps_it(tiny_convnext):
    """fcclip_transformer_decoder.py:44 (get_classification_logits): clamp(logit_scale.exp(), max=100), also
    for CLIP's own scale in the out-of-vocabulary branch."""
    model = tiny_convnext
    assert model.cfg.classifier.head == "mask-average"
    images, text = torch.randn(1, 3, 64, 64), random_text(3, model.embed_dim)
    scale = model.text.clip.logit_scale
    saved = scale.detach().clone()
    try:
        outputs = []
        for value in (100.0, 1000.0):
            with torch.no_grad():
                scale.fill_(torch.log(torch.tensor(value)))
                outputs.append(model(images, text).class_logits)
    finally:
        with torch.no_grad():
            scale.copy_(saved)
    assert torch.equal(outputs[0], outputs[1])


def test_fcclip_same_shape_tensors_map_to_their_own_modules():
    """Tensors of equal shape that a swapped rule would still round-trip: pinned one by one (FC-CLIP's
    query_feat is the content query, query_embed the positional; self vs cross attention; MLP layer order)."""
    p, m = "sem_seg_head.predictor.", "mask_generator."
    pinned = {
        p + "query_feat.weight": m + "query_feat.weight",
        p + "query_embed.weight": m + "query_pos.weight",
        p + "transformer_self_attention_layers.0.self_attn.in_proj_weight": m + "layers.0.self_attn.in_proj_weight",
        p + "transformer_cross_attention_layers.0.multihead_attn.in_proj_weight": m + "layers.0.cross.in_proj_weight",
        p + "transformer_self_attention_layers.0.norm.weight": m + "layers.0.norm_self.weight",
        p + "transformer_cross_attention_layers.0.norm.weight": m + "layers.0.norm_cross.weight",
        p + "mask_embed.layers.1.weight": m + "mask_embed.2.weight",
        p + "mask_embed.layers.2.weight": m + "mask_embed.4.weight",
        # FC-CLIP-only (no HF counterpart, so test_pixel_decoder's cross-check skips them); 0 and 1 share a shape
        p + "class_embed.layers.0.weight": m + "class_embed.0.weight",
        p + "class_embed.layers.1.bias": m + "class_embed.2.bias",
        p + "class_embed.layers.2.weight": m + "class_embed.4.weight",
    }
    assert {k: FCCLIP.our_name(k) for k in pinned} == pinned
