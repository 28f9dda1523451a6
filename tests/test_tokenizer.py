"""The plain-Python CLIP tokenizer (what a device without open_clip runs) gives open_clip's ids."""

import gzip

import numpy as np
import open_clip
import pytest

from fisa_rt import CheckpointError
from fisa_rt.vocab.prompts import PROMPT_TEMPLATES, expand_prompts
from fisa_rt.vocab.tokenizer import Tokenizer, find_vocab_file
from fisa_rt.vocab.vocabulary import SHIPPED, named


def test_ids_equal_open_clip_on_every_shipped_vocabulary_and_template():
    ours = Tokenizer(find_vocab_file(), context_length=77)
    reference = open_clip.tokenizer.SimpleTokenizer()
    prompts = []
    for name in SHIPPED:
        prompts += expand_prompts(named(name).names, PROMPT_TEMPLATES["vild"])[0]
    # "&amp;amp;": open_clip unescapes HTML twice
    prompts += ["café &amp; résumé", "r&amp;amp;d lab", "person's 2nd bike!", "under_score 12.5%", "  many   spaces  ",
                "x" * 300]
    assert np.array_equal(ours(prompts), reference(prompts).numpy())


def test_short_context_truncates_with_the_end_token_last():
    ours = Tokenizer(find_vocab_file(), context_length=8)
    ids = ours(["a photo of a very very very long class name"])
    assert ids.shape == (1, 8) and ids[0, 0] == ours.start_id and ids[0, -1] == ours.end_id
    assert np.array_equal(
        ids,
        open_clip.tokenizer.SimpleTokenizer(context_length=8)(["a photo of a very very very long class name"]).numpy(),
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # a copy cut short: gzip's EOFError
        lambda data: b"not gzip at all",  # gzip.BadGzipFile
        lambda data: gzip.compress(b"header\nfoo bar baz\n"),  # gzip, but not the merges
    ],
)
def test_a_damaged_vocabulary_file_is_one_checkpoint_error(tmp_path, damage):
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with open(find_vocab_file(), "rb") as f:
        path.write_bytes(damage(f.read()))
    with pytest.raises(CheckpointError, match=f"tokenizer vocabulary {path} is damaged .*export/build_engine.py"):
        Tokenizer(str(path))
