"""FC-CLIP's released checkpoints (bytedance/fc-clip, detectron2 ``.pth``) -> fisa-rt checkpoints.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
pickled code. Every tensor is renamed through :data:`fisa_rt.weight_names.FCCLIP` onto the
``fcclip-convnext-l`` model, and everything must match: a missing, unexpected or mis-shaped tensor
stops the conversion with the list of them.

The release leaves CLIP's text tower out (FC-CLIP issues #14 and #34: ``transformer.resblocks.*``,
``token_embedding``, ``ln_final`` reported missing when loading ``fcclip_cocopan.pth``); FC-CLIP itself
rebuilds it from open_clip's ``convnext_large_d_320`` / ``laion2b_s29b_b131k_ft_soup`` at start-up, and
so does the converter: through open_clip's loader, or from a local open_clip weights file (``clip``).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Optional, Union

import torch

from .atomic import refuse_unwritable
from .checkpoint import save_checkpoint
from .config import FisaConfig, get_model_config
from .errors import CheckpointError, first_line, missing_file_error
from .file_kinds import file_kind
from .model import create_model
from .weight_names import FCCLIP

CONFIG = "fcclip-convnext-l"
# What FC-CLIP was trained on (COCO panoptic, its synonyms): the converted model's "seen" classes.
VOCABULARY = "coco-panoptic"
# Tensors of FC-CLIP's text tower, under ``text.clip.`` in fisa-rt, that the release may leave out.
TEXT_TOWER = "text.clip."
# Training-only state in a detectron2 model (Mask2Former's SetCriterion.empty_weight), not weights.
TRAINING_ONLY = ("criterion.",)
# FC-CLIP keeps the void embedding as nn.Embedding(1, D); fisa-rt as a (D,) parameter.
RESHAPED = ("mask_generator.void_embedding",)
LISTED = 8


@dataclass
class ConversionReport:
    out: str
    # Tensors taken from the FC-CLIP checkpoint, and from the CLIP weights (the text tower).
    from_checkpoint: int
    from_clip: int
    clip_source: str
    ignored: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        line = f"wrote {self.out}: {self.from_checkpoint} tensors from the FC-CLIP checkpoint"
        if self.from_clip:
            line += f", {self.from_clip} text-tower tensors from {self.clip_source}"
        if self.ignored:
            line += f"; ignored {len(self.ignored)} training-only tensors ({', '.join(self.ignored[:3])})"
        return line


def _load_tensors(path: str, what: str):
    """``torch.load(weights_only=True)`` of ``path``, every failure one CheckpointError: torch's own warnings
    are silenced and its advice to retry with ``weights_only=False`` (unpickling code) is never repeated."""
    if not os.path.isfile(path):
        raise missing_file_error(path, what, CheckpointError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # mapped, not read: pages are read once, as the tensors are written out
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, IndexError, KeyError) as exc:
        # torch's message: its advice (lines naming weights_only, "please file an issue"), then the reason
        advice = ("weights_only", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reasons = [line for line in lines if not any(a in line for a in advice)]
        reason = reasons[0].rstrip(".") if reasons else type(exc).__name__
        if file_kind(path) not in ("zip", "pickle"):  # torch's legacy loader read its bytes as opcodes
            reason = "it is neither a torch.save zip archive nor a pickle"
        raise CheckpointError(f"{path} is not a plain-tensor PyTorch checkpoint ({reason})") from None


def _tensor_dict(obj, path: str, entry: str, expected: str) -> Dict[str, torch.Tensor]:
    state = obj[entry] if isinstance(obj, dict) and entry in obj else obj
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else []
    if not isinstance(state, dict) or not state or bad:
        raise CheckpointError(
            f"{path} holds no state dict of tensors (expected {expected}"
            + (f"; not tensors: {bad[:LISTED]})" if bad else ")")
        )
    return state


def read_detectron2_state(path: str) -> Dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2 checkpoint, read without unpickling code."""
    obj = _load_tensors(path, "checkpoint")
    return _tensor_dict(obj, path, "model", "a detectron2 checkpoint with a 'model' entry")


