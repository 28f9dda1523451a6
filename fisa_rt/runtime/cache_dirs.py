"""Where fisa-rt keeps what it can compute again: ``$XDG_CACHE_HOME/fisa-rt/<name>`` (default ``~/.cache``).
The root is the kernel-choice table's (``fisa_rt.kernels.choice``), the lowest layer that keeps a cache."""

from __future__ import annotations

import os

from fisa_rt.kernels.choice import cache_root


def cache_dir(name: str) -> str:
    return os.path.join(cache_root(), name)
