"""FC-CLIP's seen classes at inference: a class naming one the mask generator was trained on (the
checkpoint's training vocabulary; for fcclip-convnext-l COCO panoptic's 133) gets ensemble alpha."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.errors import FisaWarning
from fisa_rt.model import create_model
from fisa_rt.preprocess import normalize_images
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.vocab.prompts import seen_classes
from fisa_rt.vocab.vocabulary import named


def test_seen_is_fcclips_category_overlap():
    coco = named("coco-panoptic").names
    # any synonym of the class equal to any synonym of a COCO class, exact strings, as FC-CLIP compares
    names = ["person", "necktie", "flag", "wall", "Person", "man, giraffe", "kitty", "dog, hound"]
    assert seen_classes(names, coco) == [True, False, False, True, False, True, True, True]
    assert seen_classes(coco, coco) == [True] * 133
    assert seen_classes(["cat"], []) == [False]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    model = create_model("fisa-tiny-convnext").eval()  # the mask-average head, the only one that reads seen
    path = str(tmp_path_factory.mktemp("seen") / "tiny.safetensors")
    save_checkpoint(path, model, vocabulary=["red star", "wavy wall"], is_thing=[True, False])
    return Segmenter.from_engine(path, backend="torch", device="cpu", cache_dir="")


def test_segmenter_passes_the_training_vocabulary_as_seen(segmenter):
    segmenter.set_vocabulary(["blue disc", "red star", "striped floor, wavy wall"])
    assert segmenter.seen_in_training.tolist() == [False, True, True]
    calls = []
    run = segmenter.backend.run

    def recording_run(images, text, seen_in_training=None):
        calls.append(seen_in_training)
        return run(images, text, seen_in_training)

    segmenter.backend.run = recording_run
    try:
        segmenter.segment(np.zeros((40, 56, 3), np.uint8))
    finally:
        segmenter.backend.run = run
    assert calls[0].tolist() == [False, True, True]


def test_torch_backend_scores_seen_classes_with_alpha(segmenter):
    segmenter.set_vocabulary(["blue disc", "red star", "wavy wall"])
    model, text = segmenter.backend.model, torch.tensor(segmenter.text)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seen = segmenter.seen_in_training
    got = segmenter.backend.run(images, segmenter.text, seen).class_scores
    with torch.no_grad():
        x = normalize_images(images, model.cfg.image_mean, model.cfg.image_std)
        want = model(x, text, seen=torch.tensor(seen)).class_logits.softmax(-1)
        unseen = model(x, text).class_logits.softmax(-1)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(want, unseen, atol=1e-4)  # alpha 0.4 vs beta 0.8 changes the scores
    with torch.no_grad():  # no flags: every class unseen, as all False (not all True)
        none_seen = model(x, text, seen=torch.zeros(3, dtype=torch.bool)).class_logits.softmax(-1)
    torch.testing.assert_close(unseen, none_seen)


def test_the_ensemble_is_fcclips_geometric_mean_with_alpha_for_seen_and_beta_for_unseen(segmenter, monkeypatch):
    """FC-CLIP: p = p_in ** (1 - w) * p_out ** w over the classes, w = alpha where seen, beta where not, then the void
    probability of the in-vocabulary head. Weights 0 and 1 give each head's own class log-probabilities (E0, E1)
    with the same void, so the class scores at (alpha, beta) must be softmax((1 - w) E0 + w E1), computed here
    from the two runs, not by the head's own code (an ensemble with its exponents swapped passed before)."""
    segmenter.set_vocabulary(["blue disc", "red star", "wavy wall"])
    model, text = segmenter.backend.model, torch.tensor(segmenter.text)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = normalize_images(images, model.cfg.image_mean, model.cfg.image_std)
    seen = torch.tensor([True, False, True])
    head = model.classifier.cfg

    def class_logits(alpha, beta):
        monkeypatch.setattr(head, "ensemble_alpha", alpha)
        monkeypatch.setattr(head, "ensemble_beta", beta)
        with torch.no_grad():
            return model(x, text, seen=seen).class_logits[..., :-1]

    generated = []
    hook = model.mask_generator.register_forward_hook(lambda module, args, output: generated.append(output))
    try:
        in_vocab, out_vocab = class_logits(0.0, 0.0), class_logits(1.0, 1.0)
    finally:
        hook.remove()
    assert not torch.allclose(in_vocab.softmax(-1), out_vocab.softmax(-1), atol=1e-3)  # the heads disagree
    # weight 0 is the generator's own classifier: its class embeddings' cosine with the text, at its temperature
    generator = generated[0]
    scale = (model.logit_scale if generator.logit_scale is None else generator.logit_scale.exp()).clamp(max=100)
    cosine = F.normalize(generator.class_embeds, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(in_vocab.softmax(-1), (scale * cosine).softmax(-1), rtol=1e-4, atol=1e-6)
    w = torch.tensor([0.4, 0.8, 0.4])
    expected = ((1 - w) * in_vocab + w * out_vocab).softmax(-1)
    torch.testing.assert_close(class_logits(0.4, 0.8).softmax(-1), expected, rtol=1e-4, atol=1e-6)


def test_graphs_without_a_seen_input_say_so(segmenter, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmenter.set_vocabulary(["blue disc", "red star"])  # the torch backend applies seen: nothing to say
    monkeypatch.setattr(segmenter.backend, "applies_seen", False)  # as the ONNX Runtime and TensorRT backends
    with pytest.warns(FisaWarning, match="1 of these classes were seen in training"):
        segmenter.set_vocabulary(["red star", "blue disc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmenter.set_vocabulary(["blue disc"])  # nothing seen: nothing to say
