"""Where fisa-rt keeps what it can compute again: ``$XDG_CACHE_HOME/fisa-rt/<name>`` (default ``~/.cache``).
(``fisa_rt.kernels.choice`` keeps its own copy of the root: kernels import nothing of the package.)"""

from __future__ import annotations

import os


def cache_dir(name: str) -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fisa-rt", name)
