"""``MaskLayout``: which image tokens each mask covers, shared by the masked-attention op (``mask_attention.py``)
and its Triton kernels (``mask_attention_triton.py``), which both import it from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class MaskLayout:
    """Which image tokens each mask covers, decided once and shared by every head and layer.

    inside         (B, Q, N): True / 1 where the token lies inside the mask; bool for the reference,
                   an int8 view of it (contiguous, no copy) when block lists are built for the kernels
    block_counts   (B, ceil(Q / block_q)) int32: per block of mask tokens, how many blocks of block_n
                   image tokens hold at least one inside token (None: no block lists, reference only)
    block_indices  (B, ceil(Q / block_q), ceil(N / block_n)) int32: those blocks' indices first, ascending
    """

    inside: torch.Tensor
    block_counts: Optional[torch.Tensor] = None
    block_indices: Optional[torch.Tensor] = None
    block_q: int = 0
    block_n: int = 0
