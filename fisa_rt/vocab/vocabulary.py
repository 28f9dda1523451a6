"""Vocabularies for inference: where class names come from, and turning them into the (K, D) text
embeddings every backend takes — with NumPy and a text-encoder callable only, no PyTorch required.

Sources: ``--classes "a, b"`` (one class per comma), a file (``.txt``: one class per line, synonyms
comma-separated, optional ``:stuff`` suffix; ``.json``: this package's vocabulary format), or a shipped
name (``coco-panoptic`` 133, ``ade20k-150``, ``synthetic`` 32).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path
from ..config import SYNONYM_MODES
from ..errors import InputError, missing_file_error, refuse_overwrite, warn
from ..file_kinds import file_kind
from .prompts import expand_prompts, validate_vocabulary

SHIPPED = ("coco-panoptic", "ade20k-150", "synthetic")
_KIND_SUFFIX = re.compile(r"\s*:\s*(stuff|thing)$", re.IGNORECASE)


@dataclass
class Vocabulary:
    names: List[str]
    is_thing: List[bool] = field(default_factory=list)

    def __post_init__(self):
        self.names = validate_vocabulary(self.names)
        if len(set(self.names)) < len(self.names):
            repeated = ", ".join(repr(n[:40]) for n in sorted({n for n in self.names if self.names.count(n) > 1})[:3])
            warn(f"class names repeat ({repeated}): their pixels split between the copies")
        flags = [] if self.is_thing is None else self.is_thing  # no flags: every class is a thing
        if isinstance(flags, (str, bytes)) or not isinstance(flags, Iterable):
            raise InputError(f"is_thing must be a list of True/False flags, one per class; got {flags!r:.60}")
        flags = list(flags) or [True] * len(self.names)  # list(): a NumPy array has no truth value
        if len(flags) != len(self.names):
            raise InputError(f"vocabulary has {len(self.names)} names but {len(flags)} thing/stuff flags")
        wrong = [(n, f) for n, f in zip(self.names, flags) if not _is_flag(f)]
        if wrong:
            raise InputError(f"is_thing of {wrong[0][0]!r:.40} is {wrong[0][1]!r:.40}; give True/False (or 1/0)")
        self.is_thing = [bool(f) for f in flags]


def vocabulary_of(classes) -> Vocabulary:
    """What ``set_vocabulary`` (local or a server's) keeps of its ``classes``: a list of names as a new
    Vocabulary, each name's ``:stuff``/``:thing`` mark read as ``--classes`` reads it, or a Vocabulary as a copy
    (without its warnings again), since the caller may go on changing theirs."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (Vocabulary, Sequence)):
        raise InputError(f"classes must be a list of class names or a Vocabulary; got {type(classes).__name__}")
    if isinstance(classes, Vocabulary):
        return copy.deepcopy(classes)
    if classes and all(isinstance(name, str) for name in classes):  # anything else: Vocabulary names the fault
        return _marked(classes)
    return Vocabulary(classes)


def _is_flag(value) -> bool:
    """True/False, or COCO's 1/0 (also as NumPy scalars); a string such as "false" would read as true."""
    return isinstance(value, (bool, int, np.bool_, np.integer)) and value in (0, 1)


def _kind(name: str) -> Tuple[str, bool]:
    """A name with an optional ``:stuff``/``:thing`` suffix -> (name, is_thing): a thing unless marked stuff, as
    panoptic segmentation has no way to tell from a name alone."""
    kind = _KIND_SUFFIX.search(name)
    return (name[: kind.start()] if kind else name), not kind or kind.group(1).lower() != "stuff"


def _marked(names: Sequence[str]) -> Vocabulary:
    """Names that may carry a ``:stuff``/``:thing`` mark, as a Vocabulary of the unmarked names."""
    names, things = zip(*map(_kind, names))
    return Vocabulary(list(names), list(things))


def from_classes(text: str) -> Vocabulary:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InputError("classes (--classes) holds no class name (give e.g. \"cat, dog, grass:stuff\")")
    return _marked(names)


def _from_json(data: dict, where: str) -> Vocabulary:
    shape = 'an object {"classes": [{"name": ..., "isthing": ...}, ...]}'
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise InputError(f"{where} is not a vocabulary file: expected {shape}, got a {type(data).__name__}")
    if not all(isinstance(c, dict) for c in data["classes"]):
        raise InputError(f"{where} is not a vocabulary file: each class must be an object, as in {shape}")
    try:
        classes = data["classes"]
        names, flags = [c["name"] for c in classes], [c.get("isthing", True) for c in classes]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where} is not a vocabulary file: missing {exc}") from None
    wrong = [(n, f) for n, f in zip(names, flags) if not _is_flag(f)]
    if wrong:
        raise InputError(f"{where}: isthing of {wrong[0][0]!r} is {wrong[0][1]!r}; give true/false (or 1/0)")
    return Vocabulary(names, [bool(f) for f in flags])


