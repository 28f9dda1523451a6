"""The plain-Python CLIP tokenizer (what a device without open_clip runs) gives open_clip's ids."""

import numpy as np
import open_clip

from fisa_rt.vocab.prompts import PROMPT_TEMPLATES, expand_prompts
from fisa_rt.vocab.tokenizer import Tokenizer, find_vocab_file
from fisa_rt.vocab.vocabulary import SHIPPED, named


def test_ids_equal_open_clip_on_every_shipped_vocabulary_and_template():
    ours = Tokenizer(find_vocab_file(), context_length=77)
    reference = open_clip.tokenizer.SimpleTokenizer()
    prompts = []
    for name in SHIPPED:
        prompts += expand_prompts(named(name).names, PROMPT_TEMPLATES["vild"])[0]
    prompts += ["café &amp; résumé", "person's 2nd bike!", "under_score 12.5%", "  many   spaces  ", "x" * 300]
    assert np.array_equal(ours(prompts), reference(prompts).numpy())


def test_short_context_truncates_with_the_end_token_last():
    ours = Tokenizer(find_vocab_file(), context_length=8)
    ids = ours(["a photo of a very very very long class name"])
    assert ids.shape == (1, 8) and ids[0, 0] == ours.start_id and ids[0, -1] == ours.end_id
    assert np.array_equal(
        ids,
        open_clip.tokenizer.SimpleTokenizer(context_length=8)(["a photo of a very very very long class name"]).numpy(),
    )
