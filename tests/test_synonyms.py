"""FC-CLIP's synonym handling (``text.synonyms: max``): one text row per synonym, its templates averaged,
and a class scored by its best synonym, in PyTorch and inside the exported graphs, with the seen flags
of the mask-average ensemble as a graph input."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fisa_rt import create_model, get_model_config
from fisa_rt.checkpoint import save_checkpoint
from fisa_rt.errors import ConfigError, InputError
from fisa_rt.export import onnx_export, tensorrt_builder
from fisa_rt.mask_classifier import with_void
from fisa_rt.preprocess import normalize_images
from fisa_rt.runtime.segmenter import Segmenter
from fisa_rt.text import EmbeddingCache
from fisa_rt.vocab import vocabulary as vocab

from helpers import open_gates, random_text

NAMES = ["red star, crimson star", "wavy wall", "blue disc, azure disc, sapphire disc"]
TEMPLATES = ("a {}.", "the {} here.")
D = 16


def fake_text_encoder():
    """A deterministic unit vector per prompt, and a record of what was encoded."""
    vectors = {}

    def encode(prompts):
        out = []
        for p in prompts:
            if p not in vectors:
                v = np.random.default_rng(len(vectors)).standard_normal(D)
                vectors[p] = v / np.linalg.norm(v)
            out.append(vectors[p])
        return np.array(out, np.float32)

    return encode, vectors


def test_max_keeps_a_row_per_synonym_and_pads_with_the_class_own_synonyms():
    encode, vectors = fake_text_encoder()
    rows = vocab.encode(vocab.Vocabulary(NAMES), TEMPLATES, lambda p: p, encode, batch_size=3, synonyms="max")
    assert rows.shape == (3, 3, D) and rows.dtype == np.float32

    def synonym(word):  # FC-CLIP: templates' normalised embeddings averaged, renormalised
        mean = np.mean([vectors[t.format(word)] for t in TEMPLATES], axis=0)
        return mean / np.linalg.norm(mean)

    expected = [
        ["red star", "crimson star", "red star"],  # two synonyms: the first repeats
        ["wavy wall"] * 3,
        ["blue disc", "azure disc", "sapphire disc"],
    ]
    for k, words in enumerate(expected):
        for m, word in enumerate(words):
            np.testing.assert_allclose(rows[k, m], synonym(word), atol=1e-6)
    # "mean" stays one row per class: every (synonym, template) prompt averaged
    mean = vocab.encode(vocab.Vocabulary(NAMES), TEMPLATES, lambda p: p, encode)
    assert mean.shape == (3, D)
    want = np.mean([vectors[t.format(w)] for w in ("red star", "crimson star") for t in TEMPLATES], axis=0)
    np.testing.assert_allclose(mean[0], want / np.linalg.norm(want), atol=1e-6)
    with pytest.raises(InputError, match="synonyms must be one of"):
        vocab.encode(vocab.Vocabulary(NAMES), TEMPLATES, lambda p: p, encode, synonyms="min")


def fcclip_classification_logits(x, text_classifier, logit_scale, num_templates):
    """FC-CLIP's get_classification_logits (fcclip_transformer_decoder.py), restated: cosine logits against
    every synonym row, the max over each class's consecutive rows, the void row last."""
    logits = logit_scale * F.normalize(x, dim=-1) @ text_classifier.t()
    out, start = [], 0
    for n in num_templates:
        out.append(logits[..., start : start + n].max(-1).values)
        start += n
    out.append(logits[..., -1])
    return torch.stack(out, dim=-1)


def test_class_logits_are_fcclips_max_over_synonyms():
    torch.manual_seed(0)
    counts = [3, 1, 2, 4]
    flat = random_text(sum(counts), D)
    void = torch.randn(D)
    embeds = torch.randn(2, 5, D)
    owners = [k for k, n in enumerate(counts) for _ in range(n)]
    rows = torch.from_numpy(vocab.synonym_rows(flat.numpy(), owners, len(counts)))
    got = with_void(embeds, rows, void, torch.tensor(50.0))
    classifier = torch.cat([flat, F.normalize(void, dim=-1)[None]])
    torch.testing.assert_close(got, fcclip_classification_logits(embeds, classifier, 50.0, counts))


@pytest.fixture(scope="module")
def max_model():
    """The mask-average (FC-CLIP) head with ``text.synonyms: max``, SEVE adapters open."""
    cfg = get_model_config("fisa-tiny-convnext")
    cfg = dataclasses.replace(cfg, name="tiny-max", text=dataclasses.replace(cfg.text, synonyms="max"))
    torch.manual_seed(0)
    model = create_model(cfg).eval()
    model.set_kernels("reference")
    open_gates(model)
    return model


def test_model_takes_the_best_synonym_in_and_out_of_vocabulary(max_model):
    torch.manual_seed(1)
    x = normalize_images(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), (0.5,) * 3, (0.25,) * 3)
    text = random_text(4, max_model.embed_dim)
    seen = torch.tensor([True, False, True, False])
    with torch.no_grad():
        single = max_model(x, text, seen).class_logits
        # every class's row twice: the max and SEVE's attention (each class still weighs the same) agree
        doubled = max_model(x, text[:, None].expand(-1, 2, -1).contiguous(), seen).class_logits
        decoy = torch.stack([text, random_text(4, max_model.embed_dim)], dim=1)
        closed = copy.deepcopy(max_model)
        open_gates(closed, 0.0)  # SEVE off: a second synonym row can only change scores through the max
        plain = closed(x, text, seen).class_logits
        with_decoy = closed(x, decoy, seen).class_logits
        decoy_first = closed(x, decoy.flip(1), seen).class_logits
    torch.testing.assert_close(doubled, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_decoy, plain, atol=1e-3)
    # a max does not care which synonym comes first, in either head (each scoring only the first row passed above)
    torch.testing.assert_close(decoy_first, with_decoy, atol=1e-5, rtol=1e-5)


