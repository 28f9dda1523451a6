"""Fused ops of FISA's hot spots, installed as ``fisa_rt.kernels``.

One module per op, each holding ``<op>_reference`` (the PyTorch function whose tensor contract the fused
kernel must match) and ``<op>`` (what the model calls: on CUDA the fastest of the Triton kernel of
``<op>_triton.py``, SDPA and the reference as measured on the card, the reference elsewhere; see
``dispatch.py``). Triton is imported only when a kernel runs or is measured.

This folder sits at the repository's top level, so with the checkout on ``sys.path`` (``python -m pytest``,
a script run from the root) ``import kernels`` would find it before any installed package of that name (the
PyPI ``kernels``, which transformers imports). Imported under that name, it hands the name over to the
installed package, or fails as if it were not here: it is only ever ``fisa_rt.kernels``.
"""

if __name__ == "kernels":
    from ._shadow import hand_over

    hand_over(__name__, __file__)
else:
    from .adapter_attention import adapter_attention, adapter_attention_reference
    from .dispatch import KernelUnavailableError, use_triton
    from .mask_attention import (
        MaskLayout,
        mask_attention,
        mask_attention_layout,
        mask_attention_reference,
        mask_inside_grid,
    )
    from .mask_pooling import mask_average_logits, mask_average_logits_reference

    __all__ = [
        "KernelUnavailableError",
        "MaskLayout",
        "adapter_attention",
        "adapter_attention_reference",
        "mask_attention",
        "mask_attention_layout",
        "mask_attention_reference",
        "mask_average_logits",
        "mask_average_logits_reference",
        "mask_inside_grid",
        "use_triton",
    ]
