import torch

from fisa_rt.mask_generator import MaskGeneratorOutput

from helpers import random_text


def _classify(model, features, mask_logits, text):
    generated = MaskGeneratorOutput(mask_logits=mask_logits, class_embeds=torch.zeros(1), void_embedding=torch.zeros(1))
    return model.classifier(model.backbone, features, generated, text, model.logit_scale).logits


def test_mask_token_ignores_image_tokens_outside_its_mask(tiny_vit):
    text = random_text(4, tiny_vit.embed_dim)
    with torch.no_grad():
        features = tiny_vit.backbone(torch.randn(1, 3, 128, 128), text)
    h, w = features.grid
    Q = 3
    mask_logits = torch.full((1, Q, h, w), -5.0)
    mask_logits[0, 0, : h // 2] = 5.0  # top half
    mask_logits[0, 1, :, : w // 4] = 5.0  # left quarter
    # mask 2 stays empty: it sees only itself
    outside = torch.ones(h, w, dtype=torch.bool)
    outside[: h // 2] = False
    outside = outside.flatten()
    perturbed = []
    for x in features.block_inputs:
        x = x.clone()
        x[:, 1:][:, outside] += 10 * torch.randn_like(x[:, 1:][:, outside])
        perturbed.append(x)
    with torch.no_grad():
        before = _classify(tiny_vit, features, mask_logits, text)
        features.block_inputs = perturbed
        after = _classify(tiny_vit, features, mask_logits, text)
    torch.testing.assert_close(after[:, 0], before[:, 0])  # top-half mask: untouched
    assert not torch.allclose(after[:, 1], before[:, 1])  # left quarter overlaps the perturbed half
    torch.testing.assert_close(after[:, 2], before[:, 2])  # empty mask: only itself, via the CLS start


def test_mask_average_head_scores_pooled_region(tiny_convnext):
    """A mask over one region scores highest the class whose text is that region's embedding."""
    model = tiny_convnext
    D = model.embed_dim
    dense = torch.zeros(1, D, 4, 4)
    regions = random_text(2, D)
    dense[0, :, :2] = regions[0][:, None, None]
    dense[0, :, 2:] = regions[1][:, None, None]
    from fisa_rt.backbone import BackboneOutput

    features = BackboneOutput(features={}, grid=(4, 4), dense_embeds=dense)
    mask_logits = torch.full((1, 2, 16, 16), -5.0)
    mask_logits[0, 0, :8] = 5.0
    mask_logits[0, 1, 8:] = 5.0
    generated = MaskGeneratorOutput(
        mask_logits=mask_logits, class_embeds=torch.zeros(1, 2, D), void_embedding=torch.zeros(D)
    )
    text = torch.stack([regions[1], regions[0]])
    with torch.no_grad():
        logits = model.classifier(model.backbone, features, generated, text, model.logit_scale).logits
    assert logits.shape == (1, 2, 3)
    assert logits[0, 0, :2].argmax() == 1 and logits[0, 1, :2].argmax() == 0
    # log-probabilities: they sum to one with void
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(1, 2), atol=1e-5, rtol=0)


def test_full_mask_token_is_clips_class_token_path():
    """One mask covering every patch, mask_q_proj as initialised (CLIP's): the mask token attends exactly as CLIP's
    class token does, through the same last num_mask_layers blocks, so its embedding is CLIP's image embedding."""
    from fisa_rt.checkpoint import load_model
    from fisa_rt.mask_classifier import MaskAttentionHead, cosine_logits
    from fisa_rt.runtime.assets import default_checkpoint

    model, _ = load_model(default_checkpoint())  # trained CLIP: non-zero in_proj biases, SEVE gates open
    visual = model.backbone.visual
    # a fresh head: its query projections as initialised from CLIP's (the checkpoint's are SIMO-trained)
    model.classifier = MaskAttentionHead(visual, model.cfg.classifier, model.embed_dim, model.text.clip.logit_scale)
    text = random_text(4, model.embed_dim)
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 128, 128), text)
        h, w = features.grid
        generated = MaskGeneratorOutput(mask_logits=torch.full((1, 1, h, w), 5.0), class_embeds=torch.zeros(1),
                                        void_embedding=torch.zeros(1))
        logits = model.classifier(model.backbone, features, generated, text, model.logit_scale).logits
        cls = visual.transformer.resblocks[-1](features.block_inputs[-1])[:, :1]
        want = cosine_logits(visual.ln_post(cls) @ visual.proj, text, model.classifier.logit_scale.exp())
    torch.testing.assert_close(logits[..., :-1], want, rtol=1e-5, atol=1e-5)
