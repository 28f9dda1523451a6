"""SEVE: semantic-guided visual encoding.

A text-conditioned adapter placed after early blocks of the CLIP image encoder: every visual token
attends to the class-text embeddings of the current vocabulary, and the result is added back through
a tanh gate that starts at zero (Flamingo's gated cross-attention), so an untrained adapter leaves
the pre-trained backbone exactly unchanged and training opens the gate as far as it helps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from fisa_rt.kernels import adapter_attention


class SeveAdapter(nn.Module):
    """Gated cross-attention from visual tokens (width ``width``) to text embeddings (``text_dim``)."""

    def __init__(self, width: int, text_dim: int, num_heads: int, gate_init: float = 0.0, kernels: str = "auto"):
        super().__init__()
        self.kernels = kernels
        if width % num_heads:
            raise ValueError(f"visual width {width} is not divisible by {num_heads} SEVE heads")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.kv_proj = nn.Linear(text_dim, 2 * width)
        self.out_proj = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, N, width); text (K, text_dim) shared by the batch or (B, K, text_dim); text_valid
        (K,) or (B, K) bool marking real (not padded) classes. Returns x with the gated update added."""
        B, N, W = x.shape
        if text.dim() == 2:
            text = text.unsqueeze(0)
            text_valid = None if text_valid is None else text_valid.unsqueeze(0)
        H = self.num_heads
        q = self.q_proj(self.norm(x)).view(B, N, H, W // H).transpose(1, 2)
        k, v = self.kv_proj(text.to(x.dtype)).view(text.shape[0], text.shape[1], 2, H, W // H).permute(2, 0, 3, 1, 4)
        attended = adapter_attention(q, k, v, text_valid, kernels=self.kernels)
        update = self.out_proj(attended.transpose(1, 2).reshape(B, N, W))
        return x + torch.tanh(self.gate).to(x.dtype) * update
