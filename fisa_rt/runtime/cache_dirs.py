"""Where fisa-rt keeps what it can compute again: ``$XDG_CACHE_HOME/fisa-rt/<name>`` (default ``~/.cache``).
The root is the kernel-choice table's (``fisa_rt.kernels.choice``), the lowest layer that keeps a cache."""

from __future__ import annotations

import contextlib
import os
import re
from typing import List

from fisa_rt.kernels.choice import cache_root


def cache_dir(name: str) -> str:
    return os.path.join(cache_root(), name)


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
