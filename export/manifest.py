"""The manifest beside every artefact (``<artefact>.manifest.json``): what it is, what built it, and what
a runtime must check before trusting it (TensorRT and CUDA versions, GPU compute capability)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import reprlib
from typing import Any, Dict, List, Optional

from fisa_rt.atomic import write_json
from fisa_rt.errors import CheckpointError

FORMAT = "fisa-rt-artefact/1"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path(artefact: str) -> str:
    return artefact + ".manifest.json"


def write_manifest(artefact: str, fields: Dict[str, Any]) -> str:
    manifest = {
        "format": FORMAT,
        "file": os.path.basename(artefact),
        "sha256": sha256_file(artefact),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    path = manifest_path(artefact)
    write_json(path, manifest, indent=2, sort_keys=True)
    return path


# Per kind, what a runtime reads from a manifest without a fallback, and what each must be, checked once as it
# reads the manifest (inspect reads any manifest, to describe what is there), so that a hand-edited value fails
# there, naming the field, not inside NumPy or ONNX Runtime. The text encoder's own manifest is not read: the
# image model's records what the text side needs (templates, context_length).
_SIZE = ("a whole number > 0", lambda v: type(v) is int and v > 0)
RUNTIME_FIELDS = {
    "image-model": {
        "image_size": _SIZE,
        "embed_dim": _SIZE,
        "templates": ("the name of a prompt-template set", lambda v: isinstance(v, str) and v != ""),
        "context_length": _SIZE,
    }
}

# The type of each field a runtime or `fisa-rt inspect` reads, checked wherever it appears (dotted: inside an
# object): an edited manifest otherwise failed inside them (TypeError, KeyError, AttributeError) with a traceback.
# A null is refused only where a reader takes the field as it is; the others read a missing object as empty.
_TEXT, _OBJECT = ("a string", str), ("an object", dict)
FIELD_TYPES = {
    **{k: _TEXT for k in ("kind", "flavour", "precision", "model", "backend", "input_dtype", "created", "tokenizer",
                          "synonyms", "config.text.synonyms", "checkpoint.file", "source_onnx.file")},
    **{k: _OBJECT for k in ("config", "config.text", "inputs", "ops", "source_onnx", "training_vocabulary",
                            "mixed_precision", "quantization", "quantization.recipe", "quantization.parity",
                            "quantization.qdq_nodes", "quantization.calibration", "tensorrt", "tensorrt.plugin_ptx")},
}
NOT_NULL = {"sha256": _TEXT, "checkpoint": _OBJECT, "text_encoder": _OBJECT, "text_encoder.file": _TEXT,
            "text_encoder.sha256": _TEXT}


def _field_errors(manifest: Dict[str, Any]) -> List[str]:
    wrong = []
    for path, (expected, kind) in {**FIELD_TYPES, **NOT_NULL}.items():
        *parents, key = path.split(".")
        node = manifest
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue  # its object is absent (or named on its own, being of the wrong type)
        part_of_a_record = path in NOT_NULL and bool(parents)  # text_encoder.file: the record needs it
        if key not in node and not part_of_a_record:
            continue
        value = node.get(key)
        if not isinstance(value, kind) and not (value is None and path in FIELD_TYPES):
            wrong.append(f"{path} must be {expected}, not {reprlib.repr(value)}")
    return wrong


def read_manifest(artefact: str, required: bool = True, complete: bool = False) -> Optional[Dict[str, Any]]:
    """``complete``: refuse a manifest lacking a field a runtime needs (``RUNTIME_FIELDS``)."""
    path = manifest_path(artefact)
    if not os.path.isfile(path):
        if required:
            raise CheckpointError(
                f"{artefact} has no manifest ({path}); rebuild it with `python export/build_engine.py`"
            )
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} is not a fisa-rt manifest: it holds a {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fisa-rt manifest (format {manifest.get('format')!r}, expected {FORMAT!r})"
        )
    wrong = _field_errors(manifest)
    if wrong:
        raise CheckpointError(f"manifest {path}: {'; '.join(wrong)}; rebuild the artefact with "
                              "`python export/build_engine.py`")
    fields = RUNTIME_FIELDS.get(manifest.get("kind"), {}) if complete else {}
    missing = [k for k in fields if k not in manifest]
    if missing:
        raise CheckpointError(
            f"manifest {path} lacks {', '.join(missing)}; rebuild the artefact with `python export/build_engine.py`"
        )
    for key, (expected, valid) in fields.items():
        if not valid(manifest[key]):
            raise CheckpointError(f"manifest {path}: {key} must be {expected}, not {reprlib.repr(manifest[key])}; "
                                  "rebuild the artefact with `python export/build_engine.py`")
    return manifest


def read_checked_manifest(artefact: str) -> Dict[str, Any]:
    """The manifest of ``artefact``, refused unless it describes this very file (its sha256): a manifest
    copied beside another build, or left behind when the model file was replaced, would otherwise make a
    runtime trust sizes, vocabulary and precision that are not the file's."""
    manifest = read_manifest(artefact, complete=True)
    if manifest.get("sha256") != sha256_file(artefact):
        raise CheckpointError(
            f"{artefact} does not match its manifest {manifest_path(artefact)} (the sha256 differs: a copied or stale "
            "manifest); rebuild both with `python export/build_engine.py`"
        )
    return manifest
