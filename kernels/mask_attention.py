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
no gradient (thresholding has none). ``mask_attention`` picks one of ``CANDIDATES`` (see ``dispatch.py``):
the fused kernel (``mask_attention_triton.py``), SDPA over the image keys plus the token's own key under one
materialised boolean mask, or the reference.

The inside/outside decisions depend only on the masks, so a model whose layers attend under the same masks
decides them once (``mask_attention_layout``) and passes the layout to every layer's call.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .mask_layout import MaskLayout
from .onnx_ops import custom_node
from .dispatch import (
    exporting_fused_nodes,
    random_inputs,
    register_op,
    require_tensors,
    select,
    size_bucket,
    timed,
    triton_runs_on,
    use_triton,
)


def mask_inside_grid(mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float) -> torch.Tensor:
    """(B, Q, h*w) bool: which grid cells each mask covers, as the mask-attention op sees them."""
    resized = F.interpolate(mask_logits, size=tuple(grid), mode="bilinear", align_corners=False)
    return (resized > threshold).flatten(2)


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
    mask_logits: torch.Tensor, grid: Tuple[int, int], threshold: float = 0.0, kernels: str = "auto"
) -> MaskLayout:
    """Decide inside/outside once for every ``mask_attention`` call under these masks (same kernel mode).
    The kernel's block lists are built wherever it may run: forced, or ``auto`` on CUDA with Triton."""
    may_run_kernel = kernels == "auto" and triton_runs_on(mask_logits.device.type)
    if not exporting_fused_nodes() and (use_triton(kernels, mask_logits) or may_run_kernel):
        from .mask_attention_triton import layout_tiles

        return build_mask_layout(mask_logits, grid, threshold, layout_tiles(mask_logits.device))
    return build_mask_layout(mask_logits, grid, threshold)


def _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout: Optional[MaskLayout] = None) -> None:
    require_tensors(q=q, k_img=k_img, v_img=v_img, k_self=k_self, v_self=v_self, mask_logits=mask_logits)
    if q.dim() != 4 or q.shape[2] == 0:
        raise ValueError(f"q must be (B, H, Q >= 1, Dh); got {tuple(q.shape)}")
    # a traced or exported graph's sizes may be tensors or symbolic: only plain ints are checked for their sign
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(type(n) is not int or n > 0 for n in grid)):
        raise ValueError(f"grid must be the token grid's (height, width), two whole numbers > 0; got {grid!r:.40}")
    if len({t.dtype for t in (q, k_img, v_img, k_self, v_self)}) > 1:
        raise TypeError(f"q, k_img, v_img, k_self, v_self must share one dtype; got "
                        f"{', '.join(str(t.dtype) for t in (q, k_img, v_img, k_self, v_self))}")
    B, H, Q, Dh = q.shape
    N = grid[0] * grid[1]
    if layout is not None and tuple(layout.inside.shape) != (B, Q, N):
        raise ValueError(f"layout covers {tuple(layout.inside.shape)} (B, Q, N); these inputs need {(B, Q, N)}")
    if k_img.shape != (B, H, N, Dh) or v_img.shape != k_img.shape:
        raise ValueError(
            f"k_img/v_img must be {(B, H, N, Dh)} for grid {tuple(grid)}; "
            f"got {tuple(k_img.shape)}, {tuple(v_img.shape)}"
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


def mask_attention_sdpa(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    mask_logits: torch.Tensor,
    grid: Tuple[int, int],
    threshold: float = 0.0,
    layout: Optional[MaskLayout] = None,
    kind=None,
) -> torch.Tensor:
    """The op on ``F.scaled_dot_product_attention`` over the image keys plus every mask token's own key, with
    the mask materialised: token i sees the image tokens under mask i and only its own key among the Q extra
    ones (``kind``: one SDPBackend, or None for SDPA's own pick)."""
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout)
    B, H, Q, _ = q.shape
    N = k_img.shape[2]
    inside = mask_inside_grid(mask_logits, grid, threshold) if layout is None else layout.inside.bool()
    own = torch.eye(Q, dtype=torch.bool, device=q.device)[None].expand(B, Q, Q)
    mask = torch.cat([inside.view(B, Q, N), own], -1)[:, None]
    with sdpa_kernel([kind]) if kind is not None else contextlib.nullcontext():
        return F.scaled_dot_product_attention(
            q, torch.cat([k_img, k_self], 2), torch.cat([v_img, v_self], 2), attn_mask=mask
        )


def _triton(q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold=0.0, layout=None):
    from .mask_attention_triton import layout_tiles, mask_attention_triton

    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout)
    if layout is None or layout.block_indices is None:
        layout = build_mask_layout(mask_logits, grid, threshold, layout_tiles(q.device))
    return mask_attention_triton(q, k_img, v_img, k_self, v_self, layout)


