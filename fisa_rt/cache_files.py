"""Keeping a cache folder's size bounded: its entries are pruned least recently used first. Used by the model's
embeddings cache (:class:`fisa_rt.text.EmbeddingCache`) and the runtime's (:mod:`fisa_rt.runtime.text_encoder`)."""

from __future__ import annotations

import contextlib
import os
import re
from typing import Callable, List

from .atomic import remove_stale_temporaries
from .errors import InputError, warn

# A vocabulary cache keeps its most recently used entries up to this size: about 500 vocabularies of 1,203 classes
# at 768 dimensions (a server caching every client's vocabulary otherwise filled its disk, and each rebuilt text
# encoder orphans all of its entries)
VOCABULARY_CACHE_BYTES = 2 << 30


def keep_recent(folder: str, names: re.Pattern, max_bytes: int) -> List[str]:
    """Removes the least recently used files of ``folder`` whose names match ``names`` (by modification time: a
    cache hit touches its entry), oldest first, until those left total at most ``max_bytes``; the newest is
    always kept. Returns the removed paths."""
    entries = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if names.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    stat = entry.stat(follow_symlinks=False)
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
    total, removed = sum(size for _, size, _ in entries), []
    for _, size, path in sorted(entries)[:-1]:
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
            total -= size
    return removed


def touch(path: str) -> None:
    """Marks a cache entry as just used (:func:`keep_recent` keeps the most recently used)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def store(path: str, write: Callable[[], None], names: re.Pattern, max_bytes: int, hint: str = "") -> None:
    """Adds the entry ``path`` to its cache folder (made if missing) with ``write()``, then prunes the folder to
    ``max_bytes`` (:func:`keep_recent`). A cache is an optimisation, never the reason a run fails: a failure is
    one warning (``hint`` ends it)."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(folder)  # a killed writer's
        write()
        keep_recent(folder, names, max_bytes)
    except (OSError, InputError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).rpartition(": ")[2]
        warn(f"cannot write the embeddings cache {path}: {reason}; continuing without it{hint}")
