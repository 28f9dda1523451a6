"""Mask2Former-style mask generator: class-agnostic mask proposals from the backbone's features.

Two pixel decoders, chosen by ``MaskGeneratorConfig.pixel_decoder``:

* ``"transformer"``: a transformer encoder on the stride-32 features, then an FPN top-down path to
  stride 4 (Mask2Former's "TransformerEncoderPixelDecoder" variant: standard attention only). The
  small configs and the embedded fisa-tiny checkpoint use it.
* ``"deformable"``: Mask2Former's multi-scale deformable-attention pixel decoder
  (:mod:`fisa_rt.pixel_decoder`), which FC-CLIP's released weights need.

Transformer decoder: Mask2Former's masked-attention decoder, learnable queries attending in turn to
the stride-32/16/8 maps, each restricted to its previous mask prediction. Each query yields mask
logits and, as in FC-CLIP, a class embedding in CLIP space that is matched against text embeddings
(the in-vocabulary classifier of the `mask-average` head). ``class_head = "mask-pooled"`` is FC-CLIP's
exactly: the embedding comes from the query plus its mask-pooled per-pixel features, through an MLP,
and is scored with the generator's own temperature.

In FISA the generator is trained once (stage 2) and then frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import MaskGeneratorConfig
from .pixel_decoder import DeformablePixelDecoder, group_norm, sine_position_embedding

PYRAMID_STRIDES = (4, 8, 16, 32)


@dataclass
class MaskGeneratorOutput:
    # (B, Q, H/4, W/4) mask logits of the last decoder layer.
    mask_logits: torch.Tensor
    # (B, Q, D) class embeddings in CLIP space of the last decoder layer.
    class_embeds: torch.Tensor
    # (D,) the learned void ("no object") embedding that class_embeds are also scored against.
    void_embedding: torch.Tensor
    # () the generator's own log-temperature for class_embeds (FC-CLIP's), None to use CLIP's.
    logit_scale: Optional[torch.Tensor] = None
    # (mask_logits, class_embeds) of every earlier decoder layer, for deep supervision.
    aux: List[Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid: strides 4–32 from a single-scale ViT map."""

    def __init__(self, in_channels: int, in_stride: int, out_channels: int):
        super().__init__()
        if in_stride not in (4, 8, 16, 32):
            raise ValueError(f"ViT patch size must be 4, 8, 16 or 32 for the feature pyramid; got {in_stride}")
        self.levels = nn.ModuleDict()
        for stride in PYRAMID_STRIDES:
            layers: List[nn.Module] = []
            channels = in_channels
            if stride < in_stride:
                for _ in range(int(math.log2(in_stride // stride))):
                    layers += [
                        nn.ConvTranspose2d(channels, channels // 2, 2, stride=2),
                        group_norm(channels // 2),
                        nn.GELU(),
                    ]
                    channels //= 2
            elif stride > in_stride:
                layers.append(nn.MaxPool2d(stride // in_stride))
            layers += [nn.Conv2d(channels, out_channels, 1, bias=False), group_norm(out_channels)]
            self.levels[f"res{int(math.log2(stride))}"] = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {name: level(x) for name, level in self.levels.items()}


class _EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN with the position added to queries and keys (DETR)."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.attn(qk, qk, x, need_weights=False)[0])
        return self.norm2(x + self.ffn(x))


class PixelDecoder(nn.Module):
    def __init__(self, in_channels: Dict[str, int], cfg: MaskGeneratorConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.names = [f"res{i}" for i in (2, 3, 4, 5)]
        self.lateral = nn.ModuleDict(
            {n: nn.Sequential(nn.Conv2d(in_channels[n], dim, 1, bias=False), group_norm(dim)) for n in self.names}
        )
        self.encoder = nn.ModuleList(
            _EncoderLayer(dim, cfg.num_heads, cfg.dim_feedforward) for _ in range(cfg.enc_layers)
        )
        self.output = nn.ModuleDict(
            {
                n: nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), group_norm(dim), nn.ReLU())
                for n in self.names
            }
        )
        self.mask_features = nn.Conv2d(dim, cfg.mask_dim, 1)

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Returns per-pixel embeddings (B, mask_dim, H/4, W/4) and the stride-32/16/8 maps for the
        transformer decoder."""
        top = self.lateral["res5"](features["res5"])
        B, C, H, W = top.shape
        pos = sine_position_embedding(H, W, C, top.device, top.dtype).flatten(2).transpose(1, 2)
        tokens = top.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            tokens = layer(tokens, pos)
        y = self.output["res5"](tokens.transpose(1, 2).reshape(B, C, H, W))
        maps = [y]
        for name in ("res4", "res3", "res2"):
            lateral = self.lateral[name](features[name])
            y = self.output[name](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            maps.append(y)
        return self.mask_features(maps[-1]), maps[:3]


class _DecoderLayer(nn.Module):
    """Mask2Former decoder layer: masked cross-attention, then self-attention, then FFN (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(self, q, query_pos, memory, memory_pos, attn_mask):
        q = self.norm_cross(
            q + self.cross(q + query_pos, memory + memory_pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        )
        qk = q + query_pos
        q = self.norm_self(q + self.self_attn(qk, qk, q, need_weights=False)[0])
        return self.norm_ffn(q + self.ffn(q))


def _mlp(dims: List[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (Mask2Former's ``MLP``)."""
    layers: List[nn.Module] = []
    for i, (n, k) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(n, k)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


def mask_pool(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x (B, Q, H, W) -> (B, Q, C): FC-CLIP's ``MaskPooling``, the mean of the features
    where the mask logit is positive (gradient-free weights, 1e-8 guarding empty masks)."""
    with torch.no_grad():
        mask = (mask_logits > 0).to(features.dtype)
        mask = mask / (mask.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, mask)


class MaskGenerator(nn.Module):
    """Features -> (mask logits, CLIP-space class embeddings) for ``num_queries`` proposals."""

    def __init__(
        self,
        cfg: MaskGeneratorConfig,
        feature_channels: Dict[str, int],
        feature_strides: Dict[str, int],
        embed_dim: int,
    ):
        super().__init__()
        dim = cfg.hidden_dim
        if len(feature_channels) == 1:
            (name, channels), = feature_channels.items()
            self.neck = SimplePyramid(channels, feature_strides[name], dim)
            pyramid_channels = {f"res{i}": dim for i in (2, 3, 4, 5)}
        else:
            expected = {f"res{i}": s for i, s in zip((2, 3, 4, 5), PYRAMID_STRIDES)}
            if feature_strides != expected:
                raise ValueError(f"multi-scale backbone must give strides {expected}; got {feature_strides}")
            self.neck = None
            pyramid_channels = feature_channels
        self.num_heads = cfg.num_heads
        # Mask2Former's position embedding comes with its pixel decoder; the transformer-encoder
        # variant keeps the centred one its checkpoints were trained with.
        self.centered_positions = cfg.pixel_decoder == "transformer"
        decoder_cls = PixelDecoder if cfg.pixel_decoder == "transformer" else DeformablePixelDecoder
        self.pixel_decoder = decoder_cls(pyramid_channels, cfg)
        self.query_feat = nn.Embedding(cfg.num_queries, dim)
        self.query_pos = nn.Embedding(cfg.num_queries, dim)
        self.level_embed = nn.Embedding(3, dim)
        self.layers = nn.ModuleList(
            _DecoderLayer(dim, cfg.num_heads, cfg.dim_feedforward) for _ in range(cfg.dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.mask_pooled = cfg.class_head == "mask-pooled"
        if self.mask_pooled:
            self.mask_pooling_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
            self.class_embed = _mlp([dim, dim, dim, embed_dim])
            # log(1 / 0.07), CLIP's initial temperature, as FC-CLIP initialises it.
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:
            self.class_embed = nn.Linear(dim, embed_dim)
            self.logit_scale = None
        self.mask_embed = _mlp([dim, dim, dim, cfg.mask_dim])
        # FC-CLIP's learned "no object" embedding, scored against the queries like a class text.
        self.void_embedding = nn.Parameter(torch.randn(embed_dim) * embed_dim ** -0.5)

    def _predict(self, q: torch.Tensor, mask_features: torch.Tensor, next_size: Tuple[int, int]):
        q = self.decoder_norm(q)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), mask_features)
        if self.mask_pooled:
            class_embeds = self.class_embed(self.mask_pooling_proj(mask_pool(mask_features, mask_logits)) + q)
        else:
            class_embeds = self.class_embed(q)
        # Next layer's cross-attention sees only where this prediction is confident (Mask2Former);
        # a query whose mask is empty at that scale sees everything instead of nothing.
        blocked = (
            F.interpolate(mask_logits.detach(), size=next_size, mode="bilinear", align_corners=False).flatten(2) < 0.0
        )
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        blocked = blocked.repeat_interleave(self.num_heads, dim=0)
        return mask_logits, class_embeds, blocked

    def forward(self, features: Dict[str, torch.Tensor]) -> MaskGeneratorOutput:
        if self.neck is not None:
            (features,) = [self.neck(f) for f in features.values()]
        mask_features, maps = self.pixel_decoder(features)
        B = mask_features.shape[0]
        memories, memory_pos, sizes = [], [], []
        for level, m in enumerate(maps):
            h, w = m.shape[-2:]
            sizes.append((h, w))
            pos = sine_position_embedding(h, w, m.shape[1], m.device, m.dtype, centered=self.centered_positions)
            memory_pos.append(pos.flatten(2).transpose(1, 2))
            memories.append(m.flatten(2).transpose(1, 2) + self.level_embed.weight[level])
        q = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(B, -1, -1)
        mask_logits, class_embeds, blocked = self._predict(q, mask_features, sizes[0])
        aux = []
        for i, layer in enumerate(self.layers):
            level = i % len(maps)
            q = layer(q, query_pos, memories[level], memory_pos[level], blocked)
            aux.append((mask_logits, class_embeds))
            mask_logits, class_embeds, blocked = self._predict(q, mask_features, sizes[(i + 1) % len(maps)])
        return MaskGeneratorOutput(
            mask_logits=mask_logits, class_embeds=class_embeds, void_embedding=self.void_embedding,
            logit_scale=self.logit_scale, aux=aux,
        )
