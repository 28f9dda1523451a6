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
    import importlib
    import sys
    import types

    # Each name's module, imported at first use: the ops import torch and torch._dynamo (1.3 s on 2 cores), which
    # the tools that only need the GPU table or the cache root (``fisa-rt inspect``, the ONNX Runtime and TensorRT
    # runtimes) never use
    _HOMES = {
        "KernelUnavailableError": "dispatch",
        "MaskLayout": "mask_attention",
        "adapter_attention": "adapter_attention",
        "adapter_attention_reference": "adapter_attention",
        "mask_attention": "mask_attention",
        "mask_attention_layout": "mask_attention",
        "mask_attention_reference": "mask_attention",
        "mask_average_logits": "mask_pooling",
        "mask_average_logits_reference": "mask_pooling",
        "mask_inside_grid": "mask_attention",
        "use_triton": "dispatch",
    }
    __all__ = sorted(_HOMES)

    def __getattr__(name: str):
        home = _HOMES.get(name)
        if home is None:  # a submodule not imported yet: the import system then imports it
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", __name__), name)
        globals()[name] = value
        return value

    def __dir__():
        return sorted(set(globals()) | set(_HOMES))

    class _Package(types.ModuleType):
        def __setattr__(self, name, value):
            # the import system binds each submodule it loads on its package; adapter_attention and mask_attention
            # are also the names of their ops, which the package must keep (`from fisa_rt.kernels import
            # MaskLayout, mask_attention` gave the module)
            if name in _HOMES and isinstance(value, types.ModuleType):
                value = getattr(value, name)
            super().__setattr__(name, value)

    sys.modules[__name__].__class__ = _Package
