import pytest
import torch

from fisa_rt import InputError, create_model

from helpers import random_text

# Every shipped config at a CPU-friendly input size (large models at small images). fcclip-convnext-l is
# full size (ConvNeXt-L + deformable pixel decoder): ~15-30 s on 2 shared cores. fisa-fcclip-convnext-l
# adds only SEVE adapters to it; it is built (on the meta device) by tests/test_fcclip.py.
CONFIG_SIZES = [
    ("fisa-tiny", 128, 2), ("fisa-tiny-convnext", 128, 2), ("fisa-vit-b16", 128, 1), ("fisa-convnext-l", 64, 1),
    ("fcclip-convnext-l", 64, 1),
]


@pytest.mark.parametrize("name,size,batch", CONFIG_SIZES)
def test_every_config_builds_and_runs_forward(name, size, batch):
    model = create_model(name).eval()
    cfg = model.cfg
    K = 5
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size), random_text(K, model.embed_dim))
    Q = cfg.mask_generator.num_queries
    assert out.mask_logits.shape == (batch, Q, size // 4, size // 4)
    assert out.class_logits.shape == (batch, Q, K + 1)
    assert out.class_embeds.shape == (batch, Q, model.embed_dim)
    assert len(out.aux) == cfg.mask_generator.dec_layers
    for t in (out.mask_logits, out.class_logits):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_outputs_follow_model_dtype(tiny_model, dtype):
    model = tiny_model.to(dtype)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=dtype), random_text(3, model.embed_dim))
    assert out.mask_logits.dtype == out.class_logits.dtype == dtype
    assert torch.isfinite(out.class_logits.float()).all()


def test_zero_gate_seve_equals_bare_vit(tiny_vit):
    visual = tiny_vit.backbone.visual
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ours = tiny_vit.backbone(images, random_text(4, tiny_vit.embed_dim)).features["vit"]
        bare = visual.transformer(visual._embeds(images))[:, 1:]
    assert torch.equal(ours.flatten(2).transpose(1, 2), bare)


@pytest.mark.parametrize("shared_text", [True, False])
def test_seve_adapter_is_gated_attention_over_kv_proj(shared_text):
    """SEVE written out: keys the first half of kv_proj's outputs, values the second, softmax(q k^T / sqrt(Dh))
    over the valid classes; its graph-friendly form (q scaled, two projections) must stay this."""
    from fisa_rt.seve import SeveAdapter

    torch.manual_seed(0)
    adapter = SeveAdapter(32, 16, 4, gate_init=0.7, kernels="reference").double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    text = torch.randn(*(() if shared_text else (2,)), 5, 16, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True, True])
    kv = adapter.kv_proj(text if text.dim() == 3 else text[None])
    k, v = (t.view(kv.shape[0], 5, 4, 8).transpose(1, 2) for t in kv.split(32, -1))
    q = adapter.q_proj(adapter.norm(x)).view(2, 9, 4, 8).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~valid, float("-inf")).softmax(-1)
    update = adapter.out_proj((probs @ v).transpose(1, 2).reshape(2, 9, 32))
    expected = x + torch.tanh(adapter.gate) * update
    with torch.no_grad():
        ours = adapter(x, text, valid if shared_text else valid.expand(2, 5))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_zero_gate_seve_equals_bare_convnext(tiny_convnext):
    trunk = tiny_convnext.backbone.visual.trunk
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ours = tiny_convnext.backbone(images, random_text(4, tiny_convnext.embed_dim))
        bare = trunk.forward_features(images)
    assert torch.equal(ours.features["res5"], bare)
    # The CLIP head at one location equals open_clip's head on a 1x1 map (FC-CLIP's pooled path).
    one = ours.features["res5"][:, :, :1, :1]
    with torch.no_grad():
        pooled = tiny_convnext.backbone.visual.head(trunk.forward_head(one))
    torch.testing.assert_close(ours.dense_embeds[:, :, 0, 0], pooled)


def test_open_gate_makes_features_depend_on_vocabulary(tiny_model):
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = tiny_model.backbone(images, random_text(3, tiny_model.embed_dim)).features
        b = tiny_model.backbone(images, random_text(3, tiny_model.embed_dim)).features
    name = list(a)[-1]
    assert not torch.allclose(a[name], b[name])


