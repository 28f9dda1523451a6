"""The openings the fused kernels share, as ``@triton.jit`` helpers (Triton inlines them, so the PTX is
that of the code written out; ``python -m fisa_rt.kernels.gate`` checks its registers and spills).

A program owns one block of rows (visual tokens, mask tokens or classes) of one (batch, head): its second
grid axis is ``batch * heads``, its first the row block. Tiles are (rows x D) with D, the head dim, padded to
the power of two ``BLOCK_D``; masked elements load as zeros, which add nothing to a dot product.
"""

import triton
import triton.language as tl


@triton.jit
def batch_head(pid_bh, H):
    """(b, h) of a program id over batch x heads."""
    return pid_bh // H, pid_bh % H


@triton.jit
def span(start, n, BLOCK: tl.constexpr):
    """The ``BLOCK`` indices from ``start`` along an axis of length ``n``, and which of them exist: (offs, ok)."""
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def row_block(pid, n_rows, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """The rows of block ``pid`` and the head-dim columns, their bounds, and the (rows x D) tile's mask:
    (offs_r, offs_d, r_ok, d_ok, tile_ok)."""
    offs_r, r_ok = span(pid * BLOCK_R, n_rows, BLOCK_R)
    offs_d, d_ok = span(0, D, BLOCK_D)
    return offs_r, offs_d, r_ok, d_ok, r_ok[:, None] & d_ok[None, :]


@triton.jit
def load_rows(ptr, offs_r, offs_d, stride_r, stride_d, mask):
    """The (rows x D) tile at ``ptr`` (already at its batch and head), zeros where ``mask`` is False."""
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def load_rows_t(ptr, offs_r, offs_d, stride_r, stride_d, r_ok, d_ok):
    """The same rows as a transposed (D x rows) tile: the right-hand operand of q kᵀ with no ``tl.trans``."""
    return tl.load(
        ptr + offs_r[None, :] * stride_r + offs_d[:, None] * stride_d, mask=r_ok[None, :] & d_ok[:, None], other=0.0
    )


@triton.jit
def mask_weights_at(W, b, offs_q, offs_hw, NQ, HW):
    """Addresses of a (masks x cells) tile of the (B, NQ, HW) contiguous mask weights of image ``b``."""
    return W + (b * NQ + offs_q[:, None]) * HW + offs_hw[None, :]