def test_config_refuses_an_unknown_synonym_mode():
    with pytest.raises(ConfigError, match="text.synonyms must be one of"):
        data = get_model_config("fisa-tiny-convnext").to_dict()
        get_model_config("fisa-tiny-convnext").from_dict({**data, "text": {"synonyms": "min"}})


def test_graph_inputs_and_engine_profiles_follow_the_config():
    vit = get_model_config("fisa-tiny")
    fcclip = get_model_config("fcclip-convnext-l")
    assert onnx_export.graph_inputs(vit, 64) == {"image": ("batch", 3, vit.image_size, vit.image_size),
                                                 "text": ("classes", 64)}
    inputs = onnx_export.graph_inputs(fcclip, 768)
    assert inputs["text"] == ("classes", "synonyms", 768) and inputs["seen"] == ("classes",)
    options = tensorrt_builder.EngineOptions(synonyms=tensorrt_builder.Profile(1, 17, 24))
    shapes = tensorrt_builder.input_shapes(inputs, options)
    assert shapes["text"] == ((1, 1, 768), (150, 17, 768), (1203, 24, 768))
    assert shapes["seen"] == ((1,), (150,), (1203,))
    assert set(tensorrt_builder.used_profiles(inputs, options)) == {"batch", "classes", "synonyms"}
    assert "text:150x17x768,seen:150" in tensorrt_builder.trtexec_command("m.onnx", "m.engine", inputs, options, False)


def test_embedding_checks_and_cache_keys_know_synonym_rows(tiny_convnext, tmp_path):
    rows = np.ones((2, 3, 4), np.float32)
    assert vocab.check_embeddings(rows, 2).shape == (2, 3, 4)
    rows[1, 2] = 0
    with pytest.raises(InputError, match="row 1 is all zeros"):
        vocab.check_embeddings(rows, 2)
    with pytest.raises(InputError, match=r"\(2, M, D\)"):
        vocab.check_embeddings(np.ones((3, 3, 4), np.float32), 2)
    v = vocab.Vocabulary(["cat, kitten"])
    assert vocab.cache_key("sha", "vild", v, "mean") != vocab.cache_key("sha", "vild", v, "max")
    cache = EmbeddingCache(str(tmp_path))
    cfg = tiny_convnext.cfg.text
    assert cache.path("f", cfg, ["cat"]) != cache.path("f", dataclasses.replace(cfg, synonyms="max"), ["cat"])


@pytest.fixture(scope="module")
def artefacts(max_model, tmp_path_factory):
    from fisa_rt.export.build_engine import build, parse_args

    folder = tmp_path_factory.mktemp("synonyms")
    path = str(folder / "tiny-max.safetensors")
    save_checkpoint(path, max_model, vocabulary=["red star", "wavy wall"], is_thing=[True, False])
    written = build(parse_args(["--checkpoint", path, "--out", str(folder), "--no-simplify", "--precision", "fp32"]))
    return path, written


def test_onnx_runtime_applies_synonyms_and_seen_like_pytorch(artefacts):
    checkpoint, written = artefacts
    torch_seg = Segmenter.from_engine(checkpoint, backend="torch", device="cpu", cache_dir="")
    onnx_seg = Segmenter.from_engine(written["portable"], cache_dir="")
    assert onnx_seg.backend.applies_seen and onnx_seg.backend.synonyms == "max"
    for seg in (torch_seg, onnx_seg):
        seg.set_vocabulary(NAMES + ["red star"])
        assert seg.text.shape == (4, 3, 64) and seg.seen_in_training.tolist() == [True, True, False, True]
    np.testing.assert_allclose(onnx_seg.text, torch_seg.text, atol=1e-5)  # ONNX text encoder vs the tower
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    want = torch_seg.backend.run(images, torch_seg.text, torch_seg.seen_in_training)
    got = onnx_seg.backend.run(images, onnx_seg.text, onnx_seg.seen_in_training)
    torch.testing.assert_close(got.class_scores, want.class_scores, atol=1e-5, rtol=1e-4)
    unseen = onnx_seg.backend.run(images, onnx_seg.text, None).class_scores
    assert not torch.allclose(unseen, got.class_scores, atol=1e-4)  # the graph reads the flags
    # no flags mean every class unseen on either backend (ONNX's default had been free to differ from PyTorch's)
    torch_unseen = torch_seg.backend.run(images, torch_seg.text, None).class_scores
    torch.testing.assert_close(unseen, torch_unseen, atol=1e-5, rtol=1e-4)
    # (K, D) text is one row per class; a flag per class is required
    assert onnx_seg.backend.run(images, onnx_seg.text[:, 0], None).class_scores.shape == (2, 20, 5)
    with pytest.raises(InputError, match=r"seen must be \(4,\) bool"):
        onnx_seg.backend.run(images, onnx_seg.text, np.ones(3, bool))


def test_a_mean_artefact_refuses_synonym_rows_in_one_line():
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.runtime.backends import TorchBackend

    backend = TorchBackend(default_checkpoint(), "cpu")
    with pytest.raises(InputError, match="averages synonyms"):
        backend.check_text(np.ones((2, 3, backend.embed_dim), np.float32))
