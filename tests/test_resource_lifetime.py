"""What a long-lived process keeps: a dropped Segmenter is freed at once, the text encoder takes the thread count
it is given, and no temporary file outlives an interrupted write. Each test failed before its fix (a helper's
sweep, docs/design.md "Resource lifetime")."""

import gc
import os
import weakref

import pytest

from fisa_rt.runtime.segmenter import Segmenter


def test_a_dropped_onnx_segmenter_is_freed_without_the_cyclic_collector(artefacts):
    """A lambda over the text encoder and an lru_cache over the tokenizer's bound method made reference cycles:
    each dropped Segmenter's session, tokenizer (24 MB) and a native thread lived until the collector ran."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        seg = Segmenter.from_engine(artefacts["out"], threads=1, cache_dir="")
        seg.set_vocabulary(["red star", "wavy wall"])
        kept = [weakref.ref(seg.text_encoder), weakref.ref(seg.text_encoder.tokenizer), weakref.ref(seg.backend)]
        del seg
        assert [ref() is None for ref in kept] == [True, True, True]
    finally:
        if enabled:
            gc.enable()


def test_the_text_encoder_takes_the_backends_thread_count(artefacts):
    """Its session had ONNX Runtime's default pool, one thread per core, whatever threads= said."""
    seg = Segmenter.from_engine(artefacts["out"], threads=1, cache_dir="")
    options = seg.text_encoder.session.get_session_options()
    assert options.intra_op_num_threads == 1 and seg.backend.threads == 1


def test_an_interrupted_kernel_choice_save_leaves_no_temporary(tmp_path, monkeypatch):
    """Only an OSError removed the temporary file: Ctrl-C mid-write left a random-named .tmp for good."""
    from fisa_rt.kernels import choice as choice_module
    from fisa_rt.kernels.choice import Choice, ChoiceTable

    table = ChoiceTable("cpu", str(tmp_path / "choices.json"), timer=None)
    table.choices["op:float32:fwd:1"] = Choice("eager", {"eager": 1.0}, {})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(choice_module.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        table.save()
    assert os.listdir(tmp_path) == []


def test_the_vocabulary_cache_removes_the_temporaries_of_killed_writers(tmp_path):
    """They were removed from output folders only: a killed run's .fisa-tmp file stayed in the cache for good."""
    from test_nothing_lost import _dead_pid

    from fisa_rt.runtime.assets import default_checkpoint

    dead = tmp_path / f".abc.fisa-tmp{_dead_pid()}.npz"
    dead.write_bytes(b"partial")
    seg = Segmenter.from_engine(default_checkpoint(), cache_dir=str(tmp_path))
    seg.set_vocabulary(["red star", "wavy wall"])
    assert not dead.exists() and len(os.listdir(tmp_path)) == 1


def test_the_vocabulary_cache_keeps_its_most_recently_used_entries(tmp_path):
    """One entry per vocabulary, never removed: a server caching every client's vocabulary filled its disk."""
    from fisa_rt.runtime.assets import default_checkpoint

    (tmp_path / "notes.txt").write_text("mine")  # not an entry's name: never touched
    seg = Segmenter.from_engine(default_checkpoint(), cache_dir=str(tmp_path))

    def entries():
        return sorted(name for name in os.listdir(tmp_path) if name.endswith(".npz"))

    seg.set_vocabulary(["red star", "blue disc"])
    (first,) = entries()
    seg.text_encoder.cache_bytes = int(2.5 * os.path.getsize(tmp_path / first))
    seg.set_vocabulary(["wavy wall", "grey cube"])
    second = next(name for name in entries() if name != first)
    seg.set_vocabulary(["red star", "blue disc"])  # a hit: the first is now the most recently used
    seg.set_vocabulary(["pink cone", "gold ring"])
    assert first in entries() and second not in entries() and len(entries()) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_pruning_keeps_the_newest_entry_even_past_the_budget(tmp_path):
    """The other cache tests' budgets hold 2.5 entries, so pruning never reached the newest."""
    import re

    from fisa_rt.cache_files import keep_recent

    for age, name in enumerate(["a.npz", "b.npz", "c.npz"]):
        (tmp_path / name).write_bytes(b"x" * 10)
        os.utime(tmp_path / name, (1000 + age, 1000 + age))
    keep_recent(str(tmp_path), re.compile(r".*\.npz"), 0)
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_the_model_embeddings_cache_is_bounded_like_the_runtime_one(tmp_path, tiny_vit):
    """FisaModel.encode_vocabulary(cache=)'s entries were never removed, nor a killed writer's temporaries."""
    from test_nothing_lost import _dead_pid

    from fisa_rt.text import EmbeddingCache

    dead = tmp_path / f".vocab-abc.fisa-tmp{_dead_pid()}.safetensors"
    dead.write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("mine")
    cache = EmbeddingCache(str(tmp_path))

    def entries():
        return sorted(name for name in os.listdir(tmp_path) if name.startswith("vocab-"))

    tiny_vit.encode_vocabulary(["red star", "blue disc"], cache=cache)
    assert not dead.exists()
    (first,) = entries()
    cache.max_bytes = int(2.5 * os.path.getsize(tmp_path / first))
    tiny_vit.encode_vocabulary(["wavy wall", "grey cube"], cache=cache)
    second = next(name for name in entries() if name != first)
    tiny_vit.encode_vocabulary(["red star", "blue disc"], cache=cache)  # a hit: the first is now the most recent
    tiny_vit.encode_vocabulary(["pink cone", "gold ring"], cache=cache)
    assert first in entries() and second not in entries() and len(entries()) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_both_embeddings_caches_say_why_they_cannot_write_in_one_warning(tmp_path, tiny_vit):
    """The model's and the runtime's caches write through one function (cache_files.store)."""
    from fisa_rt.runtime.assets import default_checkpoint
    from fisa_rt.text import EmbeddingCache

    folder = tmp_path / "cache"
    folder.write_text("not a folder")
    with pytest.warns(UserWarning) as said:
        embeddings = tiny_vit.encode_vocabulary(["red star"], cache=EmbeddingCache(str(folder)))
        Segmenter.from_engine(default_checkpoint(), cache_dir=str(folder)).set_vocabulary(["red star"])
    assert embeddings.shape == (1, tiny_vit.embed_dim) and folder.read_text() == "not a folder"
    hints = ("", ' (set XDG_CACHE_HOME, or cache_dir="" / --no-cache)')
    assert [str(w.message).split(": ", 1)[1] for w in said] == [
        f"File exists; continuing without it{hint}" for hint in hints], [str(w.message) for w in said]
