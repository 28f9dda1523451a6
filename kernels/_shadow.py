"""Gives the top-level name ``kernels`` back to the package installed under it (see ``__init__.py``)."""

import importlib.machinery
import importlib.util
import os
import sys


def hand_over(name: str, init_file: str) -> None:
    """Replaces ``sys.modules[name]``, this folder imported by mistake, with the package of that name found
    on ``sys.path`` without the checkout; the import statement then returns that package. Without one, the
    import fails as it would have without this folder."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != checkout]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    del sys.modules[name]
    sys.modules.pop(f"{name}._shadow", None)
    if spec is None:
        raise ModuleNotFoundError(
            f"No module named {name!r} (the checkout's kernels/ folder is fisa_rt.kernels, not {name!r})", name=name
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
