"""Mask logits sampled at token-grid cells inside a kernel, exactly as ``F.interpolate(mode="bilinear",
align_corners=False)`` resizes them, so no resized mask ever reaches device memory."""

import triton
import triton.language as tl


@triton.jit
def mask_logits_tile(
    mask_ptr, stride_q, stride_y, stride_x, offs_q, offs_cell, row_ok, cell_ok, grid_w, in_h, in_w, scale_y, scale_x
):
    """(len(offs_q), len(offs_cell)) fp32 logits of masks ``offs_q`` at cells ``offs_cell`` (row-major
    over a grid ``grid_w`` wide), resized from (in_h, in_w); ``scale_*`` = in / out as PyTorch computes it."""
    gy = offs_cell // grid_w
    gx = offs_cell % grid_w
    sy = tl.maximum((gy.to(tl.float32) + 0.5) * scale_y - 0.5, 0.0)
    sx = tl.maximum((gx.to(tl.float32) + 0.5) * scale_x - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), in_h - 1)
    x0 = tl.minimum(sx.to(tl.int32), in_w - 1)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    y1 = tl.minimum(y0 + 1, in_h - 1)
    x1 = tl.minimum(x0 + 1, in_w - 1)
    row = mask_ptr + offs_q[:, None] * stride_q
    ok = row_ok[:, None] & cell_ok[None, :]
    v00 = tl.load(row + (y0 * stride_y + x0 * stride_x)[None, :], mask=ok, other=0.0).to(tl.float32)
    v01 = tl.load(row + (y0 * stride_y + x1 * stride_x)[None, :], mask=ok, other=0.0).to(tl.float32)
    v10 = tl.load(row + (y1 * stride_y + x0 * stride_x)[None, :], mask=ok, other=0.0).to(tl.float32)
    v11 = tl.load(row + (y1 * stride_y + x1 * stride_x)[None, :], mask=ok, other=0.0).to(tl.float32)
    lx2 = lx[None, :]
    ly2 = ly[None, :]
    return (1.0 - ly2) * ((1.0 - lx2) * v00 + lx2 * v01) + ly2 * ((1.0 - lx2) * v10 + lx2 * v11)
