import pytest
import torch

from fisa_rt import ConfigError, InputError
from fisa_rt import text as text_module
from fisa_rt.text import EmbeddingCache
from fisa_rt.vocab.prompts import prompt_templates


def test_vocabulary_embeddings_are_normalised_and_ordered(tiny_vit):
    emb = tiny_vit.encode_vocabulary(["cat", "dog", "red square"])
    assert emb.shape == (3, tiny_vit.embed_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    again = tiny_vit.encode_vocabulary(["red square", "cat"])
    torch.testing.assert_close(again, emb[[2, 0]])


def test_synonyms_average_their_prompts(tiny_vit):
    both = tiny_vit.encode_vocabulary(["cat, kitten"])
    single = tiny_vit.encode_vocabulary(["cat", "kitten"])
    expected = torch.nn.functional.normalize(single.sum(0, keepdim=True), dim=-1)
    # close, not equal: `single` normalises each synonym before they are summed
    assert torch.nn.functional.cosine_similarity(both, expected).item() > 0.999


def test_empty_vocabulary_and_empty_names_are_rejected(tiny_vit):
    with pytest.raises(InputError, match="vocabulary is empty"):
        tiny_vit.encode_vocabulary([])
    with pytest.raises(InputError, match="is empty"):
        tiny_vit.encode_vocabulary(["cat", " , "])


def test_unknown_templates_are_a_config_error():
    with pytest.raises(ConfigError, match="unknown prompt templates 'fancy'"):
        prompt_templates("fancy")


def test_cache_reuses_embeddings_and_keys_on_weights(tmp_path, tiny_vit, monkeypatch):
    cache = EmbeddingCache(str(tmp_path))
    first = tiny_vit.encode_vocabulary(["cat", "dog"], cache=cache)
    calls = []
    real = text_module.encode_vocabulary
    monkeypatch.setattr(text_module, "encode_vocabulary", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = tiny_vit.encode_vocabulary(["cat", "dog"], cache=cache)
    assert calls == [] and torch.equal(first, second)
    assert len(list(tmp_path.glob("vocab-*.safetensors"))) == 1
    tiny_vit.encode_vocabulary(["cat", "bird"], cache=cache)
    assert len(calls) == 1
    with torch.no_grad():
        tiny_vit.text.clip.text_projection.mul_(2.0)
    try:
        tiny_vit.encode_vocabulary(["cat", "dog"], cache=cache)
        assert len(calls) == 2  # new weights: not served from the old entry
    finally:
        with torch.no_grad():
            tiny_vit.text.clip.text_projection.div_(2.0)
