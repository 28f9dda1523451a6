"""Mask2Former's multi-scale deformable-attention pixel decoder, in plain PyTorch.

Deformable DETR's encoder (6 layers on the stride-8/16/32 maps; every location attends to
``num_points`` learned sampling points per head and per level around its own position), then one FPN
step to stride 4 and a 1x1 projection to the per-pixel mask embeddings. This is the pixel decoder of
Mask2Former (facebookresearch/Mask2Former, ``mask2former/modeling/pixel_decoder/msdeformattn.py``)
and FC-CLIP (bytedance/fc-clip, ``fcclip/modeling/pixel_decoder/msdeformattn.py``); the module and
parameter names below follow theirs, so a checkpoint maps onto it by prefix (``fisa_rt.fcclip``).

The sampling is ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``): the same
arithmetic as Deformable DETR's ``ms_deform_attn_core_pytorch`` and its CUDA kernel, and it exports
to ONNX's standard GridSample (opset >= 16), which TensorRT runs as a built-in layer.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import MaskGeneratorConfig

# The encoder runs on these three maps (coarsest first, as Mask2Former orders them) ...
ENCODER_LEVELS = ("res5", "res4", "res3")
# ... and one FPN step adds the stride-4 map (Mask2Former's common stride).
FPN_LEVELS = ("res2",)


def group_norm(channels: int) -> nn.GroupNorm:
    """Mask2Former's GroupNorm(32, C); narrower test widths fall back to the largest divisor of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def sine_position_embedding(height: int, width: int, dim: int, device, dtype, centered: bool = True) -> torch.Tensor:
    """(1, dim, H, W) DETR sine embedding of normalised coordinates; depends only on the shape, so an
    export with a fixed image size folds it into a constant.

    ``centered`` puts row i at (i + 0.5) / H (this project's transformer-encoder generator);
    ``centered=False`` is Mask2Former's ``PositionEmbeddingSine(normalize=True)``, (i + 1) / (H + 1e-6),
    which the converted FC-CLIP weights were trained with."""
    half = dim // 2
    if centered:
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    else:
        y = torch.arange(1, height + 1, device=device, dtype=torch.float32) / (height + 1e-6) * 2 * math.pi
        x = torch.arange(1, width + 1, device=device, dtype=torch.float32) / (width + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(half, device=device, dtype=torch.float32) // 2) / half)
    pos_y = y[:, None] / dim_t
    pos_x = x[:, None] / dim_t
    pos_y = torch.stack([pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()], dim=2).flatten(1)
    pos_x = torch.stack([pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()], dim=2).flatten(1)
    pos_y, pos_x = pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)
    pos = torch.cat([pos_y, pos_x], dim=2)
    return pos.permute(2, 0, 1).unsqueeze(0).to(dtype)


def multi_scale_deformable_attention(
    value: torch.Tensor, shapes: Sequence[Tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Deformable DETR's sampling, one ``grid_sample`` per level.

    value (B, S, M, Dh) with S = sum(h * w) over ``shapes``; locations (B, Lq, M, L, P, 2) as (x, y) in
    [0, 1] of each level's map; weights (B, Lq, M, L, P), softmaxed over L * P. Returns (B, Lq, M * Dh).
    """
    B, _, M, Dh = value.shape
    _, Lq, _, L, P, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split([h * w for h, w in shapes], dim=1), shapes)):
        value_l = value_l.flatten(2).transpose(1, 2).reshape(B * M, Dh, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*M, Lq, P, 2)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*M, Dh, Lq)
    return out.view(B, M * Dh, Lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021), Mask2Former's names."""

    def __init__(self, dim: int, levels: int, heads: int, points: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention width {dim} must divide by its {heads} heads")
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor,
                shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """query, tokens (B, S, C); reference (B, S, L, 2) normalised (x, y) of each query on each level."""
        B, S, C = query.shape
        M, L, P = self.heads, self.levels, self.points
        value = self.value_proj(tokens).view(B, S, M, C // M)
        offsets = self.sampling_offsets(query).view(B, S, M, L, P, 2)
        weights = self.attention_weights(query).view(B, S, M, L * P).softmax(-1).view(B, S, M, L, P)
        # Offsets are in pixels of each level: divide by that level's (w, h), made on the device ([0, 1] * (h - w)
        # + w): a copy from the host, torch.tensor(...), would stop a CUDA graph from capturing the forward.
        steps = torch.arange(2, dtype=query.dtype, device=query.device)
        normaliser = torch.stack([steps * (h - w) + w for h, w in shapes])
        locations = reference[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(multi_scale_deformable_attention(value, shapes, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + ReLU FFN (Deformable DETR's encoder layer)."""

    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x, pos, reference, shapes):
        x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DeformableEncoder(nn.Module):
    def __init__(self, cfg: MaskGeneratorConfig):
        super().__init__()
        levels = len(ENCODER_LEVELS)
        self.level_embed = nn.Parameter(torch.randn(levels, cfg.hidden_dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(cfg.hidden_dim, cfg.deformable_ffn, levels, cfg.num_heads, cfg.deformable_points)
            for _ in range(cfg.enc_layers)
        )

    @staticmethod
    def reference_points(shapes: Sequence[Tuple[int, int]], device, dtype) -> torch.Tensor:
        """(1, S, L, 2): every location's pixel centre, normalised, repeated for each level (no padding
        masks, so every level's valid ratio is 1)."""
        points = []
        for h, w in shapes:
            y = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            x = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            points.append(torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1).reshape(-1, 2))
        return torch.cat(points, dim=0)[None, :, None, :].expand(1, -1, len(shapes), 2)

    def forward(self, maps: List[torch.Tensor], positions: List[torch.Tensor]) -> List[torch.Tensor]:
        """maps and positions (B, C, h, w) per level, coarsest first -> encoded maps, same shapes."""
        shapes = [tuple(m.shape[-2:]) for m in maps]
        x = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(positions)], dim=1)
        reference = self.reference_points(shapes, x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, pos, reference, shapes)
        B, _, C = x.shape
        tokens = x.split([h * w for h, w in shapes], dim=1)
        return [t.transpose(1, 2).reshape(B, C, h, w) for t, (h, w) in zip(tokens, shapes)]


class DeformablePixelDecoder(nn.Module):
    """res2..res5 -> per-pixel embeddings (B, mask_dim, H/4, W/4) and the stride-32/16/8 maps."""

    def __init__(self, in_channels: Dict[str, int], cfg: MaskGeneratorConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[n], dim, 1), group_norm(dim)) for n in ENCODER_LEVELS
        )
        self.encoder = DeformableEncoder(cfg)
        self.lateral = nn.ModuleDict(
            {n: nn.Sequential(nn.Conv2d(in_channels[n], dim, 1, bias=False), group_norm(dim)) for n in FPN_LEVELS}
        )
        self.output = nn.ModuleDict(
            {
                n: nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), group_norm(dim), nn.ReLU())
                for n in FPN_LEVELS
            }
        )
        self.mask_features = nn.Conv2d(dim, cfg.mask_dim, 1)

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        maps = [proj(features[n]) for proj, n in zip(self.input_proj, ENCODER_LEVELS)]
        positions = [
            sine_position_embedding(*m.shape[-2:], m.shape[1], m.device, m.dtype, centered=False) for m in maps
        ]
        outs = self.encoder(maps, positions)
        y = outs[-1]
        for name in FPN_LEVELS:
            lateral = self.lateral[name](features[name])
            y = F.interpolate(y, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            y = self.output[name](lateral + y)
        return self.mask_features(y), outs[: len(ENCODER_LEVELS)]
