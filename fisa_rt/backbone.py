"""CLIP image encoders as FISA backbones, with SEVE adapters injected in their early layers.

Two wrappers over open_clip's visual towers give one output type:

* :class:`VitBackbone` — open_clip ``VisionTransformer``: patch tokens + class token through the
  resblocks. It keeps the inputs of the last ``num_mask_layers`` blocks, which the mask-attention head
  re-enters with its mask tokens, and gives the last block's patch tokens as a single-scale map (the
  mask generator builds its own pyramid from it, as ViTDet does).
* :class:`ConvNextBackbone` — timm ConvNeXt trunk inside open_clip's ``TimmModel``: stem and four
  stages give res2..res5 (strides 4–32), FC-CLIP's multi-scale features. Per-location CLIP embeddings
  apply the CLIP head (norm + MLP) at every location of the last stage.

Image tokens never see mask tokens, so the whole image pass runs first and is shared by the mask
generator and the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import FisaConfig
from .errors import ConfigError
from .seve import SeveAdapter


@dataclass
class BackboneOutput:
    # Mask-generator inputs, name -> (B, C, H/s, W/s); strides and channels in the backbone's
    # `feature_strides` / `feature_channels`.
    features: Dict[str, torch.Tensor]
    # Patch grid (h, w) of the classifier's tokens.
    grid: Tuple[int, int]
    # (B, D, h, w) per-location CLIP embeddings; only when the mask-average head needs them.
    dense_embeds: Optional[torch.Tensor] = None
    # ViT only: (B, 1 + h*w, width) inputs of the last num_mask_layers blocks, oldest first.
    block_inputs: List[torch.Tensor] = field(default_factory=list)


def _seve_adapters(cfg: FisaConfig, num_layers: int, widths: List[int], text_dim: int) -> nn.ModuleDict:
    bad = [i for i in cfg.seve.layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"seve.layers {bad} out of range: the visual encoder has {num_layers} layers")
    return nn.ModuleDict(
        {
            str(i): SeveAdapter(widths[i], text_dim, cfg.seve.num_heads, cfg.seve.gate_init, cfg.kernels)
            for i in cfg.seve.layers
        }
    )


class VitBackbone(nn.Module):
    def __init__(self, visual: nn.Module, cfg: FisaConfig, text_dim: int):
        super().__init__()
        if not visual.transformer.batch_first:
            raise ValueError("FISA needs an open_clip ViT built batch-first")
        if cfg.resize.pad == "divisible":
            raise ConfigError(
                f"{cfg.name}: resize.pad 'divisible' needs a ConvNeXt CLIP; a ViT's position embeddings are fixed "
                "at image_size, so it keeps the square canvas (resize.pad 'canvas')"
            )
        self.visual = visual
        blocks = visual.transformer.resblocks
        width = visual.conv1.out_channels
        self.seve = _seve_adapters(cfg, len(blocks), [width] * len(blocks), text_dim)
        self._resized_position = None  # (key, table): see position_embedding
        head = cfg.classifier
        self.num_mask_layers = head.num_mask_layers if head.head == "mask-attention" else 0
        if self.num_mask_layers > len(blocks):
            raise ValueError(f"num_mask_layers={self.num_mask_layers} exceeds the {len(blocks)} ViT blocks")
        self.needs_dense = head.head == "mask-average"
        self.patch = visual.patch_size[0]
        self.feature_strides = {"vit": self.patch}
        self.feature_channels = {"vit": width}
        self.width = width

    def position_embedding(self, grid: Tuple[int, int]) -> torch.Tensor:
        """(1 + h*w, width) position embedding, bicubically resized when the grid differs from training's.

        The resized table is kept for the last grid while the weights stay the same tensor, unchanged:
        PyTorch's CUDA bicubic kernel loops over all channels per output pixel, 3.3 ms of fisa-vit-b16's
        8 ms forward at 640 px on an H200 (benchmarks/results/2026-11-26-nvidia-h200.md) when redone each
        call. Recomputed where gradients reach it, while tracing so exports keep their graph, and for weights made
        under torch.inference_mode: an inference tensor counts no in-place changes, so nothing would say that a
        kept table is stale."""
        pos = self.visual.positional_embedding
        trained = self.visual.grid_size
        if tuple(grid) == tuple(trained):
            return pos
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if traced or pos.is_inference() or (pos.requires_grad and torch.is_grad_enabled()):
            return self._resize_position_embedding(pos, tuple(trained), tuple(grid))
        key = (tuple(grid), pos.device, pos.dtype, pos.data_ptr(), pos._version)
        if self._resized_position is None or self._resized_position[0] != key:
            # a normal tensor even when filled under inference_mode, so a later training step may use it
            with torch.inference_mode(False), torch.no_grad():
                self._resized_position = (key, self._resize_position_embedding(pos, tuple(trained), tuple(grid)))
        return self._resized_position[1]

    @staticmethod
    def _resize_position_embedding(pos: torch.Tensor, trained: Tuple[int, int], grid: Tuple[int, int]) -> torch.Tensor:
        patch_pos = pos[1:].reshape(1, trained[0], trained[1], -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], patch_pos.flatten(2).transpose(1, 2)[0]], dim=0)

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, text_valid=None, adapters: bool = True
    ) -> BackboneOutput:
        """``text_valid`` (K,) bool: rows of ``text`` that are real classes (None: all); SEVE ignores the rest.
        ``adapters=False`` skips SEVE: the pre-trained encoder's own features (training's feature preservation)."""
        v = self.visual
        x = v.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position_embedding(grid).to(x.dtype)
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        first_mask_layer = len(blocks) - self.num_mask_layers
        block_inputs = []
        for i, block in enumerate(blocks):
            if i >= first_mask_layer:
                block_inputs.append(x)
            x = block(x)
            if adapters and str(i) in self.seve:
                x = self.seve[str(i)](x, text, text_valid)
        patches = x[:, 1:]
        feature = patches.transpose(1, 2).reshape(x.shape[0], self.width, grid[0], grid[1])
        dense = None
        if self.needs_dense:
            dense = (v.ln_post(patches) @ v.proj).transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])
        return BackboneOutput(features={"vit": feature}, grid=grid, dense_embeds=dense, block_inputs=block_inputs)


class ConvNextBackbone(nn.Module):
    def __init__(self, visual: nn.Module, cfg: FisaConfig, text_dim: int):
        super().__init__()
        if cfg.classifier.head == "mask-attention":
            raise ValueError(
                "the mask-attention head needs a ViT CLIP; use classifier.head = 'mask-average' with ConvNeXt"
            )
        self.visual = visual
        trunk = visual.trunk
        info = trunk.feature_info
        widths = [stage_info["num_chs"] for stage_info in info]
        self.seve = _seve_adapters(cfg, len(trunk.stages), widths, text_dim)
        self.feature_strides = {f"res{i + 2}": stage_info["reduction"] for i, stage_info in enumerate(info)}
        self.feature_channels = {f"res{i + 2}": stage_info["num_chs"] for i, stage_info in enumerate(info)}

    def forward(
        self, images: torch.Tensor, text: torch.Tensor, text_valid=None, adapters: bool = True
    ) -> BackboneOutput:
        """As :meth:`VitBackbone.forward`."""
        trunk = self.visual.trunk
        x = trunk.stem(images)
        features = {}
        for i, stage in enumerate(trunk.stages):
            x = stage(x)
            if adapters and str(i) in self.seve:
                B, C, H, W = x.shape
                tokens = self.seve[str(i)](x.flatten(2).transpose(1, 2), text, text_valid)
                x = tokens.transpose(1, 2).reshape(B, C, H, W)
            features[f"res{i + 2}"] = x
        x = trunk.norm_pre(x)
        # The CLIP head (LayerNorm2d + MLP) at each location instead of after global pooling, so the
        # pooling head can average ready-made CLIP embeddings in one fused pass.
        dense = self.visual.head(trunk.head.norm(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return BackboneOutput(features=features, grid=(x.shape[-2], x.shape[-1]), dense_embeds=dense)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) mask-pooled last-stage features -> (B, Q, D) CLIP embeddings: the CLIP head on
        each pooled vector, as FC-CLIP's ``visual_prediction_forward_convnext`` applies it."""
        B, Q, C = pooled.shape
        normed = self.visual.trunk.head.norm(self.visual.trunk.norm_pre(pooled.reshape(B * Q, C, 1, 1)))
        return self.visual.head(normed.flatten(1)).view(B, Q, -1)
