"""Adapter attention: visual tokens attend to a short set of class-text embeddings (SEVE).

Contract (shared by the PyTorch reference below and the fused kernel that replaces it on CUDA):

    q          (B, H, N, Dh)   queries of N visual tokens, H heads
    k, v       (Bt, H, K, Dh)  keys/values of K class texts; Bt = 1 (vocabulary shared by the batch) or B
    key_valid  (Bt, K) bool    False marks padded classes; None = all valid
    returns    (B, H, N, Dh)   softmax(q kᵀ / sqrt(Dh)) v over the valid classes; a row with no valid
                               class returns zeros (there is nothing to attend to)

q, k and v share one floating dtype; the softmax runs in that dtype in the reference, in fp32 in the kernel
(``adapter_attention_triton.py``). ``adapter_attention`` picks between them (see ``backend.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .backend import use_triton
from .onnx_ops import custom_node


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor]) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (batch, heads, tokens, head_dim); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] not in (1, q.shape[0]) or k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k {tuple(k.shape)} does not fit q {tuple(q.shape)}: need (1 or B, H, K, Dh)")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_valid is not None and (key_valid.dtype != torch.bool or key_valid.shape != (k.shape[0], k.shape[2])):
        raise ValueError(
            f"key_valid must be bool of shape {(k.shape[0], k.shape[2])}; got {key_valid.dtype} {tuple(key_valid.shape)}"
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


class AdapterAttentionNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return adapter_attention_reference(q, k, v)

    @staticmethod
    def symbolic(g, q, k, v):
        return custom_node(g, "AdapterAttention", q, k, v).setType(q.type())


def adapter_attention_node(q, k, v, key_valid=None):
    if key_valid is not None:
        raise ValueError("the AdapterAttention node takes unpadded text: export with one vocabulary tensor (K, D)")
    return AdapterAttentionNode.apply(q, k, v)


def adapter_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: Optional[torch.Tensor] = None, backend: str = "auto"
) -> torch.Tensor:
    """The op as the model calls it: the fused kernel where ``backend`` selects it, else the reference."""
    if backend == "onnx":
        return adapter_attention_node(q, k, v, key_valid)
    if not use_triton(backend, q, k, v):
        return adapter_attention_reference(q, k, v, key_valid)
    _check(q, k, v, key_valid)
    from .adapter_attention_triton import adapter_attention_triton

    return adapter_attention_triton(q, k, v, key_valid)