def test_permuting_vocabulary_permutes_logits(tiny_model):
    images = torch.randn(2, 3, 64, 64)
    text = random_text(7, tiny_model.embed_dim)
    perm = torch.randperm(7)
    with torch.no_grad():
        out = tiny_model(images, text).class_logits
        permuted = tiny_model(images, text[perm]).class_logits
    torch.testing.assert_close(permuted[..., :-1], out[..., :-1][..., perm], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(permuted[..., -1], out[..., -1], rtol=1e-4, atol=1e-4)


def test_batch_items_are_independent(tiny_model):
    images = torch.randn(3, 3, 64, 64)
    text = random_text(4, tiny_model.embed_dim)
    with torch.no_grad():
        batched = tiny_model(images, text)
        single = tiny_model(images[1:2], text)
    torch.testing.assert_close(batched.class_logits[1:2], single.class_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched.mask_logits[1:2], single.mask_logits, rtol=1e-4, atol=1e-4)


def test_vit_runs_at_sizes_other_than_training(tiny_vit):
    with torch.no_grad():
        out = tiny_vit(torch.randn(1, 3, 96, 160), random_text(2, tiny_vit.embed_dim))
    assert out.mask_logits.shape[-2:] == (24, 40)


@pytest.mark.parametrize(
    "images,text_shape,message",
    [
        (torch.randn(3, 64, 64), (3, 64), "images must be a \\(B, 3, H, W\\) tensor"),
        (torch.randn(1, 4, 64, 64), (3, 64), "images must be a \\(B, 3, H, W\\) tensor"),
        (torch.randn(1, 3, 64, 50), (3, 64), "multiples of 32"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), (3, 64), "normalised floating-point"),
        (torch.randn(1, 3, 64, 64), (0, 64), "vocabulary is empty"),
        (torch.randn(1, 3, 64, 64), (3, 32), "dimension 32, but fisa-tiny needs 64"),
        (torch.randn(1, 3, 64, 64), (3,), "must be a \\(K, D\\) tensor"),
        # these failed inside a convolution or a reshape, naming neither the images nor the model
        (torch.randn(1, 3, 64, 64, dtype=torch.float64), (3, 64),
         "images are torch.float64 and fisa-tiny's weights torch.float32: convert one"),
        (torch.randn(0, 3, 64, 64), (3, 64), "images hold no image: a batch of 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_vit, images, text_shape, message):
    with pytest.raises(InputError, match=message):
        tiny_vit(images, torch.randn(*text_shape))


def test_images_of_another_dtype_run_under_autocast_and_a_dict_config_is_named(tiny_vit):
    from fisa_rt import ConfigError, create_model

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_vit(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16), random_text(2, tiny_vit.embed_dim))
    assert out.class_logits.shape == (1, tiny_vit.cfg.mask_generator.num_queries, 3)
    with pytest.raises(ConfigError, match="got dict"):
        create_model(tiny_vit.cfg.to_dict())


def test_bad_seen_mask_is_rejected(tiny_convnext):
    with pytest.raises(InputError, match="seen must be a bool tensor of shape \\(3,\\)"):
        tiny_convnext(torch.randn(1, 3, 64, 64), random_text(3, 64), seen=torch.ones(4, dtype=torch.bool))


def test_mask_attention_head_rejects_convnext():
    from fisa_rt import get_model_config
    from fisa_rt.config import FisaConfig

    data = get_model_config("fisa-tiny-convnext").to_dict()
    data["classifier"]["head"] = "mask-attention"
    with pytest.raises(ValueError, match="mask-attention head needs a ViT"):
        create_model(FisaConfig.from_dict(data))


def test_resized_position_embedding_is_reused_until_the_weights_change(monkeypatch):
    """The bicubic resize of a ViT's position table runs once per grid while the weights stay as they are
    (it cost 3.3 ms per forward on an H200); a weight update, a dtype change, another grid, or gradients
    that must reach the table compute it again."""
    torch.manual_seed(0)
    model = create_model("fisa-tiny").eval()
    backbone = model.backbone
    pos = backbone.visual.positional_embedding
    resizes = []
    interpolate = torch.nn.functional.interpolate

    def counting(*args, **kwargs):
        resizes.append(kwargs.get("mode"))
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", counting)
    bicubic = lambda: resizes.count("bicubic")  # noqa: E731
    with torch.no_grad():
        first = backbone.position_embedding((12, 12))
        assert backbone.position_embedding((12, 12)) is first and bicubic() == 1
        expected = backbone._resize_position_embedding(pos, (16, 16), (12, 12))
        torch.testing.assert_close(first, expected, rtol=0, atol=0)
        pos.add_(1.0)  # what load_state_dict and optimisers do: an in-place update
        torch.testing.assert_close(backbone.position_embedding((12, 12)), expected + 1.0, rtol=0, atol=1e-5)
        assert backbone.position_embedding((10, 14)).shape == (1 + 140, pos.shape[1])
        model.double()
        assert backbone.position_embedding((12, 12)).dtype == torch.float64
    with torch.inference_mode():
        served = backbone.position_embedding((14, 10))  # a new grid: filled while serving
    assert not served.is_inference()  # so a training step may still use it
    pos.requires_grad_(False)
    assert backbone.position_embedding((14, 10)) is served  # frozen table, gradients on: cached
    pos.requires_grad_(True)
    count = bicubic()
    table = backbone.position_embedding((12, 12))  # gradients on: the table must carry them
    table.sum().backward()
    assert bicubic() == count + 1 and backbone.visual.positional_embedding.grad is not None
