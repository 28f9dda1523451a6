"""fisa-rt: FISA open-vocabulary segmentation, from PyTorch training to TensorRT inference."""

from .config import FisaConfig, get_model_config, list_models
from .errors import CheckpointError, ConfigError, FisaError, InputError, MissingDependencyError
from .model import FisaModel, FisaOutput, create_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FisaConfig",
    "FisaError",
    "FisaModel",
    "FisaOutput",
    "InputError",
    "MissingDependencyError",
    "create_model",
    "get_model_config",
    "list_models",
]
