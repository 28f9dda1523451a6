import copy
import dataclasses

import numpy as np
import pytest
import torch

from fisa_rt import ConfigError, InputError
from fisa_rt import text as text_module
from fisa_rt.text import EmbeddingCache, TextTower
from fisa_rt.vocab.tokenizer import trim_padding
from fisa_rt.vocab.prompts import prompt_templates


def test_vocabulary_embeddings_are_normalised_and_ordered(tiny_vit):
    emb = tiny_vit.encode_vocabulary(["cat", "dog", "red square"])
    assert emb.shape == (3, tiny_vit.embed_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    again = tiny_vit.encode_vocabulary(["red square", "cat"])
    torch.testing.assert_close(again, emb[[2, 0]])


def test_the_text_tower_runs_as_wide_as_its_longest_prompt_and_gives_open_clips_embeddings(tiny_vit):
    tower = tiny_vit.text
    tokens = torch.as_tensor(tiny_vit.tokenizer(["a cat.", "a photo of a large wooden dining table."]))
    widths = []
    hook = tower.clip.transformer.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            ours = tower(tokens)
    finally:
        hook.remove()
    assert tower.any_width and widths == [int((tokens != 0).sum(1).max())] and widths[0] < tokens.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(ours, tower.clip.encode_text(tokens, normalize=True), rtol=0, atol=1e-6)


@pytest.mark.parametrize("change", ["no causal mask", "a mask that is not causal", "pooled at the last position",
                                    "a sequence-first transformer"])
def test_a_text_tower_whose_padding_reaches_its_embedding_or_of_another_layout_runs_whole(tiny_vit, change):
    clip = copy.deepcopy(tiny_vit.text.clip)
    if change == "no causal mask":  # SigLIP's
        clip.attn_mask = None
    elif change == "a mask that is not causal":
        clip.attn_mask = torch.zeros_like(clip.attn_mask)
    elif change == "pooled at the last position":
        clip.text_pool_type = "last"
    else:  # open_clip 2.24's: encode_text permuted around it, which encode_width does not
        del clip.transformer.batch_first
    assert not TextTower(clip).any_width


def test_trim_padding_keeps_every_column_up_to_the_last_one_a_row_uses():
    tokens = np.array([[49406, 0, 320, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])  # id 0 is also a token ("!")
    np.testing.assert_array_equal(trim_padding(tokens), tokens[:, :4])
    assert trim_padding(np.zeros((2, 6), np.int64)).shape == (2, 1)


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
    # the same classes in another order are their own entry, in that order (not the first entry's rows)
    torch.testing.assert_close(tiny_vit.encode_vocabulary(["dog", "cat"], cache=cache), first[[1, 0]])
    cfg = tiny_vit.cfg.text
    assert cache.path("f", cfg, ["cat"]) != cache.path("f", dataclasses.replace(cfg, templates="single"), ["cat"])
    calls.clear()
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
