"""fisa-rt: FISA open-vocabulary segmentation, from PyTorch training to TensorRT inference.

The names below load on first use (PEP 562), so that ``import fisa_rt`` costs nothing: what needs no model
(``fisa-rt --help``, the tokenizer) does not pay for PyTorch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": ".errors",
    "ConfigError": ".errors",
    "EngineFailure": ".errors",
    "FisaError": ".errors",
    "InputError": ".errors",
    "MissingDependencyError": ".errors",
    "OutOfMemory": ".errors",
    "FisaConfig": ".config",
    "get_model_config": ".config",
    "list_models": ".config",
    "FisaModel": ".model",
    "FisaOutput": ".model",
    "create_model": ".model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'fisa_rt' has no attribute {name!r}")
