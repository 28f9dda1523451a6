"""Masked attention of mask tokens: each mask token attends to itself and to the image tokens under
its own mask (the `mask-attention` classifier head of FISA / MaskCLIP / MAFT).

Contract (shared by the PyTorch reference below and the fused kernel that replaces it on CUDA):

    q              (B, H, Q, Dh)   queries of Q mask tokens (their own, SIMO-trained projection)
    k_img, v_img   (B, H, N, Dh)   keys/values of the N = h*w image patch tokens, row-major grid
    k_self, v_self (B, H, Q, Dh)   each mask token's own key/value
    mask_logits    (B, Q, Hm, Wm)  mask generator's logits at any resolution
    grid           (h, w)          the patch grid
    threshold      float           a token is inside a mask where the bilinearly resized logit
                                   (align_corners=False) is > threshold
    returns        (B, H, Q, Dh)

The token always sees itself, so an empty mask returns the token's own value (no NaN); image tokens
outside the mask get exactly zero weight, so their content cannot reach the token. The mask logits get
no gradient (thresholding has none). ``mask_attention`` picks the reference or the fused kernel
(``mask_attention_triton.py``; see ``backend.py``).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .backend import use_triton


def mask_inside_grid(mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float) -> torch.Tensor:
    """(B, Q, h*w) bool: which grid cells each mask covers, as the mask-attention op sees them."""
    resized = F.interpolate(mask_logits, size=tuple(grid), mode="bilinear", align_corners=False)
    return (resized > threshold).flatten(2)


def _check(q, k_img, v_img, k_self, v_self, mask_logits, grid) -> None:
    B, H, Q, Dh = q.shape
    N = grid[0] * grid[1]
    if k_img.shape != (B, H, N, Dh) or v_img.shape != k_img.shape:
        raise ValueError(f"k_img/v_img must be {(B, H, N, Dh)} for grid {tuple(grid)}; got {tuple(k_img.shape)}, {tuple(v_img.shape)}")
    if k_self.shape != q.shape or v_self.shape != q.shape:
        raise ValueError(f"k_self/v_self must match q {tuple(q.shape)}; got {tuple(k_self.shape)}, {tuple(v_self.shape)}")
    if mask_logits.dim() != 4 or mask_logits.shape[:2] != (B, Q):
        raise ValueError(f"mask_logits must be (B={B}, Q={Q}, Hm, Wm); got {tuple(mask_logits.shape)}")


def mask_attention_reference(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    mask_logits: torch.Tensor,
    grid: Tuple[int, int],
    threshold: float = 0.0,
) -> torch.Tensor:
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid)
    Dh = q.shape[-1]
    scale = Dh ** -0.5
    inside = mask_inside_grid(mask_logits, grid, threshold)[:, None]  # (B, 1, Q, N)
    s_img = torch.matmul(q, k_img.transpose(-1, -2)) * scale
    s_img = s_img.masked_fill(~inside, float("-inf"))
    s_self = (q * k_self).sum(-1, keepdim=True) * scale
    probs = torch.cat([s_img, s_self], dim=-1).softmax(-1)
    return torch.matmul(probs[..., :-1], v_img) + probs[..., -1:] * v_self


def mask_attention(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    mask_logits: torch.Tensor,
    grid: Tuple[int, int],
    threshold: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """The op as the model calls it: the fused kernel where ``backend`` selects it, else the reference."""
    if backend == "onnx":
        from .onnx_ops import mask_attention_node

        return mask_attention_node(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold)
    if not use_triton(backend, q, k_img, v_img, k_self, v_self, mask_logits):
        return mask_attention_reference(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold)
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid)
    from .mask_attention_triton import mask_attention_triton

    return mask_attention_triton(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold)
