import json

import pytest

from fisa_rt import ConfigError, FisaConfig, get_model_config, list_models

SHIPPED = [
    "fcclip-convnext-l", "fisa-convnext-l", "fisa-fcclip-convnext-l", "fisa-tiny", "fisa-tiny-convnext", "fisa-vit-b16",
]


def test_shipped_configs_are_listed():
    assert list_models() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_config_json_round_trip(name):
    cfg = get_model_config(name)
    assert cfg.name == name
    again = FisaConfig.from_json(cfg.to_json())
    assert again == cfg


def test_the_fisa_adapted_fcclip_is_fcclip_plus_seve_only():
    """docs/weights.md: trained from FC-CLIP's checkpoint, so it resizes, pads and classifies as FC-CLIP tests."""
    fcclip, fisa = get_model_config("fcclip-convnext-l").to_dict(), get_model_config("fisa-fcclip-convnext-l").to_dict()
    changed = sorted(k for k in fcclip if fcclip[k] != fisa[k])
    assert changed == ["name", "seve", "simo"]
    assert fisa["seve"] == {**fcclip["seve"], "layers": [1, 2]} and fisa["simo"]["trainable"] == ["backbone.seve"]


def test_unknown_config_name_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown model config 'fisa-huge'.*fisa-tiny"):
        get_model_config("fisa-huge")


def test_a_config_file_is_a_model_config(tmp_path, capsys):
    """`fisa-rt config NAME > my-model.json`, edited, is what --model and create_model take: open_clip's way."""
    from fisa_rt import create_model
    from fisa_rt.cli import main

    edited = get_model_config("fisa-tiny").to_dict()
    edited["name"], edited["mask_generator"]["num_queries"] = "my-model", 7
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(edited))
    assert get_model_config(str(path)) == FisaConfig.from_dict(edited)
    assert create_model(str(path)).cfg.mask_generator.num_queries == 7
    with pytest.raises(ConfigError, match="cannot read model config .*missing.json: No such file"):
        get_model_config(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="bad.json: model config is not valid JSON"):
        get_model_config(str(tmp_path / "bad.json"))
    edited["seve"]["gates"] = 1
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="my-model.json: unknown keys \\['gates'\\] in config section 'seve'"):
        get_model_config(str(path))
    assert main(["train", "clip", "--model", str(tmp_path / "missing.json"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "cannot read model config" in capsys.readouterr().err


def test_unknown_keys_are_rejected():
    data = get_model_config("fisa-tiny").to_dict()
    data["seve"]["gates"] = 1
    with pytest.raises(ConfigError, match="unknown keys \\['gates'\\] in config section 'seve'"):
        FisaConfig.from_dict(data)


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("classifier", "head", "mask-max", "classifier.head must be one of"),
        ("classifier", "mask_weighting", "soft", "mask_weighting must be one of"),
        ("classifier", "pooled_input", "tokens", "classifier.pooled_input must be one of"),
        ("mask_generator", "pixel_decoder", "fpn", "mask_generator.pixel_decoder must be one of"),
        ("mask_generator", "class_head", "mlp", "mask_generator.class_head must be one of"),
        (None, "image_size", 100, "multiple of 32"),
        (None, "image_size", -32, "image_size must be a whole number >= 32, got -32"),
        (None, "image_size", "128", "image_size must be an integer, got '128'"),
        (None, "image_size", True, "image_size must be an integer, got True"),
        ("mask_generator", "hidden_dim", 256.0, "mask_generator.hidden_dim must be an integer, got 256.0"),
        ("classifier", "ensemble_alpha", "0.4", "classifier.ensemble_alpha must be a number"),
        ("resize", "pad_mean", 1, "resize.pad_mean must be true or false, got 1"),
        # accepted before, then failing inside torch (a constructor's "negative dimension", the first forward's
        # empty interpolation, an encoder's range() step of 0), or running a model with no decoder at all
        ("mask_generator", "num_queries", 0, "mask_generator.num_queries must be a whole number >= 1, got 0"),
        ("mask_generator", "num_queries", -5, "mask_generator.num_queries must be a whole number >= 1"),
        ("mask_generator", "dec_layers", -1, "mask_generator.dec_layers must be a whole number >= 0, got -1"),
        ("mask_generator", "hidden_dim", 0, "mask_generator.hidden_dim must be a whole number >= 1"),
        ("mask_generator", "num_heads", 7, "hidden_dim 64 must divide by mask_generator.num_heads 7"),
        ("seve", "num_heads", 0, "seve.num_heads must be a whole number >= 1, got 0"),
        ("classifier", "num_mask_layers", 0, "classifier.num_mask_layers must be a whole number >= 1"),
        ("text", "batch_size", 0, "text.batch_size must be a whole number >= 1, got 0"),
        ("postprocess", "instance_topk", -1, "postprocess.instance_topk must be a whole number >= 1"),
        (None, "image_std", [0, 0, 0], "image_std must have no zero"),
        (None, "image_mean", [0.5, 0.5], "image_mean must be three numbers"),
    ],
)
def test_invalid_values_are_rejected(section, key, value, message):
    data = get_model_config("fisa-tiny").to_dict()
    (data[section] if section else data)[key] = value
    with pytest.raises(ConfigError, match=message):
        FisaConfig.from_dict(data)


def test_an_int_is_a_float_value():
    data = get_model_config("fisa-tiny").to_dict()
    data["classifier"]["ensemble_alpha"] = 1
    assert FisaConfig.from_dict(data).classifier.ensemble_alpha == 1


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid JSON"):
        FisaConfig.from_json("{name: ")
    with pytest.raises(ConfigError, match="incomplete"):
        FisaConfig.from_json(json.dumps({"name": "x"}))
