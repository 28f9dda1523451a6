"""Where an inference vocabulary comes from, and its embeddings files."""

import numpy as np
import pytest

from fisa_rt import InputError
from fisa_rt.vocab import vocabulary as vocab


def test_shipped_vocabularies():
    coco, ade, synthetic = vocab.named("coco-panoptic"), vocab.named("ade20k-150"), vocab.named("synthetic")
    assert len(coco.names) == 133 and sum(coco.is_thing) == 80
    assert len(ade.names) == 150 and ade.names[0] == "wall" and ade.is_thing[12]  # person
    assert len(synthetic.names) == 32
    with pytest.raises(InputError, match="unknown vocabulary"):
        vocab.named("imagenet")


def test_files_and_classes(tmp_path):
    txt = tmp_path / "v.txt"
    txt.write_text("# my classes\nperson, man, woman\nsky:stuff\n\ncar:thing\n")
    v = vocab.from_file(str(txt))
    assert v.names == ["person, man, woman", "sky", "car"] and v.is_thing == [True, False, True]
    txt.write_text("  # an indented comment\ncat \nsky:stuff  \n")  # lines as an editor leaves them
    v = vocab.from_file(str(txt))
    assert v.names == ["cat", "sky"] and v.is_thing == [True, False]
    assert vocab.Vocabulary(["a", "b"]).is_thing == [True, True]  # unmarked classes are things
    assert vocab.resolve(classes="cat, dog").names == ["cat", "dog"]
    # the file's :stuff suffix works in --classes too, so a panoptic run can merge a stuff class into one segment
    marked = vocab.resolve(classes="cat, grass:stuff, sky : Stuff, car:thing")
    assert marked.names == ["cat", "grass", "sky", "car"] and marked.is_thing == [True, False, False, True]
    assert vocab.resolve(vocab="coco-panoptic").names[0].startswith("person")
    for bad, message in [
        ({"classes": " , "}, r"classes \(--classes\) holds no class name"),
        ({"vocab": str(tmp_path / "none.txt")}, "no such file"),
        ({}, r"no vocabulary: give classes=.*\(--classes\) or vocab=.*\(--vocab\)"),
    ]:
        with pytest.raises(InputError, match=message):
            vocab.resolve(**bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="empty"):
        vocab.from_file(str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match=r"classes= \(--classes\) or vocab= \(--vocab\), not both"):
        vocab.resolve(classes="a", vocab="coco-panoptic")


