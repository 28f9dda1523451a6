"""Atomic file writes: every file fisa-rt writes (result PNG/JSON, embeddings, manifests, checkpoints,
training state, benchmark JSON, datasets) appears whole or not at all.

The data goes to a hidden temporary file in the target's folder (same file system, so the final
``os.replace`` is atomic); an interrupted or failed write removes the temporary file and leaves any
earlier file at ``path`` untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path to write to; on success it replaces ``path``. The temporary name keeps
    ``path``'s suffix, so writers that choose the format by suffix (PIL, ``np.savez``) behave the same.
    A folder that cannot take the file (missing, read-only, full) is an InputError naming ``path``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        open(tmp, "wb").close()  # a folder that cannot take the file fails here, in words, whatever the writer
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt included: never leave the partial file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def write_json(path: str, data: Any, **dump_options) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, **dump_options)
    return path


def save_image(image, path: str) -> str:
    """Writes a PIL image (format from ``path``'s suffix)."""
    with atomic_path(path) as tmp:
        image.save(tmp)
    return path