def read_open_clip_state(path: str) -> Dict[str, torch.Tensor]:
    """An open_clip weights file's state dict (as open_clip's load_checkpoint reads it: a plain state dict,
    or one under ``state_dict`` with DDP's ``module.`` prefixes), read without unpickling code."""
    state = _tensor_dict(_load_tensors(path, "--clip file"), path, "state_dict", "open_clip CLIP weights")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _open_clip_weights(cfg: FisaConfig) -> str:
    """The local file of open_clip's pretrained weights for ``cfg``: from the Hugging Face cache, else
    downloaded; offline and not cached, a CheckpointError at once that asks for ``--clip`` (rather than
    huggingface_hub's retries for a minute and a long traceback)."""
    import socket

    import open_clip
    from huggingface_hub import hf_hub_download

    hub = (open_clip.get_pretrained_cfg(cfg.clip.model_name, cfg.clip.pretrained) or {}).get("hf_hub", "")
    if not hub:
        raise CheckpointError(f"open_clip names no download for {cfg.clip.model_name}/{cfg.clip.pretrained}: "
                              "pass clip=FILE (--clip FILE)")
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    try:
        return hf_hub_download(repo, filename, local_files_only=True)
    except Exception:  # noqa: BLE001 - any reason it is not in the cache: try the network
        pass
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5).close()
    except OSError:
        raise CheckpointError(
            f"the text tower's weights ({repo}/{filename}) are not in the Hugging Face cache and huggingface.co "
            "cannot be reached: pass clip= (--clip) with a local copy of that file"
        ) from None
    try:
        return hf_hub_download(repo, filename)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors have no common base
        raise CheckpointError(f"cannot download {repo}/{filename} ({first_line(exc)}): "
                              "pass clip= (--clip) with a local copy") from None


def _listing(kind: str, names: List[str]) -> str:
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return f"{len(names)} {kind} ({', '.join(sorted(names)[:LISTED])}{more})"


def map_fcclip_state(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Size]) -> Dict[str, torch.Tensor]:
    """FC-CLIP's tensors under fisa-rt's names, checked against ``expected`` (name -> shape).

    Text-tower tensors may be absent (they are filled later); any other gap, surplus or shape
    mismatch raises :class:`CheckpointError` listing them."""
    weights = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY)}
    mapped, unmapped = FCCLIP.to_ours(weights)
    for name in RESHAPED:
        if name in mapped and name in expected:
            mapped[name] = mapped[name].reshape(expected[name])
    unexpected = unmapped + [k for k in mapped if k not in expected]
    missing = [k for k in expected if k not in mapped and not k.startswith(TEXT_TOWER)]
    misshaped = [f"{k} {tuple(v.shape)} != {tuple(expected[k])}" for k, v in mapped.items()
                 if k in expected and v.shape != expected[k]]
    found = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
    problems = [_listing(kind, names) for kind, names in found if names]
    if problems:
        raise CheckpointError(f"not an FC-CLIP {CONFIG} checkpoint: " + "; ".join(problems))
    return {k: v for k, v in mapped.items() if k in expected}


def _coco_vocabulary():
    data = json.loads((resources.files("fisa_rt") / "vocabularies" / f"{VOCABULARY}.json").read_text())
    return [c["name"] for c in data["classes"]], [bool(c["isthing"]) for c in data["classes"]]


def convert_fcclip(
    checkpoint: str,
    out: str,
    clip: Optional[str] = None,
    config: Union[str, FisaConfig] = CONFIG,
    overwrite: bool = False,
) -> ConversionReport:
    """Write ``out`` (a fisa-rt safetensors checkpoint) from FC-CLIP's ``checkpoint``.

    ``clip``: a local open_clip weights file for the text tower; None asks open_clip for the config's
    pretrained tag (a download on first use, cached by open_clip)."""
    # before minutes of loading; the source is never the output, even with overwrite (a released file lost)
    refuse_unwritable(out, overwrite, reads={"the checkpoint": checkpoint, "--clip": clip}, error=CheckpointError)
    cfg = get_model_config(config) if isinstance(config, str) else config
    state = read_detectron2_state(checkpoint)
    # built on the meta device and given the loaded tensors themselves (assign): no randomly initialised copy
    # of the model's 1.6 GB beside them (docs/weights.md, "Converting FC-CLIP")
    with torch.device("meta"):
        model = create_model(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tensors = map_fcclip_state(state, expected)
    text_missing = [k for k in expected if k not in tensors]
    clip_source = ""
    if text_missing:
        clip_source = clip or f"open_clip {cfg.clip.model_name}/{cfg.clip.pretrained}"
        clip_state = read_open_clip_state(clip or _open_clip_weights(cfg))
        for name in text_missing:
            source = clip_state.get(name[len(TEXT_TOWER):])
            if source is None or source.shape != expected[name]:
                wanted = f"{name[len(TEXT_TOWER):]} of shape {tuple(expected[name])}"
                raise CheckpointError(f"{clip_source} has no tensor {wanted}")
            tensors[name] = source
        del clip_state  # the vision tower's tensors of the CLIP file: not kept while the model is built
    model.load_state_dict(tensors, strict=True, assign=True)
    vocabulary, is_thing = _coco_vocabulary()
    save_checkpoint(
        out, model, vocabulary=vocabulary, is_thing=is_thing, overwrite=overwrite,
        extra={"converted_from": "fc-clip", "source": checkpoint, "text_tower": clip_source or "checkpoint"},
    )
    ignored = sorted(k for k in state if k.startswith(TRAINING_ONLY))
    return ConversionReport(out, len(tensors) - len(text_missing), len(text_missing), clip_source, ignored)
