"""Fused ops of FISA's hot spots, installed as ``fisa_rt.kernels``.

One module per op, each holding ``<op>_reference`` — the PyTorch function whose tensor contract the
fused kernel must match and which the model calls wherever the kernel does not run.
"""

from .adapter_attention import adapter_attention_reference
from .mask_attention import mask_attention_reference, mask_inside_grid
from .mask_pooling import mask_average_logits_reference

__all__ = [
    "adapter_attention_reference",
    "mask_attention_reference",
    "mask_average_logits_reference",
    "mask_inside_grid",
]