CANDIDATES = {
    "triton": _triton,
    "sdpa-cudnn": functools.partial(mask_attention_sdpa, kind=SDPBackend.CUDNN_ATTENTION),
    "sdpa-efficient": functools.partial(mask_attention_sdpa, kind=SDPBackend.EFFICIENT_ATTENTION),
    "eager": mask_attention_reference,
}


def box_mask_logits(B: int, Q: int, size: Tuple[int, int], device, dtype, seed: int = 0) -> torch.Tensor:
    """(B, Q, Hm, Wm) logits of Q random boxes, 10-40 % of each side: object-sized masks, whose sparsity the
    kernel's block lists exploit as real masks let it (a dense random mask would favour SDPA unfairly)."""
    g = torch.Generator().manual_seed(seed)
    Hm, Wm = size
    # made on the CPU, its generator's device, whatever torch.set_default_device says
    lo = torch.rand(2, B, Q, generator=g, device="cpu") * 0.6
    extent = 0.1 + torch.rand(2, B, Q, generator=g, device="cpu") * 0.3
    ys = (torch.arange(Hm, device="cpu") + 0.5) / Hm
    xs = (torch.arange(Wm, device="cpu") + 0.5) / Wm
    in_y = (ys >= lo[0, ..., None]) & (ys < (lo[0] + extent[0])[..., None])
    in_x = (xs >= lo[1, ..., None]) & (xs < (lo[1] + extent[1])[..., None])
    inside = in_y[..., :, None] & in_x[..., None, :]
    return (inside.float() * 2 - 1).to(device=device, dtype=dtype)


def _bucket(q: torch.Tensor, mask_logits: torch.Tensor, grid: Tuple[int, int]):
    """(B, H, Q, grid h, grid w, Dh, Hm, Wm): the batch rounded up to a power of two, the rest fixed by the model."""
    B, H, Q, Dh = q.shape
    return (size_bucket(B), H, Q, int(grid[0]), int(grid[1]), Dh, *mask_logits.shape[-2:])


def _candidates(bucket, dtype, device, grad, names):
    B, H, Q, gh, gw, Dh, Hm, Wm = bucket
    randn = random_inputs(device)
    q, k_self, v_self = (randn(B, H, Q, Dh, dtype=dtype, grad=grad) for _ in "qkv")
    k_img, v_img = (randn(B, H, gh * gw, Dh, dtype=dtype, grad=grad) for _ in "kv")
    masks = box_mask_logits(B, Q, (Hm, Wm), device, dtype)
    layout = mask_attention_layout(masks, (gh, gw), 0.0, "triton" if "triton" in names else "reference")
    inputs = (q, k_img, v_img, k_self, v_self)
    return {n: timed(functools.partial(CANDIDATES[n], *inputs, masks, (gh, gw), 0.0, layout=layout), inputs, grad)
            for n in names}


class MaskAttentionNode(torch.autograd.Function):
    """The op as one ``fisa_rt::MaskAttention`` ONNX node (the fused export; kernels/onnx_ops.py)."""

    @staticmethod
    def forward(ctx, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        return mask_attention_reference(q, k_img, v_img, k_self, v_self, mask_logits, (grid_h, grid_w), threshold)

    @staticmethod
    def symbolic(g, q, k_img, v_img, k_self, v_self, mask_logits, grid_h, grid_w, threshold):
        out = custom_node(
            g, "MaskAttention", q, k_img, v_img, k_self, v_self, mask_logits,
            grid_h_i=grid_h, grid_w_i=grid_w, threshold_f=threshold,
        )
        return out.setType(q.type())

register_op("mask_attention", CANDIDATES, _candidates)


def mask_attention(
    q: torch.Tensor,
    k_img: torch.Tensor,
    v_img: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    mask_logits: torch.Tensor,
    grid: Tuple[int, int],
    threshold: float = 0.0,
    kernels: str = "auto",
    layout: Optional[MaskLayout] = None,
) -> torch.Tensor:
    """The op as the model calls it: the implementation the kernel mode ``kernels`` selects.
    ``layout``: ``mask_attention_layout`` of these mask logits, grid and threshold (built here when None)."""
    if exporting_fused_nodes():
        return MaskAttentionNode.apply(
            q, k_img, v_img, k_self, v_self, mask_logits, int(grid[0]), int(grid[1]), float(threshold)
        )
    _check(q, k_img, v_img, k_self, v_self, mask_logits, grid, layout)  # before the shape bucket reads the shapes
    tensors = (q, k_img, v_img, k_self, v_self, mask_logits)
    chosen = select("mask_attention", kernels, tensors, _bucket(q, mask_logits, grid))
    return CANDIDATES[chosen](q, k_img, v_img, k_self, v_self, mask_logits, grid, threshold, layout=layout)
