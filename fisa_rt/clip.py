"""Building the open_clip model and tokenizer that a FISA config names.

Everything goes through open_clip's public API: ``create_model(name, pretrained=tag_or_file)`` for the
architectures open_clip ships, ``CLIP(**cfg)`` + ``load_checkpoint`` for inline architectures. Nothing
downloads unless ``load_pretrained`` is true and the config names an open_clip tag.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

import open_clip
import torch
from torch import nn

from .config import ClipConfig
from .errors import CheckpointError, ConfigError
from .weights import check_finite


def create_clip(cfg: ClipConfig, load_pretrained: bool) -> nn.Module:
    """The open_clip ``CLIP`` model of ``cfg``, with its pretrained weights when ``load_pretrained``.

    ``load_pretrained=False`` builds the architecture only: the path taken when a FISA checkpoint is
    about to overwrite every weight anyway, and in tests, which never download.
    """
    pretrained = cfg.pretrained if load_pretrained else None
    if cfg.custom_config is not None:
        model = open_clip.CLIP(**cfg.custom_config)
        if pretrained is not None:
            if not os.path.isfile(pretrained):
                raise CheckpointError(
                    f"{cfg.model_name} is an inline architecture, so `pretrained` must be a local file; "
                    f"{pretrained!r} does not exist"
                )
            _loading(pretrained, cfg.model_name, lambda: open_clip.load_checkpoint(model, pretrained))
            check_finite(pretrained, model.state_dict())
        return model
    if cfg.model_name not in open_clip.list_models():
        raise ConfigError(f"open_clip has no architecture {cfg.model_name!r}; see open_clip.list_models()")
    if pretrained is not None and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(cfg.model_name)
        if pretrained not in tags:
            raise ConfigError(
                f"{pretrained!r} is neither a local file nor an open_clip tag of {cfg.model_name}; "
                f"tags: {', '.join(tags)}"
            )
    # open_clip moves the model to `device` (default cpu); the default device keeps a model built under
    # `with torch.device("meta")` on the meta device, so shape checks allocate nothing.
    with contextlib.nullcontext() if load_pretrained else _without_random_init_warning():
        model = _loading(pretrained, cfg.model_name, lambda: open_clip.create_model(
            cfg.model_name, pretrained=pretrained, device=torch.get_default_device()))
    if pretrained is not None:
        check_finite(pretrained, model.state_dict())
    return model


class _RandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """open_clip logs "No pretrained weights loaded ... Model initialized randomly" for a model built to be
    filled from a fisa-rt checkpoint (or shaped on the meta device): untrue of the model the user gets, and it
    was the first line of every `infer` of an open_clip architecture. Only that record is dropped."""
    quiet = _RandomInitWarning()
    logging.root.addFilter(quiet)
    try:
        yield
    finally:
        logging.root.removeFilter(quiet)


def _loading(path, model_name: str, load):
    """``load()``, with a failure to read the weights file ``path`` as one CheckpointError naming it."""
    if path is None or not os.path.isfile(path):
        return load()  # an open_clip tag: its failures are open_clip's (a download), not a file's
    try:
        return load()
    except Exception as exc:  # noqa: BLE001 - whatever open_clip's readers (pickle, safetensors) make of a bad file
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        more = "..." if len(reason) > 200 else ""
        raise CheckpointError(f"{path} is not CLIP weights of {model_name} ({reason[:200]}{more})") from None


def create_tokenizer(cfg: ClipConfig) -> Callable[[list], torch.Tensor]:
    """open_clip's tokenizer for ``cfg`` (BPE vocabulary ships inside open_clip: no download)."""
    if cfg.custom_config is not None:
        context_length = cfg.custom_config["text_cfg"].get("context_length", 77)
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return open_clip.get_tokenizer(cfg.model_name)


def input_size(clip: nn.Module) -> int:
    """The image side ``clip`` was built for (ViT-B-16: 224; convnext_large_d_320: 320), which contrastive
    training must feed: an open_clip ViT's position embedding holds that grid only; the segmentation canvas
    (fisa-vit-b16: 640) is the backbone's concern."""
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def vision_kind(visual: nn.Module) -> str:
    """"vit" for open_clip's VisionTransformer, "convnext" for a timm ConvNeXt trunk."""
    if isinstance(visual, open_clip.transformer.VisionTransformer):
        return "vit"
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and type(trunk).__name__ == "ConvNeXt":
        return "convnext"
    raise ConfigError(f"unsupported visual tower {type(visual).__name__}: FISA supports ViT and ConvNeXt CLIPs")