def test_files_written_by_other_tools_read_as_meant(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("cat\ngrass : stuff\nsky: Stuff\nfence :thing\n".encode("utf-8-sig"))
    v = vocab.from_file(str(bom))
    assert v.names == ["cat", "grass", "sky", "fence"] and v.is_thing == [True, False, False, True]
    upper = tmp_path / "v.JSON"
    upper.write_text('{"classes": [{"name": "cat", "isthing": 1}, {"name": "grass", "isthing": 0}]}')
    v = vocab.from_file(str(upper))
    assert v.names == ["cat", "grass"] and v.is_thing == [True, False]
    for flag in ['"false"', "null", "2", "0.5"]:
        upper.write_text('{"classes": [{"name": "cat", "isthing": %s}]}' % flag)
        with pytest.raises(InputError, match="isthing of 'cat'"):
            vocab.from_file(str(upper))


def test_the_vild_templates_are_fcclips_fourteen():
    """Pinned as written in FC-CLIP (fcclip/fcclip.py, VILD_PROMPT): the other tests build their prompts from
    PROMPT_TEMPLATES itself, so a dropped template passed them."""
    from fisa_rt.vocab.prompts import PROMPT_TEMPLATES

    assert PROMPT_TEMPLATES["vild"] == (
        "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene", "There is the {} in the scene",
        "a photo of a {} in the scene", "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
        "This is a photo of a small {}.", "This is a photo of a medium {}.", "This is a photo of a large {}.",
        "There is a small {} in the scene.", "There is a medium {} in the scene.",
        "There is a large {} in the scene.",
    )


def test_the_runtime_cache_key_knows_the_templates():
    """A frozen CLIP text tower exported with other templates can be the same text encoder, byte for byte."""
    classes = vocab.Vocabulary(["cat"])
    assert vocab.cache_key("sha", "vild", classes) != vocab.cache_key("sha", "single", classes)


def test_prompt_averaging_and_embeddings_round_trip(tmp_path):
    per_prompt = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    averaged = vocab.average_prompts(per_prompt, [0, 0, 1], 2)
    np.testing.assert_allclose(averaged, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]], rtol=1e-6)
    v = vocab.Vocabulary(["a", "b"], [True, False])
    path = vocab.save_embeddings(str(tmp_path / "e.npz"), averaged, v, "abc")
    embeddings, again, sha = vocab.load_embeddings(path)
    assert np.array_equal(embeddings, averaged) and again == v and sha == "abc"
    with pytest.raises(InputError, match="exists"):
        vocab.save_embeddings(path, averaged, v, "abc")
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not an embeddings file.*: it is neither an .npz archive nor an .npy array"):
        vocab.load_embeddings(str(tmp_path / "bad.npz"))
    import pickle

    (tmp_path / "pickled.npz").write_bytes(pickle.dumps({"embeddings": [1.0]}))
    with pytest.raises(InputError, match="pickled Python objects"):
        vocab.load_embeddings(str(tmp_path / "pickled.npz"))
    np.savez(tmp_path / "objects.npz", embeddings=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled Python objects, which fisa-rt never loads") as refused:
        vocab.load_embeddings(str(tmp_path / "objects.npz"))
    assert "allow_pickle" not in str(refused.value)  # NumPy's advice to load it unsafely is not passed on


def test_a_list_of_names_reads_the_stuff_mark_as_classes_does():
    """Python's set_vocabulary kept "grass:stuff" as a thing named "grass:stuff", where --classes reads stuff."""
    listed = vocab.vocabulary_of(["grass:stuff", "cat", "sky : Stuff", "dog:thing"])
    assert listed == vocab.from_classes("grass:stuff, cat, sky : Stuff, dog:thing")
    assert listed.names == ["grass", "cat", "sky", "dog"] and listed.is_thing == [False, True, False, True]
    with pytest.raises(InputError, match="class names must be"):
        vocab.vocabulary_of(["grass:stuff", 3])


def test_vocabularies_refuse_what_they_would_misread(tmp_path):
    for names, flags, message in [
        ("cat", None, "class names must be a list of strings; got 'cat'"),  # not the classes 'c', 'a', 't'
        (None, None, "class names must be a list of strings; got None"),
        (["a"], ["false"], "is_thing of 'a' is 'false'"),  # not true, as bool("false") is
        (["a"], [0.5], "is_thing of 'a' is 0.5"),
        (["a"], "1", "is_thing must be a list"),
    ]:
        with pytest.raises(InputError, match=message):
            vocab.Vocabulary(names, flags)
    names, flags = ["cat", "grass"], np.array([1, 0])  # COCO's 1/0, as NumPy integers
    v = vocab.Vocabulary(names, flags)
    names.append("dog")
    assert v.names == ["cat", "grass"] and v.is_thing == [True, False] and type(v.is_thing[0]) is bool
    for bad, message in [
        ({"classes": ["cat", "dog"]}, "classes must be one string of comma-separated class names.*got a list"),
        ({"vocab": ["cat", "dog"]}, "vocab must be a shipped vocabulary name or a file path; got a list"),
    ]:
        with pytest.raises(InputError, match=message):
            vocab.resolve(**bad)
    (tmp_path / "v.txt").write_text("cat\n")
    assert vocab.resolve(vocab=tmp_path / "v.txt").names == ["cat"]  # a pathlib path is a path
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="deep.json is not a vocabulary file: its JSON nests too deeply"):
        vocab.from_file(str(deep))


def test_embeddings_are_checked_as_float32_and_normalised():
    unit = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)
    assert vocab.check_embeddings(unit, 2).tobytes() == unit.tobytes()  # unit rows are kept bit for bit
    np.testing.assert_allclose(vocab.check_embeddings(unit * [[10.0], [1e-30]], 2), unit, rtol=1e-6)  # cosine
    synonyms = np.stack([unit, 3 * unit[::-1]], axis=1)  # (K, M, D): each synonym row normalised
    np.testing.assert_allclose(vocab.check_embeddings(synonyms, 2), np.stack([unit, unit[::-1]], 1), rtol=1e-6)
    for embeddings, message in [
        (unit.astype(np.float64) * 1e300, r"values beyond float32's range \(row 0\)"),  # inf once float32
        (unit.astype(np.float64) * [[1.0], [1e-300]], r"row 1 is all zeros in float32"),  # 0 once float32
        ([[0.6, 0.8], [1.0]], r"cannot be read as a \(K, D\) array of numbers"),  # ragged
    ]:
        with pytest.raises(InputError, match=message):
            vocab.check_embeddings(embeddings, 2)


def test_embeddings_tensors_are_read_whatever_their_grad_or_device():
    import torch

    rows = torch.tensor([[0.6, 0.8]], requires_grad=True)
    np.testing.assert_allclose(vocab.check_embeddings(rows, 1), [[0.6, 0.8]])
    np.testing.assert_allclose(vocab.check_embeddings(rows.detach().bfloat16(), 1), [[0.6, 0.8]], atol=0.01)
    with pytest.raises(InputError, match="cannot be read as a .*meta tensor"):
        vocab.check_embeddings(torch.ones(1, 2, device="meta"), 1)


def test_save_embeddings_refuses_what_load_embeddings_would(tmp_path):
    v, path = vocab.Vocabulary(["a", "b"]), tmp_path / "e.npz"
    for embeddings, message in [(np.ones((1, 4), np.float32), "do not match 2 classes"),
                                (np.full((2, 4), np.nan, np.float32), "NaN")]:
        with pytest.raises(InputError, match=message):
            vocab.save_embeddings(str(path), embeddings, v, "sha")
    with pytest.raises(InputError, match="text_encoder_sha256 must be a str"):  # else saved as a pickled object
        vocab.save_embeddings(str(path), np.ones((2, 4), np.float32), v, None)
    assert not path.exists()
