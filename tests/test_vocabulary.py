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
    assert vocab.resolve(classes="cat, dog").names == ["cat", "dog"]
    assert vocab.resolve(vocab="coco-panoptic").names[0].startswith("person")
    for bad, message in [
        ({"classes": " , "}, "no class name"),
        ({"vocab": str(tmp_path / "none.txt")}, "no such file"),
        ({}, "no vocabulary"),
    ]:
        with pytest.raises(InputError, match=message):
            vocab.resolve(**bad)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(InputError, match="empty"):
        vocab.from_file(str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="not both"):
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
    with pytest.raises(InputError, match="not an embeddings file"):
        vocab.load_embeddings(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "objects.npz", embeddings=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="pickled Python objects, which fisa-rt never loads") as refused:
        vocab.load_embeddings(str(tmp_path / "objects.npz"))
    assert "allow_pickle" not in str(refused.value)  # NumPy's advice to load it unsafely is not passed on
