"""Adapter attention: visual tokens attend to a short set of class-text embeddings (SEVE).

Contract (shared by the PyTorch reference below and the fused kernel that replaces it on CUDA):

    q          (B, H, N, Dh)   queries of N visual tokens, H heads
    k, v       (Bt, H, K, Dh)  keys/values of K class texts; Bt = 1 (vocabulary shared by the batch) or B
    key_valid  (Bt, K) bool    False marks padded classes; None = all valid
    returns    (B, H, N, Dh)   softmax(q kᵀ / sqrt(Dh)) v over the valid classes; a row with no valid
                               class returns zeros (there is nothing to attend to)

q, k and v share one floating dtype; the softmax runs in that dtype in the reference, in fp32 in the kernel
(``adapter_attention_triton.py``). ``adapter_attention`` picks one of ``CANDIDATES`` (see ``dispatch.py``):
the kernel, SDPA's backends (one materialised boolean mask over the classes) or the reference.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .onnx_ops import custom_node
from .dispatch import exporting_fused_nodes, random_inputs, register_op, require_tensors, select, size_bucket, timed


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor]) -> None:
    require_tensors(q=q, k=k, v=v)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (batch, heads, tokens, head_dim); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] not in (1, q.shape[0]) or k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)}: need (1 or B, H, K, Dh)")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_valid is not None and (key_valid.dtype != torch.bool or key_valid.shape != (k.shape[0], k.shape[2])):
        raise ValueError(
            f"key_valid must be bool of shape {(k.shape[0], k.shape[2])}; "
            f"got {key_valid.dtype} {tuple(key_valid.shape)}"
        )


def adapter_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    _check(q, k, v, key_valid)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if key_valid is None:
        return torch.matmul(scores.softmax(-1), v)
    valid = key_valid[:, None, None, :]
    probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    # A row whose classes are all padding is NaN after the softmax; zero is its defined output.
    probs = probs.masked_fill(~valid.any(-1, keepdim=True), 0.0)
    return torch.matmul(probs, v)


def adapter_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor] = None, kind=None
) -> torch.Tensor:
    """The op on ``F.scaled_dot_product_attention`` (``kind``: one SDPBackend, or None for SDPA's own pick);
    padded classes are a boolean mask, which rules the flash backend out."""
    _check(q, k, v, key_valid)
    B = q.shape[0]
    k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
    mask = None if key_valid is None else key_valid[:, None, None, :]
    with sdpa_kernel([kind]) if kind is not None else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if key_valid is None:
        return out
    # a row whose classes are all padding is NaN after SDPA's softmax; zero is its defined output
    return torch.where(key_valid.any(-1)[:, None, None, None], out, 0.0)


def _triton(q, k, v, key_valid=None):
    from .adapter_attention_triton import adapter_attention_triton

    _check(q, k, v, key_valid)
    return adapter_attention_triton(q, k, v, key_valid)


CANDIDATES = {
    "triton": _triton,
    "sdpa-flash": functools.partial(adapter_attention_sdpa, kind=SDPBackend.FLASH_ATTENTION),
    "sdpa-cudnn": functools.partial(adapter_attention_sdpa, kind=SDPBackend.CUDNN_ATTENTION),
    "sdpa-efficient": functools.partial(adapter_attention_sdpa, kind=SDPBackend.EFFICIENT_ATTENTION),
    "eager": adapter_attention_reference,
}


def _bucket(q: torch.Tensor, k: torch.Tensor, key_valid: Optional[torch.Tensor]):
    """(B, H, N, K, Dh, masked, shared vocabulary): sizes that vary with the input rounded up to powers of two."""
    B, H, N, Dh = q.shape
    return (size_bucket(B), H, size_bucket(N), size_bucket(k.shape[2]), Dh, int(key_valid is not None),
            int(k.shape[0] == 1))


def _candidates(bucket, dtype, device, grad, names):
    B, H, N, K, Dh, masked, shared = bucket
    randn = random_inputs(device)
    q = randn(B, H, N, Dh, dtype=dtype, grad=grad)
    k, v = (randn(1 if shared else B, H, K, Dh, dtype=dtype, grad=grad) for _ in "kv")
    valid = torch.ones(k.shape[0], K, dtype=torch.bool, device=device) if masked else None
    return {n: timed(functools.partial(CANDIDATES[n], q, k, v, valid), (q, k, v), grad) for n in names}


class AdapterAttentionNode(torch.autograd.Function):
    """The op as one ``fisa_rt::AdapterAttention`` ONNX node (the fused export; kernels/onnx_ops.py)."""

    @staticmethod
    def forward(ctx, q, k, v):
        return adapter_attention_reference(q, k, v)

    @staticmethod
    def symbolic(g, q, k, v):
        return custom_node(g, "AdapterAttention", q, k, v).setType(q.type())

register_op("adapter_attention", CANDIDATES, _candidates)


def adapter_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor] = None, kernels: str = "auto"
) -> torch.Tensor:
    """The op as the model calls it: the implementation the kernel mode ``kernels`` selects."""
    if exporting_fused_nodes():
        if key_valid is not None:
            raise ValueError("the AdapterAttention node takes unpadded text: export with one vocabulary tensor (K, D)")
        return AdapterAttentionNode.apply(q, k, v)
    _check(q, k, v, key_valid)  # before the shape bucket reads the shapes
    chosen = select("adapter_attention", kernels, (q, k, v), _bucket(q, k, key_valid))
    return CANDIDATES[chosen](q, k, v, key_valid)
