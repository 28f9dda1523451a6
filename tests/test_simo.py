import pytest
import torch

from fisa_rt import ConfigError, create_model
from fisa_rt.simo import select_trainable

from helpers import random_text


def test_gradients_reach_only_simo_parameters(tiny_model):
    report = tiny_model.apply_simo()
    tiny_model.train()
    out = tiny_model(torch.randn(2, 3, 64, 64), random_text(5, tiny_model.embed_dim))
    (out.class_logits.logsumexp(-1).sum() + out.mask_logits.mean()).backward()
    trainable = set(report.names)
    for name, param in tiny_model.named_parameters():
        if name in trainable:
            assert param.requires_grad
            assert param.grad is not None and param.grad.abs().sum() > 0, f"SIMO parameter {name} got no gradient"
        else:
            assert not param.requires_grad and param.grad is None, f"frozen parameter {name} was trained"


def test_default_simo_selects_query_projections_and_adapters():
    model = create_model("fisa-tiny")
    report = model.apply_simo()
    prefixes = {name.split(".")[0] + "." + name.split(".")[1] for name in report.names}
    assert prefixes == {
        "classifier.mask_q_proj",
        "classifier.void_embedding",
        "classifier.logit_scale",
        "backbone.seve",
    }
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert 0 < report.percent < 5
    assert "trainable" in str(report) and "%" in str(report)


def test_mask_generator_is_frozen():
    model = create_model("fisa-tiny-convnext")
    model.apply_simo()
    assert not any(p.requires_grad for p in model.mask_generator.parameters())
    assert not any(p.requires_grad for p in model.text.parameters())


def test_unmatched_prefix_is_a_config_error():
    model = create_model("fisa-tiny")
    with pytest.raises(ConfigError, match="match no parameter"):
        select_trainable(model, ["backbone.seve", "classifier.nothing"])


def test_mask_query_projection_starts_as_clips():
    model = create_model("fisa-tiny")
    blocks = model.backbone.visual.transformer.resblocks[-len(model.classifier.mask_q_proj):]
    for block, proj in zip(blocks, model.classifier.mask_q_proj):
        width = block.attn.embed_dim
        assert torch.equal(proj.weight, block.attn.in_proj_weight[:width])
        assert proj.weight.data_ptr() != block.attn.in_proj_weight.data_ptr()