def named(name: str) -> Vocabulary:
    if name == "synthetic":
        from ..data.synthetic import categories

        cats = categories()
        return Vocabulary([c.name for c in cats], [c.isthing for c in cats])
    if name not in SHIPPED:
        raise InputError(f"unknown vocabulary {name!r}; shipped: {', '.join(SHIPPED)} "
                         "(or give a file, or class names: classes= / --classes)")
    text = (resources.files("fisa_rt") / "vocabularies" / f"{name}.json").read_text()
    return _from_json(json.loads(text), name)


def from_file(path: str) -> Vocabulary:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_file_error(path, "vocabulary file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # a BOM (Windows editors) is not part of the first name
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read vocabulary file {path}: {exc}") from None
    if path.lower().endswith(".json"):
        try:
            return _from_json(json.loads(text), path)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
        except RecursionError:  # the json module recurses per level of nesting
            raise InputError(f"{path} is not a vocabulary file: its JSON nests too deeply to read") from None
    names, things = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, is_thing = _kind(line)
        names.append(name)
        things.append(is_thing)
    return Vocabulary(names, things)


def resolve(
    classes: Optional[str] = None, vocab: Optional[str] = None, default: Optional[Vocabulary] = None,
    option: str = "--vocab",
) -> Vocabulary:
    """--classes, else --vocab (a shipped name or a file), else the artefact's default; ``option`` is the name
    ``vocab`` came by, for the error (build_engine.py's --calibration-vocab)."""
    if classes is not None and vocab is not None:
        raise InputError("give either classes= (--classes) or vocab= (--vocab), not both")
    if classes is not None:
        if not isinstance(classes, str):
            raise InputError(f'classes must be one string of comma-separated class names, such as "cat, dog"; got a '
                             f"{type(classes).__name__} (Vocabulary(names) takes a list)")
        return from_classes(classes)
    if vocab is not None:
        if not isinstance(vocab, (str, os.PathLike)):
            raise InputError(f"vocab must be a shipped vocabulary name or a file path; got a {type(vocab).__name__}")
        vocab = os.fspath(vocab)
        if vocab in SHIPPED:
            return named(vocab)
        if not os.path.exists(vocab):  # likely a shipped name mistyped: list them
            raise InputError(f"{option} {vocab}: no such file, and not a shipped vocabulary ({', '.join(SHIPPED)})")
        return from_file(vocab)
    if default is None:
        raise InputError('no vocabulary: give classes="a, b" (--classes) '
                         "or vocab=coco-panoptic|ade20k-150|FILE (--vocab)")
    return default


def average_prompts(per_prompt: np.ndarray, owner: List[int], num_rows: int) -> np.ndarray:
    """(num_rows, D) float32: the normalised mean of each row's (already normalised) prompt embeddings."""
    sums = np.zeros((num_rows, per_prompt.shape[1]), np.float64)
    np.add.at(sums, np.asarray(owner), per_prompt.astype(np.float64))
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)


def synonym_rows(per_synonym: np.ndarray, class_of: List[int], num_classes: int) -> np.ndarray:
    """(S, D) synonym embeddings -> (K, M, D), M the most synonyms of any class. A class with fewer repeats
    its own synonyms cyclically: the max over a class's rows, all a "max" model takes, is unchanged."""
    owners = np.asarray(class_of)
    rows = [np.flatnonzero(owners == k) for k in range(num_classes)]
    width = max(len(r) for r in rows)
    return per_synonym[np.stack([np.resize(r, width) for r in rows])]


def encode(
    vocabulary: Vocabulary,
    templates: Sequence[str],
    tokenize: Callable[[List[str]], Any],
    encode_tokens: Callable[[Any], np.ndarray],
    batch_size: int = 256,
    synonyms: str = "mean",
) -> np.ndarray:
    """Every (synonym, template) prompt encoded, then averaged: per class -> (K, D) for ``synonyms="mean"``;
    per synonym -> (K, M, D) for "max" (FC-CLIP's test-time classifier: templates averaged per synonym, a
    class scored by its best synonym). The one path from class names to embeddings, for training (PyTorch
    text tower) and for every runtime backend."""
    if synonyms not in SYNONYM_MODES:
        raise InputError(f"synonyms must be one of {SYNONYM_MODES}; got {synonyms!r}")
    prompts, synonym_of, class_of = expand_prompts(vocabulary.names, templates)
    chunks = [encode_tokens(tokenize(prompts[i : i + batch_size])) for i in range(0, len(prompts), batch_size)]
    per_prompt = np.concatenate(chunks)
    if synonyms == "mean":
        return average_prompts(per_prompt, [class_of[s] for s in synonym_of], len(vocabulary.names))
    return synonym_rows(average_prompts(per_prompt, synonym_of, len(class_of)), class_of, len(vocabulary.names))


