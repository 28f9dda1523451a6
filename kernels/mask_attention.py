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

The inside/outside decisions depend only on the masks, so a model whose layers attend under the same masks
decides them once (``mask_attention_layout``) and passes the layout to every layer's call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .backend import use_triton
from .onnx_ops import custom_node


def mask_inside_grid(mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float) -> torch.Tensor:
    """(B, Q, h*w) bool: which grid cells each mask covers, as the mask-attention op sees them."""
    resized = F.interpolate(mask_logits, size=tuple(grid), mode="bilinear", align_corners=False)
    return (resized > threshold).flatten(2)


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


def build_mask_layout(
    mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float, tiles: Optional[Tuple[int, int]] = None
) -> MaskLayout:
    """The layout of ``mask_logits`` over ``grid``, with block lists for ``tiles`` = (block_q, block_n)."""
    inside = mask_inside_grid(mask_logits.detach(), grid, threshold).contiguous()
    if tiles is None:
        return MaskLayout(inside)
    block_q, block_n = tiles
    B, Q, N = inside.shape
    QB, NB = -(-Q // block_q), -(-N // block_n)
    # token blocks first (one pass over the mask), then the small (B, Q, NB) summary over mask blocks
    per_mask = F.pad(inside, (0, NB * block_n - N)).view(B, Q, NB, block_n).any(3)
    occupied = F.pad(per_mask, (0, 0, 0, QB * block_q - Q)).view(B, QB, block_q, NB).any(2)
    # a stable sort of "empty" puts the occupied blocks first, in ascending order
    order = torch.sort(~occupied, dim=-1, stable=True).indices
    # bool and int8 share a layout: the view costs no pass
    return MaskLayout(
        inside.view(torch.int8),
        occupied.sum(-1, dtype=torch.int32),
        order.to(torch.int32).contiguous(),
        block_q,
        block_n,
    )


def mask_attention_layout(
    mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float = 0.0, backend: str = "auto"
) -> MaskLayout:
    """Decide inside/outside once for every ``mask_attention`` call under these masks (same backend)."""
    if backend != "onnx" and use_triton(backend, mask_logits):
        from .mask_attention_triton import layout_tiles

        return build_mask_layout(mask_logits, grid, threshold, layout_tiles(mask_logits.device))
    return build_mask_layout(mask_logits, grid, threshold)


def _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout: Optional[MaskLayout] = None) -> None:
    B, H, Q, Dh = q.shape
    N = grid[0] * grid[1]
    if layout is not None and tuple(layout.inside.shape) != (B, Q, N):
        raise ValueError(f"layout covers {tuple(layout.inside.shape)} (B, Q, N); these inputs need {(B, Q, N)}")
    if k_img.shape != (B, H, N, Dh) or v_img.shape != k_img.shape:
        raise ValueError(
            f"k_img/v_img must be {(B, H, N, Dh)} for grid {tuple(grid)}; got {tuple(k_img.shape)}, {tuple(v_img.shape)}"
        )
    if k_self.shape != q.shape or v_self.shape != q.shape:
        raise ValueError(
            f"k_self/v_self must match q {tuple(q.shape)}; got {tuple(k_self.shape)}, {tuple(v_self.shape)}"
        )
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
    layout: Optional[MaskLayout] = None,
) -> torch.Tensor:
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout)
    Dh = q.shape[-1]
    scale = Dh ** -0.5
    inside = mask_inside_grid(mask_logits, grid, threshold) if layout is None else layout.inside.bool()
    inside = inside[:, None]  # (B, 1, Q, N)
    s_img = torch.matmul(q, k_img.transpose(-1, -2)) * scale
    s_img = s_img.masked_fill(~inside, float("-inf"))
    s_self = (q * k_self).sum(-1, keepdim=True) * scale
    probs = torch.cat([s_img, s_self], dim=-1).softmax(-1)
    return torch.matmul(probs[..., :-1], v_img) + probs[..., -1:] * v_self


class MaskAttentionNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        return mask_attention_reference(q, k_img, v_img, k_self, v_self, mask_logits, (grid_h, grid_w), threshold)

    @staticmethod
    def symbolic(g, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        out = custom_node(g, "MaskAttention", q, k_img, v_img, k_self, v_self, mask_logits, grid_h_i=grid_h,
                          grid_w_i=grid_w, threshold_f=threshold)
        return out.setType(q.type())


def mask_attention_node(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold):
    return MaskAttentionNode.apply(
        q, k_img, v_img, k_self, v_self, mask_logits, int(grid[0]), int(grid[1]), float(threshold)
    )


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
    layout: Optional[MaskLayout] = None,
) -> torch.Tensor:
    """The op as the model calls it: the fused kernel where ``backend`` selects it, else the reference.
    ``layout``: ``mask_attention_layout`` of these mask logits, grid and threshold (built here when None)."""
    if backend == "onnx":
        return mask_attention_node(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold)
    if not use_triton(backend, q, k_img, v_img, k_self, v_self, mask_logits):
        return mask_attention_reference(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold, layout)
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout)
    from .mask_attention_triton import layout_tiles, mask_attention_triton

    if layout is None or layout.block_indices is None:
        layout = build_mask_layout(mask_logits, grid, threshold, layout_tiles(q.device))
    return mask_attention_triton(q, k_img, v_img, k_self, v_self, layout)
