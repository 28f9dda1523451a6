"""The FISA model: CLIP backbone with SEVE adapters -> frozen mask generator -> mask classifier.

    images (B, 3, H, W), normalised       text (K, D), L2-normalised class embeddings
          │                                     │
    backbone (CLIP image encoder) ◄── SEVE ─────┤   early layers attend to the class texts
          │ features, tokens                    │
    mask generator (frozen) ─► mask logits (B, Q, H/4, W/4)
          │                                     │
    mask classifier (mask-attention | mask-average) ─► class logits (B, Q, K + 1), void last
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .backbone import ConvNextBackbone, VitBackbone
from .clip import create_clip, create_tokenizer, vision_kind
from .config import FisaConfig, get_model_config
from .errors import ConfigError, InputError
from .mask_classifier import MaskAttentionHead, MaskAverageHead, text_rows
from .mask_generator import MaskGenerator
from .simo import SimoReport, select_trainable
from .text import EmbeddingCache, TextTower, encode_vocabulary


@dataclass
class FisaOutput:
    # (B, Q, H/4, W/4) mask logits of the Q proposals.
    mask_logits: torch.Tensor
    # (B, Q, K + 1) class logits over the vocabulary, void last.
    class_logits: torch.Tensor
    # (B, Q, D) the mask generator's in-vocabulary class embeddings.
    class_embeds: torch.Tensor
    # The mask generator's earlier-layer (mask_logits, class_embeds), for deep supervision.
    aux: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _embed_dim(clip: nn.Module) -> int:
    projection = clip.text_projection
    return projection.shape[-1] if isinstance(projection, torch.Tensor) else projection.out_features


class FisaModel(nn.Module):
    def __init__(self, cfg: FisaConfig, clip: nn.Module, tokenizer: Callable[[List[str]], torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed_dim = _embed_dim(clip)
        backbone_cls = {"vit": VitBackbone, "convnext": ConvNextBackbone}[vision_kind(clip.visual)]
        self.backbone = backbone_cls(clip.visual, cfg, self.embed_dim)
        self.text = TextTower(clip)
        self.mask_generator = MaskGenerator(
            cfg.mask_generator, self.backbone.feature_channels, self.backbone.feature_strides, self.embed_dim
        )
        if cfg.classifier.head == "mask-attention":
            self.classifier = MaskAttentionHead(
                self.backbone.visual, cfg.classifier, self.embed_dim, self.text.clip.logit_scale, cfg.kernels
            )
        else:
            self.classifier = MaskAverageHead(cfg.classifier, cfg.kernels)

    def set_kernels(self, mode: str) -> None:
        """Switch every fused op's kernel mode (:data:`fisa_rt.config.KERNEL_MODES`: measured choice, Triton
        or the PyTorch references), e.g. to compare them on one loaded checkpoint."""
        self.cfg = dataclasses.replace(self.cfg, kernels=mode)
        for module in self.modules():
            if hasattr(module, "kernels") and module is not self:
                module.kernels = self.cfg.kernels

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.text.logit_scale

    def check_inputs(self, images: torch.Tensor, text: torch.Tensor, seen: Optional[torch.Tensor] = None) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor; got {shape}")
        if not images.is_floating_point():
            raise InputError(
                f"images must be normalised floating-point tensors; got {images.dtype} (see fisa_rt.preprocess)"
            )
        if images.shape[-1] % 32 or images.shape[-2] % 32:
            raise InputError(f"image height and width must be multiples of 32; got {tuple(images.shape[-2:])}")
        if images.shape[0] == 0:
            raise InputError("images hold no image: a batch of 0")
        weights = next(self.parameters()).dtype
        if images.dtype != weights and not torch.is_autocast_enabled(images.device.type):
            raise InputError(f"images are {images.dtype} and {self.cfg.name}'s weights {weights}: convert one to the "
                             "other, or run under torch.autocast")
        if not isinstance(text, torch.Tensor) or text.dim() not in (2, 3):
            shape = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
            raise InputError(f"text embeddings must be a (K, D) tensor, or (K, M, D) with M synonyms; got {shape}")
        if 0 in text.shape[:-1]:
            raise InputError(f"the vocabulary is empty: text embeddings {tuple(text.shape)} hold no class")
        if text.shape[-1] != self.embed_dim:
            raise InputError(
                f"text embeddings have dimension {text.shape[-1]}, but {self.cfg.name} needs {self.embed_dim}"
            )
        if seen is not None and (seen.dtype != torch.bool or seen.shape != (text.shape[0],)):
            raise InputError(
                f"seen must be a bool tensor of shape ({text.shape[0]},); got {seen.dtype} {tuple(seen.shape)}"
            )

    def forward(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        seen: Optional[torch.Tensor] = None,
        text_valid: Optional[torch.Tensor] = None,
    ) -> FisaOutput:
        """images (B, 3, H, W) normalised with the config's mean/std, H and W multiples of 32;
        text (K, D) class embeddings, or (K, M, D) one row per synonym (see :meth:`encode_vocabulary`);
        seen (K,) bool, classes the mask generator was trained on (used by the mask-average ensemble);
        text_valid (K,) bool, False for padding classes (a vocabulary padded to a CUDA graph's size,
        fisa_rt.runtime.cuda_graphs): no token attends to them and their class logits are -inf."""
        self.check_inputs(images, text, seen)
        if text_valid is not None and (text_valid.dtype != torch.bool or text_valid.shape != (text.shape[0],)):
            raise InputError(f"text_valid must be bool of shape ({text.shape[0]},); got {tuple(text_valid.shape)}")
        text = text.to(device=images.device, dtype=images.dtype)
        rows_valid = text_valid
        if text_valid is not None and text.dim() == 3:
            rows_valid = text_valid.repeat_interleave(text.shape[1])
        # SEVE attends to every text row; (K, M, D) puts M rows per class, so each class weighs the same
        features = self.backbone(images, text_rows(text), rows_valid)
        generated = self.mask_generator(features.features)
        scale = self.logit_scale.to(images.dtype)
        classified = self.classifier(self.backbone, features, generated, text, scale, seen, text_valid)
        class_logits = classified.logits
        if text_valid is not None:
            class_logits = class_logits.masked_fill(~torch.cat([text_valid, text_valid.new_ones(1)]), float("-inf"))
        return FisaOutput(
            mask_logits=generated.mask_logits,
            class_logits=class_logits,
            class_embeds=generated.class_embeds,
            aux=generated.aux,
        )

    def encode_vocabulary(self, class_names: Sequence[str], cache: Optional[EmbeddingCache] = None) -> torch.Tensor:
        """Text embeddings of ``class_names`` as the config's text section says: (K, D), or (K, M, D) with
        one row per synonym for ``text.synonyms == "max"``."""
        if cache is not None:
            return cache.get_or_encode(self.text, self.tokenizer, class_names, self.cfg.text)
        return encode_vocabulary(self.text, self.tokenizer, class_names, self.cfg.text)

    def apply_simo(self) -> SimoReport:
        """Freeze all but the config's SIMO parameters; returns what stays trainable."""
        return select_trainable(self, self.cfg.simo.trainable)


def create_model(config: Union[str, FisaConfig], load_pretrained_clip: bool = False) -> FisaModel:
    """A FISA model from a shipped config name or a :class:`FisaConfig`.

    ``load_pretrained_clip=True`` loads the CLIP weights the config names (an open_clip tag, which
    open_clip may download, or a local file); otherwise CLIP starts random, as it does before a FISA
    checkpoint is loaded over it (see :func:`fisa_rt.checkpoint.load_model`).
    """
    if not isinstance(config, (str, FisaConfig)):  # a dict failed later as "'dict' object has no attribute 'clip'"
        raise ConfigError(f"config must be a model config name, a .json file or a FisaConfig (FisaConfig.from_dict "
                          f"for a dict); got {type(config).__name__}")
    cfg = get_model_config(config) if isinstance(config, str) else config
    clip = create_clip(cfg.clip, load_pretrained_clip)
    return FisaModel(cfg, clip, create_tokenizer(cfg.clip))