def cache_key(text_encoder_sha256: str, templates: str, vocabulary: Vocabulary, synonyms: str = "mean") -> str:
    payload = json.dumps([text_encoder_sha256, templates, synonyms, vocabulary.names])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def save_embeddings(
    path: str, embeddings: np.ndarray, vocabulary: Vocabulary, text_encoder_sha256: str, overwrite: bool = False
) -> str:
    """An embeddings file (``.npz``) every backend accepts via ``--embeddings``; what load_embeddings would
    refuse (rows that do not match the classes, NaN) is refused here, before anything is written."""
    embeddings = check_embeddings(embeddings, len(vocabulary.names))
    if not isinstance(text_encoder_sha256, str):
        raise InputError(f"text_encoder_sha256 must be a str; got a {type(text_encoder_sha256).__name__}")
    refuse_overwrite(path, overwrite)
    # the check above gives the early message; the no-clobber rename, another writer that came in between
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, embeddings=embeddings, names=np.array(vocabulary.names), is_thing=np.array(vocabulary.is_thing),
                 text_encoder=np.array(text_encoder_sha256))
    return path


def _as_array(embeddings, where: str) -> np.ndarray:
    """``embeddings`` (an array, nested lists, a PyTorch tensor) as a NumPy array, or one InputError."""
    torch = sys.modules.get("torch")  # a tensor implies PyTorch is loaded: this module never imports it
    try:
        if torch is not None and isinstance(embeddings, torch.Tensor):
            # NumPy refuses a tensor that requires grad, lives on a GPU or is bfloat16; its values are still wanted
            embeddings = embeddings.detach().cpu()
            embeddings = embeddings.float() if embeddings.dtype == torch.bfloat16 else embeddings
        return np.asarray(embeddings)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:  # ragged lists; a meta tensor
        reason = str(exc).split(". ")[0]
        raise InputError(f"{where} cannot be read as a (K, D) array of numbers ({reason})") from None


def check_embeddings(embeddings, num_classes: int, where: str = "embeddings") -> np.ndarray:
    """(K, D) or (K, M, D) float32 rows of unit length, after refusing what would silently segment nothing: a
    shape that does not match the K classes, an integer or non-numeric dtype, NaN/Inf values (float32's: a
    float64 beyond its range becomes inf) or an all-zero row (no direction). Rows are normalised because the
    class logits are cosine similarities, as for the text encoder's own (normalised) rows: a scaled row would
    otherwise scale its class's scores."""
    array = _as_array(embeddings, where)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{where} must be floating point (K, D) text embeddings; got dtype {array.dtype}")
    if array.ndim not in (2, 3) or array.shape[0] != num_classes or 0 in array.shape:
        raise InputError(
            f"{where} {array.shape} do not match {num_classes} classes: expected ({num_classes}, D), or "
            f"({num_classes}, M, D) with M synonyms per class"
        )
    with np.errstate(over="ignore"):  # an overflow is refused below, naming its row
        rows = array.astype(np.float32)
    bad = np.argwhere(~np.isfinite(rows))
    if bad.size:
        what = "NaN or Inf values" if not np.isfinite(array[tuple(bad[0])]) else "values beyond float32's range"
        raise InputError(f"{where} hold {what} (row {int(bad[0, 0])})")
    norms = np.linalg.norm(rows.astype(np.float64), axis=-1, keepdims=True)  # float64: no underflow of squares
    zero = np.argwhere(norms[..., 0] == 0)
    if zero.size:
        what = "is all zeros" if not array[tuple(zero[0])].any() else "is all zeros in float32 (its values are tiny)"
        raise InputError(f"{where}: row {int(zero[0, 0])} {what}, which matches nothing")
    # rows already of unit length to float32's precision are kept bit for bit (a cache entry reads back as written)
    return (rows / np.where(np.abs(norms - 1) < 1e-6, 1.0, norms)).astype(np.float32)


def load_embeddings(path: str):
    """(embeddings (K, D) float32, Vocabulary, text-encoder sha256) from an ``encode-vocab`` file; anything
    else (empty, truncated, a plain ``.npy``, missing or malformed fields) is an InputError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise missing_file_error(path, "embeddings file")
    not_ours = f"{path} is not an embeddings file written by `fisa-rt encode-vocab`"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"{not_ours}: it holds a single array, not the fields of one")
        with data:
            embeddings = data["embeddings"]
            names, is_thing, sha = data["names"], data["is_thing"], data["text_encoder"]
    except InputError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        if "pickle" in str(exc):  # NumPy's own advice is to load it unsafely: never repeated
            # an array of Python objects inside an .npz or .npy, or a pickle; NumPy says the same of any other bytes
            what = ("it holds pickled Python objects, which fisa-rt never loads" if file_kind(path) else
                    "it is neither an .npz archive nor an .npy array")
            raise InputError(f"{not_ours}: {what}") from None
        raise InputError(f"{not_ours}: {exc or type(exc).__name__}") from None
    if names.ndim != 1 or is_thing.shape != names.shape or names.dtype.kind != "U" or sha.ndim != 0:
        found = f"names {names.shape} {names.dtype}, is_thing {is_thing.shape}, text_encoder {sha.shape}"
        raise InputError(f"{not_ours}: {found}")
    try:
        vocabulary = Vocabulary(names.tolist(), is_thing.tolist())  # flags such as "False" are refused, not true
    except InputError as exc:
        raise InputError(f"{not_ours}: {exc}") from None
    embeddings = check_embeddings(embeddings, len(vocabulary.names), f"{path}: embeddings")
    return embeddings, vocabulary, str(sha)
