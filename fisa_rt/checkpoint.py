"""FISA checkpoints: safetensors files that carry the model config and the training vocabulary.

safetensors holds only tensors and string metadata, so loading a checkpoint from elsewhere can never
run code (pickle can). The config travels in the metadata, so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .atomic import atomic_path
from .config import FisaConfig
from .devices import torch_device
from .errors import CheckpointError, ConfigError, InputError, missing_file_error
from .model import FisaModel, create_model
from .vocab.prompts import synonyms
from .weights import check_finite

FORMAT = "fisa-rt/1"


@dataclass
class CheckpointInfo:
    config: FisaConfig
    # Classes the model was trained on (its "seen" classes), in training order.
    vocabulary: List[str] = field(default_factory=list)
    # Which of those are things (countable) rather than stuff.
    is_thing: List[bool] = field(default_factory=list)
    extra: Dict[str, str] = field(default_factory=dict)


def save_checkpoint(
    path: str,
    model: FisaModel,
    vocabulary: Optional[List[str]] = None,
    is_thing: Optional[List[bool]] = None,
    dtype: Optional[torch.dtype] = None,
    extra: Optional[Dict[str, str]] = None,
    overwrite: bool = False,
) -> None:
    """Write ``model`` to ``path``; ``dtype`` (e.g. torch.float16) converts floating tensors."""
    if os.path.exists(path) and not overwrite:
        raise CheckpointError(f"{path} exists; pass overwrite=True to replace it")
    vocabulary = list(vocabulary or [])
    is_thing = list(is_thing) if is_thing is not None else [True] * len(vocabulary)
    if len(is_thing) != len(vocabulary):
        raise ValueError(f"is_thing has {len(is_thing)} entries for {len(vocabulary)} classes")
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous()
    metadata = {
        "format": FORMAT,
        "config": model.cfg.to_json(),
        "vocabulary": json.dumps(vocabulary),
        "is_thing": json.dumps(is_thing),
        "extra": json.dumps(extra or {}),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_path(path, overwrite) as tmp:  # no-clobber: another writer may have come since the check
        save_file(tensors, tmp, metadata=metadata)


def read_checkpoint_info(path: str) -> CheckpointInfo:
    """The config and vocabulary of a checkpoint, without reading its tensors."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"checkpoint must be a path; got {type(path).__name__}")
    if not os.path.isfile(path):
        raise missing_file_error(path, "checkpoint", CheckpointError)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fisa-rt checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        config = FisaConfig.from_json(metadata["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path} carries no valid model config: {exc}") from None
    vocabulary = _metadata_entry(
        path, metadata, "vocabulary", [], "a JSON list of non-empty class names",
        lambda v: isinstance(v, list) and all(isinstance(name, str) and synonyms(name) for name in v),
    )
    is_thing = _metadata_entry(
        path, metadata, "is_thing", [True] * len(vocabulary), f"a JSON list of {len(vocabulary)} true/false flags",
        lambda v: isinstance(v, list) and len(v) == len(vocabulary) and all(isinstance(t, bool) for t in v),
    )
    extra = _metadata_entry(path, metadata, "extra", {}, "a JSON object", lambda v: isinstance(v, dict))
    return CheckpointInfo(config=config, vocabulary=vocabulary, is_thing=is_thing, extra=extra)


def _metadata_entry(path: str, metadata: Dict[str, str], key: str, default, expected: str, valid):
    """The JSON value of metadata entry ``key`` (``default`` where absent), checked here so that a checkpoint
    edited or written elsewhere fails in one line naming the entry, not wherever the value is first used."""
    if key not in metadata:
        return default
    try:
        value = json.loads(metadata[key])
        fits = valid(value)
    except (json.JSONDecodeError, InputError):  # InputError: a class name the runtime would refuse
        fits = False
    if not fits:
        found = metadata[key] if len(metadata[key]) <= 40 else metadata[key][:40] + "..."
        raise CheckpointError(f"{path} is not a valid fisa-rt checkpoint: its metadata entry {key!r} must be "
                              f"{expected}, not {found!r}")
    return value


# Parameters a config may add on top of a checkpoint's: SEVE adapters, which start as an exact
# identity (gate 0), so a converted or stage-2 model is unchanged until FISA adaptation trains them.
NEW_IN_CONFIG = ("backbone.seve.",)


def _without_identity_adapters(unexpected: List[str], tensors: Dict[str, torch.Tensor]) -> List[str]:
    """``unexpected`` less the SEVE adapters the new config no longer places, where their gate is exactly 0:
    such an adapter is an identity, so a config that moves it (``train adapt --seve-layers``) loses nothing.
    A trained adapter (gate opened) stays unexpected: dropping it would change the model."""
    def identity(key: str) -> bool:
        layer = key[len(NEW_IN_CONFIG[0]):].split(".")[0]
        gate = tensors.get(f"{NEW_IN_CONFIG[0]}{layer}.gate")
        return gate is not None and not bool(gate.any())

    return [k for k in unexpected if not (k.startswith(NEW_IN_CONFIG) and identity(k))]


def identity_adapters(path: str) -> bool:
    """Whether every SEVE adapter in the checkpoint is an identity (gate exactly 0); reads only the gates."""
    with safe_open(path, framework="pt") as handle:
        gates = [k for k in handle.keys() if k.startswith(NEW_IN_CONFIG[0]) and k.endswith(".gate")]
        return all(not bool(handle.get_tensor(k).any()) for k in gates)


def load_model(
    path: str, device: str = "cpu", dtype: Optional[torch.dtype] = None, config: Optional[FisaConfig] = None
) -> Tuple[FisaModel, CheckpointInfo]:
    """Rebuild the model a checkpoint describes and load its weights (all of them: strict).

    ``config`` builds that model instead and loads the checkpoint into it; only its new SEVE adapters
    may be absent from the checkpoint. Tensors are cast to ``dtype`` (a floating-point torch.dtype) if given,
    else to float32 (checkpoints may be stored in fp16). ``device``: as a runtime's (cpu, cuda or cuda:N; None: a
    GPU where torch sees one)."""
    device = torch_device(device)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating-point torch.dtype (such as torch.float16); got {dtype!r}")
    info = read_checkpoint_info(path)
    model = create_model(config or info.config, load_pretrained_clip=False)
    tensors = load_file(path, device=str(device))
    check_finite(path, tensors)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        name = (config or info.config).name
        raise CheckpointError(f"{path} does not fit config {name}: {'; '.join(lines[:3])}") from None
    if config is not None:
        missing = [k for k in missing if not k.startswith(NEW_IN_CONFIG)]
        unexpected = _without_identity_adapters(unexpected, tensors)
    if missing or unexpected:
        name = (config or info.config).name
        raise CheckpointError(
            f"{path} does not match config {name}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    if config is not None:
        info = dataclasses.replace(info, config=config)
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    return model, info
