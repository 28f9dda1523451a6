"""Deprecated: the old home of the bundled assets and of image decoding, kept for one release.

``default_checkpoint`` and ``sample_images`` moved to :mod:`fisa_rt.runtime.assets`; ``load_image``,
``decode_image``, ``check_pixels`` and ``DEFAULT_MAX_PIXELS`` to :mod:`fisa_rt.runtime.images`. Each name
still resolves here, with a DeprecationWarning naming its new module.
"""

import importlib
import warnings

_MOVED = {
    "DEFAULT_CHECKPOINT": "fisa_rt.runtime.assets",
    "default_checkpoint": "fisa_rt.runtime.assets",
    "sample_images": "fisa_rt.runtime.assets",
    "DEFAULT_MAX_PIXELS": "fisa_rt.runtime.images",
    "check_pixels": "fisa_rt.runtime.images",
    "decode_image": "fisa_rt.runtime.images",
    "load_image": "fisa_rt.runtime.images",
}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module 'fisa_rt.predictor' has no attribute {name!r}")
    warnings.warn(
        f"fisa_rt.predictor.{name} moved to {_MOVED[name]}.{name}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
